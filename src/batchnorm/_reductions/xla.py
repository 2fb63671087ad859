"""XLA's batch moments on CPU (jax 0.10 / jaxlib's XLA), as Flax and Keras 3 on JAX compute them eagerly.

Flax (flax/linen/normalization.py ``_compute_stats``, ``use_fast_variance=True``, x first cast to float32)
and Keras 3 on JAX (keras/src/backend/jax/nn.py ``moments``, float16/bfloat16 first cast to float32)::

    r    = fl32(1 / n)                       # XLA turns the division by the constant n into a product
    mean = fl32(S(x) * r)                    # jnp.mean
    flax: var = max(0, fl32(fl32(S(fl32(x * x)) * r) - fl32(mean * mean)))   # x * x its own op
    keras: var = fl32(S((x - mean)^2) / n)   # jnp.var: one jitted computation, n a traced divisor

``S`` is XLA's float32 sum over every axis but the channel axes, decided by the reduce's size
(xla/backends/cpu/ynn_support.cc ``IsInstructionPreferredByYnn``: 4096 elements or more):

- 4096 or more: a YNNPACK fusion (google/XNNPACK ynnpack/subgraph/reduce.cc ``ynn_define_reduce``).
  The reduce's dimensions, innermost first, get split factors (ynnpack/subgraph/slinky.cc
  ``make_split_factors``: tiles of 32768 values, each dimension ``min(32768 // tile so far, extent)``);
  a split reduced dimension makes a partial reduction: each tile of the split dimensions sums into its
  own slot of an intermediate, which a second reduce sums. A split loop runs only where it runs in
  parallel (ynnpack/subgraph/runtime.cc ``make_schedule``: the outermost split dimensions until
  ``2 * threads`` tasks) or computes a fused producer (the (x - mean)^2 of jnp.var); a loop that does
  not run leaves its dimension whole, summed into slot 0. Within a tile, contiguous reduced values form
  rows for ``sum_float_k1`` and strided rows of contiguous channels use ``sum_float_kn`` (trees in
  :mod:`._xla_kernels`), further rows added to the slot one after another.
- fewer: XLA's own loops. A reduced dimension longer than 32 is first cut into windows of 32
  (xla/hlo/transforms/simplifiers/tree_reduction_rewriter.cc: a reduce-window of size and stride
  min(extent, 32) per reduced dimension, "SAME" zero padding, repeated while a dimension exceeds 32),
  each window summed in row-major order from 0; the last reduce sums row-major from 0. A fused square
  contracts into a fused multiply-add, fl32(d * d + acc).

The split factors follow the input's own dimensions, not the (outer, C, inner) view: ``shape`` is the
input's shape in memory order (outer dimensions, channel dimensions, inner dimensions; NCHW as is,
NHWC as is; left out, ``x3``'s own shape). ``threads`` is XLA's intra-op pool size (default: the CPUs
this process may run on); it decides which split loops run (a pool of 1 runs none). Measured bit for bit
against jax 0.10.2 on this machine (see tests/test_reductions_xla.py). Under ``jax.jit`` of a whole
training step the formulas differ (the var's divisor is folded into a product, x * x fuses into its
reduce); that is not emulated.
float64 inputs (JAX's x64 mode) are summed in float64 by :mod:`batchnorm._kernels` instead.

Speed: Flax's S(x) and S(x * x) run the same tiles, so one pass over x sums both; the tiles' kernel calls
are laid out with NumPy (one template per tile shape) once per layout and cached, and each YNNPACK pass is
one parallel launch of :mod:`._xla_kernels` (small ones run on the calling thread). jnp.var's reduce needs
jnp.mean's final mean, so Keras 3 reads x twice; where both reduces run one row per slot and a second
reduce sums each channel's slots (NCHW images of 32768 values and more), the two run block by block of
channels in one launch, each block's second pass reading it from cache (the same operations).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import numpy as np

from . import process_cpus

__all__ = ["TILE_VALUES", "WINDOW", "YNN_MIN_ELEMENTS", "moments", "sums_with_product", "written_terms"]

#: Reduces of this many input values or more go to YNNPACK (XLA's ``kMinElements``).
YNN_MIN_ELEMENTS = 4096
#: YNNPACK's tile area in float32 values (``make_split_factors``: 32768 * 4 bytes / 4).
TILE_VALUES = 32768
#: Sums of fewer values than this run on the calling thread (waking numba's pool costs more).
SERIAL_VALUES = 1 << 18
#: Input bytes of the blocks of channels summed at once (all threads) where jnp.var's two passes run
#: block by block, so that the second pass reads its block from this machine's 32 MB L3 (measured on
#: 25 and 51 MB inputs: blocks of a thread's whole share up to 13 MB, 1.3-2.4x the two passes one after
#: the other; 1-4 MB blocks gained less, bursts of the short rows of 7x7 being short).
CACHE_BYTES = 26 << 20
#: XLA CPU's tree-reduction window.
WINDOW = 32


def _channel_block(dims: tuple[int, ...], outer: int, channels: int) -> tuple[int, int]:
    """[start, stop) of the channel dimensions in ``dims`` (size-1 dimensions change nothing either way)."""
    start = next(i for i in range(len(dims) + 1) if math.prod(dims[:i]) == outer)
    stop = next(j for j in range(start, len(dims) + 1) if math.prod(dims[start:j]) == channels)
    return start, stop


def moments(
    x3: np.ndarray,
    variance: str,
    dtype: np.dtype,
    *,
    shape: tuple[int, ...] | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of ``x3`` (outer, C, inner) as XLA on CPU sums them.

    ``variance``: "sum_of_squares_clamped" is Flax's fast variance, "sum_of_squares" the same unclamped,
    "two_pass" Keras 3's jnp.var. ``shape`` and ``threads``: see the module docstring.
    """
    dtype = np.dtype(dtype)
    if x3.dtype == np.float64:
        from .. import _kernels

        result: tuple[np.ndarray, np.ndarray] = _kernels.moments(x3, variance, dtype)
        return result
    outer, C, inner = x3.shape
    dims = tuple(shape) if shape is not None else x3.shape
    if math.prod(dims) != x3.size:
        raise ValueError(f"shape {dims} does not hold the {x3.size} values of x3")
    start, stop = _channel_block(dims, outer, C)
    pool = process_cpus() if threads is None else threads
    x = np.ascontiguousarray(x3, dtype=np.float32)
    n = outer * inner
    f32 = np.float32
    reciprocal = f32(1.0) / f32(n)
    with np.errstate(all="ignore"):
        blocked = _blocked_two_pass(dims, start, stop, pool) if variance == "two_pass" else None
        if blocked is not None:
            mean, deviations = _two_pass_by_blocks(x, blocked, C, reciprocal)
            var = deviations / f32(n)
        elif variance == "two_pass":
            mean = _sums(x, dims, start, stop, None, pool)[0] * reciprocal
            var = _sums(x, dims, start, stop, mean, pool)[0] / f32(n)
        else:  # S(x) and S(x * x): two reduces of the same shape, summed in one pass over x
            sums, squares = _sums(x, dims, start, stop, None, pool, squares=True)
            mean = sums * reciprocal
            var = squares * reciprocal - mean * mean
            if variance == "sum_of_squares_clamped":
                var = np.maximum(f32(0.0), var)
    return mean.astype(dtype), var.astype(dtype)


def _sums(
    x: np.ndarray,
    dims: tuple[int, ...],
    start: int,
    stop: int,
    means: np.ndarray | None,
    threads: int,
    squares: bool = False,
    *,
    other: np.ndarray | None = None,
    factors: np.ndarray | None = None,
    scales: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Per-channel float32 S(x) of the contiguous (outer, C, inner) ``x``, or S((x - means)^2) fused;
    with ``squares`` also S(fl32(x * x)) of the separately computed squares (means None), or with
    ``scales`` (per channel) S(fl32(x * scales)). With ``other`` (x's shape) S(fl32(fl32(x - means) *
    other)), with ``factors`` (per channel) S(fl32(x * factors)): reduces of an array of terms written out
    before (no fused producer), the terms formed on the way."""
    if (other is not None and means is None) or (
        factors is not None and (means is not None or other is not None)
    ):
        raise ValueError("terms: means with or without other, or factors alone")
    if x.size >= YNN_MIN_ELEMENTS:
        return _ynn_sums(
            x, dims, start, stop, means, threads, squares, other=other, factors=factors, scales=scales
        )
    if other is not None or factors is not None:
        terms = written_terms(x, means, other, factors)
        return [_xla_loop_sum(terms.reshape(dims), start, stop, square_fma=False)]
    terms = x if means is None else x - means.astype(np.float32)[None, :, None]
    result = [_xla_loop_sum(terms.reshape(dims), start, stop, square_fma=means is not None)]
    if squares:
        second = x * x if scales is None else written_terms(x, None, None, scales)
        result.append(_xla_loop_sum(second.reshape(dims), start, stop, square_fma=False))
    return result


def sums_with_product(
    dy: np.ndarray,
    x: np.ndarray,
    dims: tuple[int, ...],
    start: int,
    stop: int,
    threads: int,
    scales: np.ndarray,
    means: np.ndarray,
) -> list[np.ndarray]:
    """[S(dy), S(fl32(dy * scales)), S(fl32(fl32(x - means) * dy))] of the contiguous (outer, C, inner)
    ``dy`` and ``x``, each as :func:`_sums` gives it (Flax's backward). The reduces have the same tiles
    (none has a fused producer), so from YNN_MIN_ELEMENTS values on one pass takes each job's rows of dy
    and then of x, dy's again from cache: a read of dy fewer than the reduces one after another."""
    if dy.size < YNN_MIN_ELEMENTS:
        return [
            *_sums(dy, dims, start, stop, None, threads, True, scales=scales),
            *_sums(x, dims, start, stop, means, threads, other=dy),
        ]
    product = (x, means, dy)
    return _ynn_sums(dy, dims, start, stop, None, threads, True, scales=scales, product=product)


def written_terms(
    x: np.ndarray, means: np.ndarray | None, other: np.ndarray | None, factors: np.ndarray | None
) -> np.ndarray:
    """The float32 terms of the (outer, C, inner) ``x`` as jax writes them out before a reduce: x itself,
    fl(fl(x - means) * other) (``other`` x's size) or fl(x * factors) (means, factors per channel)."""
    f32 = np.float32
    if other is not None and means is not None:
        return (x - means.astype(f32)[None, :, None]) * other.reshape(x.shape).astype(f32)
    if factors is not None:
        return x * factors.astype(f32)[None, :, None]
    return x


# -- XLA's own loops (fewer than 4096 values) ------------------------------------------------------------


def _xla_loop_sum(a: np.ndarray, start: int, stop: int, *, square_fma: bool) -> np.ndarray:
    from . import _xla_kernels as k

    reduced = [d for d in range(a.ndim) if not start <= d < stop]
    if any(a.shape[d] > WINDOW for d in reduced):
        a = _window_sums(a * a if square_fma else a, reduced)  # measured: a fused square rounds here
        square_fma = False
    while any(a.shape[d] > WINDOW for d in reduced):
        a = _window_sums(a, reduced)
    kept = list(range(start, stop))
    rows = np.ascontiguousarray(a.transpose(kept + reduced)).reshape(math.prod(a.shape[d] for d in kept), -1)
    sums: np.ndarray = k.sequential(rows, square_fma)
    return sums


def _window_sums(a: np.ndarray, reduced: list[int]) -> np.ndarray:
    """One reduce-window: windows of min(extent, 32) along each reduced dimension, "SAME" zero padding."""
    from . import _xla_kernels as k

    pads, sizes, counts = [], [], []
    for d, extent in enumerate(a.shape):
        size = min(extent, WINDOW) if d in reduced else 1
        count = -(-extent // size)
        total = count * size - extent
        pads.append((total // 2, total - total // 2))
        sizes.append(size)
        counts.append(count)
    padded = np.pad(a, pads)
    split = padded.reshape([v for pair in zip(counts, sizes, strict=True) for v in pair])
    order = list(range(0, 2 * a.ndim, 2)) + list(range(1, 2 * a.ndim, 2))
    windows = np.ascontiguousarray(split.transpose(order)).reshape(math.prod(counts), -1)
    sums: np.ndarray = k.sequential(windows, False)
    return sums.reshape(counts)


# -- YNNPACK (4096 values or more) ---------------------------------------------------------------------


def _split_factors(extents: list[int]) -> list[int | None]:
    """``make_split_factors`` over dimensions innermost first: None where the dimension is not split."""
    so_far = 1
    splits: list[int | None] = []
    for extent in extents:
        s = max(1, min(TILE_VALUES // so_far, extent))
        splits.append(None if s >= extent else s)
        so_far *= extent if s >= extent else s
    return splits


def _parallel_loops(extents: list[int], splits: list[int | None], threads: int) -> list[bool]:
    """``make_schedule``'s workers: split loops from the outermost run in parallel until 2 * threads
    tasks (a pool of one runs everything serially)."""
    tasks = 2 * threads if threads > 1 else 1
    so_far = 1
    parallel = [False] * len(extents)
    for d in reversed(range(len(extents))):
        s = splits[d]
        if threads > 1 and s is not None:
            parallel[d] = -(-tasks // so_far) > 1
            so_far *= -(-extents[d] // s)
    return parallel


def _ynn_sums(
    x: np.ndarray,
    dims: tuple[int, ...],
    start: int,
    stop: int,
    means: np.ndarray | None,
    threads: int,
    squares: bool = False,
    *,
    other: np.ndarray | None = None,
    factors: np.ndarray | None = None,
    scales: np.ndarray | None = None,
    product: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """[S(terms)] or, with ``squares``, [S(x), S(fl32(x * x)) or S(fl32(x * scales))]: each reduce runs
    the same tiles. The terms (see :func:`_sums`) are the kernels' ``term`` tuple (:mod:`._xla_kernels`);
    only jnp.var's (x - mean)^2 is a fused producer, which changes the tiles. ``product`` = (values,
    means, other), for a reduce without a fused producer: S(fl32(fl32(values - means) * other)) appended,
    summed in the same launches (the same tiles)."""
    flat = x.reshape(-1)
    C = math.prod(dims[start:stop])
    term = _term(means, other, factors, scales)
    fused = means is not None and other is None
    if product is not None and fused:
        raise ValueError("a product beside a fused reduce: their tiles differ")
    tiling = _tiling(dims, start, stop, threads, fused=fused)
    count = 2 if squares else 1
    size = C if tiling.slots is None else math.prod(tiling.slots)
    sums = [np.zeros(size, np.float32) for _ in range(count + (product is not None))]
    beside = None
    if product is not None:
        values, product_means, product_other = product
        beside = (values.reshape(-1), _term(product_means, product_other, None, None), sums[count])
    _run_all(flat, tiling.first_pass(), sums[:count], term, beside)
    if tiling.slots is None:
        return sums
    outs = []
    for partial in sums:  # the intermediates' slots, each summed into its output
        out = np.zeros(C, np.float32)
        _run_all(partial, tiling.second_pass(), [out], _VALUES)
        outs.append(out)
    return outs


class _Tiling(NamedTuple):
    """A YNNPACK reduce's tiles: ``extents`` innermost first, which are ``reduced``, their split factors,
    the split loops that run (``runs``: the extent of a tile, None where the dimension is whole) and the
    intermediate's extents (``slots``: a slot per tile of each split reduced dimension, then a second
    reduce sums the slots); ``slots`` None where no reduced dimension is split (one reduce into the
    output)."""

    extents: tuple[int, ...]
    reduced: tuple[bool, ...]
    splits: tuple[int | None, ...]
    runs: tuple[int | None, ...]
    slots: tuple[int, ...] | None

    def first_pass(self) -> tuple[_Launch, ...]:
        """The launches of the reduce of the input (into the intermediate, or into the output)."""
        if self.slots is None:
            out_strides = _row_major(list(self.extents), list(self.reduced), None)
            return _launches(self.extents, self.reduced, self.runs, tuple(out_strides), None)
        out_strides = _row_major(list(self.extents), list(self.reduced), list(self.slots))
        return _launches(self.extents, self.reduced, self.runs, tuple(out_strides), self.splits)

    def second_pass(self) -> tuple[_Launch, ...]:
        """The launches of the reduce of the intermediate into the output."""
        if self.slots is None:
            return ()
        out_strides = _row_major(list(self.slots), list(self.reduced), None)
        return _launches(self.slots, self.reduced, (None,) * len(self.slots), tuple(out_strides), None)


def _tiling(dims: tuple[int, ...], start: int, stop: int, threads: int, fused: bool) -> _Tiling:
    """The tiles of the reduce of ``dims`` over all but dims[start:stop] (a fused producer runs every
    split loop; else only the parallel ones run)."""
    rank = len(dims)
    extents = tuple(int(e) for e in reversed(dims))  # slinky's order: innermost first
    reduced = tuple(not start <= rank - 1 - i < stop for i in range(rank))
    splits = tuple(_split_factors(list(extents)))
    if not any(r and s is not None for r, s in zip(reduced, splits, strict=True)):
        return _Tiling(extents, reduced, splits, (None,) * rank, None)
    parallel = _parallel_loops(list(extents), list(splits), threads)
    runs = tuple(
        s if s is not None and r and (p or fused) else None
        for s, r, p in zip(splits, reduced, parallel, strict=True)
    )
    slots = tuple(
        (-(-e // s) if s is not None else 1) if r else e
        for e, s, r in zip(extents, splits, reduced, strict=True)
    )
    return _Tiling(extents, reduced, splits, runs, slots)


@functools.lru_cache(maxsize=64)
def _blocked_two_pass(dims: tuple[int, ...], start: int, stop: int, threads: int) -> _Launch | None:
    """The one k1 launch of jnp.mean's and of jnp.var's first reduce where the two are the same launch,
    one row per slot (row g of channel j into slot g * C + j), and the second reduce of both sums each
    channel's slots as kn's lane over the rows; else None. Then :func:`._xla_kernels.k1_two_pass` runs
    the two passes block by block of channels."""
    if math.prod(dims) < YNN_MIN_ELEMENTS:
        return None
    tiling = _tiling(dims, start, stop, threads, fused=True)
    if tiling.slots is None or tiling != _tiling(dims, start, stop, threads, fused=False):
        return None
    passes, second = tiling.first_pass(), tiling.second_pass()
    if len(passes) != 1 or len(second) != 1:
        return None
    launch, lanes = passes[0], second[0]
    C = math.prod(dims[start:stop])
    rows = launch.group_slot.size
    one_row_each = launch.key[0] == "k1" and launch.key[1] == C and launch.key[4] == 1
    one_row_each &= launch.offsets.size == rows and bool(np.all(launch.k2s == 1))
    if not one_row_each or not np.array_equal(launch.group_slot, np.arange(rows) * C):
        return None
    by_lane = lanes.key == ("kn", C, 1, C, 1) and lanes.group_slot.tolist() == [0]
    if not by_lane or lanes.offsets.tolist() != [0] or lanes.k2s.tolist() != [rows]:
        return None
    return launch


def _two_pass_by_blocks(
    x: np.ndarray, launch: _Launch, C: int, reciprocal: np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, S((x - mean)^2)) of the contiguous ``x`` by :func:`._xla_kernels.k1_two_pass`, a block of
    channels per thread at a time, the threads' blocks within CACHE_BYTES of input together."""
    from .._kernels.compiled import _launch
    from . import _xla_kernels as k

    stride_n = launch.key[2]
    threads = k.threads()
    chunks = min(threads, _chunks(C, launch.values, threads))  # a chunk per thread at most
    blocks = _round_up(-(-4 * launch.values * chunks // CACHE_BYTES), chunks)  # as many in each chunk
    block = -(-C // min(C, blocks))
    sums = np.zeros(C, np.float32)
    means = np.zeros(C, np.float32)
    deviations = np.zeros(C, np.float32)
    rows = (launch.offsets, launch.k1s, stride_n)
    _launch(k.k1_two_pass, x.reshape(-1), *rows, C, block, reciprocal, means, sums, deviations, chunks)
    return means, deviations


def _term(
    means: np.ndarray | None, other: np.ndarray | None, factors: np.ndarray | None, scales: np.ndarray | None
) -> tuple[np.ndarray | None, ...]:
    """The kernels' ``term`` tuple (see :mod:`._xla_kernels`): contiguous float32 arrays or None."""
    return (
        _float32(means),
        None if other is None else _float32(other.reshape(-1)),
        _float32(factors),
        _float32(scales),
    )


#: the kernels' term of plain values (no means, other array, factors or scales).
_VALUES = (None, None, None, None)


def _float32(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32)


def _row_major(extents: list[int], reduced: list[bool], keep: list[int] | None) -> list[int]:
    """Strides of the output buffer per dimension (innermost first): the kept dimensions of ``extents``
    (keep None) or the intermediate of extents ``keep``; 0 for the dimensions it does not hold."""
    strides, step = [], 1
    for d, extent in enumerate(extents):
        size = (1 if reduced[d] else extent) if keep is None else keep[d]
        strides.append(step if size > 1 else 0)
        step *= size
    return strides


#: a second reduce of the same tiles run in the same launches: (flat values, term, output).
_Beside = tuple[np.ndarray, tuple[np.ndarray | None, ...], np.ndarray] | None


def _run_all(
    flat: np.ndarray,
    launches: tuple[_Launch, ...],
    outs: list[np.ndarray],
    term: tuple[np.ndarray | None, ...],
    beside: _Beside = None,
) -> None:
    """One YNNPACK reduce of ``flat`` into ``outs`` (the sums, and the sums of squares where there are
    two), and ``beside``'s where given: the launches in turn (the tiles' order is free: no two write
    the same slot)."""
    for launch in launches:
        _run(flat, launch, outs, term, beside)


class _Launch(NamedTuple):
    """One kernel launch of a YNNPACK pass (see :func:`_kernel_calls` for ``key``): its calls' offsets,
    k1 and k2, a slot's calls together in order (group g: calls group_start[g] .. group_start[g + 1],
    into slot group_slot[g]), and the number of values summed."""

    key: tuple[str, int, int, int, int]
    offsets: np.ndarray
    k1s: np.ndarray
    k2s: np.ndarray
    group_start: np.ndarray
    group_slot: np.ndarray
    values: int


@functools.lru_cache(maxsize=64)
def _launches(
    extents: tuple[int, ...],
    reduced: tuple[bool, ...],
    runs: tuple[int | None, ...],
    out_strides: tuple[int, ...],
    slot_size: tuple[int | None, ...] | None,
) -> tuple[_Launch, ...]:
    """The launches of one YNNPACK pass (cached per layout: they depend on the shape alone).

    Tiles of one shape (full, or short at the end of a split dimension) run the same kernel calls from
    their own origin, so the calls are built once per shape and laid out over the tiles with NumPy;
    tiles of different shapes but the same kernel share one launch."""
    rank = len(extents)
    strides = [math.prod(extents[:d]) for d in range(rank)]
    sizes = slot_size if slot_size is not None else (None,) * rank
    per_dim = []  # (origins, extent) of the full tiles and of a short last one
    for extent, run in zip(extents, runs, strict=True):
        if run is None:
            per_dim.append([(np.zeros(1, np.int64), extent)])
            continue
        full = extent // run
        shapes = [(np.arange(full, dtype=np.int64) * run, run)] if full else []
        if extent % run:
            shapes.append((np.array([full * run], np.int64), extent % run))
        per_dim.append(shapes)
    batches: dict[tuple[str, int, int, int, int], list[tuple[np.ndarray, ...]]] = {}
    for shape in itertools.product(*per_dim):
        key, call_offsets, k1, k2, call_slots = _kernel_calls(
            [e for _, e in shape], strides, list(reduced), list(out_strides)
        )
        origin = np.zeros(1, np.int64)
        slot = np.zeros(1, np.int64)
        for d in reversed(range(rank)):  # outermost first: tiles in row-major order
            starts = shape[d][0]
            origin = (origin[:, None] + starts[None, :] * strides[d]).reshape(-1)
            size = sizes[d]
            step = (starts // size) * out_strides[d] if reduced[d] and size is not None else 0 * starts
            slot = (slot[:, None] + step[None, :]).reshape(-1)
        offsets = (origin[:, None] + call_offsets[None, :]).reshape(-1)
        slots = (slot[:, None] + call_slots[None, :]).reshape(-1)
        k1s, k2s = np.full(offsets.size, k1, np.int64), np.full(offsets.size, k2, np.int64)
        batches.setdefault(key, []).append((offsets, k1s, k2s, slots))
    launches = []
    for key, calls in batches.items():
        offsets, k1s, k2s, slots = (np.concatenate(parts) for parts in zip(*calls, strict=True))
        order = np.argsort(slots, kind="stable")  # a slot's calls together, in order
        offsets, k1s, k2s, slots = offsets[order], k1s[order], k2s[order], slots[order]
        group_start = np.concatenate(([0], np.flatnonzero(np.diff(slots)) + 1, [slots.size])).astype(np.int64)
        group_slot = np.ascontiguousarray(slots[group_start[:-1]])
        values = int(np.sum(k1s * k2s)) * key[1]
        launches.append(_Launch(key, offsets, k1s, k2s, group_start, group_slot, values))
    return tuple(launches)


def _kernel_calls(
    tile: list[int], strides: list[int], reduced: list[bool], out_strides: list[int]
) -> tuple[tuple[str, int, int, int, int], np.ndarray, int, int, np.ndarray]:
    """The kernel a tile of extents ``tile`` runs (``make_unary_reduce_impl``): contiguous reduced
    dimensions form k1, the next reduced ones k2 rows, kept ones the n channels; other dimensions loop,
    outermost first. Returns the key (kind, n, stride_n, stride_k2, stride_out), the calls' offsets
    from the tile's origin, k1, k2 and the calls' slot offsets."""
    n, k1, k2, stride_n, stride_k2, stride_out = 1, 1, 1, 0, 0, 1
    loops = []
    for d, extent in enumerate(tile):
        if extent == 1:
            continue
        s = strides[d]
        if reduced[d]:
            if k1 == s:
                k1 *= extent
            elif stride_k2 * k2 == s:
                k2 *= extent
            elif k2 == 1:
                k2, stride_k2 = extent, s
            else:
                loops.append((extent, s, 0))
        elif n == 1:
            n, stride_n, stride_out = extent, s, out_strides[d]
        elif stride_n * n == s and stride_out * n == out_strides[d]:
            n *= extent
        else:
            loops.append((extent, s, out_strides[d]))
    kind = "kn" if k1 == 1 and k2 != 1 and (n == 1 or stride_n == 1) else "k1"
    if kind == "kn":
        stride_out, stride_n = (stride_out if n > 1 else 1), 1
    offsets = np.zeros(1, np.int64)
    slots = np.zeros(1, np.int64)
    for extent, s, so in reversed(loops):  # outermost first
        index = np.arange(extent, dtype=np.int64)
        offsets = (offsets[:, None] + index[None, :] * s).reshape(-1)
        slots = (slots[:, None] + index[None, :] * so).reshape(-1)
    return (kind, n, stride_n, stride_k2, stride_out), offsets, k1, k2, slots


def _run(
    flat: np.ndarray,
    launch: _Launch,
    outs: list[np.ndarray],
    term: tuple[np.ndarray | None, ...],
    beside: _Beside = None,
) -> None:
    """One kernel launch over the calls: the calls into one slot form a group, run in their order."""
    from .._kernels.compiled import _launch
    from . import _xla_kernels as k

    kind, n, stride_n, stride_k2, stride_out = launch.key
    group_start, group_slot = launch.group_start, launch.group_slot
    groups = group_slot.size
    out, out_squares = outs[0], outs[1] if len(outs) > 1 else None
    other = (None, None, None) if beside is None else beside
    threads = k.threads()
    values = launch.values
    if kind == "k1":
        chunks = _chunks(groups * n, values, threads)
        rows = (launch.offsets, launch.k1s, launch.k2s, stride_k2, stride_n, n, stride_out)
        _launch(k.k1_groups, flat, group_start, *rows, group_slot, term, out, out_squares, *other, chunks)
        return
    # kn: the channels are the innermost dimensions of the tile, so its rows are n values apart
    if stride_k2 != n or (n > 1 and stride_out != 1):
        raise AssertionError(f"sum_float_kn over rows {stride_k2} apart of {n} channels")
    per_group = -(-2 * threads // groups)  # split the channels into blocks where groups are few
    block = (
        n
        if per_group <= 1 or values < SERIAL_VALUES
        else max(k.LANES, _round_up(-(-n // per_group), k.LANES))
    )
    chunks = _chunks(groups * -(-n // block), values, threads)
    tiles = (group_start, launch.offsets, launch.k2s, n, block)
    _launch(k.kn_groups, flat, tiles, group_slot, term, out, out_squares, *other, chunks)


def _chunks(jobs: int, values: int, threads: int) -> int:
    """Parallel chunks for ``jobs`` jobs summing ``values`` values: one (no thread pool) for small sums."""
    if values < SERIAL_VALUES or threads <= 1:
        return 1
    return min(jobs, 4 * threads)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step
