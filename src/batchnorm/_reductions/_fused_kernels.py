"""Compiled (numba) kernels of :mod:`.onednn` and :mod:`.eigen_fused`: sequential float sums, per channel.

Imported lazily by those modules. Every sum runs in the array's dtype (float32, or float64 for float64
inputs) and adds its terms one by one in the order the caller's ranges give: nothing is reassociated (no
``fastmath``). Speed comes from independent chains: NCHW sums eight channels side by side in scalar
registers (their chains interleave), channels-last rows add into a per-chunk row of accumulators
(vectorized across channels). The kernels are serial and release the GIL: the callers run their parts
(channel groups, oneDNN's per-thread chunks) on Python threads.

A term is chosen by ``mode``: SUM adds v; SQUARES adds fl(d * d), d = fl(v - m); FMA_SQUARES forms
fma(d, d, acc), one rounding (llvm.fma: vfmadd on FMA machines, the C library's fma elsewhere).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.extending import intrinsic

SUM, SQUARES, FMA_SQUARES = 0, 1, 2
#: channels summed side by side.
GROUP = 8

_serial = njit(nogil=True, cache=True)


@intrinsic
def fused_multiply_add(typingctx, a, b, c):
    """a * b + c rounded once (LLVM's llvm.fma)."""

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


@_serial
def _step(acc, v, m, mode):
    if mode == SUM:
        return acc + v
    d = v - m
    if mode == SQUARES:
        return acc + d * d
    return fused_multiply_add(d, d, acc)


@_serial
def _lanes(c0, width):
    """Channel of each of the eight chains: c0 .. c0 + width - 1, the last repeated (its copies are
    computed and dropped, so that a narrow group keeps eight independent chains)."""
    last = c0 + width - 1
    return (
        min(c0, last),
        min(c0 + 1, last),
        min(c0 + 2, last),
        min(c0 + 3, last),
        min(c0 + 4, last),
        min(c0 + 5, last),
        min(c0 + 6, last),
        min(c0 + 7, last),
    )


@_serial
def _store(out, c0, width, s0, s1, s2, s3, s4, s5, s6, s7):
    sums = (s0, s1, s2, s3, s4, s5, s6, s7)
    for k in range(width):
        out[c0 + k] = sums[k]


@_serial
def _group_sums(x, c0, width, mean, mode, out):
    """Channels c0 .. c0 + width - 1 (width <= 8) of (N, C, S), eight chains side by side."""
    outer, _, inner = x.shape
    k0, k1, k2, k3, k4, k5, k6, k7 = _lanes(c0, width)
    m0, m1, m2, m3 = mean[k0], mean[k1], mean[k2], mean[k3]
    m4, m5, m6, m7 = mean[k4], mean[k5], mean[k6], mean[k7]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = out[c0]  # +0, out is fresh zeros
    for n in range(outer):
        r0, r1, r2, r3 = x[n, k0], x[n, k1], x[n, k2], x[n, k3]
        r4, r5, r6, r7 = x[n, k4], x[n, k5], x[n, k6], x[n, k7]
        if mode == SUM:
            for i in range(inner):
                s0 += r0[i]
                s1 += r1[i]
                s2 += r2[i]
                s3 += r3[i]
                s4 += r4[i]
                s5 += r5[i]
                s6 += r6[i]
                s7 += r7[i]
        else:
            for i in range(inner):
                s0 = _step(s0, r0[i], m0, SQUARES)
                s1 = _step(s1, r1[i], m1, SQUARES)
                s2 = _step(s2, r2[i], m2, SQUARES)
                s3 = _step(s3, r3[i], m3, SQUARES)
                s4 = _step(s4, r4[i], m4, SQUARES)
                s5 = _step(s5, r5[i], m5, SQUARES)
                s6 = _step(s6, r6[i], m6, SQUARES)
                s7 = _step(s7, r7[i], m7, SQUARES)
    _store(out, c0, width, s0, s1, s2, s3, s4, s5, s6, s7)


@_serial
def channel_sums(x, g0, g1, mean, mode, out):
    """Channel groups g0 .. g1 - 1 (eight channels each, the last one narrower) of contiguous (N, C, S):
    out[c] = the terms (SUM or SQUARES) summed over (n, s) from out[c] (+0), oneDNN's ncsp order."""
    channels = x.shape[1]
    for g in range(g0, g1):
        c0 = g * GROUP
        _group_sums(x, c0, min(GROUP, channels - c0), mean, mode, out)


@_serial
def _narrow_chunk(rows, spatial, n0, n1, s0, s1, mean, mode, out):
    """One chunk of channels-last rows with at most eight channels: a chain per channel in registers."""
    k0, k1, k2, k3, k4, k5, k6, k7 = _lanes(0, rows.shape[1])
    m0, m1, m2, m3 = mean[k0], mean[k1], mean[k2], mean[k3]
    m4, m5, m6, m7 = mean[k4], mean[k5], mean[k6], mean[k7]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = out[0]  # +0, out is fresh zeros
    for n in range(n0, n1):
        for r in range(n * spatial + s0, n * spatial + s1):
            row = rows[r]
            a0 = _step(a0, row[k0], m0, mode)
            a1 = _step(a1, row[k1], m1, mode)
            a2 = _step(a2, row[k2], m2, mode)
            a3 = _step(a3, row[k3], m3, mode)
            a4 = _step(a4, row[k4], m4, mode)
            a5 = _step(a5, row[k5], m5, mode)
            a6 = _step(a6, row[k6], m6, mode)
            a7 = _step(a7, row[k7], m7, mode)
    _store(out, 0, rows.shape[1], a0, a1, a2, a3, a4, a5, a6, a7)


@_serial
def chunk_sums(rows, spatial, n0, n1, s0, s1, mean, mode, out):
    """One chunk of channels-last rows (n * spatial + s, C), n in [n0, n1), s in [s0, s1): per channel the
    terms summed over n, then s, from out (+0): up to eight channels in registers, more vectorized across
    channels in a row of accumulators."""
    channels = rows.shape[1]
    if channels <= GROUP:
        _narrow_chunk(rows, spatial, n0, n1, s0, s1, mean, mode, out)
        return
    acc = out.copy()
    for n in range(n0, n1):
        for r in range(n * spatial + s0, n * spatial + s1):
            row = rows[r]
            for c in range(channels):
                acc[c] = _step(acc[c], row[c], mean[c], mode)
    out[:] = acc


@_serial
def column_tree_sums(rows, mean, packed, unrolled, mode):
    """Per column of (R, C), Eigen's InnerMostDimPreserver (columns < ``packed``): rows j < ``unrolled`` to
    accumulator j % 4, then ((a0 + a1) + a2) + a3, then the other rows one by one; the other columns
    sum every row one by one (GenericDimReducer). mode SUM or SQUARES."""
    count, channels = rows.shape
    acc = np.zeros((4, channels), rows.dtype)
    for j in range(count):
        if j == unrolled:
            for c in range(packed):
                acc[0, c] = ((acc[0, c] + acc[1, c]) + acc[2, c]) + acc[3, c]
        lane = j % 4 if j < unrolled else 0
        row = rows[j]
        for c in range(packed):
            acc[lane, c] = _step(acc[lane, c], row[c], mean[c], mode)
        for c in range(packed, channels):
            acc[0, c] = _step(acc[0, c], row[c], mean[c], mode)
    if unrolled == count:
        for c in range(packed):
            acc[0, c] = ((acc[0, c] + acc[1, c]) + acc[2, c]) + acc[3, c]
    return acc[0].copy()
