"""Compiled (numba) kernels of :mod:`batchnorm._reductions.xla`: YNNPACK's float32 sums and XLA's loops.

Imported lazily by :mod:`.xla`. Every operation is a float32 operation in the order the library runs it;
SIMD lanes are independent accumulators (nothing is reassociated, no ``fastmath``): the hot step, four
rows of 16 lanes into accumulator 0 (:func:`_add_four`), is written as LLVM ``<16 x float>`` operations,
lane-wise IEEE float32 like the scalar code, so it vectorizes whatever numba's optimizer makes of loops.
A sum adds up terms (see "terms" below): the values v themselves, or (v - m) * (v - m) with m the
channel's mean (XLA fuses that producer into the reduction), or a product of two arrays or a scaled
array (the terms of Flax's backward, which jax writes out before summing them: the kernels form them on
the way and write nothing), each operation rounded. Where ``out_squares`` is an array, the same pass
also sums fl32(t * t) by the same tree (Flax's separately computed squares, whose reduce has the same
shape as the mean's), so one read of the input serves both. The term and ``out_squares`` are chosen
when numba compiles (one specialization per combination), so the hot loops carry no runtime choice.

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


# -- terms: what a sum adds up, chosen when numba compiles -----------------------------------------------
#
# ``term`` is a tuple (means, other, factors) of None or arrays; with v a value of the array summed, m and
# s its channel's entries of ``means`` and ``factors``, w the value at v's place in ``other``:
#
#   (None, None, None)        v
#   (means, None, None)       fl(fl(v - m)^2)      jnp.var's (x - mean)^2, fused into its reduce
#   (means, other, None)      fl(fl(v - m) * w)    a product of two arrays (Flax's backward)
#   (None, None, factors)     fl(v * s)            a scaled array (Flax's backward)
#
# numba types both branches of ``array is None`` (only a None argument's branch is pruned), so functions
# that return None or an array, or that branch on a tuple's members, are chosen when typing (overloads),
# and the hot loops carry no runtime choice of the term.


def _term(v, w, m, s, term):
    """The term of the value v (see above), given w, m and s."""


def _center(term, j):
    """means[j], or 0 where the term has no means."""


def _factor(term, j):
    """factors[j], or 1 where the term has no factors."""


def _other_at(term, i):
    """other[i], or 0 where the term has no other array."""


def _scratch_if(out_squares, width):
    """Accumulators 0, 1, 2 and the Kahan error of ``width`` lanes, or None where ``out_squares`` is."""


@overload(_term)
def _term_typed(v, w, m, s, term):
    means, other, factors = term.types
    if not isinstance(factors, types.NoneType):
        return lambda v, w, m, s, term: v * s
    if isinstance(means, types.NoneType):
        return lambda v, w, m, s, term: v
    if isinstance(other, types.NoneType):

        def square(v, w, m, s, term):
            d = v - m
            return d * d

        return square
    return lambda v, w, m, s, term: (v - m) * w


@overload(_center)
def _center_typed(term, j):
    if isinstance(term.types[0], types.NoneType):
        return lambda term, j: np.float32(0.0)
    return lambda term, j: term[0][j]


@overload(_factor)
def _factor_typed(term, j):
    if isinstance(term.types[2], types.NoneType):
        return lambda term, j: np.float32(1.0)
    return lambda term, j: term[2][j]


@overload(_other_at)
def _other_at_typed(term, i):
    if isinstance(term.types[1], types.NoneType):
        return lambda term, i: np.float32(0.0)
    return lambda term, i: term[1][i]


def _slice(a, first, count):
    """a[first:first + count], or None where ``a`` is None."""


@overload(_slice)
def _slice_typed(a, first, count):
    if isinstance(a, types.NoneType):
        return lambda a, first, count: None
    return lambda a, first, count: a[first : first + count]


@_serial
def _term_lanes(term, first, width):
    """The term of channels first .. first + width: its means and factors sliced (other unchanged)."""
    return _slice(term[0], first, width), term[1], _slice(term[2], first, width)


@_serial
def _term_run(term, start, count):
    """The term with ``other`` sliced to other[start:start + count], to go with values[start:...]."""
    return term[0], _slice(term[1], start, count), term[2]


@overload(_scratch_if)
def _scratch_if_typed(out_squares, width):
    if isinstance(out_squares, types.NoneType):
        return lambda out_squares, width: None
    return lambda out_squares, width: np.zeros((4, width), dtype=np.float32)


_VECTOR = ir.VectorType(ir.FloatType(), LANES)


def _term_vectors(context, builder, term_type, term, channel, at):
    """The term's per-lane inputs: (means, data pointer of other, factors), None where absent; means and
    factors are the channel's entries splatted (``channel`` an index) or the lanes' own at ``at``
    (``channel`` None)."""
    parts = []
    for k, kind in enumerate(term_type.types):
        if isinstance(kind, types.NoneType):
            parts.append(None)
            continue
        data = context.make_array(kind)(context, builder, builder.extract_value(term, k)).data
        if k == 1:
            parts.append(data)
        elif channel is None:
            parts.append(builder.load(_vector_at(builder, data, at), align=4))
        else:
            parts.append(_splat(builder, builder.load(builder.gep(data, [channel]))))
    return parts


def _term_vector(builder, v, parts, other_index, inside=None):
    """The term (see the specializations above) of the 16 values ``v``: ``parts`` from
    :func:`_term_vectors`; other's values at ``other_index``, masked by ``inside`` if given."""
    means, other, factors = parts
    t = v
    if means is not None:
        d = builder.fsub(t, means)
        if other is None:
            t = builder.fmul(d, d)
        else:
            pointer = _vector_at(builder, other, other_index)
            if inside is None:
                w = builder.load(pointer, align=4)
            else:
                w = builder.call(
                    _masked_load(builder), [pointer, ir.Constant(ir.IntType(32), 4), inside, _ZERO]
                )
            t = builder.fmul(d, w)
    if factors is not None:
        t = builder.fmul(t, factors)
    return t


def _vector_at(builder, pointer, index):
    return builder.bitcast(builder.gep(pointer, [index]), _VECTOR.as_pointer())


def _masked_load(builder):
    """llvm.masked.load of 16 floats: the lanes whose mask bit is 0 read nothing and give the passthru."""
    i32 = ir.IntType(32)
    load_type = ir.FunctionType(
        _VECTOR, [_VECTOR.as_pointer(), i32, ir.VectorType(ir.IntType(1), LANES), _VECTOR]
    )
    return cgutils.get_or_insert_function(builder.module, load_type, f"llvm.masked.load.v{LANES}f32.p0")


_ZERO = ir.Constant(_VECTOR, None)  # +0 in every lane


def _add_four_codegen(with_squares: bool):
    def codegen(context, builder, signature, args):
        values, first, stride, term, channel, at, acc, squares = args
        data = context.make_array(signature.args[0])(context, builder, values).data
        lanes = None if isinstance(signature.args[4], types.NoneType) else channel
        parts = _term_vectors(context, builder, signature.args[3], term, lanes, at)
        terms = []
        for q in range(4):
            index = builder.add(first, builder.mul(stride, ir.Constant(stride.type, q)))
            terms.append(
                _term_vector(builder, builder.load(_vector_at(builder, data, index), align=4), parts, index)
            )
        targets = [(acc, signature.args[6], terms)]
        if with_squares:
            targets.append((squares, signature.args[7], [builder.fmul(t, t) for t in terms]))
        for array, array_type, items in targets:
            local = _ZERO
            for t in items:
                local = builder.fadd(local, t)
            target = _vector_at(builder, context.make_array(array_type)(context, builder, array).data, at)
            builder.store(builder.fadd(builder.load(target, align=4), local), target, align=4)
        return context.get_dummy_value()

    return codegen


def _float32_c(array) -> bool:
    return isinstance(array, types.Array) and array.dtype == types.float32 and array.layout == "C"


def _term_ok(term) -> bool:
    return (
        isinstance(term, (types.Tuple, types.UniTuple))
        and len(term.types) == 3
        and all(isinstance(kind, types.NoneType) or _float32_c(kind) for kind in term.types)
    )


@intrinsic
def _add_four(typingctx, values, first, stride, term, channel, at, acc, squares):
    """acc.flat[at:at + 16] += (((0 + t(v0)) + t(v1)) + t(v2)) + t(v3) in 16 float32 lanes, v_q the 16
    values from values.flat[first + q * stride] and t the ``term`` (other's values at the same flat
    indices; means and factors the ``channel``'s, or with ``channel`` None the lanes' own at
    means.flat[at:at + 16]). ``squares`` (None or an array like ``acc``): also squares.flat[at:at + 16]
    += the same tree of t(v_q)^2. One LLVM vector operation per step, lane-wise IEEE float32 (C-contiguous
    float32 arrays; indices unchecked)."""
    arrays = (values, acc) + ((squares,) if isinstance(squares, types.Array) else ())
    if not (all(_float32_c(array) for array in arrays) and _term_ok(term)):
        return None
    signature = types.void(values, first, stride, term, channel, at, acc, squares)
    return signature, _add_four_codegen(isinstance(squares, types.Array))


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
def k1_row(v, j, term, acc, squares):
    """(sum, sum of squares) of the terms of the contiguous row ``v`` (channel j; ``term`` with other
    aligned to v) as ``sum_float_k1`` forms it, in the (4, 16) scratch ``acc`` (and ``squares``, or None:
    the second sum is then 0)."""
    _zero(acc)
    _zero(squares)
    k = v.shape[0]
    i = 0
    clock = 0
    while k - i >= 4 * BLOCK:
        for _ in range(4):
            _add_four(v, i, LANES, term, j, 0, acc, squares)
            i += BLOCK
        clock += 64
        _flush_both(clock, acc, squares)
    while k - i >= BLOCK:
        _add_four(v, i, LANES, term, j, 0, acc, squares)
        i += BLOCK
        clock += 16
        _flush_both(clock, acc, squares)
    if k - i > 0:
        _add_short(v, i, k - i, term, j, acc, squares)
    _flush_both(0, acc, squares)
    return _halving_sum(acc), _halving_sum_if(squares)


def _masked_terms(context, builder, signature, args):
    """The terms of the ``count`` < 64 values from values.flat[first] as four masked 16-lane vectors (+0
    past the row; nothing read there), for the intrinsics whose first five arguments are (values, first,
    count, term, channel)."""
    values, first, count, term, channel = args[:5]
    data = context.make_array(signature.args[0])(context, builder, values).data
    i32, i64 = ir.IntType(32), ir.IntType(64)
    parts = _term_vectors(context, builder, signature.args[3], term, channel, None)
    positions = ir.Constant(ir.VectorType(i64, LANES), list(range(LANES)))
    first, count = _wide(builder, first), _splat(builder, _wide(builder, count))
    terms = []
    for q in range(4):
        offset = ir.Constant(i64, q * LANES)
        index = builder.add(first, offset)
        inside = builder.icmp_signed("<", builder.add(positions, _splat(builder, offset)), count)
        pointer = _vector_at(builder, data, index)
        v = builder.call(_masked_load(builder), [pointer, ir.Constant(i32, 4), inside, _ZERO])
        terms.append(builder.select(inside, _term_vector(builder, v, parts, index, inside), _ZERO))
    return terms


def _local(builder, terms):
    """(((0 + t0) + t1) + t2) + t3, lane by lane."""
    local = _ZERO
    for t in terms:
        local = builder.fadd(local, t)
    return local


def _short_row_codegen(with_squares: bool):
    def codegen(context, builder, signature, args):
        terms = _masked_terms(context, builder, signature, args)
        i32 = ir.IntType(32)
        totals = []
        for items in [terms] + ([[builder.fmul(t, t) for t in terms]] if with_squares else []):
            local = _local(builder, items)
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


def _add_short_codegen(with_squares: bool):
    def codegen(context, builder, signature, args):
        terms = _masked_terms(context, builder, signature, args)
        acc, squares = args[5], args[6]
        targets = [(acc, signature.args[5], terms)]
        if with_squares:
            targets.append((squares, signature.args[6], [builder.fmul(t, t) for t in terms]))
        for array, array_type, items in targets:
            target = _vector_at(
                builder,
                context.make_array(array_type)(context, builder, array).data,
                ir.Constant(ir.IntType(64), 0),
            )
            builder.store(
                builder.fadd(builder.load(target, align=4), _local(builder, items)), target, align=4
            )
        return context.get_dummy_value()

    return codegen


@intrinsic
def _add_short(typingctx, values, first, count, term, channel, acc, squares):
    """k1's last block of ``count`` < 64 values from values.flat[first] (channel ``channel``), padded with
    zeros: acc[0] += (((0 + t(v0)) + t(v1)) + t(v2)) + t(v3) over four masked 16-value loads (lanes past
    the row hold the term +0, whatever the term of a padding value would be), and squares[0] likewise
    with t(v)^2 where ``squares`` is an array. Reads nothing past the row."""
    arrays = (values, acc) + ((squares,) if isinstance(squares, types.Array) else ())
    if not (all(_float32_c(array) for array in arrays) and _term_ok(term)):
        return None
    signature = types.void(values, first, count, term, channel, acc, squares)
    return signature, _add_short_codegen(isinstance(squares, types.Array))


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
def _short_row(typingctx, values, first, count, term, channel, squares):
    """:func:`k1_row` of the ``count`` < 64 values from values.flat[first] (channel ``channel``), in
    registers: the one block ``local = (((0 + t(v0)) + t(v1)) + t(v2)) + t(v3)`` over four masked 16-value
    loads (lanes past the row hold the term +0, as the zero padding's term is), then its halving sum
    (lanes 0-7 + 8-15, ...). Returns (sum, sum of squares: the same tree of t(v)^2 where ``squares`` is an
    array, else 0). The rest of k1_row's tree adds +0 to the lane sums or subtracts it, which gives them
    back exactly (a lane sum that starts at 0 + t is never -0), and its Kahan error is dropped; reads
    nothing past the row (other's values at the same flat indices)."""
    if not (_float32_c(values) and _term_ok(term)):
        return None
    signature = types.UniTuple(types.float32, 2)(values, first, count, term, channel, squares)
    return signature, _short_row_codegen(isinstance(squares, types.Array))


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
    term,
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
                        total, total_squares = _short_row(x, start, k1, term, j, squares)
                    else:
                        row_term = _term_run(term, start, k1)
                        total, total_squares = k1_row(x[start : start + k1], j, row_term, acc, squares)
                    out[index] = out[index] + total
                    _add_if(out_squares, index, total_squares)


# -- sum_float_kn ----------------------------------------------------------------------------------------


@_serial
def _kn_group(tile, i, first, width, term, acc, squares):
    """acc[0] += (((0 + r0) + r1) + r2) + r3 lane by lane, r_q the terms of channels first .. first + width
    of row i + q of the 2-D ``tile`` (``term``: the block's, other flat like the tile): 16 lanes at a
    time, the last lanes one by one."""
    n = tile.shape[1]
    full = width - width % LANES
    row = i * n + first
    for lane in range(0, full, LANES):
        _add_four(tile, row + lane, n, term, None, lane, acc, squares)
    for lane in range(full, width):
        m, s = _center(term, lane), _factor(term, lane)
        at = row + lane
        t0 = _term(tile[i, first + lane], _other_at(term, at), m, s, term)
        t1 = _term(tile[i + 1, first + lane], _other_at(term, at + n), m, s, term)
        t2 = _term(tile[i + 2, first + lane], _other_at(term, at + 2 * n), m, s, term)
        t3 = _term(tile[i + 3, first + lane], _other_at(term, at + 3 * n), m, s, term)
        acc[0, lane] = acc[0, lane] + _four(t0, t1, t2, t3)
        if squares is not None:
            squares[0, lane] = squares[0, lane] + _four(t0 * t0, t1 * t1, t2 * t2, t3 * t3)


@_serial
def _kn_short_group(tile, i, first, width, term, acc, squares):
    """A last group of the fewer than four rows from row i of the 2-D ``tile``, padded with zeros."""
    n = tile.shape[1]
    count = tile.shape[0] - i
    for lane in range(width):
        m, s = _center(term, lane), _factor(term, lane)
        local = np.float32(0.0)
        local_squares = np.float32(0.0)
        for q in range(4):
            if q < count:
                w = _other_at(term, (i + q) * n + first + lane)
                t = _term(tile[i + q, first + lane], w, m, s, term)
            else:
                t = np.float32(0.0)
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
def _kn_tile(tile, first, width, term, acc, squares, out, out_squares, at):
    """out[at:at + width] += the tree of channels first .. first + width of the 2-D ``tile`` (k rows)."""
    _zero(acc)
    _zero(squares)
    k = tile.shape[0]
    if k <= 4:
        _kn_short_group(tile, 0, first, width, term, acc, squares)
        _add_row_if(out, at, acc, 0)
        _add_row_if(out_squares, at, squares, 0)
        return
    i = 0
    clock = 0
    while k - i >= 4:
        _kn_group(tile, i, first, width, term, acc, squares)
        i += 4
        clock += 4
        _flush_both(clock, acc, squares)
    if k - i > 0:
        _kn_short_group(tile, i, first, width, term, acc, squares)
    _flush_both(0, acc, squares)
    _add_row_if(out, at, acc, 2)
    _add_row_if(out_squares, at, squares, 2)


@_parallel
def kn_groups(x, group_start, tile_offset, tile_k, n, block, slot, term, out, out_squares, chunks):
    """Per group g and block of channels: out[slot[g] + j] += the tree of each tile's rows, tile after
    tile (and out_squares likewise); the groups * blocks jobs in ``chunks`` parallel chunks. Tile t is
    tile_k[t] rows of n contiguous channels from tile_offset[t], one after another."""
    blocks = (n + block - 1) // block
    jobs = (group_start.shape[0] - 1) * blocks
    for chunk in prange(chunks):
        for job in range(jobs * chunk // chunks, jobs * (chunk + 1) // chunks):
            _kn_job(x, group_start, tile_offset, tile_k, n, block, blocks, job, slot, term, out, out_squares)


@_serial
def _kn_job(x, group_start, tile_offset, tile_k, n, block, blocks, job, slot, term, out, out_squares):
    """One job of :func:`kn_groups`: the channels of one block over the tiles of one group."""
    g = job // blocks
    first = (job % blocks) * block
    width = min(block, n - first)
    acc = np.zeros((4, width), dtype=np.float32)
    squares = _scratch_if(out_squares, width)
    block_term = _term_lanes(term, first, width)
    for t in range(group_start[g], group_start[g + 1]):
        k = tile_k[t]
        tile = x[tile_offset[t] : tile_offset[t] + k * n].reshape(k, n)
        tile_term = _term_run(block_term, tile_offset[t], k * n)
        _kn_tile(tile, first, width, tile_term, acc, squares, out, out_squares, slot[g] + first)


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
