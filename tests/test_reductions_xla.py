"""The XLA reduction (batchnorm._reductions.xla) against plain scalar loops in the documented order.

The compiled trees are checked against a straightforward Python transcription of YNNPACK's sums and of
XLA's own loops (one float32 operation at a time); the transcription itself was measured bit for bit
against jax 0.10.2 (Flax and Keras 3 moments) on the shapes of the module's report.
"""

from __future__ import annotations

import itertools
import math

import ml_dtypes
import numpy as np
import pytest

from batchnorm._reductions import xla

F = np.float32


# -- a scalar transcription of the sums ---------------------------------------------------------------


def _kahan(a, acc, err):
    for lane in range(len(a)):
        y = F(a[lane] - err[lane])
        t = F(acc[lane] + y)
        e = F(F(t - acc[lane]) - y)
        err[lane] = e if np.isfinite(e) else F(0)
        acc[lane] = t
        a[lane] = F(0)


def _flush(clock, acc, err):
    if clock % 16 == 0:
        for lane in range(len(acc[0])):
            acc[1][lane] = F(acc[1][lane] + acc[0][lane])
            acc[0][lane] = F(0)
        if clock % 256 == 0:
            _kahan(acc[1], acc[2], err)


def ref_k1(values):
    """sum_float_k1 of one contiguous row: 16 lanes, blocks of 64, the tree of three accumulators."""
    acc = [[F(0)] * 16 for _ in range(3)]
    err = [F(0)] * 16
    k, i, clock = len(values), 0, 0

    def block(count):
        for lane in range(16):
            local = F(0)
            for q in range(4):
                j = q * 16 + lane
                local = F(local + (values[i + j] if j < count else F(0)))
            acc[0][lane] = F(acc[0][lane] + local)

    while k - i >= 256:
        for _ in range(4):
            block(64)
            i += 64
        clock += 64
        _flush(clock, acc, err)
    while k - i >= 64:
        block(64)
        i += 64
        clock += 16
        _flush(clock, acc, err)
    if k > i:
        block(k - i)
    _flush(0, acc, err)
    lanes = [F(F(0) + v) for v in acc[2]]
    while len(lanes) > 1:
        half = len(lanes) // 2
        lanes = [F(lanes[j] + lanes[j + half]) for j in range(half)]
    return lanes[0]


def ref_kn(rows, x0):
    """sum_float_kn of k rows of one channel (a list of values), added to x0."""
    k = len(rows)

    def group(start, count):
        local = F(0)
        for q in range(4):
            local = F(local + (rows[start + q] if q < count else F(0)))
        return local

    if k <= 4:
        return F(x0 + group(0, k))
    acc = [[F(0)] for _ in range(3)]
    err = [F(0)]
    i = clock = 0
    while k - i >= 4:
        acc[0][0] = F(acc[0][0] + group(i, 4))
        i += 4
        clock += 4
        _flush(clock, acc, err)
    if k > i:
        acc[0][0] = F(acc[0][0] + group(i, k - i))
    _flush(0, acc, err)
    return F(x0 + acc[2][0])


def ref_ynn_sum(x, dims, start, stop, threads, fused=False):
    """YNNPACK's reduce as the module docstring describes it, channel by channel, scalar operations;
    ``fused``: the terms come from a fused producer ((x - mean)^2), so every split loop runs."""
    rank = len(dims)
    ext = list(reversed(dims))
    red = [not start <= rank - 1 - i < stop for i in range(rank)]
    splits = xla._split_factors(ext)
    parallel = xla._parallel_loops(ext, splits, threads)
    a = np.asarray(x, F).reshape(dims)
    kept = list(range(start, stop))
    out = []
    for chan in itertools.product(*(range(dims[d]) for d in kept)):
        sub = a[(slice(None),) * start + chan]  # the channel's values over the reduced dims
        sub_ext = [e for e, r in zip(ext, red, strict=True) if r]
        sub_split = [s for s, r in zip(splits, red, strict=True) if r]
        sub_par = [p for p, r in zip(parallel, red, strict=True) if r]
        inner = rank - stop  # reduced dimensions after the channels: the only ones k1 rows can take
        if all(s is None for s in sub_split):
            out.append(_ref_tile(sub, [(0, e) for e in sub_ext], F(0), inner))
            continue
        runs = [
            s if s is not None and (p or fused) else None for s, p in zip(sub_split, sub_par, strict=True)
        ]
        slots = [-(-e // s) if s is not None else 1 for e, s in zip(sub_ext, sub_split, strict=True)]
        partial = np.zeros(list(reversed(slots)), F)
        per_dim = [
            [(t0, min(r, e - t0)) for t0 in range(0, e, r)] if r else [(0, e)]
            for e, r in zip(sub_ext, runs, strict=True)
        ]
        for combo in itertools.product(*reversed(per_dim)):
            tile = list(reversed(combo))
            slot = tuple(
                reversed(
                    [t0 // s if s is not None else 0 for (t0, _), s in zip(tile, sub_split, strict=True)]
                )
            )
            partial[slot] = _ref_tile(sub, tile, partial[slot], inner)
        out.append(_ref_tile(partial, [(0, e) for e in slots], F(0), 0))  # test shapes: no inner slots
    return np.array(out, F)


def _ref_tile(sub, tile, x0, inner):
    """One channel's tile: the inner reduced dimensions (contiguous in memory) form rows of k1 values,
    the rest rows in row-major order; k1 rows use sum_float_k1, one value per row sum_float_kn."""
    window = sub[tuple(slice(t0, t0 + te) for t0, te in reversed(tile))]
    k1 = 1
    for (_, size), whole in zip(tile[:inner], sub.shape[::-1][:inner], strict=True):
        k1 *= size
        if size != whole:
            break
    if k1 == 1:
        return ref_kn(list(window.reshape(-1)), x0)
    rows = window.reshape(-1, k1)
    for row in rows:
        x0 = F(x0 + ref_k1(list(row)))
    return x0


# -- tests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, 63, 64, 65, 255, 256, 1000, 1024, 1025, 3000])
def test_k1_row_is_the_documented_tree(k):
    from batchnorm._reductions import _xla_kernels as kern

    rng = np.random.default_rng(k)
    v = (1e4 + rng.standard_normal(k)).astype(F)
    total, squares = kern.k1_row(v, 0, (None, None, None, None), np.zeros((4, 16), F), np.zeros((4, 16), F))
    assert total == ref_k1(list(v))
    assert squares == ref_k1(list(v * v))


@pytest.mark.parametrize(
    "k", [1, 2, 15, 16, 17, 49, 63, 64, 65, 128, 196, 255, 256, 257, 300, 511, 784, 1023, 1024, 1025]
)
@pytest.mark.parametrize("mean", [None, 1e4 + 0.25, np.inf])
def test_rows_take_the_documented_tree_through_k1_groups(k, mean):
    """Rows under 64 values run as one vector step in registers, the lanes past the row holding the term
    +0 (whatever the mean); rows under 1024 values in registers too (groups of four blocks, single
    blocks, the padded last one); longer rows through k1_row's accumulators. The documented tree's bits
    every way, signed zeros and an infinite mean included."""
    from batchnorm._reductions import _xla_kernels as kern

    rng = np.random.default_rng(k)
    v = (1e4 + rng.standard_normal(k)).astype(F)
    if mean is None:
        v[::3] = F(-0.0)
        terms = v
    else:
        with np.errstate(invalid="ignore"):
            terms = (v - F(mean)) * (v - F(mean))
    term = (None if mean is None else np.array([mean], F), None, None, None)
    out, squares = np.full(1, F(0.5)), np.full(1, F(0.25))
    one = np.array([0, 1], np.int64), np.array([0], np.int64), np.array([k], np.int64)
    none = (None, None, None)  # no second reduce beside this one
    kern.k1_groups(v, *one, np.array([1], np.int64), 0, 0, 1, 1, np.array([0]), term, out, squares, *none, 1)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(out, [F(0.5) + ref_k1(list(terms))])
        np.testing.assert_array_equal(squares, [F(0.25) + ref_k1(list(terms * terms))])


@pytest.mark.parametrize("k", [1, 3, 4, 5, 17, 255, 256, 257, 1000])
def test_kn_rows_are_the_documented_tree(k):
    from batchnorm._reductions import _xla_kernels as kern

    rng = np.random.default_rng(k)
    n = 19  # one full block of 16 lanes and a partial one
    rows = (1e4 + rng.standard_normal((k, n))).astype(F)
    out = np.full(n, 0.5, F)
    squares = np.full(n, 0.25, F)
    chunk = 16  # blocks of channels: one job each
    groups = (*(np.array(a, np.int64) for a in ([0, 1], [0], [k])), n, chunk)
    values = (None, None, None, None)
    kern.kn_groups(rows.reshape(-1), groups, np.array([0]), values, out, squares, None, None, None, 2)
    assert [out[j] for j in range(n)] == [ref_kn(list(rows[:, j]), F(0.5)) for j in range(n)]
    assert [squares[j] for j in range(n)] == [
        ref_kn(list(rows[:, j] * rows[:, j]), F(0.25)) for j in range(n)
    ]


def test_fma32_rounds_once():
    """fl32(a * a + c) is the float32 nearest the exact value (ties to even), also where the float64
    sum a * a + c lands on a float32 midpoint that the exact value is not on."""
    from fractions import Fraction

    from batchnorm._reductions import _xla_kernels as kern

    rng = np.random.default_rng(1)
    a, c = rng.standard_normal((2, 300)).astype(F)
    one_plus = F(1) + F(2.0**-23)  # a * a = 1 + 2^-22 + 2^-46: + 2^-24 - 2^-46 would tie; c nudges past
    pairs = [*zip(a, c, strict=True), (one_plus, F(2.0**-24)), (one_plus, -F(2.0**-24)), (F(3), F(2.0**-60))]
    for ai, ci in pairs:
        exact = Fraction(float(ai)) ** 2 + Fraction(float(ci))
        got = kern.fma32(ai, ai, ci)
        neighbours = [np.nextafter(got, F(-np.inf)), np.nextafter(got, F(np.inf))]
        assert all(abs(Fraction(float(got)) - exact) <= abs(Fraction(float(v)) - exact) for v in neighbours)


@pytest.mark.parametrize(
    ("dims", "start", "stop"),
    [
        ((2, 3, 40, 40), 1, 2),  # NCHW, one k1 row per image and channel
        ((3, 40, 40, 4), 3, 4),  # NHWC: kn rows
        ((6000, 3), 1, 2),  # 2-D
        ((3, 2, 20000), 1, 2),  # N split 1: a partial reduction
        ((2, 30, 700, 3), 3, 4),  # H split 15: partial tiles over H, more in parallel with more threads
    ],
)
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_ynn_sum_matches_the_scalar_transcription(dims, start, stop, threads):
    rng = np.random.default_rng(sum(dims))
    x = (1e4 + rng.standard_normal(dims)).astype(F)
    x3 = x.reshape(math.prod(dims[:start]), math.prod(dims[start:stop]), -1)
    got = xla._ynn_sums(np.ascontiguousarray(x3), dims, start, stop, None, threads)[0]
    np.testing.assert_array_equal(got, ref_ynn_sum(x, dims, start, stop, threads))


@pytest.mark.parametrize(
    ("dims", "start", "stop"),
    [((3, 2, 20000), 1, 2), ((2, 30, 700, 3), 3, 4), ((2, 3, 40, 40), 1, 2), ((3, 40, 40, 20), 3, 4)],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_one_pass_sums_and_centered_sums(dims, start, stop, threads):
    """S(x) and S(fl32(x * x)) from one pass over x equal the two reduces summed apart; S((x - m)^2)
    runs every split loop (the fused producer) and rounds x - m and the square."""
    rng = np.random.default_rng(sum(dims) + 1)
    x = (1e4 + rng.standard_normal(dims)).astype(F)
    x3 = np.ascontiguousarray(x.reshape(math.prod(dims[:start]), math.prod(dims[start:stop]), -1))
    sums, squares = xla._ynn_sums(x3, dims, start, stop, None, threads, squares=True)
    np.testing.assert_array_equal(sums, ref_ynn_sum(x, dims, start, stop, threads))
    np.testing.assert_array_equal(squares, ref_ynn_sum((x * x).astype(F), dims, start, stop, threads))
    means = (1e4 + rng.standard_normal(x3.shape[1])).astype(F)
    centered = xla._ynn_sums(x3, dims, start, stop, means, threads)[0]
    shape = [1] * len(dims)
    shape[start:stop] = dims[start:stop]
    d = (x - means.reshape(shape)).astype(F)
    np.testing.assert_array_equal(
        centered, ref_ynn_sum((d * d).astype(F), dims, start, stop, threads, fused=True)
    )


@pytest.mark.parametrize(
    ("dims", "start", "stop"),
    [
        ((3, 2, 20000), 1, 2),  # split N: a partial reduction
        ((2, 30, 700, 3), 3, 4),
        ((2, 3, 40, 40), 1, 2),  # k1 rows of 1600
        ((64, 24, 7, 7), 1, 2),  # k1 rows under one block
        ((3, 40, 40, 20), 3, 4),  # kn rows, a partial lane block
        ((5, 9, 7, 20), 3, 4),  # one kn tile of 315 rows: a short last group
        ((5, 7, 3), 1, 2),  # under 4096 values: XLA's loops
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_product_and_scaled_terms_equal_the_sums_of_the_written_terms(
    monkeypatch, dims, start, stop, threads
):
    """S(fl(fl(x - m) * w)) and S(fl(x * s)) formed on the way are the sums of those terms written out
    first (as jax's eager backward writes them): the same tiles (no fused producer) and the same bits,
    infinities, NaN and signed zeros included; S(x) and S(fl(x * s)) in one pass too, and S(w),
    S(fl(w * s)) and the product in one pass over w and x."""
    rng = np.random.default_rng(sum(dims) + 2)
    x = (1e4 + rng.standard_normal(dims)).astype(F)
    w = rng.standard_normal(dims).astype(F)
    x.reshape(-1)[7::101] = F(-0.0)
    w.reshape(-1)[3::97] = F(-0.0)
    w.reshape(-1)[11] = F(np.inf)
    x3 = np.ascontiguousarray(x.reshape(math.prod(dims[:start]), math.prod(dims[start:stop]), -1))
    C = x3.shape[1]
    means = (1e4 + rng.standard_normal(C)).astype(F)
    factors = rng.standard_normal(C).astype(F)
    factors[0] = F(np.nan)
    factors[-1] = F(np.inf)  # the written-out terms are +-inf there, the padding's are 0 (not 0 * inf)
    x3[:, -1] = np.abs(x3[:, -1]) + F(1)
    with np.errstate(invalid="ignore"):
        product = ((x3 - means[None, :, None]) * w.reshape(x3.shape)).astype(F)
        scaled = (x3 * factors[None, :, None]).astype(F)
    for parallel in (False, True):
        if parallel:
            monkeypatch.setattr(xla, "SERIAL_VALUES", 0)
        with np.errstate(invalid="ignore"):
            got = xla._sums(x3, dims, start, stop, means, threads, other=w)[0]
            want = xla._sums(product, dims, start, stop, None, threads)[0]
            np.testing.assert_array_equal(got, want)
            got = xla._sums(x3, dims, start, stop, None, threads, factors=factors)[0]
            want = xla._sums(scaled, dims, start, stop, None, threads)[0]
            np.testing.assert_array_equal(got, want)
            got = xla._sums(x3, dims, start, stop, None, threads, squares=True, scales=factors)
            np.testing.assert_array_equal(got[0], xla._sums(x3, dims, start, stop, None, threads)[0])
            np.testing.assert_array_equal(got[1], want)
            w3 = w.reshape(x3.shape)  # Flax's backward: S(dy), S(fl(dy * s)) and the product, one pass
            apart = [
                *xla._sums(w3, dims, start, stop, None, threads, squares=True, scales=factors),
                *xla._sums(x3, dims, start, stop, means, threads, other=w),
            ]
            together = xla.sums_with_product(w3, x3, dims, start, stop, threads, factors, means)
            for a, b in zip(together, apart, strict=True):
                np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))


@pytest.mark.parametrize(
    ("dims", "start", "stop"),
    [((4, 6, 40, 40), 1, 2), ((4, 40, 40, 37), 3, 4), ((3000, 20), 1, 2), ((2, 3, 1024, 64), 1, 2)],
)
def test_parallel_launches_equal_the_serial_ones(monkeypatch, dims, start, stop):
    """Chunked parallel jobs (and channel blocks where the groups are few) change no sum."""
    x = np.random.default_rng(len(dims)).standard_normal(dims).astype(F)
    x3 = x.reshape(math.prod(dims[:start]), math.prod(dims[start:stop]), -1)
    means = np.linspace(-0.5, 0.5, x3.shape[1]).astype(F)
    for threads in (1, 2):
        serial = [*xla._ynn_sums(x3, dims, start, stop, None, threads, squares=True)]
        serial.append(xla._ynn_sums(x3, dims, start, stop, means, threads)[0])
        monkeypatch.setattr(xla, "SERIAL_VALUES", 0)
        parallel = [*xla._ynn_sums(x3, dims, start, stop, None, threads, squares=True)]
        parallel.append(xla._ynn_sums(x3, dims, start, stop, means, threads)[0])
        monkeypatch.undo()
        for a, b in zip(serial, parallel, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "dims",
    [
        (3, 40, 30, 30),  # rows of 900: in registers
        (5, 700, 7, 7),  # rows under one block
        (2, 9, 64, 64),  # rows of 4096: k1_row
        (4, 3, 100, 110),  # three channels
        (20, 700, 7, 7),  # 20 slots per channel: kn's tree over them is no longer a chain
    ],
)
@pytest.mark.parametrize("threads", [2, 4])
def test_two_passes_by_blocks_of_channels_equal_the_passes_in_turn(monkeypatch, dims, threads):
    """jnp.mean's and jnp.var's reduces run block by block of channels (each block's second pass from
    cache) give the bits of the two launches one after the other: blocks of one channel and of a
    thread's whole share, on the calling thread and in parallel; large means, inf and NaN."""
    assert xla._blocked_two_pass(dims, 1, 2, threads) is not None
    rng = np.random.default_rng(sum(dims))
    x = (1e4 + rng.standard_normal(dims) * np.arange(1, dims[1] + 1)[:, None, None]).astype(F)
    x[0, 1, 0, :5] = np.inf
    x[-1, 2, -1, -1] = np.nan
    x3 = x.reshape(dims[0], dims[1], -1)
    with np.errstate(all="ignore"):
        with monkeypatch.context() as patched:
            patched.setattr(xla, "_blocked_two_pass", lambda *_: None)
            in_turn = xla.moments(x3, "two_pass", np.dtype(F), shape=dims, threads=threads)
        for cache_bytes, serial_values in (
            (xla.CACHE_BYTES, xla.SERIAL_VALUES),
            (1, xla.SERIAL_VALUES),
            (1, 0),
        ):
            monkeypatch.setattr(xla, "CACHE_BYTES", cache_bytes)
            monkeypatch.setattr(xla, "SERIAL_VALUES", serial_values)
            by_blocks = xla.moments(x3, "two_pass", np.dtype(F), shape=dims, threads=threads)
            for got, want in zip(by_blocks, in_turn, strict=True):
                np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
    finite = np.isfinite(in_turn[1])
    assert finite.sum() == dims[1] - 2  # the channels with inf and NaN are not finite


@pytest.mark.parametrize(
    ("dims", "by_blocks"),
    [((3, 40, 30, 30), True), ((40, 32, 7, 7), False)],  # tiles of one image; of 20 (k2 = 20)
)
def test_two_passes_follow_the_scalar_transcription(dims, by_blocks):
    assert (xla._blocked_two_pass(dims, 1, 2, 2) is not None) == by_blocks
    x = (1e4 + np.random.default_rng(8).standard_normal(dims)).astype(F)
    mean, var = xla.moments(x.reshape(dims[0], dims[1], -1), "two_pass", np.dtype(F), shape=dims, threads=2)
    n = dims[0] * dims[2] * dims[3]
    want_mean = (ref_ynn_sum(x, dims, 1, 2, 2) * (F(1) / F(n))).astype(F)
    np.testing.assert_array_equal(mean, want_mean)
    d = (x - want_mean[None, :, None, None]).astype(F)
    want_var = (ref_ynn_sum((d * d).astype(F), dims, 1, 2, 2, fused=True) / F(n)).astype(F)
    np.testing.assert_array_equal(var, want_var)


def test_the_thread_count_changes_the_tree():
    """A pool of one runs no split loop of a plain reduce (its dimension sums whole into slot 0)."""
    dims = (40, 3, 2000)  # N split 5: 8 slots summed as a tree (2 threads) or images one by one (1)
    x = (1e4 + np.random.default_rng(3).standard_normal(dims)).astype(F)
    one = xla._ynn_sums(x, dims, 1, 2, None, 1)[0]
    two = xla._ynn_sums(x, dims, 1, 2, None, 2)[0]
    assert not np.array_equal(one, two)


def test_split_factors_and_loops():
    # (32, 56, 56, 64) NHWC innermost first: C 64, W 56 whole, H split 9, N split 1; 2 threads: N parallel
    ext = [64, 56, 56, 32]
    splits = xla._split_factors(ext)
    assert splits == [None, None, 9, 1]
    assert xla._parallel_loops(ext, splits, 2) == [False, False, False, True]
    assert xla._parallel_loops(ext, splits, 1) == [False] * 4


def _ref_loop_sum(a, start, stop, square):
    """XLA's loops: windows of 32 per reduced dimension ("SAME" padding) while one exceeds 32, then
    row-major sums from 0; a fused square rounds in the windows, else fma(v, v, acc)."""
    reduced = [d for d in range(a.ndim) if not start <= d < stop]
    if square and any(a.shape[d] > 32 for d in reduced):
        a, square = (a * a).astype(F), False
    while any(a.shape[d] > 32 for d in reduced):
        out_shape = [-(-e // min(e, 32)) if d in reduced else e for d, e in enumerate(a.shape)]
        res = np.zeros(out_shape, F)
        for idx in itertools.product(*(range(e) for e in out_shape)):
            acc = F(0)
            ranges = []
            for d, i in enumerate(idx):
                if d in reduced:
                    w = min(a.shape[d], 32)
                    low = (out_shape[d] * w - a.shape[d]) // 2
                    ranges.append([j for j in range(i * w - low, i * w - low + w) if 0 <= j < a.shape[d]])
                else:
                    ranges.append([i])
            for j in itertools.product(*ranges):
                acc = F(acc + a[j])
            res[idx] = acc
        a = res
    out = []
    for chan in itertools.product(*(range(a.shape[d]) for d in range(start, stop))):
        acc = F(0)
        for j in itertools.product(*(range(a.shape[d]) for d in reduced)):
            index = list(j[:start]) + list(chan) + list(j[start:])
            v = a[tuple(index)]
            acc = F(np.float64(v) * np.float64(v) + np.float64(acc)) if square else F(acc + v)
        out.append(acc)
    return np.array(out, F)


@pytest.mark.parametrize(
    ("dims", "start", "stop"),
    [((16, 11), 1, 2), ((4, 3, 7), 1, 2), ((2, 5, 3, 12), 3, 4), ((100, 7), 1, 2), ((3, 40, 20), 2, 3)],
)
@pytest.mark.parametrize("square", [False, True])
def test_small_sums_follow_xla_loops(dims, start, stop, square):
    rng = np.random.default_rng(len(dims))
    a = rng.standard_normal(dims).astype(F)
    got = xla._xla_loop_sum(a, start, stop, square_fma=square)
    np.testing.assert_array_equal(got, _ref_loop_sum(a, start, stop, square))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32])
@pytest.mark.parametrize("variance", ["two_pass", "sum_of_squares", "sum_of_squares_clamped"])
def test_moments_formulas(dtype, variance):
    """mean = fl32(S(x) * fl32(1/n)); var as the module docstring writes it, half inputs upcast first."""
    dims = (8, 40, 13)
    x = (3.0 + np.random.default_rng(5).standard_normal(dims)).astype(dtype)
    mean, var = xla.moments(x, variance, np.dtype(F), shape=dims, threads=2)
    x32 = x.astype(F)
    n = 8 * 13
    s = ref_ynn_sum(x32, dims, 1, 2, 2)
    want_mean = (s * (F(1) / F(n))).astype(F)
    np.testing.assert_array_equal(mean, want_mean)
    if variance == "two_pass":
        d = (x32 - want_mean[None, :, None]).astype(F)
        want_var = (ref_ynn_sum((d * d).astype(F), dims, 1, 2, 2) / F(n)).astype(F)
    else:
        squares = (ref_ynn_sum((x32 * x32).astype(F), dims, 1, 2, 2) * (F(1) / F(n))).astype(F)
        want_var = (squares - (want_mean * want_mean).astype(F)).astype(F)
        if variance == "sum_of_squares_clamped":
            want_var = np.maximum(F(0), want_var)
    np.testing.assert_array_equal(var, want_var)


def test_float64_inputs_sum_in_float64():
    x = np.random.default_rng(6).standard_normal((50, 3, 7))
    mean, var = xla.moments(x, "two_pass", np.dtype(np.float64))
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-14)
    np.testing.assert_allclose(var, x.var(axis=(0, 2)), rtol=1e-12)
