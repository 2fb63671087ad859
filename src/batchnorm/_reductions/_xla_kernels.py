"""Compiled (numba) kernels of :mod:`batchnorm._reductions.xla`: YNNPACK's float32 sums and XLA's loops.

Imported lazily by :mod:`.xla`. Every operation is a float32 operation in the order the library runs it;
SIMD lanes are independent accumulators (nothing is reassociated, no ``fastmath``): the hot step, four
rows of 16 lanes into accumulator 0 (:func:`_add_four`), is written as LLVM ``<16 x float>`` operations,
lane-wise IEEE float32 like the scalar code, so it vectorizes whatever numba's optimizer makes of loops.
A sum adds up terms: the values v themselves, or (v - m) * (v - m) with m the channel's mean (XLA fuses
that producer into the reduction) where ``means`` is an array, each operation rounded. Where
``out_squares`` is an array, the same pass also sums fl32(v * v) by the same tree (Flax's separately
computed squares, whose reduce has the same shape as the mean's), so one read of the input serves both.

``means`` and ``out_squares`` are None or arrays, and numba compiles one specialization per combination
(the choice is made when typing: :func:`_add_four`, :func:`_lane_mean`, :func:`_scratch_if`), so the
hot loops carry no runtime choice of the term.

- :func:`k1_groups`: YNNPACK's ``sum_float_k1`` (google/XNNPACK ynnpack/kernels/reduce/sum.h): a
  contiguous run of k values into 16 lanes (lane l takes values l, l + 16, ...). Blocks of 64 values form
  ``local = ((v[0:16] + v[16:32]) + v[32:48]) + v[48:64]`` (a short last block padded with zeros), added
  to accumulator 0; accumulator 0 goes into accumulator 1 after every block (four blocks at a time while
  256 or more values remain), accumulator 1 into accumulator 2 by Kahan summation every 1024 values and
  at the end, and the row's sum is the halving horizontal sum of accumulator 2 (lanes 0-7 + 8-15, ...).
  A tile's sum is added to the output slot, rows of a tile one after another.
- :func:`kn_groups`: ``sum_float_kn``: rows of n contiguous channels, one lane per channel: groups of
  four rows ``((0 + r0) + r1) + r2) + r3`` into accumulator 0, accumulator 0 into 1 every 16 rows, 1 into
  2 by Kahan summation every 256 rows and at the end; output slot + accumulator 2 (k <= 4 rows: the
  slot + the one group). Channels are independent lanes, so any block of channels runs the same tree.
- :func:`sequential`: XLA's own loop: 0 + v0 + v1 + ... along the last axis, or fl32(v * v + acc) when
  LLVM contracts a fused square into a fused multiply-add (:func:`fma32`).

Both YNNPACK kernels run every group of tiles (tiles summed into one output slot, in order) as its own
job, the jobs in ``chunks`` parallel chunks (1: the calling thread alone): distinct groups write distinct
slots, so the jobs are independent.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

LANES = 16
BLOCK = 4 * LANES  # sum_float_k1's block of values

_serial = njit(nogil=True, cache=True, error_model="numpy")
_parallel = njit(parallel=True, nogil=True, cache=True, error_model="numpy")


def threads() -> int:
    """numba's thread count for the calling thread."""
    return int(numba.get_num_threads())


# -- specializations: None or an array, decided when numba compiles --------------------------------------


@_serial
def _term(v, m, means):
    """v, or (v - m)^2 where ``means`` is an array (m: the channel's mean)."""
    if means is None:
        return v
    d = v - m
    return d * d


@_serial
def _mean(means, j):
    if means is None:
        return np.float32(0.0)
    return means[j]


def _means_from(means, first, width):
    """means[first:first + width], or None where ``means`` is None."""


def _scratch_if(out_squares, width):
    """Accumulators 0, 1, 2 and the Kahan error of ``width`` lanes, or None where ``out_squares`` is."""


# numba types both branches of ``array is None`` (only a None argument's branch is pruned), so a function
# returning None or an array would type as Optional and keep the test in the loops: chosen when typing.


@overload(_means_from)
def _means_from_typed(means, first, width):
    if isinstance(means, types.NoneType):
        return lambda means, first, width: None
    return lambda means, first, width: means[first : first + width]


@overload(_scratch_if)
def _scratch_if_typed(out_squares, width):
    if isinstance(out_squares, types.NoneType):
        return lambda out_squares, width: None
    return lambda out_squares, width: np.zeros((4, width), dtype=np.float32)


_VECTOR = ir.VectorType(ir.FloatType(), LANES)


def _add_four_codegen(mean_kind: str, with_squares: bool):
    def codegen(context, builder, signature, args):
        values, first, stride, mean, at, acc, squares = args
        data = context.make_array(signature.args[0])(context, builder, values).data

        def vector(pointer, index):
            return builder.bitcast(builder.gep(pointer, [index]), _VECTOR.as_pointer())

        if mean_kind == "scalar":  # one channel's mean in every lane
            means = _splat(builder, mean)
        elif mean_kind == "lanes":  # a mean per lane
            means_data = context.make_array(signature.args[3])(context, builder, mean).data
            means = builder.load(vector(means_data, at), align=4)
        terms = []
        for q in range(4):
            index = builder.add(first, builder.mul(stride, ir.Constant(stride.type, q)))
            t = builder.load(vector(data, index), align=4)
            if mean_kind != "none":
                d = builder.fsub(t, means)
                t = builder.fmul(d, d)
            terms.append(t)
        targets = [(acc, signature.args[5], terms)]
        if with_squares:
            targets.append((squares, signature.args[6], [builder.fmul(t, t) for t in terms]))
        for array, array_type, parts in targets:
            local = ir.Constant(_VECTOR, None)  # +0 in every lane
            for t in parts:
                local = builder.fadd(local, t)
            target = vector(context.make_array(array_type)(context, builder, array).data, at)
            builder.store(builder.fadd(builder.load(target, align=4), local), target, align=4)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _add_four(typingctx, values, first, stride, mean, at, acc, squares):
    """acc.flat[at:at + 16] += (((0 + t(v0)) + t(v1)) + t(v2)) + t(v3) in 16 float32 lanes, v_q the 16
    values from values.flat[first + q * stride]; t(v) is v (``mean`` None) or (v - m)^2 with m the float
    ``mean`` or the lanes' means mean.flat[at:at + 16]. ``squares`` (None or an array like ``acc``):
    also squares.flat[at:at + 16] += the same tree of t(v_q)^2. One LLVM vector operation per step,
    lane-wise IEEE float32 (C-contiguous float32 arrays; indices unchecked)."""
    for array in (values, acc) + ((squares,) if isinstance(squares, types.Array) else ()):
        if not (isinstance(array, types.Array) and array.dtype == types.float32 and array.layout == "C"):
            return None
    mean_kind = (
        "none" if isinstance(mean, types.NoneType) else "scalar" if isinstance(mean, types.Float) else "lanes"
    )
    signature = types.void(values, first, stride, mean, at, acc, squares)
    return signature, _add_four_codegen(mean_kind, isinstance(squares, types.Array))


def _lane_mean(means, j):
    """means[j] where the term is centered (a float for :func:`_add_four`), else None."""


@overload(_lane_mean)
def _lane_mean_typed(means, j):
    if isinstance(means, types.NoneType):
        return lambda means, j: None
    return lambda means, j: means[j]


# -- the accumulator tree shared by both kernels ---------------------------------------------------------


@_serial
def _four(t0, t1, t2, t3):
    """(((0 + t0) + t1) + t2) + t3: a lane's local sum of four terms."""
    local = np.float32(0.0) + t0
    local = local + t1
    local = local + t2
    return local + t3


@_serial
def _kahan(acc):
    """acc[2] += acc[1] with Kahan's compensation acc[3], lane by lane (a non-finite error is dropped)."""
    for lane in range(acc.shape[1]):
        y = acc[1, lane] - acc[3, lane]
        t = acc[2, lane] + y
        e = (t - acc[2, lane]) - y
        acc[3, lane] = e if np.isfinite(e) else np.float32(0.0)
        acc[2, lane] = t
        acc[1, lane] = np.float32(0.0)


@_serial
def _flush(clock, acc):
    """The tree of accumulators at ``clock`` (0: the final flush): 0 into 1 every 16, 1 into 2 every 256."""
    if clock % 16 == 0:
        for lane in range(acc.shape[1]):
            acc[1, lane] = acc[1, lane] + acc[0, lane]
            acc[0, lane] = np.float32(0.0)
        if clock % 256 == 0:
            _kahan(acc)


@_serial
def _flush_both(clock, acc, squares):
    _flush(clock, acc)
    if squares is not None:
        _flush(clock, squares)


# -- sum_float_k1 ----------------------------------------------------------------------------------------


@_serial
def _k1_short_block(b, m, means, acc, squares):
    """The last block of fewer than 64 values, padded with zeros."""
    count = b.shape[0]
    for lane in range(LANES):
        local = np.float32(0.0)
        local_squares = np.float32(0.0)
        for q in range(4):
            i = q * LANES + lane
            t = _term(b[i], m, means) if i < count else np.float32(0.0)
            local = local + t
            local_squares = local_squares + t * t
        acc[0, lane] = acc[0, lane] + local
        if squares is not None:
            squares[0, lane] = squares[0, lane] + local_squares


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _halve(acc, row):
    """The halving horizontal sum of acc[row]: lanes 0-7 + 8-15, then 0-3 + 4-7, ..."""
    half = LANES
    while half > 1:
        half //= 2
        for lane in range(half):
            acc[row, lane] = acc[row, lane] + acc[row, lane + half]
    return acc[row, 0]


@_serial
def _halving_sum(acc):
    """The horizontal sum of accumulator 2: 0 + lane, then halved."""
    for lane in range(LANES):
        acc[2, lane] = np.float32(0.0) + acc[2, lane]
    return _halve(acc, 2)


@_serial
def _halving_sum_if(squares):
    if squares is None:
        return np.float32(0.0)
    return _halving_sum(squares)


@_serial
def _zero(acc):
    if acc is not None:
        acc[:, :] = np.float32(0.0)


@_serial
def k1_row(v, j, means, acc, squares):
    """(sum, sum of squares) of the terms of the contiguous row ``v`` (channel j) as ``sum_float_k1``
    forms it, in the (4, 16) scratch ``acc`` (and ``squares``, or None: the second sum is then 0)."""
    m = _mean(means, j)
    lane_mean = _lane_mean(means, j)
    _zero(acc)
    _zero(squares)
    k = v.shape[0]
    i = 0
    clock = 0
    while k - i >= 4 * BLOCK:
        for _ in range(4):
            _add_four(v, i, LANES, lane_mean, 0, acc, squares)
            i += BLOCK
        clock += 64
        _flush_both(clock, acc, squares)
    while k - i >= BLOCK:
        _add_four(v, i, LANES, lane_mean, 0, acc, squares)
        i += BLOCK
        clock += 16
        _flush_both(clock, acc, squares)
    if k - i > 0:
        _k1_short_block(v[i:], m, means, acc, squares)
    _flush_both(0, acc, squares)
    return _halving_sum(acc), _halving_sum_if(squares)


def _short_row_codegen(centered: bool, with_squares: bool):
    def codegen(context, builder, signature, args):
        values, first, count, mean, _ = args
        data = context.make_array(signature.args[0])(context, builder, values).data
        i32, i64 = ir.IntType(32), ir.IntType(64)
        zero = ir.Constant(_VECTOR, None)  # +0 in every lane
        load_type = ir.FunctionType(
            _VECTOR, [_VECTOR.as_pointer(), i32, ir.VectorType(ir.IntType(1), LANES), _VECTOR]
        )
        masked_load = cgutils.get_or_insert_function(
            builder.module, load_type, f"llvm.masked.load.v{LANES}f32.p0"
        )
        positions = ir.Constant(ir.VectorType(i64, LANES), list(range(LANES)))
        first, count = _wide(builder, first), _splat(builder, _wide(builder, count))
        terms = []
        for q in range(4):
            index = ir.Constant(i64, q * LANES)
            inside = builder.icmp_signed("<", builder.add(positions, _splat(builder, index)), count)
            pointer = builder.bitcast(builder.gep(data, [builder.add(first, index)]), _VECTOR.as_pointer())
            t = builder.call(masked_load, [pointer, ir.Constant(i32, 4), inside, zero])
            if centered:
                d = builder.fsub(t, _splat(builder, mean))
                t = builder.select(inside, builder.fmul(d, d), zero)
            terms.append(t)
        totals = []
        for parts in [terms] + ([[builder.fmul(t, t) for t in terms]] if with_squares else []):
            local = zero
            for t in parts:
                local = builder.fadd(local, t)
            width = LANES
            while width > 1:
                width //= 2
                halves = [
                    ir.Constant(ir.VectorType(i32, width), list(range(h, h + width))) for h in (0, width)
                ]
                low, high = (builder.shuffle_vector(local, local, half) for half in halves)
                local = builder.fadd(low, high)
            totals.append(builder.extract_element(local, ir.Constant(i32, 0)))
        totals += [] if with_squares else [ir.Constant(ir.FloatType(), 0.0)]
        return context.make_tuple(builder, signature.return_type, totals)

    return codegen


def _wide(builder, integer):
    """A signed integer as i64."""
    return integer if integer.type.width == 64 else builder.sext(integer, ir.IntType(64))


def _splat(builder, scalar):
    """``scalar`` in every one of LANES lanes."""
    undefined = ir.Constant(ir.VectorType(scalar.type, LANES), ir.Undefined)
    vector = builder.insert_element(undefined, scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(
        vector, undefined, ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    )


@intrinsic
def _short_row(typingctx, values, first, count, mean, squares):
    """:func:`k1_row` of the ``count`` < 64 values from values.flat[first], in registers: the one block
    ``local = (((0 + t(v0)) + t(v1)) + t(v2)) + t(v3)`` over four masked 16-value loads (lanes past the
    row hold the term +0, as the zero padding's term is), then its halving sum (lanes 0-7 + 8-15, ...);
    t(v) is v (``mean`` None) or (v - m)^2 with the float ``mean`` m. Returns (sum, sum of squares: the
    same tree of t(v)^2 where ``squares`` is an array, else 0). The rest of k1_row's tree adds +0 to the
    lane sums or subtracts it, which gives them back exactly (a lane sum that starts at 0 + t is never
    -0), and its Kahan error is dropped; reads nothing past the row."""
    if not (isinstance(values, types.Array) and values.dtype == types.float32 and values.layout == "C"):
        return None
    centered = isinstance(mean, types.Float)
    signature = types.UniTuple(types.float32, 2)(values, first, count, mean, squares)
    return signature, _short_row_codegen(centered, isinstance(squares, types.Array))


@_serial
def _add_if(out, index, value):
    if out is not None:
        out[index] = out[index] + value


@_parallel
def k1_groups(
    x,
    group_start,
    tile_offset,
    tile_k1,
    tile_k2,
    stride_k2,
    stride_n,
    n,
    stride_out,
    slot,
    means,
    out,
    out_squares,
    chunks,
):
    """Per group g and channel j: out[slot[g] + j * stride_out] += each row sum of the group's tiles, in
    order (and out_squares likewise with the sums of squares); the groups * n jobs in ``chunks`` parallel
    chunks.

    Tile t covers rows ``tile_offset[t] + r * stride_k2 + j * stride_n`` (r < tile_k2[t]) of tile_k1[t]
    contiguous values each."""
    jobs = (group_start.shape[0] - 1) * n
    for chunk in prange(chunks):
        acc = np.zeros((4, LANES), dtype=np.float32)
        squares = _scratch_if(out_squares, LANES)
        for job in range(jobs * chunk // chunks, jobs * (chunk + 1) // chunks):
            g = job // n
            j = job % n
            index = slot[g] + j * stride_out
            for t in range(group_start[g], group_start[g + 1]):
                k1 = tile_k1[t]
                for r in range(tile_k2[t]):
                    start = tile_offset[t] + r * stride_k2 + j * stride_n
                    if k1 < BLOCK:
                        total, total_squares = _short_row(x, start, k1, _lane_mean(means, j), squares)
                    else:
                        total, total_squares = k1_row(x[start : start + k1], j, means, acc, squares)
                    out[index] = out[index] + total
                    _add_if(out_squares, index, total_squares)


# -- sum_float_kn ----------------------------------------------------------------------------------------


@_serial
def _kn_group(tile, i, first, width, means, acc, squares):
    """acc[0] += (((0 + r0) + r1) + r2) + r3 lane by lane, r_q the terms of channels first .. first + width
    of row i + q of the 2-D ``tile``: 16 lanes at a time, the last lanes one by one."""
    n = tile.shape[1]
    full = width - width % LANES
    row = i * n + first
    for lane in range(0, full, LANES):
        _add_four(tile, row + lane, n, means, lane, acc, squares)
    for lane in range(full, width):
        m = _mean(means, lane)
        t0 = _term(tile[i, first + lane], m, means)
        t1 = _term(tile[i + 1, first + lane], m, means)
        t2 = _term(tile[i + 2, first + lane], m, means)
        t3 = _term(tile[i + 3, first + lane], m, means)
        acc[0, lane] = acc[0, lane] + _four(t0, t1, t2, t3)
        if squares is not None:
            squares[0, lane] = squares[0, lane] + _four(t0 * t0, t1 * t1, t2 * t2, t3 * t3)


@_serial
def _kn_short_group(tile, i, first, width, means, acc, squares):
    """A last group of the fewer than four rows from row i of the 2-D ``tile``, padded with zeros."""
    count = tile.shape[0] - i
    for lane in range(width):
        m = _mean(means, lane)
        local = np.float32(0.0)
        local_squares = np.float32(0.0)
        for q in range(4):
            t = _term(tile[i + q, first + lane], m, means) if q < count else np.float32(0.0)
            local = local + t
            local_squares = local_squares + t * t
        acc[0, lane] = acc[0, lane] + local
        if squares is not None:
            squares[0, lane] = squares[0, lane] + local_squares


@_serial
def _add_row_if(out, first, acc, row):
    if out is not None:
        for lane in range(acc.shape[1]):
            out[first + lane] = out[first + lane] + acc[row, lane]


@_serial
def _kn_tile(tile, first, width, means, acc, squares, out, out_squares, at):
    """out[at:at + width] += the tree of channels first .. first + width of the 2-D ``tile`` (k rows)."""
    _zero(acc)
    _zero(squares)
    k = tile.shape[0]
    if k <= 4:
        _kn_short_group(tile, 0, first, width, means, acc, squares)
        _add_row_if(out, at, acc, 0)
        _add_row_if(out_squares, at, squares, 0)
        return
    i = 0
    clock = 0
    while k - i >= 4:
        _kn_group(tile, i, first, width, means, acc, squares)
        i += 4
        clock += 4
        _flush_both(clock, acc, squares)
    if k - i > 0:
        _kn_short_group(tile, i, first, width, means, acc, squares)
    _flush_both(0, acc, squares)
    _add_row_if(out, at, acc, 2)
    _add_row_if(out_squares, at, squares, 2)


@_parallel
def kn_groups(x, group_start, tile_offset, tile_k, n, block, slot, means, out, out_squares, chunks):
    """Per group g and block of channels: out[slot[g] + j] += the tree of each tile's rows, tile after
    tile (and out_squares likewise); the groups * blocks jobs in ``chunks`` parallel chunks. Tile t is
    tile_k[t] rows of n contiguous channels from tile_offset[t], one after another."""
    blocks = (n + block - 1) // block
    jobs = (group_start.shape[0] - 1) * blocks
    for chunk in prange(chunks):
        for job in range(jobs * chunk // chunks, jobs * (chunk + 1) // chunks):
            _kn_job(x, group_start, tile_offset, tile_k, n, block, blocks, job, slot, means, out, out_squares)


@_serial
def _kn_job(x, group_start, tile_offset, tile_k, n, block, blocks, job, slot, means, out, out_squares):
    """One job of :func:`kn_groups`: the channels of one block over the tiles of one group."""
    g = job // blocks
    first = (job % blocks) * block
    width = min(block, n - first)
    acc = np.zeros((4, width), dtype=np.float32)
    squares = _scratch_if(out_squares, width)
    block_means = _means_from(means, first, width)
    for t in range(group_start[g], group_start[g + 1]):
        k = tile_k[t]
        tile = x[tile_offset[t] : tile_offset[t] + k * n].reshape(k, n)
        _kn_tile(tile, first, width, block_means, acc, squares, out, out_squares, slot[g] + first)


# -- XLA's own loops -------------------------------------------------------------------------------------


@_serial
def fma32(a, b, c):
    """fl32(a * b + c) rounded once, as a float32 fused multiply-add (through float64: the product is
    exact; the sum's float64 rounding error decides a float32 tie it would otherwise break to even)."""
    p = np.float64(a) * np.float64(b)
    s = p + np.float64(c)
    bp = s - np.float64(c)
    err = (p - bp) + (np.float64(c) - (s - bp))  # s + err == p + c exactly (TwoSum)
    r = np.float32(s)
    other = 2.0 * s - np.float64(r)  # the float32 neighbour across s when s is a float32 midpoint
    if err != 0.0 and other != np.float64(r) and np.float64(np.float32(other)) == other:
        if (other - np.float64(r)) * err > 0.0:
            return np.float32(other)
    return r


@_parallel
def sequential(a, square_fma):
    """Row sums of the 2-D float32 ``a``, 0 + a[i, 0] + a[i, 1] + ... (or fl32(a * a + acc) each)."""
    rows, cols = a.shape
    out = np.empty(rows, dtype=np.float32)
    for i in prange(rows):
        acc = np.float32(0.0)
        for j in range(cols):
            if square_fma:
                acc = fma32(a[i, j], a[i, j], acc)
            else:
                acc = acc + a[i, j]
        out[i] = acc
    return out
