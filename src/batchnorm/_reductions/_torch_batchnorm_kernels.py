"""numba kernels of :mod:`.torch_batchnorm`: PyTorch's batch-norm reduction trees, operation by operation.

Each kernel writes out the order of torch's loop (aten/src/ATen/native/cpu/batch_norm_kernel.cpp); no
``fastmath``, so numba neither reassociates a sum nor contracts a multiply-add: the one FMA torch's
channels-last kernel makes is the explicit :func:`fma` (``llvm.fma``, always fused). Parallelism never
changes a result: work items are whole channels or torch's own per-thread row chunks.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

__all__ = ["fma", "lane_moments", "partial_squares", "partial_sums", "sequential_moments", "serial_moments"]

#: channels summed side by side on one thread (independent chains: the latency of one add is hidden).
GROUP = 4

_kernel = njit(parallel=True, nogil=True, cache=True, error_model="numpy")


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c with one rounding (``llvm.fma``), for float32 or float64 operands of one type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        function = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(function, args)

    return a(a, b, c), codegen


@_kernel
def sequential_moments(x, fused):
    """Per channel of x (outer, C, inner), float32 or float64: the mean and the sum of squared deviations,
    each a float64 sum in memory order (o, then i) from 0, stored in x's dtype.

    mean = fl(sum / n); var_sum = fl(sum of fl(fl(x - mean)^2)), the square rounded in x's dtype (float32:
    no FMA, the accumulator has another type). ``fused`` (float64 only): per row, the last value of an
    odd-length row is added as fma(d, d, sum), as GCC's pairwise-vectorized loop of torch's FMA builds
    does."""
    outer, C, inner = x.shape
    n = outer * inner
    body = inner - inner % 2 if fused else inner
    mean = np.empty(C, x.dtype)
    var_sum = np.empty(C, x.dtype)
    for g in prange((C + GROUP - 1) // GROUP):
        c0 = g * GROUP
        if c0 + GROUP <= C:
            s0 = s1 = s2 = s3 = 0.0
            for o in range(outer):
                r0, r1, r2, r3 = x[o, c0], x[o, c0 + 1], x[o, c0 + 2], x[o, c0 + 3]
                for i in range(inner):
                    s0 += r0[i]
                    s1 += r1[i]
                    s2 += r2[i]
                    s3 += r3[i]
            mean[c0] = s0 / n
            mean[c0 + 1] = s1 / n
            mean[c0 + 2] = s2 / n
            mean[c0 + 3] = s3 / n
            m0, m1, m2, m3 = mean[c0], mean[c0 + 1], mean[c0 + 2], mean[c0 + 3]
            s0 = s1 = s2 = s3 = 0.0
            for o in range(outer):
                r0, r1, r2, r3 = x[o, c0], x[o, c0 + 1], x[o, c0 + 2], x[o, c0 + 3]
                for i in range(body):
                    d0 = r0[i] - m0
                    d1 = r1[i] - m1
                    d2 = r2[i] - m2
                    d3 = r3[i] - m3
                    s0 += d0 * d0
                    s1 += d1 * d1
                    s2 += d2 * d2
                    s3 += d3 * d3
                for i in range(body, inner):
                    s0 = _fused_square(r0[i] - m0, s0)
                    s1 = _fused_square(r1[i] - m1, s1)
                    s2 = _fused_square(r2[i] - m2, s2)
                    s3 = _fused_square(r3[i] - m3, s3)
            var_sum[c0] = s0
            var_sum[c0 + 1] = s1
            var_sum[c0 + 2] = s2
            var_sum[c0 + 3] = s3
        else:
            for c in range(c0, C):
                s = 0.0
                for o in range(outer):
                    row = x[o, c]
                    for i in range(inner):
                        s += row[i]
                mean[c] = s / n
                m = mean[c]
                s = 0.0
                for o in range(outer):
                    row = x[o, c]
                    for i in range(body):
                        d = row[i] - m
                        s += d * d
                    for i in range(body, inner):
                        s = _fused_square(row[i] - m, s)
                var_sum[c] = s
    return mean, var_sum


@njit(nogil=True, cache=True)
def _fused_square(d, acc):
    """fma(d, d, acc) in float64 (only float64 inputs reach it)."""
    return fma(np.float64(d), np.float64(d), acc)


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


@_kernel
def lane_moments(x, lanes):
    """torch's contiguous kernel for float16 / bfloat16 (x (outer, C, inner) upcast to float32): float32
    throughout, no FMA. Per row of ``inner`` values, blocks of 2 * lanes values go to ``lanes``
    accumulators (lane l takes values l and lanes + l of the block), the rest of the row to a scalar;
    then scalar + (((lane 0 + lane 1) + lane 2) + ...). The same for fl(fl(x - mean)^2)."""
    outer, C, inner = x.shape
    n = np.float32(outer * inner)
    block = 2 * lanes
    body = inner - inner % block
    mean = np.empty(C, np.float32)
    var_sum = np.empty(C, np.float32)
    for c in prange(C):
        acc = np.zeros(lanes, np.float32)
        s = np.float32(0.0)
        for o in range(outer):
            row = x[o, c]
            for d in range(0, body, block):
                for lane in range(lanes):
                    acc[lane] += row[d + lane]
                for lane in range(lanes):
                    acc[lane] += row[d + lanes + lane]
            for d in range(body, inner):
                s += row[d]
        r = acc[0]
        for lane in range(1, lanes):
            r += acc[lane]
        s += r
        m = s / n
        mean[c] = m
        acc[:] = 0.0
        s = np.float32(0.0)
        for o in range(outer):
            row = x[o, c]
            for d in range(0, body, block):
                for lane in range(lanes):
                    e = row[d + lane] - m
                    acc[lane] += e * e
                for lane in range(lanes):
                    e = row[d + lanes + lane] - m
                    acc[lane] += e * e
            for d in range(body, inner):
                e = row[d] - m
                s += e * e
        r = acc[0]
        for lane in range(1, lanes):
            r += acc[lane]
        var_sum[c] = s + r
    return mean, var_sum


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
