"""Compiled (numba) kernels of :mod:`.onednn` and :mod:`.eigen_fused`: sequential float sums, per channel.

Imported lazily by those modules (and by :mod:`._torch_batchnorm_kernels`, which shares the channel
tiles). Every sum adds its terms one by one in the order the caller's ranges give: nothing is
reassociated (no ``fastmath``). Speed comes from independent chains: NCHW runs eight channels' chains as
the lanes of one LLVM vector (:func:`group_moments`, both passes of a channel group in one work item,
at about the exact dialect's speed), channels-last rows add into a per-chunk row of accumulators
(vectorized across channels); Eigen's rank-5 tree (:func:`eigen_moments`) runs eight channels per
vector too, its four accumulators a rotating tuple of vectors over tiles read in place (channels-last:
rows read in memory order, the accumulators in a small buffer). The parallel kernels are one ``prange``
launch each (through :func:`batchnorm._kernels.compiled._launch`); which numba thread runs a channel
group or a oneDNN chunk changes no result.

A term is chosen by ``mode``: SUM adds v; SQUARES adds fl(d * d), d = fl(v - m); FMA_SQUARES forms
fma(d, d, acc), one rounding (llvm.fma: vfmadd on FMA machines, the C library's fma elsewhere).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

from .._kernels.intrinsics import fma
from ._eigen_kernels import bursts_ahead, touch_run

SUM, SQUARES, FMA_SQUARES = 0, 1, 2
#: channels summed side by side.
GROUP = 8

_serial = njit(nogil=True, cache=True)
_parallel = njit(parallel=True, nogil=True, cache=True)


@_serial
def _step(acc, v, m, mode):
    if mode == SUM:
        return acc + v
    d = v - m
    if mode == SQUARES:
        return acc + d * d
    return fma(d, d, acc)


@_serial
def _store(out, c0, width, s0, s1, s2, s3, s4, s5, s6, s7):
    sums = (s0, s1, s2, s3, s4, s5, s6, s7)
    for k in range(width):
        out[c0 + k] = sums[k]


@_serial
def _narrow_chunk(rows, spatial, n0, n1, s0, s1, mean, mode, out):
    """One chunk of channels-last rows with at most eight channels: a chain per channel in registers."""
    k0, k1, k2, k3, k4, k5, k6, k7 = channel_lanes(0, rows.shape[1])
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


@_parallel
def chunk_partials(rows, spatial, parts, mean, mode, nchunks):
    """:func:`chunk_sums` of every chunk in ``parts`` ((n0, n1, s0, s1) per row) into its own row of a
    zeroed (len(parts), C) array, the chunks split over ``nchunks`` parallel chunks (each chunk's partial
    is its own: the split changes nothing)."""
    count = parts.shape[0]
    partials = np.zeros((count, rows.shape[1]), rows.dtype)
    for t in prange(nchunks):
        for p in range(count * t // nchunks, count * (t + 1) // nchunks):
            n0, n1, s0, s1 = parts[p, 0], parts[p, 1], parts[p, 2], parts[p, 3]
            chunk_sums(rows, spatial, n0, n1, s0, s1, mean, mode, partials[p])
    return partials


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


# -- channel tiles: eight channels' sequential chains as the lanes of one LLVM vector ---------------------
#
# A chain per channel is strictly sequential, so the speed is in running eight of them at once: lane j of a
# ``Vector`` accumulator is channel j's chain. A tile is eight values of each of eight channel rows; it is
# loaded as eight row vectors, transposed in registers (three rounds of two-source shuffles), and its
# columns (position p of every row) are added one after another, p = 0 .. 7: each lane sees its channel's
# values in memory order, one IEEE operation per value, as the scalar chain would.

#: channels per vector (lanes) and values per row of a tile.
LANES = 8


class Vector(types.Type):
    """An LLVM vector of LANES floats of ``dtype`` (float32 or float64): a value kept in registers."""

    def __init__(self, dtype: types.Float) -> None:
        self.dtype = dtype
        super().__init__(name=f"Vector({dtype}x{LANES})")


def _llvm_float(dtype: types.Type) -> ir.Type:
    return ir.DoubleType() if dtype == types.float64 else ir.FloatType()


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(_llvm_float(fe_type.dtype), LANES))


#: storage the tiles read: float32, float64, float16 as uint16 and bfloat16 as int16 (upcast exactly).
_STORAGE = (types.float32, types.float64, types.uint16, types.int16)


def _compute_type(storage: types.Type) -> types.Float:
    return types.float64 if storage == types.float64 else types.float32


def _upcast(builder: ir.IRBuilder, v: ir.Value, storage: types.Type) -> ir.Value:
    """Stored values (a vector of LANES, or a scalar) in their compute type: float16 and bfloat16 exactly
    to float32 (bfloat16: its bits in the top half of a float32)."""
    width = v.type.count if isinstance(v.type, ir.VectorType) else None

    def ty(element: ir.Type) -> ir.Type:
        return element if width is None else ir.VectorType(element, width)

    if storage == types.uint16:
        return builder.fpext(builder.bitcast(v, ty(ir.HalfType())), ty(ir.FloatType()))
    if storage == types.int16:
        wide = builder.zext(v, ty(ir.IntType(32)))
        shift = ir.Constant(ty(ir.IntType(32)), [16] * width if width else 16)
        return builder.bitcast(builder.shl(wide, shift), ty(ir.FloatType()))
    return v


def _transpose(builder: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """The columns of a LANES x LANES tile given as row vectors: rounds h = 4, 2, 1 swap the off-diagonal
    h x h blocks of each 2h x 2h block (two-source shuffles)."""
    rows = list(rows)
    h = LANES // 2
    while h:
        low = [i if not i & h else LANES + i - h for i in range(LANES)]
        high = [i + h if not i & h else LANES + i for i in range(LANES)]
        for j in range(LANES):
            if j & h:
                continue
            a, b = rows[j], rows[j + h]
            rows[j] = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), LANES), low))
            rows[j + h] = builder.shuffle_vector(
                a, b, ir.Constant(ir.VectorType(ir.IntType(32), LANES), high)
            )
        h //= 2
    return rows


def _check(acc, x, rows, mean):
    """The typing shared by the tile intrinsics; None where the arguments do not fit."""
    if not (isinstance(acc, Vector) and isinstance(x, types.Array) and x.ndim == 1 and x.dtype in _STORAGE):
        return False
    if not (
        isinstance(rows, types.UniTuple) and rows.count == LANES and isinstance(rows.dtype, types.Integer)
    ):
        return False
    compute = _compute_type(x.dtype)
    if acc.dtype != compute and not (acc.dtype == types.float64 and compute == types.float32):
        return False
    return isinstance(mean, types.NoneType) or (isinstance(mean, Vector) and mean.dtype == compute)


def _terms(builder, values, mean, acc_type, fused_acc=None):
    """Each value, or fl(fl(v - m)^2) with ``mean``, in the compute type, then widened to ``acc_type``."""
    out = []
    for v in values:
        if mean is not None:
            d = builder.fsub(v, mean)
            if fused_acc is not None:
                out.append(d)
                continue
            v = builder.fmul(d, d)
        if v.type != acc_type:
            v = builder.fpext(v, acc_type)
        out.append(v)
    return out


def _tile_columns(builder: ir.IRBuilder, data: ir.Value, offsets: list[ir.Value], storage: types.Type):
    """The LANES columns of the tile whose row j starts at data[offsets[j]], in the compute type."""
    loads = []
    for j in range(LANES):
        pointer = builder.bitcast(
            builder.gep(data, [offsets[j]]), ir.VectorType(data.type.pointee, LANES).as_pointer()
        )
        loads.append(_upcast(builder, builder.load(pointer, align=1), storage))
    return _transpose(builder, loads)


def _tile_codegen(kind: str):
    def codegen(context, builder, signature, args):
        acc, x, rows, i, mean = args
        storage = signature.args[1].dtype
        data = context.make_array(signature.args[1])(context, builder, x).data
        offsets = [builder.add(builder.extract_value(rows, j), i) for j in range(LANES)]
        has_mean = not isinstance(signature.args[4], types.NoneType)
        if kind == "tile":
            columns = _tile_columns(builder, data, offsets, storage)
        else:  # one value per lane
            vector = ir.Constant(ir.VectorType(_llvm_float(_compute_type(storage)), LANES), ir.Undefined)
            for j in range(LANES):
                value = _upcast(builder, builder.load(builder.gep(data, [offsets[j]])), storage)
                vector = builder.insert_element(vector, value, ir.Constant(ir.IntType(32), j))
            columns = [vector]
        if kind == "fma":  # (typed for every call site; reached with acc, x and mean of one type)
            d = builder.fsub(columns[0], mean) if has_mean else columns[0]
            if d.type != acc.type:
                d = builder.fpext(d, acc.type)
            suffix = "f64" if acc.type.element == ir.DoubleType() else "f32"
            fnty = ir.FunctionType(acc.type, [acc.type] * 3)
            fma = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fma.v{LANES}{suffix}")
            return builder.call(fma, [d, d, acc])
        for t in _terms(builder, columns, mean if has_mean else None, acc.type):
            acc = builder.fadd(acc, t)
        return acc

    return codegen


@intrinsic
def tile_add(typingctx, acc, x, rows, i, mean):
    """acc with a tile added: lane j adds term(x[rows[j] + i + p]) for p = 0 .. LANES - 1 in order, term
    the value (``mean`` None) or fl(fl(v - m_j)^2), in the compute type (float32, float64 for float64
    storage), widened to acc's type. x a flat array (half inputs as their 16-bit storage)."""
    if not _check(acc, x, rows, mean):
        return None
    return acc(acc, x, rows, i, mean), _tile_codegen("tile")


@intrinsic
def column_add(typingctx, acc, x, rows, i, mean):
    """acc with one column added: lane j adds term(x[rows[j] + i]) (see :func:`tile_add`)."""
    if not _check(acc, x, rows, mean):
        return None
    return acc(acc, x, rows, i, mean), _tile_codegen("column")


@intrinsic
def column_fma(typingctx, acc, x, rows, i, mean):
    """acc = fma(d, d, acc) per lane, d = fl(x[rows[j] + i] - m_j), rounded once (torch's float64
    contraction: acc, x and mean of one type)."""
    if not _check(acc, x, rows, mean):
        return None
    return acc(acc, x, rows, i, mean), _tile_codegen("fma")


def _run_codegen(context, builder, signature, args):
    acc, x, start, mean = args
    storage = signature.args[1].dtype
    data = context.make_array(signature.args[1])(context, builder, x).data
    pointer = builder.bitcast(
        builder.gep(data, [start]), ir.VectorType(data.type.pointee, LANES).as_pointer()
    )
    value = _upcast(builder, builder.load(pointer, align=1), storage)
    has_mean = not isinstance(signature.args[3], types.NoneType)
    (term,) = _terms(builder, [value], mean if has_mean else None, acc.type)
    return builder.fadd(acc, term)


@intrinsic
def run_add(typingctx, acc, x, start, mean):
    """acc + term(x[start:start + LANES]): lane l adds the value at start + l (term as in
    :func:`tile_add`, ``mean`` None or a Vector of the compute type)."""
    if not _check(acc, x, types.UniTuple(types.intp, LANES), mean):
        return None
    return acc(acc, x, start, mean), _run_codegen


@intrinsic
def tile_add4(typingctx, accs, x, rows, i, mean):
    """Four accumulators with a tile added, rotating: column p (row value x[rows[j] + i + p] of lane j,
    term as in :func:`tile_add`) goes to accs[p % 4], p = 0 .. LANES - 1 in order. LANES is a multiple
    of 4, so accs[0] takes the row after the tile as it took the tile's first."""
    if not (isinstance(accs, types.UniTuple) and accs.count == 4 and _check(accs.dtype, x, rows, mean)):
        return None

    def codegen(context, builder, signature, args):
        accs, x, rows, i, mean = args
        storage = signature.args[1].dtype
        data = context.make_array(signature.args[1])(context, builder, x).data
        offsets = [builder.add(builder.extract_value(rows, j), i) for j in range(LANES)]
        acc = [builder.extract_value(accs, a) for a in range(4)]
        has_mean = not isinstance(signature.args[4], types.NoneType)
        columns = _tile_columns(builder, data, offsets, storage)
        for p, t in enumerate(_terms(builder, columns, mean if has_mean else None, acc[0].type)):
            acc[p % 4] = builder.fadd(acc[p % 4], t)
        return context.make_tuple(builder, signature.return_type, acc)

    return accs(accs, x, rows, i, mean), codegen


@intrinsic
def add(typingctx, a, b):
    """a + b lane by lane (two Vectors of one type)."""
    if not (isinstance(a, Vector) and a == b):
        return None

    def codegen(context, builder, signature, args):
        return builder.fadd(*args)

    return a(a, b), codegen


@intrinsic
def load(typingctx, a, start):
    """The Vector a[start:start + LANES] (a contiguous 1-d float array)."""
    if not (isinstance(a, types.Array) and isinstance(a.dtype, types.Float) and a.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        pointer = builder.gep(data, [args[1]])
        return builder.load(
            builder.bitcast(pointer, ir.VectorType(data.type.pointee, LANES).as_pointer()), align=1
        )

    return Vector(a.dtype)(a, start), codegen


@intrinsic
def store(typingctx, a, start, v):
    """a[start:start + LANES] = the lanes of v (a contiguous 1-d float array of v's type)."""
    if not (isinstance(a, types.Array) and a.ndim == 1 and isinstance(v, Vector) and v.dtype == a.dtype):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        pointer = builder.gep(data, [args[1]])
        builder.store(args[2], builder.bitcast(pointer, args[2].type.as_pointer()), align=1)
        return context.get_dummy_value()

    return types.none(a, start, v), codegen


@intrinsic
def value(typingctx, x, i):
    """x[i] in its compute type (float16 / bfloat16 storage upcast exactly to float32)."""
    if not (isinstance(x, types.Array) and x.dtype in _STORAGE and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return _upcast(builder, builder.load(builder.gep(data, [args[1]])), x.dtype)

    return _compute_type(x.dtype)(x, i), codegen


@intrinsic
def splat(typingctx, v):
    """The Vector with v in every lane."""
    if not isinstance(v, types.Float):
        return None

    def codegen(context, builder, signature, args):
        vector = ir.VectorType(_llvm_float(v), LANES)
        one = builder.insert_element(
            ir.Constant(vector, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0)
        )
        mask = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        return builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined), mask)

    return Vector(v)(v), codegen


@intrinsic
def zeros(typingctx, like):
    """A Vector of +0 of the float type of ``like`` (a float scalar)."""
    if not isinstance(like, types.Float):
        return None
    vector = Vector(like)

    def codegen(context, builder, signature, args):
        return ir.Constant(ir.VectorType(_llvm_float(like), LANES), None)

    return vector(like), codegen


@intrinsic
def gather(typingctx, values, index):
    """The Vector of values[index[j]] (a float array, index a LANES-tuple)."""
    if not (isinstance(values, types.Array) and isinstance(values.dtype, types.Float)):
        return None
    if not (isinstance(index, types.UniTuple) and index.count == LANES):
        return None
    vector = Vector(values.dtype)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        out = ir.Constant(ir.VectorType(_llvm_float(values.dtype), LANES), ir.Undefined)
        for j in range(LANES):
            k = builder.extract_value(args[1], j)
            out = builder.insert_element(
                out, builder.load(builder.gep(array.data, [k])), ir.Constant(ir.IntType(32), j)
            )
        return out

    return vector(values, index), codegen


@intrinsic
def add_columns(typingctx, acc, rows):
    """acc + column 0 + column 1 + ... + column LANES - 1 (in that order) of the LANES x LANES tile
    ``rows`` (a contiguous 1-d float array, row q at rows[q * LANES:]): lane q adds row q's values in
    order, as q's own scalar sum over its lanes would, for LANES rows at once."""
    if not (isinstance(acc, Vector) and isinstance(rows, types.Array) and rows.ndim == 1):
        return None
    if rows.dtype != acc.dtype:
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[1])(context, builder, args[1]).data
        vector = ir.VectorType(data.type.pointee, LANES).as_pointer()
        tile = [
            builder.load(builder.bitcast(builder.gep(data, [ir.Constant(ir.IntType(64), q * LANES)]), vector))
            for q in range(LANES)
        ]
        total = args[0]
        for column in _transpose(builder, tile):
            total = builder.fadd(total, column)
        return total

    return acc(acc, rows), codegen


@intrinsic
def lane(typingctx, vector, j):
    """Lane j of a Vector."""
    if not (isinstance(vector, Vector) and isinstance(j, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return builder.extract_element(args[0], args[1])

    return vector.dtype(vector, j), codegen


@_serial
def channel_lanes(c0, width):
    """Channel of each lane: c0 .. c0 + width - 1, the last repeated (its copies are computed and
    dropped, so that a narrow group runs the same code)."""
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
def row_starts(o, C, inner, k):
    """Flat offsets of row (o, k[j]) of a (outer, C, inner) array, per lane."""
    base = o * C
    return (
        (base + k[0]) * inner,
        (base + k[1]) * inner,
        (base + k[2]) * inner,
        (base + k[3]) * inner,
        (base + k[4]) * inner,
        (base + k[5]) * inner,
        (base + k[6]) * inner,
        (base + k[7]) * inner,
    )


@_serial
def _group_pass(x, k, outer, C, inner, acc, mean, last):
    """acc plus the terms of channels k over (o, i) in memory order; the value at i == last (if any) by
    :func:`column_fma`."""
    body = inner - inner % LANES
    ahead = bursts_ahead(x, inner)  # see _eigen_kernels.AHEAD_ROW_BYTES
    for o in range(outer):
        rows = row_starts(o, C, inner, k)
        if ahead and o + 1 < outer:  # the group's rows of the next o, C * inner values on
            touch_run(x, rows[0] + C * inner, LANES * inner)
        for i in range(0, body, LANES):
            acc = tile_add(acc, x, rows, i, mean)
        for i in range(body, inner):
            if i == last:
                acc = column_fma(acc, x, rows, i, mean)
            else:
                acc = column_add(acc, x, rows, i, mean)
    return acc


@_parallel
def group_moments(x, outer, C, inner, count, mean, squares, fused, nchunks):
    """Two-pass statistics of (outer, C, inner) stored flat in ``x``, eight channels per vector, groups of
    eight channels split over ``nchunks`` parallel chunks (each channel's result is its own chain, so the
    split changes nothing). Per channel: S = the sum of x over (o, i) in memory order from +0 in the type
    of ``count`` (float32 or float64; float16 / bfloat16 storage upcast to float32), mean[c] = fl(S /
    count) stored in mean's dtype; then Q = the same sum of fl(fl(x - mean)^2) (computed in x's compute
    type, added in count's type) into squares[c]. ``fused``: the last value of each row adds as fma(d, d,
    Q) instead (count and x of one type)."""
    groups = (C + LANES - 1) // LANES
    last = inner - 1 if fused and inner % 2 == 1 else inner
    for t in prange(nchunks):
        for g in range(groups * t // nchunks, groups * (t + 1) // nchunks):
            c0 = g * LANES
            width = min(LANES, C - c0)
            k = channel_lanes(c0, width)
            acc = _group_pass(x, k, outer, C, inner, zeros(count), None, inner)
            for j in range(width):
                mean[c0 + j] = lane(acc, j) / count
            m = gather(mean, k)
            acc = _group_pass(x, k, outer, C, inner, zeros(count), m, last)
            for j in range(width):
                squares[c0 + j] = lane(acc, j)


# -- Eigen's InnerMostDimPreserver (eigen_fused): four accumulators per channel, eight channels per vector --
#
# The rows of TF's (R, C) view are j = o * inner + i of the (outer, C, inner) storage, read in place (no
# transposed copy). Rows j < ``unrolled`` (a multiple of 4, 0 for the channels Eigen sums one by one) go
# to accumulator j % 4: a tile's eight columns are eight consecutive rows, so column p goes to the
# accumulator in position p % 4 of a rotating tuple whose first entry takes the next row (a single row
# adds to it and rotates the tuple by one). Then ((a0 + a1) + a2) + a3, then the rows from ``unrolled``
# on, one by one onto that.


@_serial
def _eigen_strided_pass(x, k, outer, C, inner, unrolled, zero, mean):
    """The tree of channels k over (outer, C, inner) storage with inner > 1 (tiles of eight rows)."""
    a = (zero, zero, zero, zero)  # a[0] takes the next row
    for o in range(outer):
        stop = min(inner, unrolled - o * inner)
        if stop <= 0:
            break
        rows = row_starts(o, C, inner, k)
        body = stop - stop % LANES
        for i in range(0, body, LANES):
            a = tile_add4(a, x, rows, i, mean)
        for i in range(body, stop):
            a = (a[1], a[2], a[3], column_add(a[0], x, rows, i, mean))
    s = add(add(add(a[0], a[1]), a[2]), a[3])
    for j in range(unrolled, outer * inner):
        o = j // inner
        s = column_add(s, x, row_starts(o, C, inner, k), j - o * inner, mean)
    return s


def _means(mean, start, k):
    """None where mean is None; else the Vector of mean[k[j]], loaded from mean[start:] where start >= 0
    (chosen when numba types the call)."""


@overload(_means)
def _means_typed(mean, start, k):
    if isinstance(mean, types.NoneType):
        return lambda mean, start, k: None
    return lambda mean, start, k: load(mean, start) if start >= 0 else gather(mean, k)


@_serial
def _eigen_rows(x, g0, g1, count, C, packed, unrolled, scale, mean, out):
    """One pass of :func:`eigen_moments` over channels-last (count, C) storage, channel groups g0 .. g1 - 1
    (mean None: the values; else fl(fl(v - mean)^2)); out[c] = fl(tree sum * scale). The rows are read
    in memory order, each row's whole groups one load of eight channels each (the last C % LANES
    channels gathered); the accumulators (four per whole group: row j to j % 4, one for the last
    channels) wait in ``acc`` from row to row, stored and loaded as they are."""
    whole = min(g1, packed // LANES)  # groups g0 .. whole - 1 are whole packets
    acc = np.zeros(max(1, g1 - g0) * 4 * LANES, out.dtype)
    tail = channel_lanes(min(packed, C - 1), max(1, C - packed))  # (unused when C == packed)
    tail_at = (g1 - g0 - 1) * 4 * LANES
    tail_mean = _means(mean, -1, tail)
    for j in range(0, unrolled, 4):
        for g in range(g0, whole):
            c0 = g * LANES
            at = (g - g0) * 4 * LANES
            m = _means(mean, c0, tail)
            start = j * C + c0
            store(acc, at, run_add(load(acc, at), x, start, m))
            store(acc, at + LANES, run_add(load(acc, at + LANES), x, start + C, m))
            store(acc, at + 2 * LANES, run_add(load(acc, at + 2 * LANES), x, start + 2 * C, m))
            store(acc, at + 3 * LANES, run_add(load(acc, at + 3 * LANES), x, start + 3 * C, m))
        if whole < g1:
            s = load(acc, tail_at)
            for r in range(j, j + 4):
                s = column_add(s, x, tail, r * C, tail_mean)
            store(acc, tail_at, s)
    for g in range(g0, g1):
        c0 = g * LANES
        at = (g - g0) * 4 * LANES
        if g < whole:
            m = _means(mean, c0, tail)
            s = add(
                add(add(load(acc, at), load(acc, at + LANES)), load(acc, at + 2 * LANES)),
                load(acc, at + 3 * LANES),
            )
            for j in range(unrolled, count):
                s = run_add(s, x, j * C + c0, m)
        else:
            s = load(acc, at)
            for j in range(unrolled, count):
                s = column_add(s, x, tail, j * C, tail_mean)
        for j in range(min(LANES, C - c0)):
            out[c0 + j] = lane(s, j) * scale


@_serial
def _eigen_pass(x, k, outer, C, inner, unrolled, zero, mean):
    """One pass of :func:`eigen_moments` over the group of channels k of (outer, C, inner) storage, inner
    > 1 (mean None: the values; else the Vector of their means: fl(fl(v - m)^2))."""
    if unrolled == 0:  # one chain in row order, which is memory order
        return _group_pass(x, k, outer, C, inner, zero, mean, inner)
    return _eigen_strided_pass(x, k, outer, C, inner, unrolled, zero, mean)


@_parallel
def eigen_moments(x, outer, C, inner, packed, unrolled, inverse, mean, var, nchunks):
    """TF's fused rank-5 statistics of (outer, C, inner) stored flat in ``x`` (float16 / bfloat16 storage
    upcast to float32 as read), rows j = o * inner + i, in the type of ``inverse`` = fl(1 / R): per
    channel S by Eigen's tree (four accumulators for channels c < ``packed`` when ``unrolled`` > 0, else
    one chain), mean[c] = fl(S * inverse); then Q, the same tree over fl(fl(x - mean)^2), var[c] = fl(Q *
    inverse). Groups of eight channels split over ``nchunks`` parallel chunks (channels only: the split
    changes nothing)."""
    groups = (C + LANES - 1) // LANES
    for t in prange(nchunks):
        g0, g1 = groups * t // nchunks, groups * (t + 1) // nchunks
        if inner == 1:
            _eigen_rows(x, g0, g1, outer, C, packed, unrolled, inverse, None, mean)
            _eigen_rows(x, g0, g1, outer, C, packed, unrolled, inverse, mean, var)
            continue
        for g in range(g0, g1):
            c0 = g * LANES
            width = min(LANES, C - c0)
            k = channel_lanes(c0, width)
            split = unrolled if c0 < packed else 0
            s = _eigen_pass(x, k, outer, C, inner, split, zeros(inverse), None)
            for j in range(width):
                mean[c0 + j] = lane(s, j) * inverse
            q = _eigen_pass(x, k, outer, C, inner, split, zeros(inverse), gather(mean, k))
            for j in range(width):
                var[c0 + j] = lane(q, j) * inverse
