"""numba kernels of two float32 reduction trees, for :mod:`.numpy` (ONNX's reference evaluator) and
:mod:`.onnxruntime`; the modules there document the trees and hold the NumPy code for other dtypes.

Every kernel sums terms over parts of the flat C-ordered storage of the canonical (N, C, S) float32
array: ``x`` itself, or ``(x - m)^2`` (``square``; m the channel's mean for a two-pass variance, 0 for a
sum of squares), each operation rounded to float32. The trees' 8 accumulators (NumPy's pairwise leaves;
Eigen's two 4-float packets) are one 8-float vector in :func:`_lane_sums`, written in LLVM IR: lane j
adds its own values in order, as the scalar code would, with no reassociation and no FMA (numba
contracts nothing without ``fastmath``), only 8 lanes at a time. The rest is plain scalar code; the
per-row helpers are inlined into the row loops (numba calls them otherwise: a call per row of 49 values
cost as much as its sum, and inlined the statistics of 256x512x7x7 take 0.9-1.4 ms instead of 2.0-2.4,
for twice the compilation on first use, 12 s instead of 6).

Parallelism never changes a tree: threads take whole channels, whole subtrees of one pairwise sum, or
(channels-last onnxruntime) the column sums of a range of n, and partial results combine in the tree's
own order.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .._kernels.compiled import _launch

__all__ = ["channel_moments", "channels_last_eigen_moments"]

TREE_NUMPY, TREE_EIGEN = 0, 1
#: arrays below this many values run on the calling thread alone (waking the pool costs more).
PARALLEL_MIN = 1 << 16
#: rows shorter than this are read in memory order (rows of one channel lie C rows apart: read one
#: channel at a time, short rows defeat the prefetchers: measured 1.3-2.6x faster at rows of 49).
ROW_MAJOR_BELOW = 1024
#: channels-last onnxruntime: the column sums of a block of n, about this many values (256 kB), are
#: held until they are added in n order.
BLOCK_VALUES = 1 << 16
#: frames of the explicit pairwise recursion (its depth is log2(n / 128) + 1 at most).
STACK = 64

_parallel = njit(parallel=True, nogil=True, cache=True, error_model="numpy")
_serial = njit(nogil=True, cache=True, error_model="numpy")
_inline = njit(nogil=True, cache=True, error_model="numpy", inline="always")

_I32, _I64 = ir.IntType(32), ir.IntType(64)
_LANES = ir.VectorType(ir.FloatType(), 8)


def _lane_sums_codegen(rows: int):
    """LLVM IR of the lane sums of ``rows`` runs at once (independent accumulators, interleaved)."""

    def codegen(context, builder, signature, args):
        data, *firsts, count, mean, squared = args
        origin = context.make_array(signature.args[0])(context, builder, data).data
        undefined = ir.Constant(_LANES, ir.Undefined)
        means = builder.insert_element(undefined, mean, ir.Constant(_I32, 0))
        means = builder.shuffle_vector(means, undefined, ir.Constant(ir.VectorType(_I32, 8), [0] * 8))

        def terms(first, block):
            at = builder.gep(origin, [builder.add(first, builder.mul(block, ir.Constant(_I64, 8)))])
            values = builder.load(builder.bitcast(at, _LANES.as_pointer()), align=4)
            d = builder.fsub(values, means)
            return builder.select(squared, builder.fmul(d, d), values)

        accs = [cgutils.alloca_once(builder, _LANES) for _ in firsts]
        for acc, first in zip(accs, firsts, strict=True):
            builder.store(terms(first, ir.Constant(_I64, 0)), acc)
        one = ir.Constant(_I64, 1)
        with cgutils.for_range_slice(builder, one, count, one, inc=True) as (block, _):
            for acc, first in zip(accs, firsts, strict=True):
                builder.store(builder.fadd(builder.load(acc), terms(first, block)), acc)
        lanes = []
        for acc in accs:
            total = builder.load(acc)
            lanes += [builder.extract_element(total, ir.Constant(_I32, j)) for j in range(8)]
        return context.make_tuple(builder, signature.return_type, lanes)

    return codegen


@intrinsic
def _lane_sums(typingctx, x, start, blocks, m, square):
    """The 8 lane sums of ``blocks`` >= 1 blocks of 8 terms from x[start]: lane j is term(x[start + j]) +
    term(x[start + 8 + j]) + ..., added in that order (one <8 x float> accumulator)."""
    return types.UniTuple(types.float32, 8)(x, start, blocks, m, square), _lane_sums_codegen(1)


@intrinsic
def _lane_sums2(typingctx, x, start_a, start_b, blocks, m, square):
    """:func:`_lane_sums` of two runs at once (lanes of the run at start_a, then of start_b): two
    independent dependency chains in flight instead of one."""
    signature = types.UniTuple(types.float32, 16)(x, start_a, start_b, blocks, m, square)
    return signature, _lane_sums_codegen(2)


@_inline
def _term(v, m, square):
    if square:
        d = v - m
        return d * d
    return v


@_inline
def _in_a_row(x, start, stop, res, m, square):
    """res + the terms of x[start:stop], one at a time."""
    for i in range(start, stop):
        res += _term(x[i], m, square)
    return res


@_inline
def _leaf2(x, sa, sb, n, m, square):
    """NumPy's pairwise sum of n <= 128 terms (numpy/_core/src/umath/loops_utils.h.src,
    FLOAT_pairwise_sum) at sa and at sb: under 8 in a row from 0; else 8 accumulators (lane j takes
    values j, j + 8, ...) combined ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), then the remainder
    in a row."""
    zero = np.float32(0)
    if n < 8:
        return _in_a_row(x, sa, sa + n, zero, m, square), _in_a_row(x, sb, sb + n, zero, m, square)
    r = _lane_sums2(x, sa, sb, n // 8, m, square)
    a = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    b = ((r[8] + r[9]) + (r[10] + r[11])) + ((r[12] + r[13]) + (r[14] + r[15]))
    tail = n - n % 8
    return _in_a_row(x, sa + tail, sa + n, a, m, square), _in_a_row(x, sb + tail, sb + n, b, m, square)


@_inline
def _pairwise2(x, sa, sb, plan, m, square, values):
    """NumPy's pairwise sums of the terms at sa and at sb (two runs of one length, one tree), following
    ``plan`` (see :func:`pairwise_plan`) with ``values`` (STACK x 2 float32) as the stack of partial sums:
    a leaf pushes its two sums, a join adds the top two pairs."""
    held = 0
    for i in range(plan.shape[0]):
        offset, length = plan[i, 0], plan[i, 1]
        if length < 0:
            held -= 1
            values[held - 1, 0] = values[held - 1, 0] + values[held, 0]
            values[held - 1, 1] = values[held - 1, 1] + values[held, 1]
        else:
            values[held, 0], values[held, 1] = _leaf2(x, sa + offset, sb + offset, length, m, square)
            held += 1
    return values[0, 0], values[0, 1]


@_inline
def _eigen(x, start, n, head, m, square):
    """Eigen's vectorized sum with 4-float SSE packets (Eigen/src/Core/Redux.h, LinearVectorizedTraversal)
    of the terms of x[start:start + n]: from ``start + head`` two packet accumulators p0, p1 over blocks
    of 8, p0 + p1, one more packet if one fits, lanes combined (l0 + l2) + (l1 + l3); then the ``head``
    values and the tail, in a row. Under one packet past the head: all n in a row."""
    rest = n - head
    size = rest - rest % 4
    if size == 0:
        return _in_a_row(x, start + 1, start + n, _term(x[start], m, square), m, square)
    b = start + head
    if size == 4:
        a0, a1 = _term(x[b], m, square), _term(x[b + 1], m, square)
        a2, a3 = _term(x[b + 2], m, square), _term(x[b + 3], m, square)
    else:
        size2 = rest - rest % 8
        p = _lane_sums(x, b, size2 // 8, m, square)
        a0, a1, a2, a3 = p[0] + p[4], p[1] + p[5], p[2] + p[6], p[3] + p[7]
        if size > size2:
            e = b + size2
            a0 += _term(x[e], m, square)
            a1 += _term(x[e + 1], m, square)
            a2 += _term(x[e + 2], m, square)
            a3 += _term(x[e + 3], m, square)
    res = _in_a_row(x, start, b, (a0 + a2) + (a1 + a3), m, square)
    return _in_a_row(x, b + size, start + n, res, m, square)


@_serial
def _channel_sums(x, N, C, S, c0, c1, centers, square, tree, head0, plan, values, totals):
    """totals[c] += each of channel c's N row sums (rows n * C + c of S values) in n order, for the
    channels c0 .. c1 - 1, walking the rows in memory order (n, then c). NumPy rows go two at a time,
    rows n and n + 1 of one channel (one ``plan``); Eigen rows set aside the values before their first
    16-byte boundary, the array starting ``head0`` bytes past one (head0 < 0: no head). ``centers[c]``:
    channel c's m of the terms (see the module docstring)."""
    if tree == TREE_NUMPY:
        for n in range(0, N - 1, 2):
            for c in range(c0, c1):
                a, b = _pairwise2(x, (n * C + c) * S, ((n + 1) * C + c) * S, plan, centers[c], square, values)
                totals[c] += a
                totals[c] += b
        if N % 2:
            for c in range(c0, c1):
                last = ((N - 1) * C + c) * S
                totals[c] += _pairwise2(x, last, last, plan, centers[c], square, values)[0]
        return
    for n in range(N):
        for c in range(c0, c1):
            start = (n * C + c) * S
            head = 0
            if head0 >= 0:
                address = head0 + start * 4
                head = S if address % 4 else min(((16 - address % 16) % 16) // 4, S)
            totals[c] += _eigen(x, start, S, head, centers[c], square)


@_serial
def _divided(total, n, wide):
    """total / n as NumPy (``wide``: in float64, rounded once) or Eigen (in float32) divides."""
    if wide:
        return np.float32(np.float64(total) / np.float64(n))
    return total / np.float32(n)


@_serial
def _range_moments(x, N, C, S, c0, c1, deviation, tree, head0, plan, wide, mean, moment, values, sums):
    """Channels c0 .. c1 - 1: the mean, then the mean of the squares about it (``deviation``, else about
    0), divided as :func:`_divided`; the squares' Eigen sums have no head. ``sums``: (2, C) scratch,
    each channel's running sum and center."""
    totals, centers = sums[0], sums[1]
    totals[c0:c1] = np.float32(0)
    centers[c0:c1] = np.float32(0)
    _channel_sums(x, N, C, S, c0, c1, centers, False, tree, head0, plan, values, totals)
    for c in range(c0, c1):
        mean[c] = _divided(totals[c], N * S, wide)
        totals[c] = np.float32(0)
        if deviation:
            centers[c] = mean[c]
    _channel_sums(x, N, C, S, c0, c1, centers, True, tree, -1, plan, values, totals)
    for c in range(c0, c1):
        moment[c] = _divided(totals[c], N * S, wide)


@_parallel
def _channel_moments(x, N, C, S, deviation, tree, head0, plan, wide, mean, moment, nchunks):
    """:func:`_range_moments` of every channel. Rows under ROW_MAJOR_BELOW values: each thread a
    contiguous range of channels, the rows in memory order (two passes over the range, each streaming);
    longer rows: each thread every nchunks-th channel, one channel at a time (its second pass from
    cache where the channel fits)."""
    for t in prange(nchunks):
        values = np.empty((STACK, 2), np.float32)
        sums = np.empty((2, C), np.float32)
        args = (deviation, tree, head0, plan, wide, mean, moment, values, sums)
        if S < ROW_MAJOR_BELOW:
            _range_moments(x, N, C, S, C * t // nchunks, C * (t + 1) // nchunks, *args)
        else:
            for c in range(t, C, nchunks):
                _range_moments(x, N, C, S, c, c + 1, *args)


@_serial
def _aligned_columns(x, n, S, C, about, square, lanes, sums):
    """sums[c] = the Eigen sum of column (n, c) of the NCHW copy of channels-last x (N, S, C), for columns
    that start at a 16-byte boundary (no head, as every squares' sum): the value at spatial index i goes
    to lane i % 8 (the extra packet, S % 8 >= 4, to lanes 0-3 after p0 + p1) for all channels alike, so
    the lanes are vectorized across channels; the last S % 4 values follow in a row."""
    size = S - S % 4
    size2 = S - S % 8
    for i in range(min(size2, 8) if size2 else 4):
        row = x[(n * S + i) * C : (n * S + i + 1) * C]
        for c in range(C):
            lanes[i, c] = _term(row[c], about[c], square)
    for i in range(8, size2):
        row = x[(n * S + i) * C : (n * S + i + 1) * C]
        acc = lanes[i % 8]
        for c in range(C):
            acc[c] += _term(row[c], about[c], square)
    if size2:
        for k in range(4):
            lanes[k] += lanes[k + 4]
        if size > size2:
            for k in range(4):
                row = x[(n * S + size2 + k) * C : (n * S + size2 + k + 1) * C]
                acc = lanes[k]
                for c in range(C):
                    acc[c] += _term(row[c], about[c], square)
    for c in range(C):
        sums[c] = (lanes[0, c] + lanes[2, c]) + (lanes[1, c] + lanes[3, c])
    for i in range(size, S):
        row = x[(n * S + i) * C : (n * S + i + 1) * C]
        for c in range(C):
            sums[c] += _term(row[c], about[c], square)


@_serial
def _headed_sums(x, n, S, C, lanes, bounds, sums):
    """sums[c] = the Eigen sum of column (n, c) of the NCHW copy of channels-last x (N, S, C), S % 4 != 0
    and S >= 8. The column starts (n * C + c) * S values past the copy's 16-byte aligned start, so its
    head h = -(n * C + c) * S mod 4 differs between channels, and with it where its blocks of 8, its
    extra packet and its tail begin. Vectorized across channels all the same: value i of the blocks
    (lane (i - h) % 8) goes to slot i % 8, of the extra packet (lane (i - h) % 4, the blocks being a
    multiple of 8 long) to slot i % 4 after the slots' halves are added, so p0 + p1 of lane k is slot
    (k + h) % 4, and the lanes' combination (p0 + p2) + (p1 + p3) is (s0 + s2) + (s1 + s3) for every h
    (float addition commutes). Where a value is not the channel's, -0.0 is added (t + -0.0 == t for every
    t, signed zeros included); the head and the tail follow in a row. ``bounds``: (3, C) int scratch."""
    skip = np.float32(-0.0)
    first, stop, tail = bounds[0], bounds[1], bounds[2]
    common = S  # below this every channel's blocks are still running
    for h in range(4):
        common = min(common, S - (S - h) % 8)
    for c in range(C):
        h = -((n * C + c) * S) % 4
        first[c] = h
        stop[c] = S - (S - h) % 8
        tail[c] = S - (S - h) % 4
    lanes[:, :] = skip
    for i in range(S):
        row = x[(n * S + i) * C : (n * S + i + 1) * C]
        acc = lanes[i % 8]
        if 3 <= i < common:
            for c in range(C):
                acc[c] += row[c]
        else:
            for c in range(C):
                acc[c] += row[c] if first[c] <= i < stop[c] else skip
    for k in range(4):
        lanes[k] += lanes[k + 4]
    for i in range(common, S):
        row = x[(n * S + i) * C : (n * S + i + 1) * C]
        acc = lanes[i % 4]
        for c in range(C):
            acc[c] += row[c] if stop[c] <= i < tail[c] else skip
    for c in range(C):
        sums[c] = (lanes[0, c] + lanes[2, c]) + (lanes[1, c] + lanes[3, c])
    for i in range(3):
        row = x[(n * S + i) * C : (n * S + i + 1) * C]
        for c in range(C):
            sums[c] += row[c] if i < first[c] else skip
    for i in range(common, S):
        row = x[(n * S + i) * C : (n * S + i + 1) * C]
        for c in range(C):
            sums[c] += row[c] if i >= tail[c] else skip


@_parallel
def _column_block(x, n0, n1, S, C, about, square, headed, lanes, bounds, sums, nchunks):
    """sums[n - n0] = the Eigen sums of columns (n, 0 .. C - 1) for n0 <= n < n1, each thread a range of
    n (whole rows of memory: threads that split the channels of each row slow each other down here)."""
    for t in prange(nchunks):
        for n in range(n0 + (n1 - n0) * t // nchunks, n0 + (n1 - n0) * (t + 1) // nchunks):
            if headed:
                _headed_sums(x, n, S, C, lanes[t], bounds[t], sums[n - n0])
            else:
                _aligned_columns(x, n, S, C, about, square, lanes[t], sums[n - n0])


@_serial
def _channels_last_eigen(x, N, S, C, deviation, mean, moment, block, nchunks):
    """onnxruntime's moments of channels-last memory x (N, S, C), S % 4 == 0 or S >= 8, as it sums the
    C-contiguous NCHW copy at a 16-byte boundary (:func:`_aligned_columns`, and :func:`_headed_sums` for
    the sums when S % 4 != 0): blocks of ``block`` n summed in parallel, then added to each channel in n
    order."""
    count = np.float32(N * S)
    lanes = np.empty((nchunks, 8, C), np.float32)
    bounds = np.empty((nchunks, 3, C), np.int64)
    sums = np.empty((min(block, N), C), np.float32)
    about = np.zeros(C, np.float32)
    totals = np.zeros(C, np.float32)
    for square in (False, True):
        if square and deviation:
            about[:] = mean
        headed = S % 4 != 0 and not square
        for n0 in range(0, N, block):
            n1 = min(N, n0 + block)
            _column_block(x, n0, n1, S, C, about, square, headed, lanes, bounds, sums, nchunks)
            for n in range(n1 - n0):
                for c in range(C):
                    totals[c] += sums[n, c]
        for c in range(C):
            if square:
                moment[c] = totals[c] / count
            else:
                mean[c] = totals[c] / count
            totals[c] = 0


@_serial
def _column_sums(x, N, C, means, square):
    """Per channel of an (N, C) array, the terms summed over n in a row from 0, on the calling thread
    (see :func:`_pass`)."""
    acc = np.zeros(C, np.float32)
    for n in range(N):
        row = x[n * C : (n + 1) * C]
        if square:
            for c in range(C):
                d = row[c] - means[c]
                acc[c] += d * d
        else:
            for c in range(C):
                acc[c] += row[c]
    return acc


@_parallel
def _pairwise_split(x, m, square, starts, plans, plan_starts, nchunks):
    """One pairwise sum over all of x from its 2^k subtrees at depth k (``starts``; each with its own
    plan, ``plans[plan_starts[j]:plan_starts[j + 1]]``), summed in parallel (sibling subtrees of one
    length together) and combined level by level, as the recursion combines them."""
    pieces = starts.size
    parts = np.empty(pieces, np.float32)
    for t in prange(nchunks):
        values = np.empty((STACK, 2), np.float32)
        for q in range(t, (pieces + 1) // 2, nchunks):
            j = 2 * q
            plan = plans[plan_starts[j] : plan_starts[j + 1]]
            if j + 1 < pieces and plan_starts[j + 2] - plan_starts[j + 1] == plan.shape[0]:
                if (plans[plan_starts[j + 1] : plan_starts[j + 2]] == plan).all():
                    parts[j], parts[j + 1] = _pairwise2(x, starts[j], starts[j + 1], plan, m, square, values)
                    continue
            parts[j] = _pairwise2(x, starts[j], starts[j], plan, m, square, values)[0]
            if j + 1 < pieces:
                other = plans[plan_starts[j + 1] : plan_starts[j + 2]]
                parts[j + 1] = _pairwise2(x, starts[j + 1], starts[j + 1], other, m, square, values)[0]
    width = pieces
    while width > 1:
        width //= 2
        for j in range(width):
            parts[j] = parts[2 * j] + parts[2 * j + 1]
    return parts[0]


@_serial
def pairwise_plan(n):
    """NumPy's pairwise recursion over n values, post-order, as rows (offset, length) of leaves (runs of
    at most 128 values) and (0, -1) joins (add the last two partial sums): runs over 128 split at n/2
    rounded down to a multiple of 8, left half first."""
    plan = np.empty((2 * (n // 32) + 4, 2), np.int64)  # leaves hold at least 57 values (n > 128)
    stack = np.empty((STACK, 3), np.int64)  # (offset, length, children pushed)
    stack[0, 0], stack[0, 1], stack[0, 2] = 0, n, 0
    top, ops = 0, 0
    while top >= 0:
        offset, length, pushed = stack[top, 0], stack[top, 1], stack[top, 2]
        half = length // 2 - (length // 2) % 8
        if length <= 128 or pushed == 2:
            plan[ops, 0], plan[ops, 1] = (offset, length) if length <= 128 else (0, -1)
            ops += 1
            top -= 1
        else:
            stack[top, 2] = pushed + 1
            top += 1
            stack[top, 0] = offset if pushed == 0 else offset + half
            stack[top, 1] = half if pushed == 0 else length - half
            stack[top, 2] = 0
    return plan[:ops]


def _chunks(work: int, values: int) -> int:
    import numba

    return 1 if values < PARALLEL_MIN else max(1, min(numba.get_num_threads(), work))


def _subtrees(n: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The nodes at ``depth`` of NumPy's pairwise recursion over n values."""
    nodes = [(0, n)]
    for _ in range(depth):
        split = []
        for start, length in nodes:
            half = length // 2 - (length // 2) % 8
            split += [(start, half), (start + half, length - half)]
        nodes = split
    return np.array([s for s, _ in nodes], np.int64), np.array([k for _, k in nodes], np.int64)


def _divide(sums: np.ndarray, n: int, tree: str) -> np.ndarray:
    """NumPy divides by an intp (in float64, rounded once); Eigen by float32(n), in float32."""
    if tree == "numpy":
        return (sums.astype(np.float64) / n).astype(np.float32)
    return sums / np.float32(n)


def channel_moments(
    x3: np.ndarray, deviation: bool, tree: str, head0: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per channel of the C-contiguous float32 (N, C, S) ``x3``: the mean, and the mean of the squares
    about it (``deviation``) or of x^2, each a sum in the tree ``"numpy"`` (NumPy's add.reduce over axes
    (0, 2) of x3) or ``"eigen"`` (onnxruntime's per-(n, c) Eigen sums; ``head0``: the data address mod
    16, for the sums of x only) divided by the count as that library divides."""
    N, C, S = x3.shape
    x = x3.reshape(-1)
    one_run = tree == "numpy" and C == 1  # NumPy's iterator coalesces the whole array into one run
    if S > 1 and not one_run:  # threads take channels (see _channel_moments)
        mean, moment = np.empty(C, np.float32), np.empty(C, np.float32)
        tree_id, plan = (TREE_NUMPY, pairwise_plan(S)) if tree == "numpy" else (TREE_EIGEN, pairwise_plan(0))
        args = (x, N, C, S, deviation, tree_id, head0, plan, tree == "numpy", mean, moment)
        _launch(_channel_moments, *args, _chunks(C, x.size))
        return mean, moment
    mean = _divide(_pass(x, N, C, np.zeros(C, np.float32), False, one_run), N * S, tree)
    about = mean if deviation else np.zeros(C, np.float32)
    return mean, _divide(_pass(x, N, C, about, True, one_run), N * S, tree)


def channels_last_eigen_moments(x3: np.ndarray, batch: int, deviation: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`channel_moments` of the Eigen tree for the NCHW copy of channels-last float32 memory: x3 is
    (batch * S, C, 1), batch the input's first axis, S % 4 == 0 or S >= 8; no copy is made."""
    rows, C, _ = x3.shape
    mean, moment = np.empty(C, np.float32), np.empty(C, np.float32)
    chunks = _chunks(batch, x3.size)
    block = max(chunks, BLOCK_VALUES // C)
    args = (x3.reshape(-1), batch, rows // batch, C, deviation, mean, moment, block)
    _launch(_channels_last_eigen, *args, chunks)
    return mean, moment


def _pass(x: np.ndarray, N: int, C: int, means: np.ndarray, square: bool, one_run: bool) -> np.ndarray:
    """One pass over one run of values (NumPy, C == 1) or over (N, C) values (S == 1)."""
    if not one_run:  # NumPy: an elementwise add along C per n; Eigen: one-value columns
        # one thread: each channel's sum is one chain down the rows, and two threads that each stream
        # their share of every row measured 0.5-0.8x as fast as one
        return _column_sums(x, N, C, means, square)
    threads, depth = _chunks(1 << 30, x.size), 0
    while threads > 1 and (1 << depth) < 2 * threads and x.size >= 512 << (depth + 1):
        depth += 1  # two subtrees per thread, every node above them longer than 128
    starts, lengths = _subtrees(x.size, depth)
    plans = [pairwise_plan(int(length)) for length in lengths]
    plan_starts = np.cumsum([0] + [len(plan) for plan in plans]).astype(np.int64)
    args = (x, means[0], square, starts, np.concatenate(plans), plan_starts)
    return np.array([_launch(_pairwise_split, *args, max(1, starts.size // 2))], np.float32)
