"""Compiled (numba) kernels of :mod:`batchnorm._reductions.xla`: YNNPACK's float32 sums and XLA's loops.

Imported lazily by :mod:`.xla`. Every operation is a float32 operation in the order the library runs it;
SIMD lanes are independent accumulators (nothing is reassociated, no ``fastmath``): k1's blocks of 64
values (:func:`_add_block`, :func:`_add_short`, :func:`_short_row`) are written as LLVM ``<16 x float>``
operations, lane-wise IEEE float32 like the scalar code, so they vectorize whatever numba's optimizer
makes of loops; kn's rows are plain loops across the channels.
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
  A tile's sum is added to the output slot, rows of a tile one after another. Rows under 1024 values
  never reach a Kahan step before the last, so they are summed in registers (:func:`_short_row` under
  64 values, :func:`_medium_row` under 1024) with the same operations; longer ones by :func:`k1_row`.
- :func:`kn_groups`: ``sum_float_kn``: rows of n contiguous channels, one lane per channel: groups of
  four rows ``((0 + r0) + r1) + r2) + r3`` into accumulator 0, accumulator 0 into 1 every 16 rows, 1 into
  2 by Kahan summation every 256 rows and at the end; output slot + accumulator 2 (k <= 4 rows: the
  slot + the one group). Channels are independent lanes, so any block of channels runs the same tree.
- :func:`sequential`: XLA's own loop: 0 + v0 + v1 + ... along the last axis, or fl32(v * v + acc) when
  LLVM contracts a fused square into a fused multiply-add (:func:`fma32`).

Both YNNPACK kernels run every group of tiles (tiles summed into one output slot, in order) as its own
job, the jobs in ``chunks`` parallel chunks (1: the calling thread alone): distinct groups write distinct
slots, so the jobs are independent. :func:`k1_two_pass` runs jnp.mean's and jnp.var's k1 reduces and
their second reduces (kn's lanes over the slots) channel block by channel block.
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
#: rows shorter than this are summed in registers: no Kahan step comes before the row's last
MEDIUM_ROW = 16 * BLOCK

_serial = njit(nogil=True, cache=True, error_model="numpy")
_parallel = njit(parallel=True, nogil=True, cache=True, error_model="numpy")
#: helpers called once per row, inlined where they are called (a call costs as much as a short row)
_inline = njit(nogil=True, cache=True, error_model="numpy", inline="always")


def threads() -> int:
    """numba's thread count for the calling thread."""
    return int(numba.get_num_threads())


# -- terms: what a sum adds up, chosen when numba compiles -----------------------------------------------
#
# ``term`` is a tuple (means, other, factors, scales) of None or arrays; with v a value of the array
# summed, m and s its channel's entries of ``means`` and ``factors``, w the value at v's place in
# ``other``, the term t is
#
#   (None, None, None, _)        v
#   (means, None, None, _)       fl(fl(v - m)^2)      jnp.var's (x - mean)^2, fused into its reduce
#   (means, other, None, _)      fl(fl(v - m) * w)    a product of two arrays (Flax's backward)
#   (None, None, factors, _)     fl(v * s)            a scaled array (Flax's backward)
#
# and the second sum, where the kernels take one (``squares``), adds fl(t * t) (``scales`` None: Flax's
# S(x * x) beside S(x)) or fl(t * scales[channel]) (its backward's S(dy * s) beside S(dy)).
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


def _second(t, term, j):
    """The second sum's term of the term t of channel j: fl(t * t), or fl(t * scales[j])."""


def _scratch_if(out_squares, width):
    """Accumulators 0, 1, 2 and the Kahan error of ``width`` lanes, or None where ``out_squares`` is."""


@overload(_term)
def _term_typed(v, w, m, s, term):
    means, other, factors, _ = term.types
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


@overload(_second)
def _second_typed(t, term, j):
    if isinstance(term.types[3], types.NoneType):
        return lambda t, term, j: t * t
    return lambda t, term, j: t * term[3][j]


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
    """The term of channels first .. first + width: its per-channel arrays sliced (other unchanged)."""
    return (
        _slice(term[0], first, width),
        term[1],
        _slice(term[2], first, width),
        _slice(term[3], first, width),
    )


@_serial
def _term_run(term, start, count):
    """The term with ``other`` sliced to other[start:start + count], to go with values[start:...]."""
    return term[0], _slice(term[1], start, count), term[2], term[3]


@overload(_scratch_if)
def _scratch_if_typed(out_squares, width):
    if isinstance(out_squares, types.NoneType):
        return lambda out_squares, width: None
    return lambda out_squares, width: np.zeros((4, width), dtype=np.float32)


# -- k1's blocks of 64 values, as LLVM vector operations -------------------------------------------------
#
# A block of sum_float_k1 is local = (((0 + t(v0)) + t(v1)) + t(v2)) + t(v3) over four 16-value vectors
# v0..v3 of one row, lane by lane. A row's last block of fewer than 64 values is padded with zeros: here
# four masked loads read nothing past the row, and its lanes past the row hold the term +0 (whatever the
# term of a padding value would be). Each operation is one LLVM vector operation, lane-wise IEEE float32
# like the scalar code (C-contiguous float32 arrays; indices unchecked).

_VECTOR = ir.VectorType(ir.FloatType(), LANES)
_ZERO = ir.Constant(_VECTOR, None)  # +0 in every lane
_I32, _I64 = ir.IntType(32), ir.IntType(64)


def _block_terms(context, builder, signature, args, masked: bool):
    """The four term vectors of the block at values.flat[first] (channel ``channel``) and the second sum's
    four (:func:`_second`): the intrinsics' arguments begin (values, first, count, term, channel);
    ``masked``: only the first ``count`` values."""
    values, first, count, term, channel = args[:5]
    data = context.make_array(signature.args[0])(context, builder, values).data
    means, other, factors, scales = _term_inputs(context, builder, signature.args[3], term, channel)
    positions = ir.Constant(ir.VectorType(_I64, LANES), list(range(LANES)))
    first, count = _wide(builder, first), _splat(builder, _wide(builder, count))
    terms, seconds = [], []
    for q in range(4):
        offset = ir.Constant(_I64, q * LANES)
        index = builder.add(first, offset)
        inside = builder.icmp_signed("<", builder.add(positions, _splat(builder, offset)), count)
        t = _load(builder, data, index, inside if masked else None)
        if means is not None:
            d = builder.fsub(t, means)
            t = (
                builder.fmul(d, d)
                if other is None
                else builder.fmul(d, _load(builder, other, index, inside if masked else None))
            )
        if factors is not None:
            t = builder.fmul(t, factors)
        t2 = builder.fmul(t, t if scales is None else scales)
        terms.append(builder.select(inside, t, _ZERO) if masked else t)
        seconds.append(builder.select(inside, t2, _ZERO) if masked else t2)
    return terms, seconds


def _term_inputs(context, builder, term_type, term, channel):
    """(the channel's mean, other's data pointer, the channel's factor and scale, each splatted), None
    where the term has none (see the terms above)."""
    inputs = []
    for k, kind in enumerate(term_type.types):
        if isinstance(kind, types.NoneType):
            inputs.append(None)
            continue
        data = context.make_array(kind)(context, builder, builder.extract_value(term, k)).data
        inputs.append(data if k == 1 else _splat(builder, builder.load(builder.gep(data, [channel]))))
    return inputs


def _load(builder, data, index, inside):
    """16 floats from data[index]; with a mask ``inside``, llvm.masked.load (the other lanes read nothing
    and hold +0)."""
    pointer = builder.bitcast(builder.gep(data, [index]), _VECTOR.as_pointer())
    if inside is None:
        return builder.load(pointer, align=4)
    load_type = ir.FunctionType(
        _VECTOR, [_VECTOR.as_pointer(), _I32, ir.VectorType(ir.IntType(1), LANES), _VECTOR]
    )
    masked_load = cgutils.get_or_insert_function(
        builder.module, load_type, f"llvm.masked.load.v{LANES}f32.p0"
    )
    return builder.call(masked_load, [pointer, ir.Constant(_I32, 4), inside, _ZERO])


def _wide(builder, integer):
    """A signed integer as i64."""
    return integer if integer.type.width == 64 else builder.sext(integer, _I64)


def _splat(builder, scalar):
    """``scalar`` in every one of LANES lanes."""
    undefined = ir.Constant(ir.VectorType(scalar.type, LANES), ir.Undefined)
    vector = builder.insert_element(undefined, scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vector, undefined, ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))


def _local(builder, terms):
    """(((0 + t0) + t1) + t2) + t3, lane by lane."""
    local = _ZERO
    for t in terms:
        local = builder.fadd(local, t)
    return local


def _add_block_codegen(masked: bool, with_squares: bool):
    def codegen(context, builder, signature, args):
        terms, seconds = _block_terms(context, builder, signature, args, masked)
        targets = [(args[5], signature.args[5], terms)]
        if with_squares:
            targets.append((args[6], signature.args[6], seconds))
        for array, array_type, items in targets:
            data = context.make_array(array_type)(context, builder, array).data
            target = builder.bitcast(data, _VECTOR.as_pointer())
            builder.store(
                builder.fadd(builder.load(target, align=4), _local(builder, items)), target, align=4
            )
        return context.get_dummy_value()

    return codegen


def _short_row_codegen(with_squares: bool):
    def codegen(context, builder, signature, args):
        terms, seconds = _block_terms(context, builder, signature, args, True)
        totals = [
            _halving(builder, _local(builder, items))
            for items in [terms] + ([seconds] if with_squares else [])
        ]
        totals += [] if with_squares else [ir.Constant(ir.FloatType(), 0.0)]
        return context.make_tuple(builder, signature.return_type, totals)

    return codegen


def _halving(builder, local):
    """The halving horizontal sum of a vector: lanes 0-7 + 8-15, then 0-3 + 4-7, ... (lane 0 at the end)."""
    width = LANES
    while width > 1:
        width //= 2
        halves = [ir.Constant(ir.VectorType(_I32, width), list(range(h, h + width))) for h in (0, width)]
        low, high = (builder.shuffle_vector(local, local, half) for half in halves)
        local = builder.fadd(low, high)
    return builder.extract_element(local, ir.Constant(_I32, 0))


def _medium_row_codegen(with_squares: bool):
    def codegen(context, builder, signature, args):
        values, first, count, term, channel = args[:5]
        first, count = _wide(builder, first), _wide(builder, count)
        sums = [cgutils.alloca_once_value(builder, _ZERO) for _ in range(2 if with_squares else 1)]

        def blocks(at, n, masked):
            terms, seconds = _block_terms(context, builder, signature, [values, at, n, term, channel], masked)
            return [_local(builder, items) for items in [terms, seconds][: len(sums)]]

        whole = ir.Constant(_I64, BLOCK)
        quads = builder.sdiv(count, ir.Constant(_I64, 4 * BLOCK))
        with cgutils.for_range(builder, quads) as loop:  # groups of four blocks: acc0 of four, into acc1
            base = builder.add(first, builder.mul(loop.index, ir.Constant(_I64, 4 * BLOCK)))
            group = [_ZERO] * len(sums)
            for b in range(4):
                at = builder.add(base, ir.Constant(_I64, b * BLOCK))
                group = [
                    builder.fadd(g, local) for g, local in zip(group, blocks(at, whole, False), strict=True)
                ]
            for slot, g in zip(sums, group, strict=True):
                builder.store(builder.fadd(builder.load(slot), g), slot)
        done = builder.mul(quads, ir.Constant(_I64, 4 * BLOCK))
        singles = builder.sdiv(builder.sub(count, done), ir.Constant(_I64, BLOCK))
        with cgutils.for_range(builder, singles) as loop:  # single blocks: acc0 = 0 + local, into acc1
            at = builder.add(first, builder.add(done, builder.mul(loop.index, ir.Constant(_I64, BLOCK))))
            for slot, local in zip(sums, blocks(at, whole, False), strict=True):
                builder.store(builder.fadd(builder.load(slot), builder.fadd(_ZERO, local)), slot)
        done = builder.add(done, builder.mul(singles, ir.Constant(_I64, BLOCK)))
        rest = builder.sub(count, done)
        with builder.if_then(builder.icmp_signed(">", rest, ir.Constant(_I64, 0))):  # the short last block
            for slot, local in zip(sums, blocks(builder.add(first, done), rest, True), strict=True):
                builder.store(builder.fadd(builder.load(slot), builder.fadd(_ZERO, local)), slot)
        totals = []
        for slot in sums:  # the final Kahan step from acc2 = 0, then the halving sum's 0 + lane
            t = builder.fadd(_ZERO, builder.fsub(builder.load(slot), _ZERO))
            totals.append(_halving(builder, builder.fadd(_ZERO, t)))
        totals += [] if with_squares else [ir.Constant(ir.FloatType(), 0.0)]
        return context.make_tuple(builder, signature.return_type, totals)

    return codegen


def _float32_c(array) -> bool:
    return isinstance(array, types.Array) and array.dtype == types.float32 and array.layout == "C"


def _typed(term, *arrays) -> bool:
    """float32 C arrays and a term of four None or such arrays (the intrinsics' arguments)."""
    return (
        all(_float32_c(array) for array in arrays if not isinstance(array, types.NoneType))
        and isinstance(term, (types.Tuple, types.UniTuple))
        and len(term.types) == 4
        and all(isinstance(kind, types.NoneType) or _float32_c(kind) for kind in term.types)
    )


@intrinsic
def _add_block(typingctx, values, first, count, term, channel, acc, squares):
    """acc[0] += the block of 64 values at values.flat[first] (``count`` is 64: unmasked), and squares[0]
    += the same tree of the second sum's terms where ``squares`` is an array."""
    if not _typed(term, values, acc, squares):
        return None
    signature = types.void(values, first, count, term, channel, acc, squares)
    return signature, _add_block_codegen(False, isinstance(squares, types.Array))


@intrinsic
def _add_short(typingctx, values, first, count, term, channel, acc, squares):
    """As :func:`_add_block` for a last block of ``count`` < 64 values, padded with zeros."""
    if not _typed(term, values, acc, squares):
        return None
    signature = types.void(values, first, count, term, channel, acc, squares)
    return signature, _add_block_codegen(True, isinstance(squares, types.Array))


@intrinsic
def _short_row(typingctx, values, first, count, term, channel, squares):
    """:func:`k1_row` of a row of ``count`` < 64 values from values.flat[first], in registers: its one
    padded block, then the halving sum of it. Returns (sum, second sum: the same tree of the second sum's
    terms where ``squares`` is an array, else 0). The rest of k1_row's tree adds +0 to the lane sums or
    subtracts it, which gives them back exactly (a lane sum that starts at 0 + t is never -0), and its
    Kahan error is dropped."""
    if not _typed(term, values, squares):
        return None
    signature = types.UniTuple(types.float32, 2)(values, first, count, term, channel, squares)
    return signature, _short_row_codegen(isinstance(squares, types.Array))


@intrinsic
def _medium_row(typingctx, values, first, count, term, channel, squares):
    """:func:`k1_row` of a row of 64 <= ``count`` < 1024 values from values.flat[first], in registers:
    groups of four blocks summed into accumulator 0 and then into 1, the single blocks and the padded last
    one into 1 as 0 + local, then the final flush (accumulator 1 into 2 = 0 by Kahan's step, exact from
    0) and the halving sum. Under 1024 values no Kahan step comes before the last, so its error is never
    used. Returns (sum, second sum, or 0 where ``squares`` is not an array)."""
    if not _typed(term, values, squares):
        return None
    signature = types.UniTuple(types.float32, 2)(values, first, count, term, channel, squares)
    return signature, _medium_row_codegen(isinstance(squares, types.Array))


# -- the accumulator tree shared by both kernels ---------------------------------------------------------


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


@_inline
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
            _add_block(v, i, BLOCK, term, j, acc, squares)
            i += BLOCK
        clock += 64
        _flush_both(clock, acc, squares)
    while k - i >= BLOCK:
        _add_block(v, i, BLOCK, term, j, acc, squares)
        i += BLOCK
        clock += 16
        _flush_both(clock, acc, squares)
    if k - i > 0:
        _add_short(v, i, k - i, term, j, acc, squares)
    _flush_both(0, acc, squares)
    return _halving_sum(acc), _halving_sum_if(squares)


@_serial
def _add_if(out, index, value):
    if out is not None:
        out[index] = out[index] + value


@_inline
def _row(x, start, k1, term, j, acc, squares):
    """(sum, second sum) of the k1 values from x[start] (channel j) as :func:`k1_row` forms them: in
    registers under MEDIUM_ROW values."""
    if k1 < BLOCK:
        return _short_row(x, start, k1, term, j, squares)
    if k1 < MEDIUM_ROW:
        return _medium_row(x, start, k1, term, j, squares)
    return k1_row(x[start : start + k1], j, _term_run(term, start, k1), acc, squares)


@_inline
def _add_row(x, start, k1, term, j, acc, squares, out, out_squares, index):
    """out[index] += the sum of the row of k1 values from x[start] (channel j), and out_squares likewise."""
    total, total_squares = _row(x, start, k1, term, j, acc, squares)
    out[index] = out[index] + total
    _add_if(out_squares, index, total_squares)


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
    other,
    other_term,
    other_out,
    chunks,
):
    """Per group g and channel j: out[slot[g] + j * stride_out] += each row sum of the group's tiles, in
    order (and out_squares likewise with the sums of squares); the groups * n jobs in ``chunks`` parallel
    chunks. Where ``other`` is an array (x's shape), each job then sums the same rows of it, with
    ``other_term``, into other_out: a second reduce of the same tiles, whose values that both terms read
    come from cache.

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
            # the tiles' arrays are read here, not passed on as a tuple: unpacked in a helper, they cost
            # every job a reference count update per array, an atomic add on memory both threads share
            for t in range(group_start[g], group_start[g + 1]):
                for r in range(tile_k2[t]):
                    start = tile_offset[t] + r * stride_k2 + j * stride_n
                    _add_row(x, start, tile_k1[t], term, j, acc, squares, out, out_squares, index)
            if other is not None:  # the same rows again, from cache
                for t in range(group_start[g], group_start[g + 1]):
                    for r in range(tile_k2[t]):
                        start = tile_offset[t] + r * stride_k2 + j * stride_n
                        _add_row(other, start, tile_k1[t], other_term, j, acc, None, other_out, None, index)


@_parallel
def k1_two_pass(x, offsets, k1s, stride_n, channels, block, reciprocal, means, sums, deviations, chunks):
    """jnp.mean's and jnp.var's reduces where each is the :func:`k1_groups` launch of one row per slot (row
    g of channel j: k1s[g] values from offsets[g] + j * stride_n, into slot g * channels + j) and a second
    reduce that sums channel j's slots as kn's lane j over the rows g: per block of ``block`` channels,
    both passes back to back (the second reads the block's rows from cache), with the same operations as
    the two passes one after the other. Writes sums (S(x)), means = fl32(sums * reciprocal) and
    deviations (S((x - mean)^2)); the blocks in ``chunks`` parallel chunks."""
    rows = offsets.shape[0]
    blocks = (channels + block - 1) // block
    for chunk in prange(chunks):
        acc = np.zeros((4, LANES), dtype=np.float32)
        slots = np.empty((rows, block), dtype=np.float32)
        local = np.empty((2, block), dtype=np.float32)
        for b in range(blocks * chunk // chunks, blocks * (chunk + 1) // chunks):
            first = b * block
            width = min(block, channels - first)
            lanes = np.zeros((4, width), dtype=np.float32)
            _block_slots(x, offsets, k1s, stride_n, first, width, (None, None, None, None), acc, slots)
            _kn_tile(slots, 0, width, (None, None, None, None), lanes, None, local, sums, None, first)
            for j in range(first, first + width):
                means[j] = sums[j] * reciprocal
            _block_slots(x, offsets, k1s, stride_n, first, width, (means, None, None, None), acc, slots)
            _kn_tile(slots, 0, width, (None, None, None, None), lanes, None, local, deviations, None, first)


@_inline
def _block_slots(x, offsets, k1s, stride_n, first, width, term, acc, slots):
    """slots[g, j - first] = 0 + the sum of row g of channel j, for first <= j < first + width."""
    for g in range(offsets.shape[0]):
        k1 = k1s[g]
        for j in range(first, first + width):
            total, _ = _row(x, offsets[g] + j * stride_n, k1, term, j, acc, None)
            slots[g, j - first] = np.float32(0.0) + total


# -- sum_float_kn ----------------------------------------------------------------------------------------


@_serial
def _kn_group(tile, i, count, first, width, term, acc, squares, local):
    """acc[0] += (((0 + r0) + r1) + r2) + r3 lane by lane, r_q the terms of channels first .. first + width
    of row i + q of the 2-D ``tile`` (``term``: the block's, other flat like the tile), and squares[0]
    likewise with the squared terms. The group has ``count`` rows: 4, or fewer at a tile's end, where
    YNNPACK adds +0 for each missing row, which changes nothing here (a sum begun at +0 is never -0, and
    s + 0 == s for every other float32, NaN's payload kept). The rows are read one after another, each
    into the lanes' running local sums (``local``: (2, width) scratch): memory order, which the
    prefetchers follow (all rows' lanes in blocks of 16 read the four rows interleaved, 2.8x slower from
    memory)."""
    n = tile.shape[1]
    sums, sums_squares = local[0], local[1]
    sums[:width] = np.float32(0.0)
    if squares is not None:
        sums_squares[:width] = np.float32(0.0)
    for q in range(count):
        row = tile[i + q, first : first + width]
        row_term = _term_run(term, (i + q) * n + first, width)  # other's values beside the row's
        for lane in range(width):
            w = _other_at(row_term, lane)
            t = _term(row[lane], w, _center(row_term, lane), _factor(row_term, lane), row_term)
            sums[lane] = sums[lane] + t
            if squares is not None:
                sums_squares[lane] = sums_squares[lane] + _second(t, row_term, lane)
    for lane in range(width):
        acc[0, lane] = acc[0, lane] + sums[lane]
        if squares is not None:
            squares[0, lane] = squares[0, lane] + sums_squares[lane]


@_serial
def _add_row_if(out, first, acc, row):
    if out is not None:
        for lane in range(acc.shape[1]):
            out[first + lane] = out[first + lane] + acc[row, lane]


@_serial
def _kn_tile(tile, first, width, term, acc, squares, local, out, out_squares, at):
    """out[at:at + width] += the tree of channels first .. first + width of the 2-D ``tile`` (k rows)."""
    _zero(acc)
    _zero(squares)
    k = tile.shape[0]
    if k <= 4:
        _kn_group(tile, 0, k, first, width, term, acc, squares, local)
        _add_row_if(out, at, acc, 0)
        _add_row_if(out_squares, at, squares, 0)
        return
    i = 0
    clock = 0
    while k - i >= 4:
        _kn_group(tile, i, 4, first, width, term, acc, squares, local)
        i += 4
        clock += 4
        _flush_both(clock, acc, squares)
    if k - i > 0:
        _kn_group(tile, i, k - i, first, width, term, acc, squares, local)
    _flush_both(0, acc, squares)
    _add_row_if(out, at, acc, 2)
    _add_row_if(out_squares, at, squares, 2)


@_parallel
def kn_groups(x, groups_tiles, slot, term, out, out_squares, other, other_term, other_out, chunks):
    """Per group g and block of channels: out[slot[g] + j] += the tree of each tile's rows, tile after
    tile (and out_squares likewise); the groups * blocks jobs in ``chunks`` parallel chunks.
    ``groups_tiles`` is (group_start, tile_offset, tile_k, n, block): tile t is tile_k[t] rows of n
    contiguous channels from tile_offset[t], one after another, and the channels go in blocks of
    ``block``. ``other``, ``other_term``, ``other_out``: a second reduce of the same tiles, job by job, as
    in :func:`k1_groups`."""
    group_start, _, _, n, block = groups_tiles
    jobs = (group_start.shape[0] - 1) * ((n + block - 1) // block)
    for chunk in prange(chunks):
        for job in range(jobs * chunk // chunks, jobs * (chunk + 1) // chunks):
            _kn_job(x, groups_tiles, job, slot, term, out, out_squares)
            if other is not None:
                _kn_job(other, groups_tiles, job, slot, other_term, other_out, None)


@_serial
def _kn_job(x, groups_tiles, job, slot, term, out, out_squares):
    """One job of :func:`kn_groups` (``groups_tiles`` as there): the channels of one block over the tiles
    of one group."""
    group_start, tile_offset, tile_k, n, block = groups_tiles
    blocks = (n + block - 1) // block
    g = job // blocks
    first = (job % blocks) * block
    width = min(block, n - first)
    acc = np.zeros((4, width), dtype=np.float32)
    squares = _scratch_if(out_squares, width)
    local = np.empty((2, width), dtype=np.float32)
    block_term = _term_lanes(term, first, width)
    for t in range(group_start[g], group_start[g + 1]):
        k = tile_k[t]
        tile = x[tile_offset[t] : tile_offset[t] + k * n].reshape(k, n)
        tile_term = _term_run(block_term, tile_offset[t], k * n)
        _kn_tile(tile, first, width, tile_term, acc, squares, local, out, out_squares, slot[g] + first)


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
