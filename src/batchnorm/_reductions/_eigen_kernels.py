"""Compiled (numba) kernels of :mod:`batchnorm._reductions.eigen`: Eigen's Sum trees, operation by operation.

Imported lazily by :mod:`.eigen`. Every sum runs in the array's dtype (float32 or float64) with one
accumulator per Eigen accumulator: packet lanes are explicit arrays of ``lanes`` values added lane by
lane, so nothing is reassociated (no ``fastmath``). A sum adds up v (the mean's sum) or, for the
variance, (v - m) * (v - m), TensorFlow's SquaredDifference rounded per operation; the hot loops are
written once per term so that no branch sits in them.

The layouts (see :mod:`.eigen` for when each applies):

- planes (A, C, B), reduced over A and B: one scalar accumulator per channel, ``for b: for a``
  (Eigen's GenericDimReducer); eight channels at a time so that their chains interleave, read through
  a small tile copied from contiguous rows.
- rows (R, C), reduced over R: channels in whole packets take four packet accumulators that the rows
  visit in turn (row j to accumulator j % 4) when R >= 16, summed ((a0 + a1) + a2) + a3, the last
  R % 4 rows then added to it (InnerMostDimPreserver); other channels sum the rows one after another.
- inner (C, B), reduced over B: the pairwise tree of :func:`tree_sum` per channel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

IDENTITY, SQUARED_DIFFERENCE = 0, 1

_serial = njit(nogil=True, cache=True, error_model="numpy")
_parallel = njit(parallel=True, nogil=True, cache=True, error_model="numpy")


@_serial
def _term(v, m, mode):
    if mode == IDENTITY:
        return v
    d = v - m
    return d * d


@_serial
def _horizontal_sum(packet):
    """Eigen's predux: add the upper half of the packet to the lower half until one lane is left."""
    p = packet.copy()
    width = p.size
    while width > 1:
        width //= 2
        for lane in range(width):
            p[lane] = p[lane] + p[lane + width]
    return p[0]


@_serial
def _leaf_sum(x, first, count, lanes, m, mode):
    """Eigen's InnerMostDimReducer (vectorized, no tree) over x[first:first + count]."""
    acc = np.zeros((4, lanes), x.dtype)
    scalar = acc[0, 0]  # Eigen's scalar accumulator, a zero of x's dtype
    start = 0
    if count >= 4 * lanes:
        stop4 = count // (4 * lanes) * (4 * lanes)
        for j in range(0, stop4, 4 * lanes):
            for k in range(4):
                base = first + j + k * lanes
                for lane in range(lanes):
                    acc[k, lane] += _term(x[base + lane], m, mode)
        for k in range(1, 4):
            for lane in range(lanes):
                acc[0, lane] += acc[k, lane]
        start = stop4
    if start <= count - lanes:
        stop = count // lanes * lanes
        for j in range(start, stop, lanes):
            for lane in range(lanes):
                acc[0, lane] += _term(x[first + j + lane], m, mode)
        start = stop
    for j in range(start, count):
        scalar += _term(x[first + j], m, mode)
    return scalar + _horizontal_sum(acc[0])


@_serial
def _split(first, count, lanes):
    """Where Eigen's tree splits x[first:first + count]: the first packet boundary (counted from x[0])
    at or after the middle."""
    return lanes * -(-(first + -(-count // 2)) // lanes)


@_serial
def tree_sum(x, first, count, lanes, leaf, m, mode):
    """Eigen's tree InnerMostDimReducer over x[first:first + count] (flat x): a leaf sum up to
    ``lanes * leaf`` values, else left + right split at :func:`_split` (Eigen's 0 + left changes
    nothing: a leaf's sum is never -0). Iterative (numba's cache does not reload recursive functions)."""
    limit = lanes * leaf
    if count <= limit:
        return _leaf_sum(x, first, count, lanes, m, mode)
    starts = np.empty(64, np.int64)  # the path from the root to the node being summed
    sizes = np.empty(64, np.int64)
    right_pending = np.zeros(64, np.bool_)
    lefts = np.zeros(64, x.dtype)
    depth = 0
    starts[0], sizes[0] = first, count
    value = lefts[0]
    returning = False  # value holds the sum of the child just finished
    while True:
        f, c = starts[depth], sizes[depth]
        if not returning:
            if c <= limit:
                value = _leaf_sum(x, f, c, lanes, m, mode)
                returning = True
                depth -= 1
                if depth < 0:
                    return value
                continue
            right_pending[depth] = False
            depth += 1
            starts[depth], sizes[depth] = f, _split(f, c, lanes) - f
        elif not right_pending[depth]:
            lefts[depth] = value
            right_pending[depth] = True
            returning = False
            split = _split(f, c, lanes)
            depth += 1
            starts[depth], sizes[depth] = split, f + c - split
        else:
            value = lefts[depth] + value
            depth -= 1
            if depth < 0:
                return value


@_serial
def full_sum(x, count, lanes, leaf, threads, m, mode):
    """Eigen's FullReducer on a thread pool: ``threads`` shards of count // threads values (as many as
    fit), the remainder's sum first, then each shard's added in order."""
    if threads <= 1:
        return tree_sum(x, 0, count, lanes, leaf, m, mode)
    block = count // threads
    blocks = count // block if block > 0 else 0
    total = np.zeros(1, x.dtype)[0]
    if blocks * block < count:
        total = tree_sum(x, blocks * block, count - blocks * block, lanes, leaf, m, mode)
    for i in range(blocks):
        total = total + tree_sum(x, i * block, block, lanes, leaf, m, mode)
    return total


@_serial
def _rows_sums(x, c0, c1, packets, out):
    """Sums over the rows of x (R, C) for channels c0 <= c < c1 (see the module docstring)."""
    rows, width = x.shape[0], c1 - c0
    a0, a1, a2, a3 = (
        np.zeros(width, x.dtype),
        np.zeros(width, x.dtype),
        np.zeros(width, x.dtype),
        np.zeros(width, x.dtype),
    )
    start = 0
    if packets and rows >= 16:
        start = rows // 4 * 4
        for j in range(0, start, 4):
            r0, r1, r2, r3 = x[j, c0:c1], x[j + 1, c0:c1], x[j + 2, c0:c1], x[j + 3, c0:c1]
            for c in range(width):
                a0[c] += r0[c]
                a1[c] += r1[c]
                a2[c] += r2[c]
                a3[c] += r3[c]
        for c in range(width):
            a0[c] = ((a0[c] + a1[c]) + a2[c]) + a3[c]
    for j in range(start, rows):
        r0 = x[j, c0:c1]
        for c in range(width):
            a0[c] += r0[c]
    out[c0:c1] = a0


@_serial
def _rows_squared_differences(x, c0, c1, packets, means, out):
    """As :func:`_rows_sums` over (x - mean) * (x - mean)."""
    rows, width = x.shape[0], c1 - c0
    m = means[c0:c1]
    a0, a1, a2, a3 = (
        np.zeros(width, x.dtype),
        np.zeros(width, x.dtype),
        np.zeros(width, x.dtype),
        np.zeros(width, x.dtype),
    )
    start = 0
    if packets and rows >= 16:
        start = rows // 4 * 4
        for j in range(0, start, 4):
            r0, r1, r2, r3 = x[j, c0:c1], x[j + 1, c0:c1], x[j + 2, c0:c1], x[j + 3, c0:c1]
            for c in range(width):
                d0 = r0[c] - m[c]
                d1 = r1[c] - m[c]
                d2 = r2[c] - m[c]
                d3 = r3[c] - m[c]
                a0[c] += d0 * d0
                a1[c] += d1 * d1
                a2[c] += d2 * d2
                a3[c] += d3 * d3
        for c in range(width):
            a0[c] = ((a0[c] + a1[c]) + a2[c]) + a3[c]
    for j in range(start, rows):
        r0 = x[j, c0:c1]
        for c in range(width):
            d0 = r0[c] - m[c]
            a0[c] += d0 * d0
    out[c0:c1] = a0


@_parallel
def rows_moments(x, bounds, packets, count, two_pass):
    """Per channel of x (R, C): the sum, the mean sum / count and, when ``two_pass``, the sum of
    (x - mean)^2; task t covers channels bounds[t] <= c < bounds[t + 1], in whole packets where
    packets[t]."""
    C = x.shape[1]
    sums, means, second = np.zeros(C, x.dtype), np.zeros(C, x.dtype), np.zeros(C, x.dtype)
    for t in prange(bounds.size - 1):
        c0, c1 = bounds[t], bounds[t + 1]
        _rows_sums(x, c0, c1, packets[t], sums)
        for c in range(c0, c1):
            means[c] = sums[c] / count
        if two_pass:
            _rows_squared_differences(x, c0, c1, packets[t], means, second)
    return sums, means, second


#: Values per row of a planes tile (eight channels x A rows x TILE values, each row padded by PAD so
#: that the rows of a tile fall into different cache sets).
TILE, PAD = 256, 16


@_serial
def _load_tile(x, c0, b0, nb, tile):
    """tile[a, g, :nb] = x[a, c0 + g, b0:b0 + nb]: contiguous copies, so that the sums below read
    from cache without the set conflicts of rows a power of two apart."""
    for a in range(x.shape[0]):
        for g in range(8):
            src, dst = x[a, c0 + g, b0 : b0 + nb], tile[a, g]
            for j in range(nb):
                dst[j] = src[j]


@_serial
def _planes_sums8(x, c0, tile, out):
    """Eight channels of x (A, C, B) at once, one scalar chain each: for b: for a."""
    A, _, B = x.shape
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.zeros(1, x.dtype)[0]
    for b0 in range(0, B, TILE):
        nb = min(TILE, B - b0)
        _load_tile(x, c0, b0, nb, tile)
        for j in range(nb):
            for a in range(A):
                r = tile[a]
                s0 += r[0, j]
                s1 += r[1, j]
                s2 += r[2, j]
                s3 += r[3, j]
                s4 += r[4, j]
                s5 += r[5, j]
                s6 += r[6, j]
                s7 += r[7, j]
    out[c0], out[c0 + 1], out[c0 + 2], out[c0 + 3] = s0, s1, s2, s3
    out[c0 + 4], out[c0 + 5], out[c0 + 6], out[c0 + 7] = s4, s5, s6, s7


@_serial
def _planes_squared_differences8(x, c0, means, tile, out):
    """As :func:`_planes_sums8` over (x - mean) * (x - mean)."""
    A, _, B = x.shape
    m0, m1, m2, m3 = means[c0], means[c0 + 1], means[c0 + 2], means[c0 + 3]
    m4, m5, m6, m7 = means[c0 + 4], means[c0 + 5], means[c0 + 6], means[c0 + 7]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.zeros(1, x.dtype)[0]
    for b0 in range(0, B, TILE):
        nb = min(TILE, B - b0)
        _load_tile(x, c0, b0, nb, tile)
        for j in range(nb):
            for a in range(A):
                r = tile[a]
                d0 = r[0, j] - m0
                d1 = r[1, j] - m1
                d2 = r[2, j] - m2
                d3 = r[3, j] - m3
                d4 = r[4, j] - m4
                d5 = r[5, j] - m5
                d6 = r[6, j] - m6
                d7 = r[7, j] - m7
                s0 += d0 * d0
                s1 += d1 * d1
                s2 += d2 * d2
                s3 += d3 * d3
                s4 += d4 * d4
                s5 += d5 * d5
                s6 += d6 * d6
                s7 += d7 * d7
    out[c0], out[c0 + 1], out[c0 + 2], out[c0 + 3] = s0, s1, s2, s3
    out[c0 + 4], out[c0 + 5], out[c0 + 6], out[c0 + 7] = s4, s5, s6, s7


@_serial
def _planes_few(x, c0, c1, means, mode, out):
    """Fewer than eight channels of x (A, C, B), one scalar chain each: for b: for a."""
    A, _, B = x.shape
    acc = np.zeros(c1 - c0, x.dtype)
    for b in range(B):
        for a in range(A):
            for c in range(c0, c1):
                acc[c - c0] += _term(x[a, c, b], means[c], mode)
    out[c0:c1] = acc


@_parallel
def planes_moments(x, bounds, count, two_pass):
    """As :func:`rows_moments` for x (A, C, B) reduced over A and B, channels in groups of eight."""
    C = x.shape[1]
    sums, means, second = np.zeros(C, x.dtype), np.zeros(C, x.dtype), np.zeros(C, x.dtype)
    for t in prange(bounds.size - 1):
        c0, c1 = bounds[t], bounds[t + 1]
        tile = np.empty((x.shape[0], 8, TILE + PAD), x.dtype)
        while c1 - c0 >= 8:
            _planes_sums8(x, c0, tile, sums)
            for c in range(c0, c0 + 8):
                means[c] = sums[c] / count
            if two_pass:
                _planes_squared_differences8(x, c0, means, tile, second)
            c0 += 8
        if c0 < c1:
            _planes_few(x, c0, c1, means, IDENTITY, sums)
            for c in range(c0, c1):
                means[c] = sums[c] / count
            if two_pass:
                _planes_few(x, c0, c1, means, SQUARED_DIFFERENCE, second)
    return sums, means, second


@_parallel
def inner_moments(x, lanes, leaf, count, two_pass):
    """As :func:`rows_moments` for x (C, B) reduced over B: a tree per channel, its first value at c * B
    in the flat array (the tree's packet boundaries count from the array's start)."""
    C, B = x.shape
    flat = x.reshape(C * B)
    sums, means, second = np.zeros(C, x.dtype), np.zeros(C, x.dtype), np.zeros(C, x.dtype)
    for c in prange(C):
        sums[c] = tree_sum(flat, c * B, B, lanes, leaf, sums[c], IDENTITY)
        means[c] = sums[c] / count
        if two_pass:
            second[c] = tree_sum(flat, c * B, B, lanes, leaf, means[c], SQUARED_DIFFERENCE)
    return sums, means, second
