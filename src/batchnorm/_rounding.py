"""Rounding float64 results once, correctly, to the dtype of the input.

NumPy rounds float64 to float32 and float16 correctly (round to nearest, ties to even). ml_dtypes rounds
float64 to bfloat16 through float32, which rounds twice: 1 + 2**-8 + 2**-40 becomes 1.0 instead of
1 + 2**-7. Rounding first to float32 *to odd* (truncate, then set the last bit when inexact) and then to
nearest bfloat16 gives the correctly rounded result, since float32 carries more than two extra bits.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

__all__ = ["round_once"]

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def _float32_round_to_odd(x: np.ndarray) -> np.ndarray:
    """float64 -> float32, rounded toward zero and then odd where inexact (finite values only)."""
    with np.errstate(over="ignore"):
        y = x.astype(np.float32)
    overshoot = np.abs(y.astype(np.float64)) > np.abs(x)
    y = np.where(overshoot, np.nextafter(y, np.float32(0)), y)
    inexact = (y.astype(np.float64) != x) & np.isfinite(x)
    bits = y.view(np.uint32)
    return np.where(inexact, bits | np.uint32(1), bits).view(np.float32)


def round_once(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round an array of float64 values to ``dtype`` with a single correct rounding."""
    dtype = np.dtype(dtype)
    if dtype == BFLOAT16:
        return _float32_round_to_odd(np.asarray(x, np.float64)).astype(BFLOAT16)
    with np.errstate(over="ignore"):
        return np.asarray(x).astype(dtype)
