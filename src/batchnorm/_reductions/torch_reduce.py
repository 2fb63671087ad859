"""PyTorch's generic CPU sum, as ``torch.mean`` runs it: Keras 3 on PyTorch (``reduction="torch-reduce"``).

Keras 3's torch backend (keras/src/backend/torch/nn.py, ``moments``) forms the batch statistics as::

    mean = torch.mean(x, dim=axes, keepdim=True)
    var = torch.mean(torch.square(x), dim=axes, keepdim=True) - torch.square(mean)

in float32: the layer casts float16 / bfloat16 inputs to float32 first (keras/src/layers/normalization/
batch_normalization.py, ``call``), so ``x`` here is float32, ``x * x``, ``mean * mean`` and the difference
are each rounded to float32. On CPU ``torch.mean`` is ``sum(x) / n``, one float32 division
(aten/src/ATen/native/ReduceOps.cpp, ``mean_out``; cpu/BinaryOpsKernel.cpp, ``div_true_kernel``), and the
sum is the cascade sum of aten/src/ATen/native/cpu/SumKernel.cpp with ``acc_type<float, true>`` = float.

The tree (``L`` = lanes of ``Vectorized<float>``: 8, since ATen registers the sum kernel for AVX2 at most,
``REGISTER_DISPATCH`` leaving the AVX-512 slot empty, aten/src/ATen/native/DispatchStub.h)::

    cascade(v_0 .. v_m-1)   multi_row_sum: with p = max(4, ceil(log2 m) // 4), s = 2**p, four levels
        a0..a3 = 0; after each full block of s items a1 += a0, a0 = 0; when the item count is a
        multiple of s**2 also a2 += a1, a1 = 0; of s**3 also a3 += a2, a2 = 0. Leftover items go to a0;
        result ((a0 + a1) + a2) + a3. Items may be vectors: every lane is its own cascade.
    ilp(v_0 .. v_m-1)       row_sum: q = m // 4; P_k = cascade(v_k, v_4+k, .., v_4(q-1)+k), k = 0..3;
        P_0 += v_4q, .., v_m-1 in order; result ((P_0 + P_1) + P_2) + P_3.
    row(x_0 .. x_l-1)       vectorized_inner_sum (l >= L): the l // L vectors of L values summed by ilp,
        lane by lane; then f = 0; f += each of the l % L trailing values; f += lane 0, .., lane L-1.
                            scalar_inner_sum (l < L): ilp of the values.

TensorIterator (aten/src/ATen/TensorIterator.cpp) puts the reduced dimensions first, by stride, and
coalesces them, so the canonical ``(outer, C, inner)`` view maps onto three shapes:

- ``C == 1``: one contiguous run of n values: ``row`` of it. With n >= GRAIN_SIZE (32768) and more
  than one thread, ``two_pass_reduction`` (aten/src/ATen/TensorIteratorReduce.cpp) cuts it into
  ``min(T, ceil(n / GRAIN_SIZE))`` chunks of ``ceil(n / chunks)``; the T per-thread results (0 for idle
  threads) are summed by ``row`` again.
- ``inner > 1`` (NCHW): per channel, ``s = 0; s += row(x[j, c, :])`` for j = 0 .. outer - 1.
- ``inner == 1`` (NHWC, 2-D): the (outer, C) plane is reduced down its columns. With outer * C >=
  GRAIN_SIZE and T > 1 threads, ``parallel_dim_reduction`` gives thread t the columns
  ``[t * k, (t + 1) * k)``, ``k = ceil(C / min(T, C))``, both ends rounded down to a multiple of 32
  (128 bytes; the last end kept): T changes the result here. In each part of w columns,
  ``vectorized_outer_sum`` (w >= L) takes groups of 4 L columns with one ``cascade`` each down the
  rows, the rest by ``ilp`` down the rows; ``scalar_outer_sum`` (w < L) takes groups of 4 columns by
  ``cascade`` and the rest by ``ilp``.

Each output starts at 0 and receives its sums by ``+=`` (``CastStoreAccumulate``). Bit for bit against
torch 2.13 ``torch.mean`` and ``keras.ops.moments`` (torch backend) on 1 to 4 threads, float32 and
float16 / bfloat16 inputs, offsets 0 and 1e4, NCHW / NHWC / 2-D shapes from (1, 5) to (32, 64, 56, 56)
and (530000, 4). Channels on several non-adjacent axes (copied to channels-last here) are not covered.

``variance="two_pass"`` is ``torch.mean(torch.square(x - mean))`` over the same tree, and
``"sum_of_squares_clamped"`` clamps the difference at 0.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np
from numba import njit

from .._errors import BatchNormError
from ._fused_kernels import LANES, add, add_columns, lane, load, run_add, splat, store, zeros
from .torch_batchnorm import default_threads

__all__ = ["GRAIN_SIZE", "VECTOR_BYTES", "moments"]

#: at::internal::GRAIN_SIZE: reductions over fewer values run on one thread.
GRAIN_SIZE = 32768
#: bytes of ATen's ``Vectorized<T>`` in the sum kernel: 32 (AVX2, and the generic build's width).
VECTOR_BYTES = 32
#: parallel_dim_reduction rounds the column ranges of its threads to this many bytes.
COLUMN_ROUNDING_BYTES = 128
#: inputs below this many values are summed on the calling thread alone.
PARALLEL_MIN = 1 << 16
#: multi_row_sum's least block: 2**MIN_POWER items (:func:`_level_power`; every block under 2**20 items).
MIN_POWER = 4
#: rows of fewer than this many cascade blocks (2**MIN_POWER groups of four vectors each) are summed in
#: registers.
ROW_BLOCKS = 16


def moments(
    x3: np.ndarray,
    variance: str,
    dtype: np.dtype,
    *,
    shape: tuple[int, ...] | None = None,
    threads: int | None = None,
    vector_bytes: int = VECTOR_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of ``x3`` (outer, C, inner) as ``torch.mean`` sums them.

    ``threads`` is torch's at::get_num_threads() (None: torch's default here, the physical cores, see
    :func:`batchnorm._reductions.torch_batchnorm.default_threads`) and ``vector_bytes`` the width of
    its sum kernel's vectors; both shape the tree (see the module docstring), which follows x3 alone
    (``shape`` is not needed). float16 / bfloat16 ``x3`` are converted to ``dtype`` exactly, as Keras
    casts them to float32 before ``moments``.
    """
    threads = default_threads() if threads is None else int(threads)
    if threads < 1:
        raise BatchNormError(f"threads must be >= 1; got {threads}. Pass None for torch's default")
    dtype = np.dtype(dtype)
    x = np.ascontiguousarray(x3, dtype=dtype)
    outer, C, inner = x.shape
    tree = _Tree(outer, C, inner, threads, vector_bytes // dtype.itemsize, dtype)
    count = dtype.type(tree.outer * tree.inner)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        total, squares = tree.channel_sums(x, np.zeros(tree.C, dtype))
        mean = total / count
        if variance == "two_pass":
            var = tree.channel_sums(x, mean)[1] / count
        else:
            var = squares / count - mean * mean
            if variance == "sum_of_squares_clamped":
                var = np.maximum(var, dtype.type(0))
    return mean, var


class _Tree:
    """torch's reduction of an (outer, C, inner) array over outer and inner, on ``threads`` threads."""

    def __init__(self, outer: int, C: int, inner: int, threads: int, lanes: int, dtype: np.dtype) -> None:
        self.outer, self.C, self.inner = outer, C, inner
        self.threads, self.lanes, self.dtype = threads, lanes, dtype
        self.zero = dtype.type(0)

    def channel_sums(self, x: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per channel, the tree sums of x and of (x - center)^2 (center 0: of x * x)."""
        if x.size == 0:
            return np.zeros(self.C, self.dtype), np.zeros(self.C, self.dtype)
        if self.C == 1:
            return self._single_channel(x.reshape(-1), center)
        if self.inner > 1:
            a, b = self._rows(x.reshape(-1), center, self.C, *_uniform_rows(self.outer * self.C, self.inner))
            shape = (self.outer, self.C)
            return _fold_rows(a.reshape(shape), self.zero), _fold_rows(b.reshape(shape), self.zero)
        return self._columns(x.reshape(self.outer, self.C), center)

    def _rows(
        self, flat: np.ndarray, center: np.ndarray, C: int, starts: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row r = flat[starts[r]:starts[r] + lengths[r]] of channel r % C: its two sums."""
        rows = starts.size
        out_a, out_b = np.empty(rows, self.dtype), np.empty(rows, self.dtype)
        args = (flat, center, np.int64(C), starts, lengths, self.lanes, self.zero)
        _in_parallel(_rows_into, flat.size, rows, lambda r0, r1: (*args, r0, r1, out_a, out_b))
        return out_a, out_b

    def _single_channel(self, flat: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One contiguous run; two_pass_reduction's per-thread chunks when it is large."""
        n = flat.size
        parts = 1 if n < GRAIN_SIZE or self.threads == 1 else min(self.threads, -(-n // GRAIN_SIZE))
        size = -(-n // parts)
        starts = np.arange(parts, dtype=np.int64) * size
        a, b = self._rows(flat, center, 1, starts, np.minimum(size, n - starts))
        if parts == 1:
            return self.zero + a, self.zero + b
        whole = np.array([0], np.int64), np.array([self.threads], np.int64)
        no_center = np.zeros(1, self.dtype)
        sums = []
        for part in (a, b):
            buffer = np.zeros(self.threads, self.dtype)  # idle threads leave the identity
            buffer[:parts] = self.zero + part
            total = self._rows(buffer, no_center, 1, *whole)[0]
            sums.append(self.zero + total)
        return sums[0], sums[1]

    def _column_parts(self) -> list[tuple[int, int]]:
        """The column ranges parallel_dim_reduction gives its threads (one range when serial)."""
        C = self.C
        if self.outer * C < GRAIN_SIZE or self.threads == 1:
            return [(0, C)]
        used = min(self.threads, C)
        size = -(-C // used)
        per = COLUMN_ROUNDING_BYTES // self.dtype.itemsize
        parts = []
        for t in range(used):
            begin, end = t * size, min(C, (t + 1) * size)
            if begin >= end:  # invoke_parallel calls no function for this thread
                continue
            begin -= begin % per
            if end != C:
                end -= end % per
            if begin < end:
                parts.append((begin, end))
        return parts

    def _column_modes(self) -> np.ndarray:
        """Column intervals (first, end, by ilp): cascade for whole groups, ilp for the rest."""
        intervals: list[list[int]] = []
        for begin, end in self._column_parts():
            group = 4 * self.lanes if end - begin >= self.lanes else 4
            split = begin + (end - begin) // group * group
            for first, last, ilp in ((begin, split, 0), (split, end, 1)):
                if first == last:
                    continue
                if intervals and intervals[-1][1] == first and intervals[-1][2] == ilp:
                    intervals[-1][1] = last
                else:
                    intervals.append([first, last, ilp])
        return np.array(intervals, dtype=np.int64)

    def _columns(self, x2: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Down the columns of the (R, C) plane."""
        modes = self._column_modes()
        first, end, ilp = (np.ascontiguousarray(modes[:, k]) for k in range(3))
        rows = self.outer
        power_cascade, power_ilp = _level_power(rows), _level_power(rows // 4)
        # chunks of rows end on a level-3 boundary of each tree in use: each starts from empty levels
        spans = [3 * power_cascade] if not ilp.all() else []
        spans += [3 * power_ilp + 2] if ilp.any() else []
        chunk = 1 << max(spans)
        C, dtype = self.C, self.dtype
        blocks, blocks4 = rows >> (3 * power_cascade), (rows // 4) >> (3 * power_ilp)
        levels = (  # levels 0-2 left by the last chunk, then level 3 of each block; by x, by squares
            *(np.zeros((3, width), dtype) for width in (C, C, 4 * C, 4 * C)),
            *(
                np.zeros((max(1, n), width), dtype)
                for n, width in ((blocks, C), (blocks, C), (blocks4, 4 * C), (blocks4, 4 * C))
            ),
        )
        args = (x2, center, np.tile(center, 4), first, end, ilp, power_cascade, power_ilp, chunk)
        pieces = -(-rows // chunk)
        _in_parallel(_column_pieces, x2.size, pieces, lambda p0, p1: (*args, p0, p1, levels, self.zero))
        return _column_sums(x2, center, first, end, ilp, levels, self.zero)


@functools.lru_cache(maxsize=32)
def _uniform_rows(rows: int, inner: int) -> tuple[np.ndarray, np.ndarray]:
    """The starts and lengths of ``rows`` contiguous rows of ``inner`` values, made once per shape (as
    fresh arrays they cost a quarter of the statistics of 256x512x7x7)."""
    return np.arange(rows, dtype=np.int64) * inner, np.full(rows, inner, np.int64)


_pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="batchnorm-torch-reduce")


def _in_parallel(kernel: Any, values: int, pieces: int, arguments: Any) -> None:
    """kernel(*arguments(p0, p1)) over the ``pieces`` split in contiguous ranges, one range per thread
    (numba.get_num_threads() of them; one, on this thread, below PARALLEL_MIN values)."""
    chunks = 1 if values < PARALLEL_MIN else max(1, min(pieces, numba.get_num_threads()))
    ranges = [(pieces * t // chunks, pieces * (t + 1) // chunks) for t in range(chunks)]
    if chunks == 1:
        kernel(*arguments(*ranges[0]))
        return
    for future in [_pool.submit(kernel, *arguments(*r)) for r in ranges]:
        future.result()


# -- compiled kernels: every sum in the input's dtype, no reassociation (no fastmath); serial and
#    nogil, run side by side on the thread pool (a numba prange would add seconds of compilation) --

_kernel = njit(nogil=True, cache=True, error_model="numpy")


@_kernel
def _level_power(m):
    """multi_row_sum's log2 of its block for m items: max(4, CeilLog2(m) / 4)."""
    ceil_log2 = 1
    if m > 2:
        ceil_log2 = 0
        while (1 << ceil_log2) < m:
            ceil_log2 += 1
    return max(MIN_POWER, ceil_log2 // 4)


@_kernel
def _add_items(xs, width, cs, a0, b0):
    """a0[k] += v, b0[k] += (v - cs[k])^2 for the values v of each consecutive item of ``width`` in xs."""
    if width == 4 * LANES:
        _add_vector_items(xs, cs, a0, b0)
        return
    for j in range(xs.size // width):
        item = xs[j * width : (j + 1) * width]
        for k in range(width):
            v = item[k]
            d = v - cs[k]
            a0[k] += v
            b0[k] += d * d


@_kernel
def _add_vector_items(xs, cs, a0, b0):
    """:func:`_add_items` for items of four vectors: the accumulators stay in registers across the
    items (lane k still adds the values at position k in item order, the same operations)."""
    a = load(a0, 0), load(a0, LANES), load(a0, 2 * LANES), load(a0, 3 * LANES)
    b = load(b0, 0), load(b0, LANES), load(b0, 2 * LANES), load(b0, 3 * LANES)
    c = load(cs, 0), load(cs, LANES), load(cs, 2 * LANES), load(cs, 3 * LANES)
    for j in range(xs.size // (4 * LANES)):
        a, b = _add_group(a, b, xs, j * 4 * LANES, c)
    for q in range(4):
        store(a0, q * LANES, a[q])
        store(b0, q * LANES, b[q])


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _add_group(a, b, xs, at, c):
    """One item of four vectors at xs[at:]: vector q into a[q] and, as fl(fl(v - c[q])^2), into b[q]
    (a, b, c: four Vectors each)."""
    a_0, b_0 = run_add(a[0], xs, at, None), run_add(b[0], xs, at, c[0])
    a_1, b_1 = run_add(a[1], xs, at + LANES, None), run_add(b[1], xs, at + LANES, c[1])
    a_2, b_2 = run_add(a[2], xs, at + 2 * LANES, None), run_add(b[2], xs, at + 2 * LANES, c[2])
    a_3, b_3 = run_add(a[3], xs, at + 3 * LANES, None), run_add(b[3], xs, at + 3 * LANES, c[3])
    return (a_0, a_1, a_2, a_3), (b_0, b_1, b_2, b_3)


@_kernel
def _carry(a, b, i, power, top_a, top_b, running, zero):
    """multi_row_sum after the block ending at item i: level 0 into 1, and on up while i is a
    multiple of the next level's span. Level 3 is top[0] when ``running``, else one fresh top row per
    block (the blocks are then summed in order by :func:`_levels_sum`)."""
    mask = (1 << power) - 1
    for level in range(1, 4):
        lo_a, lo_b = a[level - 1], b[level - 1]
        if level == 3:
            block = 0 if running else (i >> (3 * power)) - 1
            hi_a, hi_b = top_a[block], top_b[block]
        else:
            hi_a, hi_b = a[level], b[level]
        for k in range(lo_a.size):
            hi_a[k] += lo_a[k]
            hi_b[k] += lo_b[k]
            lo_a[k] = zero
            lo_b[k] = zero
        if i & (mask << (level * power)):
            return


@_kernel
def _levels_sum(a, b, top_a, top_b, zero):
    """Into a[0], b[0]: ((level 0 + level 1) + level 2) + level 3, level 3 the blocks' sum in order."""
    for k in range(a.shape[1]):
        sa = zero
        sb = zero
        for block in range(top_a.shape[0]):
            sa += top_a[block, k]
            sb += top_b[block, k]
        a[0, k] = ((a[0, k] + a[1, k]) + a[2, k]) + sa
        b[0, k] = ((b[0, k] + b[1, k]) + b[2, k]) + sb


@_kernel
def _cascade(xs, items, width, cs, levels, zero):
    """multi_row_sum of ``items`` consecutive items of ``width`` values at the start of xs: each
    accumulator's sums (of x and of (x - cs)^2) end in a[0, k] and b[0, k], levels = (a, b, top_a,
    top_b) with a, b of shape (4, width) and top_a, top_b of shape (1, width)."""
    a, b, top_a, top_b = levels
    a0 = a[0]
    b0 = b[0]
    a0[:] = zero
    b0[:] = zero
    power = _level_power(items)
    step = 1 << power
    if items < step:  # no block ends: the other levels stay 0 (and x + 0 = x)
        _add_items(xs[: items * width], width, cs, a0, b0)
        return
    a[1:] = zero
    b[1:] = zero
    top_a[:] = zero
    top_b[:] = zero
    i = 0
    while i + step <= items:
        _add_items(xs[i * width : (i + step) * width], width, cs, a0, b0)
        i += step
        _carry(a, b, i, power, top_a, top_b, True, zero)
    _add_items(xs[i * width : items * width], width, cs, a0, b0)
    for k in range(width):  # level 3 is top[0] here: one running sum, as in multi_row_sum
        a0[k] = ((a0[k] + a[1, k]) + a[2, k]) + top_a[0, k]
        b0[k] = ((b0[k] + b[1, k]) + b[2, k]) + top_b[0, k]


@_kernel
def _row(xs, c, lanes, cs, vector_levels, scalar_levels, zero):
    """vectorized_inner_sum (len(xs) >= lanes) or row_sum (shorter) of the row xs of channel center c."""
    length = xs.size
    unit = lanes if length >= lanes else 1
    levels = vector_levels if length >= lanes else scalar_levels
    units = length // unit
    groups = units // 4
    cs[:] = c
    _cascade(xs, groups, 4 * unit, cs, levels, zero)
    a0 = levels[0][0]
    b0 = levels[1][0]
    _add_items(xs[4 * groups * unit : units * unit], unit, cs, a0, b0)
    for part in range(1, 4):
        for k in range(unit):
            a0[k] += a0[part * unit + k]
            b0[k] += b0[part * unit + k]
    if unit == 1:
        return a0[0], b0[0]
    sum_a = zero
    sum_b = zero
    for i in range(units * unit, length):
        d = xs[i] - c
        sum_a += xs[i]
        sum_b += d * d
    for k in range(unit):
        sum_a += a0[k]
        sum_b += b0[k]
    return sum_a, sum_b


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _added(a, b):
    """Four vectors plus four vectors, each pair added."""
    return add(a[0], b[0]), add(a[1], b[1]), add(a[2], b[2]), add(a[3], b[3])


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _short_vector_row(xs, c, groups, units, zero):
    """The vector part of :func:`_row` of a row of ``units`` vectors of LANES values (then a scalar tail,
    :func:`_tail`) in fewer than ROW_BLOCKS blocks of 2**MIN_POWER groups of four vectors, in registers:
    cascade levels 0 and 1 (a block's end adds level 0 into 1; no level 2 before the 16th block), each of
    the four ilp parts and both sums. Under one block, level 0 alone (no block ends, and the levels are
    not added). Returns the two lane vectors ((P_0 + P_1) + P_2) + P_3, whose lanes the row's sums then
    add in order after the tail. The same operations in the same order."""
    center = splat(c)
    centers = (center, center, center, center)
    z = zeros(zero)
    none = (z, z, z, z)
    a = b = none
    a1 = b1 = none
    blocks = groups >> MIN_POWER
    for block in range(blocks):
        for j in range(block << MIN_POWER, (block + 1) << MIN_POWER):
            a, b = _add_group(a, b, xs, j * 4 * LANES, centers)
        a1, b1 = _added(a1, a), _added(b1, b)
        a = b = none
    for j in range(blocks << MIN_POWER, groups):
        a, b = _add_group(a, b, xs, j * 4 * LANES, centers)
    if blocks:  # the cascade adds its levels where a block ended: ((level 0 + 1) + level 2) + level 3
        a = _added(_added(_added(a, a1), none), none)
        b = _added(_added(_added(b, b1), none), none)
    a_0, b_0 = a[0], b[0]
    for u in range(4 * groups, units):  # the vectors after the last group go to part 0
        a_0, b_0 = run_add(a_0, xs, u * LANES, None), run_add(b_0, xs, u * LANES, center)
    return add(add(add(a_0, a[1]), a[2]), a[3]), add(add(add(b_0, b[1]), b[2]), b[3])


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _tail(xs, c, units, zero):
    """vectorized_inner_sum's scalar start: 0 + each value after the row's ``units`` vectors (and of
    the squared deviations from c)."""
    sum_a = zero
    sum_b = zero
    for i in range(units * LANES, xs.size):
        d = xs[i] - c
        sum_a += xs[i]
        sum_b += d * d
    return sum_a, sum_b


@_kernel
def _rows_into(flat, center, C, starts, lengths, lanes, zero, r0, r1, out_a, out_b):
    """Rows r0 .. r1 - 1, row r = flat[starts[r]:starts[r] + lengths[r]] of channel r % C: its sums
    into out_a[r], out_b[r]. Rows in registers (:func:`_short_vector_row`) go LANES at a time where
    LANES rows in a row have one length: their lane sums, LANES scalar chains each, run as the columns
    of two LANES x LANES tiles, one vector add per column (the same operations in the same order)."""
    dtype = flat.dtype
    width = 4 * lanes
    vector_levels = (np.empty((4, width), dtype), np.empty((4, width), dtype), np.empty((1, width), dtype))
    vector_levels = (*vector_levels, np.empty((1, width), dtype))
    scalar_levels = (np.empty((4, 4), dtype), np.empty((4, 4), dtype), np.empty((1, 4), dtype))
    scalar_levels = (*scalar_levels, np.empty((1, 4), dtype))
    cs = np.empty(width, dtype)
    tile_a, tile_b = np.empty(LANES * LANES, dtype), np.empty(LANES * LANES, dtype)
    tail_a, tail_b = np.empty(LANES, dtype), np.empty(LANES, dtype)
    c = r0 % C
    r = r0
    while r < r1:
        size = lengths[r]
        units = size // LANES
        in_registers = lanes == LANES and size >= LANES and units < 4 * ROW_BLOCKS << MIN_POWER
        if in_registers and r + LANES <= r1 and _one_length(lengths, r, LANES):
            for q in range(LANES):
                xs = flat[starts[r + q] : starts[r + q] + size]
                a_0, b_0 = _short_vector_row(xs, center[c], units // 4, units, zero)
                store(tile_a, q * LANES, a_0)
                store(tile_b, q * LANES, b_0)
                tail_a[q], tail_b[q] = _tail(xs, center[c], units, zero)
                c = c + 1 if c + 1 < C else 0
            store(out_a, r, add_columns(load(tail_a, 0), tile_a))
            store(out_b, r, add_columns(load(tail_b, 0), tile_b))
            r += LANES
            continue
        xs = flat[starts[r] : starts[r] + size]
        if in_registers:
            a_0, b_0 = _short_vector_row(xs, center[c], units // 4, units, zero)
            sum_a, sum_b = _tail(xs, center[c], units, zero)
            for k in range(LANES):
                sum_a += lane(a_0, k)
                sum_b += lane(b_0, k)
            out_a[r], out_b[r] = sum_a, sum_b
        else:
            out_a[r], out_b[r] = _row(xs, center[c], lanes, cs, vector_levels, scalar_levels, zero)
        c = c + 1 if c + 1 < C else 0
        r += 1


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _one_length(lengths, r, count):
    """Whether rows r .. r + count - 1 have one length."""
    for q in range(1, count):
        if lengths[r + q] != lengths[r]:
            return False
    return True


@_kernel
def _fold_rows(sums, zero):
    """Per channel, 0 + row 0 + row 1 + ... in order: the output accumulating over the outer rows."""
    out = np.full(sums.shape[1], zero)
    for j in range(sums.shape[0]):
        for c in range(sums.shape[1]):
            out[c] += sums[j, c]
    return out


@_kernel
def _add_rows(x2, r0, r1, first, end, ilp, whole, center, center4, a0, b0, a40, b40):
    """Rows r0 .. r1 - 1 into level 0: cascade intervals by column, ilp ones by (row % 4, column)."""
    C = x2.shape[1]
    if first.size == 1 and first[0] == 0 and end[0] == C:  # one tree for the whole row: items in a run
        run = x2.reshape(-1)
        if ilp[0] == 0:
            _add_items(run[r0 * C : r1 * C], C, center, a0, b0)
        elif r0 < whole:
            _add_items(run[r0 * C : min(r1, whole) * C], 4 * C, center4, a40, b40)
        return
    for r in range(r0, r1):
        row = x2[r]
        lane = (r & 3) * C
        for s in range(first.size):
            lo, hi = first[s], end[s]
            if ilp[s] == 0:
                _add_items(row[lo:hi], hi - lo, center[lo:hi], a0[lo:hi], b0[lo:hi])
            elif r < whole:
                _add_items(
                    row[lo:hi], hi - lo, center[lo:hi], a40[lane + lo : lane + hi], b40[lane + lo : lane + hi]
                )


@_kernel
def _column_pieces(
    x2, center, center4, first, end, ilp, power_cascade, power_ilp, chunk, p0, p1, levels, zero
):
    """Chunks p0 .. p1 - 1 of rows, each from empty levels: level-3 values into the top arrays, and
    the levels left by the last chunk of x2 into a, b, a4, b4."""
    a, b, a4, b4, top_a, top_b, top4_a, top4_b = levels
    rows, C = x2.shape
    whole = rows // 4 * 4
    span = 1 << power_cascade
    span4 = 4 << power_ilp
    la = np.zeros((3, C), x2.dtype)
    lb = np.zeros((3, C), x2.dtype)
    l4a = np.zeros((3, 4 * C), x2.dtype)
    l4b = np.zeros((3, 4 * C), x2.dtype)
    cascades = (ilp == 0).any()
    ilps = (ilp != 0).any()
    for piece in range(p0, p1):
        r = piece * chunk
        r1 = min(rows, r + chunk)
        while r < r1:  # up to the next block end of either tree in use
            stop = r1
            if cascades:
                stop = min(stop, (r // span + 1) * span)
            if ilps:
                stop = min(stop, (r // span4 + 1) * span4)
            _add_rows(x2, r, stop, first, end, ilp, whole, center, center4, la[0], lb[0], l4a[0], l4b[0])
            r = stop
            if cascades and r % span == 0:
                _carry(la, lb, r, power_cascade, top_a, top_b, False, zero)
            if ilps and r <= whole and r % span4 == 0:
                _carry(l4a, l4b, r // 4, power_ilp, top4_a, top4_b, False, zero)
        if r1 == rows:
            a[:] = la
            b[:] = lb
            a4[:] = l4a
            b4[:] = l4b


@_kernel
def _column_sums(x2, center, first, end, ilp, levels, zero):
    """Each column's sums from its levels; ilp columns add their last rows to part 0 and sum the four
    parts. Each output is 0 + its sum."""
    a, b, a4, b4, top_a, top_b, top4_a, top4_b = levels
    rows, C = x2.shape
    whole = rows // 4 * 4
    _levels_sum(a, b, top_a, top_b, zero)
    _levels_sum(a4, b4, top4_a, top4_b, zero)
    out_a = np.zeros(C, x2.dtype)
    out_b = np.zeros(C, x2.dtype)
    for s in range(first.size):
        for col in range(first[s], end[s]):
            if ilp[s] == 0:
                out_a[col] += a[0, col]
                out_b[col] += b[0, col]
                continue
            pa0 = a4[0, col]
            pb0 = b4[0, col]
            for r in range(whole, rows):
                d = x2[r, col] - center[col]
                pa0 += x2[r, col]
                pb0 += d * d
            out_a[col] += ((pa0 + a4[0, C + col]) + a4[0, 2 * C + col]) + a4[0, 3 * C + col]
            out_b[col] += ((pb0 + b4[0, C + col]) + b4[0, 2 * C + col]) + b4[0, 3 * C + col]
    return out_a, out_b
