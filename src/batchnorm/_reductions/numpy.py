"""ONNX's reference evaluator: batch statistics as NumPy computes them (reduction ``"numpy"``).

onnx/reference/ops/op_batch_normalization.py (``_batchnorm_training_mode``, onnx 1.23) reduces over every
axis but 1 with ``x.mean(axis=axes)`` and ``x.var(axis=axes)`` (numpy/_core/_methods.py ``_mean`` and
``_var``), in the input's dtype. For float32 (float64 alike) that is, per channel::

    mean = fl32(S(x) / n)
    var  = fl32(S(fl32(fl32(x - mean)^2)) / n)

both quotients formed in float64 (``n`` is an intp) and rounded once to float32, which is the float32
quotient itself (53 >= 2 * 24 + 2 bits). ``S`` is ``np.add.reduce`` over axes (0, 2) of the canonical
(N, C, S) array: NumPy's iterator walks the input in memory order with its axes coalesced, so (N, C, H, W)
over (0, 2, 3) runs the very loop of (N, C, H*W) over (0, 2), and (N, C) that of (N, C, 1):

- S > 1 and C > 1: ``for n: for c: out[c] += pairwise(x[n, c, :])``, the reduce inner loop of FLOAT_add
  (numpy/_core/src/umath/loops_arithm_fp.dispatch.c.src, ``IS_BINARY_REDUCE``) over each row;
- S == 1: ``for n: out[c] += x[n, c]``, an elementwise inner loop along C;
- C == 1: the whole array is one run: ``pairwise(x)`` over all N*S values.

``pairwise`` is NumPy's pairwise summation (numpy/_core/src/umath/loops_utils.h.src,
``FLOAT_pairwise_sum``): fewer than 8 values added in a row to 0; up to 128 values in 8 accumulators
(lane j sums values j, j + 8, ...) combined as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), then the
remainder in a row; longer runs split in two at n/2 rounded down to a multiple of 8, each half summed
alike and the two added. numba kernels (:mod:`._onnx_trees`) run this tree, rows in parallel.

Half inputs: ``x.mean`` of float16 sums in float32 through the iterator's buffers and rounds the mean to
float16; ``x.var`` sums in float16 (pairwise in float32 within each inner loop, rounded to float16 after
it); bfloat16 sums with ml_dtypes' bfloat16 add. For those, and for every dtype when the reference
kernels are selected or numba is missing, this module makes NumPy's own calls on x3: the same memory
order, hence the same iteration. Results come back in ``dtype``.

The ``sum_of_squares`` variances (not ONNX's) take mean(x^2) - mean^2 in the same tree and dtype.
"""

from __future__ import annotations

import numpy as np

__all__ = ["moments"]

_REDUCE = (0, 2)
_F32 = np.dtype(np.float32)


def moments(
    x3: np.ndarray, variance: str, dtype: np.dtype, *, shape: tuple[int, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of x3 (outer, C, inner) as ``x.mean`` and ``x.var`` of the
    ONNX reference evaluator give them, in ``dtype``. ``shape`` (the input's, in memory order) changes
    nothing: NumPy's loops follow memory order, which x3 keeps."""
    if x3.dtype == _F32 and _compiled():
        mean, var = _moments_compiled(x3, variance)
    else:
        mean, var = _moments_numpy(x3, variance)
    if variance == "sum_of_squares_clamped":
        var = np.maximum(var, var.dtype.type(0))
    return mean.astype(dtype), var.astype(dtype)


def _compiled() -> bool:
    from .. import _kernels

    return _kernels.backend() == "compiled"


def _moments_numpy(x3: np.ndarray, variance: str) -> tuple[np.ndarray, np.ndarray]:
    """NumPy's own calls, as the reference evaluator makes them (on x3's memory, in its order); a
    float16 sum that overflows gives inf there too."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = np.asarray(x3.mean(axis=_REDUCE))
        if variance == "two_pass":
            return mean, np.asarray(x3.var(axis=_REDUCE))
        return mean, np.asarray(np.square(x3).mean(axis=_REDUCE)) - mean * mean


def _moments_compiled(x3: np.ndarray, variance: str) -> tuple[np.ndarray, np.ndarray]:
    from . import _onnx_trees as trees

    mean, moment = trees.channel_moments(x3, variance == "two_pass", "numpy")
    return mean, moment if variance == "two_pass" else moment - mean * mean
