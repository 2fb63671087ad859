"""numba kernels of :mod:`.torch_batchnorm`: PyTorch's batch-norm reduction trees, operation by operation.

Each kernel writes out the order of torch's loop (aten/src/ATen/native/cpu/batch_norm_kernel.cpp); no
``fastmath``, so numba neither reassociates a sum nor contracts a multiply-add: the one FMA torch's
channels-last kernel makes is the explicit :func:`fma` (``llvm.fma``, always fused). Parallelism never
changes a result: work items are whole channels or torch's own per-thread row chunks. The contiguous
float32 / float64 statistics run :func:`._fused_kernels.group_moments` (eight channels' float64 chains
as the lanes of a vector, transposed tiles); the half-input kernel keeps torch's eight lanes in one
vector and reads float16 / bfloat16 storage directly (no float32 copy of the input).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .._kernels.intrinsics import fma
from ._fused_kernels import LANES, lane, run_add, splat, value, zeros

__all__ = ["lane_moments", "partial_squares", "partial_sums", "serial_moments"]

_kernel = njit(parallel=True, nogil=True, cache=True, error_model="numpy")
_serial = njit(nogil=True, cache=True, error_model="numpy")


@njit(nogil=True, cache=True, error_model="numpy")
def serial_moments(x, fused):
    """torch's channels-last kernel when rows <= threads (float32 / float64, x (rows, C)): per channel a
    serial sum in x's dtype from 0, mean = fl(sum / n), then acc = fma(d, d, acc) (``fused``) or
    acc + d * d."""
    rows, C = x.shape
    mean = np.empty(C, x.dtype)
    var_sum = np.empty(C, x.dtype)
    zero = np.zeros(1, x.dtype)[0]
    for c in range(C):
        s = zero
        for r in range(rows):
            s += x[r, c]
        mean[c] = s / rows
        m = mean[c]
        acc = zero
        for r in range(rows):
            d = x[r, c] - m
            acc = fma(d, d, acc) if fused else acc + d * d
        var_sum[c] = acc
    return mean, var_sum


@_serial
def _lane_pass(x, c, outer, C, inner, m):
    """One pass of :func:`lane_moments` over channel c: the scalar and the lanes' sum, as torch adds them
    (m None: the values; else fl(fl(v - m)^2))."""
    body = inner - inner % (2 * LANES)
    acc = zeros(np.float32(0.0))
    s = np.float32(0.0)
    center = _center(m)
    for o in range(outer):
        start = (o * C + c) * inner
        for d in range(start, start + body, 2 * LANES):
            acc = run_add(acc, x, d, center)
            acc = run_add(acc, x, d + LANES, center)
        for d in range(start + body, start + inner):
            s += _term(value(x, d), m)
    r = lane(acc, 0)
    for j in range(1, LANES):
        r += lane(acc, j)
    return s + r


def _center(m):
    """None where m is None, else the Vector of m (chosen when numba types the call)."""


@overload(_center)
def _center_typed(m):
    if isinstance(m, types.NoneType):
        return lambda m: None
    return lambda m: splat(m)


@njit(nogil=True, cache=True)
def _term(v, m):
    if m is None:
        return v
    e = v - m
    return e * e


@_kernel
def lane_moments(x, outer, C, inner, mean, var_sum, nchunks):
    """torch's contiguous kernel for float16 / bfloat16 (x flat (outer, C, inner) storage: float16 as
    uint16, bfloat16 as int16, upcast exactly to float32 as read): float32 throughout, no FMA. Per row
    of ``inner`` values, blocks of 2 * LANES values go to LANES accumulators (lane l takes values l and
    LANES + l of the block), the rest of the row to a scalar; then scalar + (((lane 0 + lane 1) + lane 2)
    + ...). The same for fl(fl(x - mean)^2). Channels split over ``nchunks`` parallel chunks."""
    n = np.float32(outer * inner)
    for t in prange(nchunks):
        for c in range(C * t // nchunks, C * (t + 1) // nchunks):
            m = _lane_pass(x, c, outer, C, inner, None) / n
            mean[c] = m
            var_sum[c] = _lane_pass(x, c, outer, C, inner, m)


@_kernel
def partial_sums(x, chunks, chunk):
    """Channels-last first pass over x (rows, C): row chunk t (rows t * chunk .. t * chunk + chunk - 1)
    sums its rows into row t of a zeroed (chunks, C) buffer, one add per value in row order, in x's
    dtype."""
    rows, C = x.shape
    buffer = np.zeros((chunks, C), x.dtype)
    for t in prange(chunks):
        acc = buffer[t]
        for r in range(t * chunk, min(rows, t * chunk + chunk)):
            row = x[r]
            for c in range(C):
                acc[c] += row[c]
    return buffer


@_kernel
def partial_squares(x, mean, chunks, chunk):
    """Channels-last second pass: as :func:`partial_sums` over fma(x - mean, x - mean, acc)."""
    rows, C = x.shape
    buffer = np.zeros((chunks, C), x.dtype)
    for t in prange(chunks):
        acc = buffer[t]
        for r in range(t * chunk, min(rows, t * chunk + chunk)):
            row = x[r]
            for c in range(C):
                d = row[c] - mean[c]
                acc[c] = fma(d, d, acc[c])
    return buffer
