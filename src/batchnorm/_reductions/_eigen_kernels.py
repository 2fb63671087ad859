"""Compiled (numba) kernels of :mod:`batchnorm._reductions.eigen`: Eigen's Sum trees, operation by operation.

Imported lazily by :mod:`.eigen`. Every sum runs in float32 (float32, float16 and bfloat16 inputs, the
halves read as uint16 / int16 storage and widened on load, no converted copy) or float64, with one
accumulator per Eigen accumulator: packet lanes are explicit arrays of ``lanes`` values added lane by
lane, so nothing is reassociated (no ``fastmath``). A sum adds up v (the mean's sum) or, for the
variance, (v - m) * (v - m), TensorFlow's SquaredDifference rounded per operation; the hot loops are
written once per term so that no branch sits in them.

The layouts (see :mod:`.eigen` for when each applies):

- planes (A, C, B), reduced over A and B: one scalar accumulator per channel, ``for b: for a``
  (Eigen's GenericDimReducer). float32: 16 channels' chains in the 16 lanes of a vector, blocks of
  columns transposed into a tile (:func:`_transpose`) whose columns are then added in order
  (:func:`_chain`); float64: eight scalar chains at a time.
- rows (R, C), reduced over R: channels in whole packets take four packet accumulators that the rows
  visit in turn (row j to accumulator j % 4) when R >= 16, summed ((a0 + a1) + a2) + a3, the last
  R % 4 rows then added to it (InnerMostDimPreserver); other channels sum the rows one after another.
  float32: up to 64 channels' accumulators in vector registers over a block of rows at a time.
- inner (C, B), reduced over B: the pairwise tree of :func:`tree_sum` per channel.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .._kernels.compiled import _as, _load

IDENTITY, SQUARED_DIFFERENCE, SQUARE = 0, 1, 2

_serial = njit(nogil=True, cache=True, error_model="numpy")
_parallel = njit(parallel=True, nogil=True, cache=True, error_model="numpy")


@_serial
def _term(x, i, m, mode):
    """The term of x[i] (float32 for float16 / bfloat16 storage, else x's dtype): v, (v - m)^2 or v^2."""
    v = _load(x[i], m)
    if mode == IDENTITY:
        return v
    if mode == SQUARE:
        return v * v
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
    acc = np.full((4, lanes), _as(0.0, m))
    scalar = acc[0, 0]  # Eigen's scalar accumulator, a zero of the sum's dtype
    start = 0
    if count >= 4 * lanes:
        stop4 = count // (4 * lanes) * (4 * lanes)
        for j in range(0, stop4, 4 * lanes):
            for k in range(4):
                base = first + j + k * lanes
                for lane in range(lanes):
                    acc[k, lane] += _term(x, base + lane, m, mode)
        for k in range(1, 4):
            for lane in range(lanes):
                acc[0, lane] += acc[k, lane]
        start = stop4
    if start <= count - lanes:
        stop = count // lanes * lanes
        for j in range(start, stop, lanes):
            for lane in range(lanes):
                acc[0, lane] += _term(x, first + j + lane, m, mode)
        start = stop
    for j in range(start, count):
        scalar += _term(x, first + j, m, mode)
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
    lefts = np.full(64, _as(0.0, m))
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
    total = _as(0.0, m)
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


@_serial
def _planes_chains(x, A, C, B, c0, c1, means, mode, out):
    """Channels c0 <= c < c1 of the flat x (A, C, B), one scalar chain each: for b: for a."""
    acc = np.full(c1 - c0, _as(0.0, out[0]))
    for b in range(B):
        for a in range(A):
            for c in range(c0, c1):
                acc[c - c0] += _term(x, (a * C + c) * B + b, means[c], mode)
    out[c0:c1] = acc


@_parallel
def planes_moments(x, A, C, B, bounds, count, two_pass):
    """As :func:`rows_moments` for the flat x (A, C, B) reduced over A and B (any dtype), eight chains at
    a time."""
    sums, means, second = np.zeros(C, x.dtype), np.zeros(C, x.dtype), np.zeros(C, x.dtype)
    for t in prange(bounds.size - 1):
        for c0 in range(bounds[t], bounds[t + 1], 8):
            c1 = min(c0 + 8, bounds[t + 1])
            _planes_chains(x, A, C, B, c0, c1, means, IDENTITY, sums)
            for c in range(c0, c1):
                means[c] = sums[c] / count
            if two_pass:
                _planes_chains(x, A, C, B, c0, c1, means, SQUARED_DIFFERENCE, second)
    return sums, means, second


@_parallel
def inner_moments(x, lanes, leaf, count, mode):
    """As :func:`rows_moments` for x (C, B) reduced over B: a tree per channel, its first value at c * B
    in the flat array (the tree's packet boundaries count from the array's start)."""
    C, B = x.shape
    flat = x.reshape(C * B)
    zero = _as(0.0, count)
    sums, means, second = np.full(C, zero), np.full(C, zero), np.full(C, zero)
    for c in prange(C):
        sums[c] = tree_sum(flat, c * B, B, lanes, leaf, zero, IDENTITY)
        means[c] = sums[c] / count
        if mode == SQUARED_DIFFERENCE:
            second[c] = tree_sum(flat, c * B, B, lanes, leaf, means[c], SQUARED_DIFFERENCE)
        elif mode == SQUARE:
            second[c] = tree_sum(flat, c * B, B, lanes, leaf, zero, SQUARE)
    return sums, means, second


# -- float32 SIMD kernels: lanes across independent chains ------------------------------------------------
#
# Each lane of a <LANES x float> vector is one channel's float32 chain, added lane-wise in IEEE float32 in
# the chain's own order: vectors only run independent chains side by side, so the bits are those of the
# scalar kernels above. float16 and bfloat16 inputs travel as uint16 / int16 storage and are widened to
# float32 (exactly) as they are loaded; the hot loops are LLVM IR with the accumulators in registers.

# Tuning (Zen 4, 32x64x112x112 NCHW, one thread): blocks of 4 columns transposed (16-byte loads put
# the rows' high index bits in place, 8 in-lane shuffles per 4 x 4) beat 16 x 16 register transposes;
# one channel group at a time beats several side by side (fewer rows streamed at once); prefetching each
# row 128 values ahead into L2 matters most (the hardware does not follow 512 short streams).

#: lanes (channels) per SIMD vector of the float32 kernels (the planes transpose assumes 16).
LANES = 16
#: values ahead of the current column that the planes kernel asks the cache to fetch, row by row.
PREFETCH = 128
#: the prefetches' locality hint (3: every cache level, 2: L2 and beyond).
LOCALITY = 2
#: planes kernel: columns (a multiple of WIDTH) transposed from the rows before their chains are summed.
COLUMNS = 128
#: planes kernel: columns per transposed block (4 or 16).
WIDTH = 4
#: planes kernel: floats between the columns of a transposed tile beyond its A * LANES values (a
#: power-of-two distance would map every column to the same few cache sets).
PAD = 16
#: NCHW kernels that read each image's rows of a channel group as a short burst C rows after the last
#: (this planes kernel, PyTorch's group_moments in :mod:`._fused_kernels`) ask for the next image's rows
#: while they sum these, on rows of at most AHEAD_ROW_BYTES in inputs of at least AHEAD_MIN_BYTES (from
#: memory, not the caches): the prefetchers do not see those bursts coming. Measured: planes 1.13-1.36x
#: at rows of 49 and 196 values, 25-51 MB, 0.78-0.8x on inputs of 13 MB, 0.92x on rows of 784;
#: group_moments 1.35-1.66x at rows of 49 and 64 values, 16-26 MB, the torch dialect's training forward
#: 1.1-1.4x at rows of 100 to 256 values, 25-51 MB, slower by up to 0.88x on inputs that fit the caches.
AHEAD_ROW_BYTES = 1024
AHEAD_MIN_BYTES = 16 << 20
#: planes kernel: the largest tile (per thread) that holds a channel group's whole transposed plane, so
#: that the second pass sums it without reading x again (statistics, with the prefetch above: 2.0-2.1x at
#: 7x7, 1.5-3x at 14x14, 1.6x at 64x256x28x28); a larger plane is transposed COLUMNS columns at a time,
#: again in each pass.
TILE_BYTES = 4 << 20
#: rows kernel: values per block of rows that every run of channels reads before the next block.
ROW_BLOCK = 1 << 14
#: rows kernel: a task whose channels are part of each row, at most this many bytes of it, asks the cache
#: for the next block of rows while it sums one (each thread reading its part of every row defeats the
#: prefetchers: 1.1-1.5x faster at 128-256 channels of 256-512, 0.9x at 512 of 1024, slower on whole rows).
TOUCH_BYTES = 1024

_I32, _I64 = ir.IntType(32), ir.IntType(64)
_F32 = ir.FloatType()
_IDENTITY, _CENTERED, _SQUARE = "identity", "centered", "square"


def _vector_type(lanes: int) -> ir.VectorType:
    return ir.VectorType(_F32, lanes)


def _data(context, builder, array_type, array):
    return context.make_array(array_type)(context, builder, array).data


def _load_vector(builder, storage, data, index, lanes: int):
    """``lanes`` consecutive values of ``data`` (float32, float16 or bfloat16 bits) from ``index``, as
    float32."""
    element = ir.IntType(16) if storage in (types.uint16, types.int16) else _F32
    pointer = builder.bitcast(builder.gep(data, [index]), ir.VectorType(element, lanes).as_pointer())
    v = builder.load(pointer, align=2 if element != _F32 else 4)
    if storage == types.uint16:
        return builder.fpext(builder.bitcast(v, ir.VectorType(ir.HalfType(), lanes)), _vector_type(lanes))
    if storage == types.int16:
        wide = builder.zext(v, ir.VectorType(_I32, lanes))
        sixteen = ir.Constant(ir.VectorType(_I32, lanes), [16] * lanes)
        return builder.bitcast(builder.shl(wide, sixteen), _vector_type(lanes))
    return v


def _store_vector(builder, data, index, value, lanes: int):
    pointer = builder.bitcast(builder.gep(data, [index]), _vector_type(lanes).as_pointer())
    builder.store(value, pointer, align=4)


def _term_kind(term) -> str | None:
    """None -> v; a float32 array of means -> (v - m)^2; a boolean -> v * v (None: not a term)."""
    if isinstance(term, types.NoneType):
        return _IDENTITY
    if isinstance(term, types.Array) and term.dtype == types.float32 and term.layout == "C":
        return _CENTERED
    if isinstance(term, types.Boolean):
        return _SQUARE
    return None


def _apply_term(builder, kind: str, v, m):
    if kind == _CENTERED:
        d = builder.fsub(v, m)
        return builder.fmul(d, d)
    if kind == _SQUARE:
        return builder.fmul(v, v)
    return v


def _storage_ok(array) -> bool:
    return (
        isinstance(array, types.Array)
        and array.ndim == 1
        and array.layout == "C"
        and array.dtype in (types.float32, types.uint16, types.int16)
    )


def _float32_ok(array) -> bool:
    return isinstance(array, types.Array) and array.dtype == types.float32 and array.layout == "C"


def _prefetch(builder, data, index):
    """A hint: fetch the cache line of data[index] (never faults, whatever the address)."""
    module = builder.module
    pointer_type = ir.IntType(8).as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [pointer_type, _I32, _I32, _I32])
    function = module.globals.get("llvm.prefetch") or ir.Function(module, fnty, "llvm.prefetch")
    pointer = builder.bitcast(builder.gep(data, [index]), pointer_type)
    builder.call(function, [pointer, ir.Constant(_I32, 0), ir.Constant(_I32, LOCALITY), ir.Constant(_I32, 1)])


def _mask(*lanes: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(_I32, len(lanes)), list(lanes))


def _in_lane(pattern) -> ir.Constant:
    """A two-vector shuffle of 16 lanes applying ``pattern`` (4 source lanes, 0-3 from the first vector,
    16-19 from the second) to each 128-bit chunk."""
    return _mask(*(p + 4 * h for h in range(4) for p in pattern))


@intrinsic
def _transpose(typingctx, x, first, stride, rows, tile, at, step):
    """tile.flat[at + k * step + g] = x.flat[first + min(g, rows - 1) * stride + k] for g < 16, k < WIDTH:
    a 16 x WIDTH block of rows ``stride`` apart, transposed; row g >= rows repeats the last row. Also
    prefetches each row PREFETCH values ahead. float32 ``tile``; indices unchecked.

    With i = 4 h + r and k = 4 u + l: the loads put row (4 h + r) columns 4 u .. 4 u + 3 in the 128-bit
    chunk h of register 4 u + r (the exchange of the high bits costs no shuffle), then each group of
    four registers is transposed within the chunks (unpack ps, then unpack pd: 8 shuffles per 4 x 4)."""
    if not (_storage_ok(x) and _float32_ok(tile)):
        return None

    def codegen(context, builder, signature, args):
        x_value, first_value, stride_value, rows_value, tile_value, at_value, step_value = args
        source = _data(context, builder, signature.args[0], x_value)
        target = _data(context, builder, signature.args[4], tile_value)
        last = builder.sub(rows_value, ir.Constant(_I64, 1))
        starts = []
        for i in range(16):
            row = builder.select(
                builder.icmp_signed("<", ir.Constant(_I64, i), rows_value), ir.Constant(_I64, i), last
            )
            starts.append(builder.add(first_value, builder.mul(row, stride_value)))
            if PREFETCH:
                _prefetch(builder, source, builder.add(starts[i], ir.Constant(_I64, PREFETCH)))
        registers = []
        for u in range(WIDTH // 4):
            for r in range(4):
                chunks = [
                    _load_vector(
                        builder, x.dtype, source, builder.add(starts[4 * h + r], ir.Constant(_I64, 4 * u)), 4
                    )
                    for h in range(4)
                ]
                low = builder.shuffle_vector(chunks[0], chunks[1], _mask(*range(8)))
                high = builder.shuffle_vector(chunks[2], chunks[3], _mask(*range(8)))
                registers.append(builder.shuffle_vector(low, high, _mask(*range(16))))
        for u in range(WIDTH // 4):
            r0, r1, r2, r3 = registers[4 * u : 4 * u + 4]
            t0 = builder.shuffle_vector(r0, r1, _in_lane((0, 16, 1, 17)))
            t1 = builder.shuffle_vector(r2, r3, _in_lane((0, 16, 1, 17)))
            t2 = builder.shuffle_vector(r0, r1, _in_lane((2, 18, 3, 19)))
            t3 = builder.shuffle_vector(r2, r3, _in_lane((2, 18, 3, 19)))
            columns = (
                builder.shuffle_vector(t0, t1, _in_lane((0, 1, 16, 17))),
                builder.shuffle_vector(t0, t1, _in_lane((2, 3, 18, 19))),
                builder.shuffle_vector(t2, t3, _in_lane((0, 1, 16, 17))),
                builder.shuffle_vector(t2, t3, _in_lane((2, 3, 18, 19))),
            )
            for j, column in enumerate(columns):
                index = builder.add(at_value, builder.mul(ir.Constant(_I64, 4 * u + j), step_value))
                _store_vector(builder, target, index, column, 16)
        return context.get_dummy_value()

    return types.void(x, first, stride, rows, tile, at, step), codegen


def _chain_codegen(kind: str, lanes: int):
    def codegen(context, builder, signature, args):
        tile_value, first_value, count_value, term_value, acc_value = args
        tile = _data(context, builder, signature.args[0], tile_value)
        acc = _data(context, builder, signature.args[4], acc_value)
        zero = ir.Constant(_I64, 0)
        slot = cgutils.alloca_once(builder, _vector_type(lanes))
        builder.store(_load_vector(builder, types.float32, acc, zero, lanes), slot)
        mean = None
        if kind == _CENTERED:
            means = _data(context, builder, signature.args[3], term_value)
            mean = _load_vector(builder, types.float32, means, zero, lanes)
        with cgutils.for_range(builder, count_value) as loop:
            index = builder.add(first_value, builder.mul(loop.index, ir.Constant(_I64, lanes)))
            v = _apply_term(builder, kind, _load_vector(builder, types.float32, tile, index, lanes), mean)
            builder.store(builder.fadd(builder.load(slot), v), slot)
        _store_vector(builder, acc, zero, builder.load(slot), lanes)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _chain(typingctx, tile, first, count, term, acc):
    """acc[:LANES] += t(tile[first + i * LANES + lane]) for i < count, in order, lane by lane (t: the term,
    the means, where centered, at term[:LANES]). One chain of additions, the accumulator in a register."""
    kind = _term_kind(term)
    if kind is None or not (_float32_ok(tile) and _float32_ok(acc)):
        return None
    return types.void(tile, first, count, term, acc), _chain_codegen(kind, LANES)


@_serial
def _planes_pass(x, A, C, B, c0, term, tile, acc, filled):
    """acc[g] = the chain (for b: for a) of the terms of channel c0 + g < c0 + LANES (channels past C
    repeat channel C - 1) of the flat x (A, C, B): blocks of as many columns as the tile has room for
    but WIDTH transposed (column k of a block at tile[k * step + a * LANES + g] = x[a, c0 + g, b0 + k]),
    then summed column by column; the last B % WIDTH columns one at a time, each in one of the WIDTH
    columns after the block's. ``filled``: the tile already holds this group's plane as one block
    (transposed by the previous pass), which is summed again without reading x. Short rows of a large
    input (AHEAD_ROW_BYTES, AHEAD_MIN_BYTES) ask for the next a's rows while a's are transposed."""
    acc[:] = np.float32(0.0)
    step = A * LANES + PAD
    width = tile.size // step - WIDTH
    rows = min(LANES, C - c0)
    full = B - B % WIDTH
    ahead = bursts_ahead(x, B)
    for b0 in range(0, full, width):
        nb = min(width, full - b0)
        for a in range(0 if filled else A):
            first = (a * C + c0) * B + b0
            if ahead and a + 1 < A:  # these columns of the group's rows of the next a
                nxt = (a + 1) * C + c0
                _touch_rows(x, nxt, nxt + rows, B, b0, b0 + nb)
            for k in range(0, nb, WIDTH):
                _transpose(x, first + k, B, rows, tile, k * step + a * LANES, step)
        for k in range(nb):
            _chain(tile, k * step, A, term, acc)
    for b in range(full, B):
        column = (width + b - full) * step
        for a in range(0 if filled else A):
            for g in range(LANES):
                c = min(c0 + g, C - 1)
                tile[column + a * LANES + g] = _load(x[(a * C + c) * B + b], np.float32(0.0))
        _chain(tile, column, A, term, acc)


@_parallel
def planes_moments32(x, A, C, B, cuts, count, second, chunks):
    """Per channel of the flat x (A, C, B) (float32, float16 or bfloat16 storage) reduced over A and B:
    the float32 sum, the mean sum / count and the second sum (``second``: 0 none, 1 of (v - mean)^2, 2 of
    v^2). Chunk t takes the channel groups cuts[t] <= group < cuts[t + 1], LANES channels each. Where a
    group's transposed plane fits a tile of TILE_BYTES, it is one block, and the second sum reads the
    tile the first left; else blocks of COLUMNS columns, transposed again by the second pass."""
    sums = np.zeros(C, np.float32)
    means = np.zeros(C, np.float32)
    seconds = np.zeros(C, np.float32)
    step = A * LANES + PAD
    kept = (B - B % WIDTH + WIDTH) * step * 4 <= TILE_BYTES
    columns = max(WIDTH, B - B % WIDTH) if kept else COLUMNS
    for t in prange(chunks):
        tile = np.empty((columns + WIDTH) * step, np.float32)
        acc = np.empty(LANES, np.float32)
        lane_means = np.empty(LANES, np.float32)
        for group in range(cuts[t], cuts[t + 1]):
            c0 = group * LANES
            width = min(LANES, C - c0)
            _planes_pass(x, A, C, B, c0, None, tile, acc, False)
            for i in range(LANES):
                lane_means[i] = acc[i] / count
            sums[c0 : c0 + width] = acc[:width]
            means[c0 : c0 + width] = lane_means[:width]
            if second == 1:
                _planes_pass(x, A, C, B, c0, lane_means, tile, acc, kept)
            elif second == 2:
                _planes_pass(x, A, C, B, c0, True, tile, acc, kept)
            if second:
                seconds[c0 : c0 + width] = acc[:width]
    return sums, means, seconds


def _rows_codegen(vectors: int, lanes: int, quads: bool, kind: str):
    parts = 4 if quads else 1

    def codegen(context, builder, signature, args):
        x_value, first_value, count_value, stride_value, term_value, acc_value, at_value, acc_stride = args
        source = _data(context, builder, signature.args[0], x_value)
        acc = _data(context, builder, signature.args[5], acc_value)
        slots, means, homes = [], [], []
        for k in range(parts):
            for v in range(vectors):
                home = builder.add(
                    builder.add(at_value, builder.mul(acc_stride, ir.Constant(_I64, k))),
                    ir.Constant(_I64, v * lanes),
                )
                slot = cgutils.alloca_once(builder, _vector_type(lanes))
                builder.store(_load_vector(builder, types.float32, acc, home, lanes), slot)
                slots.append(slot)
                homes.append(home)
        for v in range(vectors):
            if kind == _CENTERED:
                means_data = _data(context, builder, signature.args[4], term_value)
                index = builder.add(at_value, ir.Constant(_I64, v * lanes))
                means.append(_load_vector(builder, types.float32, means_data, index, lanes))
            else:
                means.append(None)
        with cgutils.for_range(builder, count_value) as loop:
            row = builder.add(
                first_value, builder.mul(builder.mul(loop.index, ir.Constant(_I64, parts)), stride_value)
            )
            for k in range(parts):
                base = builder.add(row, builder.mul(stride_value, ir.Constant(_I64, k)))
                for v in range(vectors):
                    index = builder.add(base, ir.Constant(_I64, v * lanes))
                    t = _apply_term(
                        builder,
                        kind,
                        _load_vector(builder, signature.args[0].dtype, source, index, lanes),
                        means[v],
                    )
                    slot = slots[k * vectors + v]
                    builder.store(builder.fadd(builder.load(slot), t), slot)
        for slot, home in zip(slots, homes, strict=True):
            _store_vector(builder, acc, home, builder.load(slot), lanes)
        return context.get_dummy_value()

    return codegen


@intrinsic
def touch(typingctx, x, index):
    """A hint: fetch the cache line of x.flat[index] (never faults)."""
    if not (isinstance(x, types.Array) and x.ndim == 1 and x.layout == "C"):
        return None

    def codegen(context, builder, signature, args):
        _prefetch(builder, _data(context, builder, signature.args[0], args[0]), args[1])
        return context.get_dummy_value()

    return types.void(x, index), codegen


@_serial
def touch_run(x, first, count):
    """Prefetch hints for every cache line of x[first:first + count], in memory order."""
    for i in range(first, first + count, 64 // x.itemsize):
        touch(x, i)


@_serial
def bursts_ahead(x, row):
    """Whether an NCHW kernel reading rows of ``row`` values of x in per-image bursts asks for the next
    image's rows (AHEAD_ROW_BYTES, AHEAD_MIN_BYTES)."""
    return row * x.itemsize <= AHEAD_ROW_BYTES and x.size * x.itemsize >= AHEAD_MIN_BYTES


@_serial
def _touch_rows(x, r0, r1, C, c0, c1):
    """Prefetch hints for rows r0 .. r1 - 1 of the flat x (R, C), channels c0 .. c1 - 1, in memory order."""
    for r in range(r0, r1):
        touch_run(x, r * C + c0, c1 - c0)


def _make_rows(vectors: int, lanes: int, quads: bool):
    @intrinsic
    def rows(typingctx, x, first, count, stride, term, acc, at, acc_stride):
        kind = _term_kind(term)
        if kind is None or not (_storage_ok(x) and _float32_ok(acc)):
            return None
        signature = types.void(x, first, count, stride, term, acc, at, acc_stride)
        return signature, _rows_codegen(vectors, lanes, quads, kind)

    return rows


_rows4_4, _rows1_4 = _make_rows(4, LANES, True), _make_rows(4, LANES, False)
_rows4_1, _rows1_1 = _make_rows(1, LANES, True), _make_rows(1, LANES, False)
_rows4_half, _rows1_half = _make_rows(1, LANES // 2, True), _make_rows(1, LANES // 2, False)


@_serial
def _rows_run(x, first, count, C, quads, term, acc, c0, c1):
    """Rows of x (flat, C columns) from ``first``: channels c0 <= c < c1 (a multiple of LANES // 2 wide)
    add ``count`` groups of four rows into acc[k * C + c] (row 4 i + k), ``quads``, or ``count`` rows
    one after another into acc[c]; 4 * LANES, then LANES, then LANES // 2 channels at a time, the
    accumulators in registers."""
    c = c0
    while c1 - c >= 4 * LANES:
        if quads:
            _rows4_4(x, first + c, count, C, term, acc, c, C)
        else:
            _rows1_4(x, first + c, count, C, term, acc, c, C)
        c += 4 * LANES
    while c1 - c >= LANES:
        if quads:
            _rows4_1(x, first + c, count, C, term, acc, c, C)
        else:
            _rows1_1(x, first + c, count, C, term, acc, c, C)
        c += LANES
    if c < c1:
        if quads:
            _rows4_half(x, first + c, count, C, term, acc, c, C)
        else:
            _rows1_half(x, first + c, count, C, term, acc, c, C)


@_serial
def _rows_pass(x, R, C, c0, c1, packets, term, acc, out):
    """out[c] for c0 <= c < c1: Eigen's sum over the R rows of the flat x (R, C) of the terms of channel c
    (see the module docstring); acc: scratch of 4 * C float32."""
    acc[:] = np.float32(0.0)
    if not packets:  # the last C % lanes channels: rows one after another, scalar
        for j in range(R):
            for c in range(c0, c1):
                acc[c] += _term32(x, j * C + c, term, c)
        out[c0:c1] = acc[c0:c1]
        return
    block = max(4, ROW_BLOCK // C // 4 * 4)
    start = R // 4 * 4 if R >= 16 else 0
    ahead = c1 - c0 < C and (c1 - c0) * x.itemsize <= TOUCH_BYTES
    for r0 in range(0, start, block):
        r1 = min(start, r0 + block)
        if ahead:
            _touch_rows(x, r1, min(R, r1 + block), C, c0, c1)
        _rows_run(x, r0 * C, (r1 - r0) // 4, C, True, term, acc, c0, c1)
    if start:
        for c in range(c0, c1):
            acc[c] = ((acc[c] + acc[C + c]) + acc[2 * C + c]) + acc[3 * C + c]
    for r0 in range(start, R, block):
        r1 = min(R, r0 + block)
        _rows_run(x, r0 * C, r1 - r0, C, False, term, acc, c0, c1)
    out[c0:c1] = acc[c0:c1]


@_serial
def _term32(x, i, term, c):
    """The float32 term of x[i] for channel c: v (``term`` None), (v - term[c])^2 (means) or v^2 (True)."""
    v = _load(x[i], np.float32(0.0))
    return _scalar_term(v, term, c)


def _scalar_term(v, term, c):
    """v, (v - term[c])^2 or v * v as :func:`_term_kind` reads ``term``."""


@overload(_scalar_term)
def _scalar_term_typed(v, term, c):
    kind = _term_kind(term)
    if kind == _IDENTITY:
        return lambda v, term, c: v
    if kind == _SQUARE:
        return lambda v, term, c: v * v

    def centered(v, term, c):
        d = v - term[c]
        return d * d

    return centered


@_parallel
def rows_moments32(x, R, C, bounds, packets, count, second, chunks):
    """As :func:`planes_moments32` for the flat x (R, C) reduced over its rows: chunk t takes the channels
    bounds[t] <= c < bounds[t + 1], in whole packets where packets[t]."""
    sums = np.zeros(C, np.float32)
    means = np.zeros(C, np.float32)
    seconds = np.zeros(C, np.float32)
    for t in prange(chunks):
        c0, c1 = bounds[t], bounds[t + 1]
        acc = np.empty(4 * C, np.float32)
        _rows_pass(x, R, C, c0, c1, packets[t], None, acc, sums)
        for c in range(c0, c1):
            means[c] = sums[c] / count
        if second == 1:
            _rows_pass(x, R, C, c0, c1, packets[t], means, acc, seconds)
        elif second == 2:
            _rows_pass(x, R, C, c0, c1, packets[t], True, acc, seconds)
    return sums, means, seconds
