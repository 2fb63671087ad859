"""The compiled kernels against the NumPy reference: bit-identical elementwise results, statistics equal to
float64 rounding, accuracy at large offsets, and the choice of kernels."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import batchnorm as bn
from batchnorm import _kernels
from batchnorm._arithmetic import Coefficients
from batchnorm._kernels import reference

compiled = pytest.importorskip("batchnorm._kernels.compiled")

F16, BF16, F32, F64 = (np.dtype(t) for t in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64))
FORMS = ["centered", "affine", "fma", "ratio", "normalized_fma"]
# (input, compute, output) dtypes as the functional layer pairs them: the frameworks compute in float32,
# the exact dialect and float64 inputs in float64; Flax promotes half inputs to float32 outputs.
APPLY_DTYPES = [
    (F16, F32, F16),
    (BF16, F32, BF16),
    (F32, F32, F32),
    (F16, F64, F16),
    (BF16, F64, BF16),
    (F32, F64, F32),
    (F64, F64, F64),
    (F16, F32, F32),
]
INPUT_DTYPES = [F16, BF16, F32, F64]
VARIANCES = ["two_pass", "sum_of_squares", "sum_of_squares_clamped"]
SRC = Path(bn.__file__).resolve().parent


@pytest.fixture(autouse=True)
def _compiled_kernels(monkeypatch):
    """The compiled kernels, split over every thread even for the small arrays of these tests."""
    monkeypatch.setattr(compiled, "PARALLEL_MIN", 0)
    before = _kernels.backend()
    _kernels.use("compiled")
    yield
    _kernels.use(before)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def data(rng: np.random.Generator, shape, dtype, scale: float, specials: bool) -> np.ndarray:
    """Normal values times ``scale``, with some zeros, subnormal-sized values, infinities and NaNs."""
    x = rng.standard_normal(shape) * scale
    if specials and x.size:
        flat = x.reshape(-1)
        picks = rng.integers(0, flat.size, max(1, flat.size // 8))
        flat[picks] = rng.choice([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-6, -3e-8, 7e4, 2e38], picks.size)
    with np.errstate(over="ignore"):
        return x.astype(dtype)


shapes3 = st.tuples(
    st.integers(1, 7), st.integers(1, 6), st.one_of(st.integers(1, 20), st.sampled_from([31, 64, 100]))
)


def coefficients(rng: np.random.Generator, c: int, form: str, dtype) -> Coefficients:
    def arr(lo, hi):
        return rng.uniform(lo, hi, c).astype(dtype)

    return Coefficients(form, arr(-3, 3), arr(-4, 4), arr(0.25, 4), arr(-3, 3), gain=arr(-2, 2))


def both_apply(x3, co, out_dtype) -> tuple[np.ndarray, np.ndarray]:
    want = np.empty(x3.shape, out_dtype)
    got = np.empty(x3.shape, out_dtype)
    with np.errstate(all="ignore"):
        reference.apply_affine(x3, co, want)
    compiled.apply_affine(x3, co, got)
    return want, got


# -- elementwise kernels: bit for bit ------------------------------------------------------------


@settings(max_examples=200)
@given(
    shapes3,
    st.sampled_from(APPLY_DTYPES),
    st.sampled_from(FORMS),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1e-3, 1.0, 100.0, 1e4]),
    st.booleans(),
)
def test_apply_affine_is_bit_identical_to_the_reference(shape, dtypes, form, seed, scale, specials):
    x_dtype, compute, out_dtype = dtypes
    rng = np.random.default_rng(seed)
    x3 = data(rng, shape, x_dtype, scale, specials)
    co = coefficients(rng, shape[1], form, compute)
    want, got = both_apply(x3, co, out_dtype)
    np.testing.assert_array_equal(bits(got), bits(want))


@pytest.mark.parametrize("form", FORMS)
def test_apply_affine_with_nan_and_inf_coefficients_agrees_on_every_value(form):
    rng = np.random.default_rng(1)
    x3 = data(rng, (5, 6, 3), F32, 10.0, True)
    co = coefficients(rng, 6, form, F32)
    if form == "ratio":
        x3 = np.concatenate([x3, data(rng, (5, 6, 40), F32, 10.0, True)], axis=2)  # rows and columns
    for a in (co.shift, co.scale, co.divisor, co.offset, co.gain):
        a[[1, 2, 4]] = [np.nan, 0.0, np.inf]  # a zero divisor gives inf or NaN, as in NumPy
    want, got = both_apply(x3, co, F32)
    same = (want.view(np.uint32) == got.view(np.uint32)) | (np.isnan(want) & np.isnan(got))
    assert same.all()


@pytest.mark.parametrize("channels", [512, 1024])
@pytest.mark.parametrize("form", FORMS)
def test_channels_last_coefficients_that_are_float32_values_narrowed_give_the_same_bits(
    monkeypatch, channels, form
):
    """Rows of 512 to 2048 columns take a float64 shift and offset whose values are float32 values
    (NaN, inf and -0 included) as float32 arrays, which the kernel widens back exactly: the reference's
    bits; arrays with other values stay float64."""
    rng = np.random.default_rng(channels)
    x3 = data(rng, (9, channels, 1), F32, 100.0, True)
    co = coefficients(rng, channels, form, F64)
    as_float32 = dataclasses.replace(
        co, shift=co.shift.astype(F32).astype(F64), offset=co.offset.astype(F32).astype(F64)
    )
    as_float32.shift[[3, 7]] = [np.nan, -0.0]
    as_float32.offset[5] = np.inf
    narrowed = []
    narrow = compiled._narrowed
    monkeypatch.setattr(compiled, "_narrowed", lambda a: narrowed.append(narrow(a).dtype) or narrow(a))
    for given_co in (as_float32, co):
        want, got = both_apply(x3, given_co, F32)
        np.testing.assert_array_equal(bits(got), bits(want))
    assert narrowed == [F32, F32, F64, F64]


@pytest.mark.parametrize("inner", [1, 5, 40])
def test_apply_affine_in_place_and_into_a_strided_output(inner):
    rng = np.random.default_rng(2)
    x3 = data(rng, (6, 4, inner), F32, 1.0, False)
    co = coefficients(rng, 4, "centered", F64)
    want, _ = both_apply(x3, co, F32)
    inplace = x3.copy()
    compiled.apply_affine(inplace, co, inplace)
    np.testing.assert_array_equal(bits(inplace), bits(want))
    big = np.zeros((6, 4, 2 * inner), F32)
    compiled.apply_affine(x3, co, big[:, :, ::2])
    np.testing.assert_array_equal(big[:, :, ::2], want)


@settings(max_examples=100)
@given(shapes3, st.sampled_from(INPUT_DTYPES), st.integers(0, 2**32 - 1), st.booleans())
def test_grad_input_is_bit_identical_to_the_reference(shape, dtype, seed, specials):
    rng = np.random.default_rng(seed)
    dy3, x3 = data(rng, shape, dtype, 3.0, specials), data(rng, shape, dtype, 3.0, False)
    mean, a, k, c = (rng.standard_normal(shape[1]) for _ in range(4))
    want, got = np.empty(shape, dtype), np.empty(shape, dtype)
    with np.errstate(all="ignore"):
        reference.grad_input(dy3, x3, mean.astype(np.float32), a, k, c, want)
    compiled.grad_input(dy3, x3, mean.astype(np.float32), a, k, c, got)
    np.testing.assert_array_equal(bits(got), bits(want))


def test_one_chunk_on_the_calling_thread_gives_the_same_results(monkeypatch):
    rng = np.random.default_rng(8)
    for shape in [(64, 5, 40), (300, 7, 1)]:
        x3 = data(rng, shape, BF16, 5.0, True)
        co = coefficients(rng, shape[1], "normalized_fma", F32)
        _, parallel = both_apply(x3, co, BF16)
        stats = compiled.moments(x3, "two_pass", F64)
        monkeypatch.setattr(compiled, "PARALLEL_MIN", 1 << 40)
        _, serial = both_apply(x3, co, BF16)
        np.testing.assert_array_equal(bits(serial), bits(parallel))
        for a, b in zip(compiled.moments(x3, "two_pass", F64), stats, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-13)
        monkeypatch.setattr(compiled, "PARALLEL_MIN", 0)


def test_plans_follow_the_thread_count_and_the_parallel_minimum(monkeypatch):
    """A shape's plan is cached, its chunk count is not: it follows numba.set_num_threads and
    PARALLEL_MIN at every call."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two numba threads (NUMBA_NUM_THREADS >= 2)")
    before = numba.get_num_threads()
    try:
        for threads in (1, 2, 1):
            numba.set_num_threads(threads)
            assert compiled._plan(64, 8, 4096, compiled.ELEMENT_SEGMENT, True).nchunks == threads
            assert compiled._plan(1 << 16, 3, 1, compiled.STAT_BLOCK).nchunks == threads
    finally:
        numba.set_num_threads(before)
    monkeypatch.setattr(compiled, "PARALLEL_MIN", 1 << 40)
    assert compiled._plan(64, 8, 4096, compiled.ELEMENT_SEGMENT, True).nchunks == 1


def test_long_rows_split_into_segments_and_chunks(monkeypatch):
    """Rows longer than a work item, over more items than threads, channels-last rows wider than a
    tile of columns: the same bits and sums."""
    monkeypatch.setattr(compiled, "ELEMENT_SEGMENT", 7)
    monkeypatch.setattr(compiled, "STAT_BLOCK", 16)
    monkeypatch.setattr(compiled, "COLUMN_BLOCK", 16)
    rng = np.random.default_rng(3)
    for shape in [(3, 2, 101), (1, 1, 500), (40, 3, 1), (9, 2, 3), (5, 600, 1), (7, 130, 3)]:
        x3 = data(rng, shape, F32, 2.0, False) + np.float32(50)
        co = coefficients(rng, shape[1], "ratio", F32)
        want, got = both_apply(x3, co, F32)
        np.testing.assert_array_equal(bits(got), bits(want))
        for variance in VARIANCES:
            m0, v0 = reference.moments(x3, variance, F64)
            m1, v1 = compiled.moments(x3, variance, F64)
            np.testing.assert_allclose(m1, m0, rtol=1e-13)
            np.testing.assert_allclose(v1, v0, rtol=1e-9 if variance != "two_pass" else 1e-12)
        dy3 = data(rng, shape, F32, 1.0, False)
        mean = x3.mean(axis=(0, 2), dtype=np.float64)
        a, k, c = (rng.standard_normal(shape[1]) for _ in range(3))
        want, got = np.empty(shape, F32), np.empty(shape, F32)
        reference.grad_input(dy3, x3, mean, a, k, c, want)
        compiled.grad_input(dy3, x3, mean, a, k, c, got)
        np.testing.assert_array_equal(bits(got), bits(want))
        for s0, s1 in zip(reference.grad_sums(dy3, x3, mean), compiled.grad_sums(dy3, x3, mean), strict=True):
            np.testing.assert_allclose(s1, s0, rtol=1e-12, atol=1e-12 * np.abs(dy3).sum())


def test_concurrent_calls_from_python_threads():
    """The kernels release the GIL; calls from several threads at once give each its own result."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    cases = []
    for i in range(8):
        x3 = data(rng, (32, 4, 600) if i % 2 else (4000, 24, 1), F32, 3.0, False)
        co = coefficients(rng, x3.shape[1], FORMS[i % len(FORMS)], F64)
        want = np.empty(x3.shape, F32)
        reference.apply_affine(x3, co, want)
        cases.append((x3, co, want))

    def run(case):
        x3, co, want = case
        got = np.empty_like(want)
        compiled.apply_affine(x3, co, got)
        stats = compiled.moments(x3, "two_pass", F64)
        return np.array_equal(bits(got), bits(want)) and np.allclose(stats[1], x3.var(axis=(0, 2)), rtol=1e-5)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, cases * 3))


# -- conversions: every float16 and bfloat16 value, and rounding of float32 and float64 ---------


@pytest.fixture(scope="module")
def converters():
    from numba import njit

    def make(fn):
        @njit(cache=False)
        def run(src, dst):
            for i in range(src.size):
                dst[i] = fn(src[i])

        return run

    return {
        name: make(getattr(compiled, name))
        for name in (
            "_half_to_f32",
            "_bf16_to_f32",
            "_f32_to_half",
            "_f32_to_bf16",
            "_f64_to_half",
            "_f64_to_bf16",
        )
    }


def quiet(a: np.ndarray) -> np.ndarray:
    """Signaling NaNs made quiet, as x86 F16C conversions, float64 -> float32 conversions (the float16
    rounding goes through one) and every arithmetic operation do."""
    if not compiled.HARDWARE_HALF:
        return a
    if a.dtype == F16:
        u = a.view(np.uint16)
        return np.where((u & 0x7C00) == 0x7C00, u | (u & 0x3FF != 0) * 0x200, u).astype(np.uint16).view(F16)
    if a.dtype == np.float64:
        u = a.view(np.uint64)
        nan = ((u & 0x7FF0000000000000) == 0x7FF0000000000000) & (u & 0xFFFFFFFFFFFFF != 0)
        return np.where(nan, u | np.uint64(1 << 51), u).astype(np.uint64).view(np.float64)
    u = a.view(np.uint32)
    return (
        np.where((u & 0x7F800000) == 0x7F800000, u | (u & 0x7FFFFF != 0) * 0x400000, u)
        .astype(np.uint32)
        .view(np.float32)
    )


def test_every_half_and_bfloat16_value_decodes_as_numpy_and_ml_dtypes_do(converters):
    """Bit for bit (with F16C a signaling NaN comes out quiet: the kernels' arithmetic quiets it anyway)."""
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(every.size, np.float32)
    converters["_half_to_f32"](every, out)
    np.testing.assert_array_equal(bits(out), bits(quiet(every.view(F16)).astype(np.float32)))
    converters["_bf16_to_f32"](every.view(np.int16), out)
    np.testing.assert_array_equal(bits(out), bits(every.view(BF16).astype(np.float32)))


def _edges_f32() -> np.ndarray:
    """Random float32 bit patterns, and every float16/bfloat16 value, its midpoints and neighbours."""
    rng = np.random.default_rng(4)
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    with np.errstate(invalid="ignore"):
        halves = (every.view(F16).astype(np.float64), every.view(BF16).astype(np.float64))
    mids = []
    for v in halves:
        v = np.sort(v[np.isfinite(v)])
        mids.append((v[:-1] + v[1:]) / 2)
    base = np.concatenate([*halves, *mids]).astype(np.float32)
    near = np.concatenate(
        [base, np.nextafter(base, np.float32(np.inf)), np.nextafter(base, np.float32(-np.inf))]
    )
    return np.concatenate(
        [near, rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)]
    )


def test_float32_rounds_to_half_and_bfloat16_as_numpy_and_ml_dtypes_do(converters):
    with np.errstate(invalid="ignore"):
        f = _edges_f32()
    out = np.empty(f.size, np.uint16)
    converters["_f32_to_half"](f, out)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(out, quiet(f).astype(F16).view(np.uint16))
        converters["_f32_to_bf16"](f, out.view(np.int16))
        np.testing.assert_array_equal(out, f.astype(BF16).view(np.uint16))


def test_software_half_conversions_match_numpy_where_the_cpu_has_f16c_too():
    """The integer-only float16 conversions (used where LLVM has no hardware half), NaN payloads kept
    as NumPy keeps them, on every float16 value and the float32 and float64 rounding edges."""
    from numba import njit, types

    def make(src, dst, build):
        fn = compiled._converter(src, dst, build)

        @njit(cache=False)
        def run(a, out):
            for i in range(a.size):
                out[i] = fn(a[i])

        return run

    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    decoded = np.empty(every.size, np.float32)
    make(types.uint16, types.float32, compiled._ir_half_to_f32)(every, decoded)
    np.testing.assert_array_equal(bits(decoded), bits(every.view(F16).astype(np.float32)))
    with np.errstate(invalid="ignore"):
        f = _edges_f32()
    out = np.empty(f.size, np.uint16)
    make(types.float32, types.uint16, compiled._ir_f32_to_half)(f, out)
    with warnings.catch_warnings():  # NumPy warns on casting a signaling NaN, whatever errstate says
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_array_equal(out, f.astype(F16).view(np.uint16))
        d = np.concatenate([f.astype(np.float64), np.nextafter(f.astype(np.float64), np.inf)])
        out = np.empty(d.size, np.uint16)
        make(types.float64, types.uint16, compiled._ir_f64_to_half)(d, out)
        np.testing.assert_array_equal(out, d.astype(F16).view(np.uint16))


def test_float64_rounds_once_to_half_and_bfloat16(converters):
    from batchnorm._rounding import round_once

    rng = np.random.default_rng(5)
    with np.errstate(invalid="ignore"):
        f = _edges_f32().astype(np.float64)
    d = np.concatenate(
        [
            f,
            np.nextafter(f, np.inf),
            np.nextafter(f, -np.inf),
            rng.integers(0, 1 << 64, 1 << 20, dtype=np.uint64).view(np.float64),
            np.ldexp(rng.uniform(1, 2, 1 << 18), rng.integers(-30, 18, 1 << 18)),
        ]
    )
    out = np.empty(d.size, np.uint16)
    converters["_f64_to_half"](d, out)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(out, round_once(quiet(d), F16).view(np.uint16))
        converters["_f64_to_bf16"](d, out.view(np.int16))
        np.testing.assert_array_equal(out, round_once(d, BF16).view(np.uint16))


# -- statistics ------------------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    shapes3,
    st.sampled_from(INPUT_DTYPES),
    st.sampled_from(VARIANCES),
    st.sampled_from([F32, F64]),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.0, 1.0, 1e3]),
)
def test_moments_equal_the_reference_to_rounding(shape, x_dtype, variance, stats_dtype, seed, offset):
    if x_dtype == F64:
        stats_dtype = F64  # the functional layer computes float64 statistics for float64 input
    rng = np.random.default_rng(seed)
    x3 = (rng.standard_normal(shape) * 2 + offset).astype(x_dtype)
    m0, v0 = reference.moments(x3, variance, stats_dtype)
    m1, v1 = compiled.moments(x3, variance, stats_dtype)
    assert m1.dtype == v1.dtype == stats_dtype and m1.shape == v1.shape == (shape[1],)
    tol = 1e-12 if stats_dtype == F64 else 2e-6
    x = x3.astype(np.float64)
    square_scale = (x * x).mean(axis=(0, 2))
    np.testing.assert_allclose(m1, m0, rtol=tol, atol=tol * np.abs(x).max())
    if variance == "two_pass":
        np.testing.assert_allclose(v1, v0, rtol=tol, atol=tol * x.var(axis=(0, 2)).max() + 1e-300)
    else:
        np.testing.assert_allclose(v1, v0, rtol=0, atol=8 * tol * square_scale.max())
        if variance == "sum_of_squares_clamped":
            assert (v1 >= 0).all()


@settings(max_examples=200)
@given(shapes3, st.sampled_from(INPUT_DTYPES), st.integers(0, 2**32 - 1), st.sampled_from([0.0, 1e3]))
def test_grad_sums_equal_the_reference_to_rounding(shape, dtype, seed, offset):
    rng = np.random.default_rng(seed)
    dy3 = rng.standard_normal(shape).astype(dtype)
    x3 = (rng.standard_normal(shape) + offset).astype(dtype)
    mean = x3.astype(np.float64).mean(axis=(0, 2)).astype(np.float32)
    for s0, s1, terms in zip(
        reference.grad_sums(dy3, x3, mean),
        compiled.grad_sums(dy3, x3, mean),
        (dy3.astype(np.float64), dy3.astype(np.float64) * (x3.astype(np.float64) - mean[None, :, None])),
        strict=True,
    ):
        assert s1.dtype == np.float64
        np.testing.assert_allclose(s1, s0, rtol=0, atol=1e-13 * np.abs(terms).sum(axis=(0, 2)).max() + 1e-300)


@pytest.mark.parametrize("shape", [(4, 3, 50), (3000, 5, 1), (70, 4, 3), (1, 2, 20000)])
@pytest.mark.parametrize("dtype", [F16, BF16, F32])
def test_a_constant_channel_has_variance_exactly_zero(shape, dtype, monkeypatch):
    """What makes eps = 0 an error rather than a division by a rounding residue."""
    monkeypatch.setattr(compiled, "STAT_BLOCK", 64)
    monkeypatch.setattr(compiled, "COLUMN_BLOCK", 64)
    x3 = np.broadcast_to(np.float32([3.0, 0.1, -7.5, 1e4, 2.0])[: shape[1]].reshape(1, -1, 1), shape).astype(
        dtype
    )
    for stats in (F32, F64):
        mean, var = compiled.moments(x3, "two_pass", stats)
        np.testing.assert_array_equal(var, 0)
        np.testing.assert_array_equal(mean, x3[0, :, 0].astype(stats))


def test_statistics_of_nan_and_inf_are_nan_or_inf_where_the_reference_is():
    x3 = np.ones((4, 3, 2), np.float32)
    x3[0, 0, 0], x3[1, 1, 1] = np.nan, np.inf
    for variance in VARIANCES:
        with np.errstate(all="ignore"):
            ref = reference.moments(x3, variance, F64)
        got = compiled.moments(x3, variance, F64)
        for r, g in zip(ref, got, strict=True):
            np.testing.assert_array_equal(np.isnan(g), np.isnan(r))
            np.testing.assert_array_equal(g[np.isfinite(r)], r[np.isfinite(r)])


@pytest.mark.parametrize(("offset", "spread"), [(1e4, 1.0), (1e6, 0.01)])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_large_offsets_keep_the_batch_variance(offset, spread, layout):
    """Per-block two-pass with Chan's merge: relative error of the batch variance <= 1e-6."""
    rng = np.random.default_rng(6)
    x = (offset + spread * rng.standard_normal((64, 8, 24, 24))).astype(np.float32)
    axis = 1
    if layout == "NHWC":
        x, axis = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), -1
    red = tuple(a for a in range(4) if a != axis % 4)
    xl = x.astype(np.longdouble)
    want = ((xl - xl.mean(axis=red, keepdims=True)) ** 2).mean(axis=red).astype(np.float64)
    got = bn.normalize_batch(x, axis=axis).var
    assert (np.abs(got - want) / want).max() <= 1e-6
    # the float32 statistics of the framework dialects, two-pass, keep it too
    x3 = x.reshape(64, 8, -1) if layout == "NCHW" else x.reshape(-1, 8, 1)
    _, v32 = compiled.moments(x3, "two_pass", F32)
    assert (np.abs(v32 - want) / want).max() <= 1e-6


# -- choosing the kernels ------------------------------------------------------------------------


def test_the_reference_stays_selectable_and_agrees():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 5, 4, 3)).astype(np.float32)
    mean, gamma, beta = (rng.standard_normal(5).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.5, 2, 5).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    results = {}
    for name in ("compiled", "reference"):
        assert _kernels.use(name) == name == _kernels.backend()
        results[name] = (
            bn.normalize(x, mean, var, gamma, beta, axis=1, dialect="torch"),
            bn.normalize_batch(x, gamma, beta, axis=1),
            bn.backward(dy, x, gamma, mean=mean, var=var, axis=1, training=False),
        )
    (y1, b1, g1), (y0, b0, g0) = results["compiled"], results["reference"]
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_allclose(b1.var, b0.var, rtol=1e-12)
    np.testing.assert_allclose(b1.y, b0.y, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(g1[0], g0[0])
    for g, w in zip(g1[1:], g0[1:], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)
    with pytest.raises(ValueError, match="BATCHNORM_KERNELS"):
        _kernels.use("fast")


def _run(code: str, env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, **kw)


@pytest.mark.parametrize(
    ("value", "want"), [("reference", "reference"), ("compiled", "compiled"), ("", "compiled")]
)
def test_environment_variable_picks_the_kernels(value, want):
    env = dict(os.environ, BATCHNORM_KERNELS=value)
    done = _run("from batchnorm import _kernels; print(_kernels.backend())", env, check=True)
    assert done.stdout.strip() == want


def test_cache_falls_back_to_a_user_directory_when_the_package_is_read_only(tmp_path):
    """numba caches beside the source when it can, else under the user's cache directory; the
    second fresh process loads the kernel from there instead of compiling it."""
    pkg = tmp_path / "site"
    shutil.copytree(SRC, pkg / "batchnorm", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, HOME=str(tmp_path / "home"), PYTHONPATH=str(pkg))
    for name in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME"):
        env.pop(name, None)
    env.pop("BATCHNORM_KERNELS", None)
    code = (
        "import numpy as np, batchnorm as bn; from batchnorm._kernels import compiled as c; "
        "bn.normalize(np.ones((2, 3, 4), np.float32), [0.0] * 3, [1.0] * 3, axis=1); "
        "print(bn.__file__, sum(c._apply.stats.cache_hits.values()))"
    )
    if os.geteuid() != 0:
        for p in [pkg, *pkg.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        command = [sys.executable, "-c", code]
    elif shutil.which("unshare"):
        mount = f'mount --bind {pkg} {pkg} && mount -o remount,ro,bind {pkg} && exec "$0" -c "$1"'
        command = ["unshare", "-m", "sh", "-c", mount, sys.executable, code]
    else:
        pytest.skip("cannot make a read-only package directory here")
    runs = [subprocess.run(command, env=env, capture_output=True, text=True) for _ in range(2)]
    if runs[0].returncode != 0 and "unshare" in runs[0].stderr + runs[0].stdout:
        pytest.skip(f"no mount namespace here: {runs[0].stderr.strip()[:200]}")
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert str(pkg) in runs[1].stdout
    assert runs[1].stdout.split()[-1] == "1"  # loaded from the cache
    assert not list(pkg.rglob("*.nbi"))
    assert list((tmp_path / "home").rglob("*.nbi"))
