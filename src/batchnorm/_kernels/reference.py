"""The NumPy reference kernels: the oracle for tests, and the fallback where numba is unavailable.

Every function works on the canonical (outer, C, inner) arrays of :mod:`batchnorm._layout` and on flat
per-channel arrays of length C. Results are written into a caller-provided output, rounded once.
"""

from __future__ import annotations

import numpy as np

from .._arithmetic import Coefficients, fma
from .._rounding import round_once

__all__ = ["apply_affine", "grad_input", "grad_sums", "moments"]

_REDUCE = (0, 2)


def _channel(a: np.ndarray) -> np.ndarray:
    return a.reshape(1, -1, 1)


def apply_affine(x3: np.ndarray, co: Coefficients, out3: np.ndarray) -> None:
    """out3 = the elementwise form of ``co`` applied to x3, computed in ``co.dtype``, rounded once."""
    x = x3.astype(co.dtype)
    shift, scale, offset = _channel(co.shift), _channel(co.scale), _channel(co.offset)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if co.form == "centered":
            y = (x - shift) * scale + offset
        elif co.form == "affine":
            y = x * scale + offset
        elif co.form == "fma":
            y = fma(x, scale, offset, co.dtype)
        elif co.form == "normalized_fma":
            assert co.gain is not None
            y = fma((x - shift) * scale, _channel(co.gain), offset, co.dtype)
        elif co.form == "ratio":
            y = (x - shift) * scale / _channel(co.divisor) + offset
        else:
            raise AssertionError(f"unknown elementwise form {co.form!r}")  # Dialect refuses it first
    out3[...] = round_once(y, out3.dtype)


def moments(x3: np.ndarray, variance: str, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance (divided by n), accumulated in ``dtype``.

    ``variance``: "two_pass" (mean, then the mean of squared deviations), "sum_of_squares"
    (E[x^2] - E[x]^2, which cancels catastrophically for large means), or "sum_of_squares_clamped"
    (the same, clamped at 0).
    """
    n = x3.shape[0] * x3.shape[2]
    x = x3.astype(dtype)
    mean = x.sum(axis=_REDUCE, dtype=dtype) / dtype.type(n)
    if variance == "two_pass":
        centered = x - _channel(mean)
        return mean, (centered * centered).sum(axis=_REDUCE, dtype=dtype) / dtype.type(n)
    var = (x * x).sum(axis=_REDUCE, dtype=dtype) / dtype.type(n) - mean * mean
    if variance == "sum_of_squares_clamped":
        var = np.maximum(var, dtype.type(0))
    return mean, var


def grad_sums(dy3: np.ndarray, x3: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, in float64: sum(dy) and sum(dy * (x - mean))."""
    dy = dy3.astype(np.float64)
    centered = x3.astype(np.float64) - _channel(mean.astype(np.float64))
    return dy.sum(axis=_REDUCE), (dy * centered).sum(axis=_REDUCE)


def grad_input(
    dy3: np.ndarray,
    x3: np.ndarray,
    mean: np.ndarray,
    a: np.ndarray,
    k: np.ndarray,
    c: np.ndarray,
    out3: np.ndarray,
) -> None:
    """out3 = a * dy + k * (x - mean) + c per channel, in float64, rounded once."""
    dy = dy3.astype(np.float64)
    centered = x3.astype(np.float64) - _channel(mean.astype(np.float64))
    dx = _channel(a) * dy + _channel(k) * centered + _channel(c)
    out3[...] = round_once(dx, out3.dtype)
