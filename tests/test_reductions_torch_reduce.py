"""reduction="torch-reduce": the compiled emulation of torch's CPU cascade sum against a plain NumPy
loop in the documented order (batchnorm._reductions.torch_reduce), and against torch 2.13's own bits."""

from __future__ import annotations

import zlib

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import batchnorm as bn
from batchnorm._reductions import torch_reduce

F32 = np.dtype(np.float32)
GRAIN = 32768


# -- the reference: one item at a time, the order of SumKernel.cpp -------------------------------------


def ceil_log2(m: int) -> int:
    return 1 if m <= 2 else (m - 1).bit_length()


def cascade(items: np.ndarray) -> np.ndarray:
    """multi_row_sum over axis 0 (every other index an independent accumulator)."""
    m, dtype = items.shape[0], items.dtype
    power = max(4, ceil_log2(m) // 4)
    step, mask = 1 << power, (1 << power) - 1
    acc = [np.zeros(items.shape[1:], dtype) for _ in range(4)]
    i = 0
    while i + step <= m:
        for _ in range(step):
            acc[0] = acc[0] + items[i]
            i += 1
        for level in range(1, 4):
            acc[level] = acc[level] + acc[level - 1]
            acc[level - 1] = np.zeros_like(acc[0])
            if i & (mask << (level * power)):
                break
    for j in range(i, m):
        acc[0] = acc[0] + items[j]
    return ((acc[0] + acc[1]) + acc[2]) + acc[3]


def row_sum(values: np.ndarray) -> np.ndarray:
    """row_sum over axis 0: four interleaved cascades, the leftovers into the first."""
    m = values.shape[0]
    q = m // 4
    parts = cascade(values[: 4 * q].reshape((q, 4, *values.shape[1:])))
    first = parts[0]
    for j in range(4 * q, m):
        first = first + values[j]
    return ((first + parts[1]) + parts[2]) + parts[3]


def inner_sum(row: np.ndarray, lanes: int) -> np.ndarray:
    """vectorized_inner_sum of a contiguous run along axis 0 (scalar_inner_sum when short)."""
    length = row.shape[0]
    if length < lanes:
        return row_sum(row)
    vectors = length // lanes
    per_lane = row_sum(row[: vectors * lanes].reshape((vectors, lanes, *row.shape[1:])))
    total = np.zeros(row.shape[1:], row.dtype)
    for j in range(vectors * lanes, length):
        total = total + row[j]
    for lane in range(lanes):
        total = total + per_lane[lane]
    return total


def column_parts(rows: int, C: int, threads: int, itemsize: int) -> list[tuple[int, int]]:
    if rows * C < GRAIN or threads == 1:
        return [(0, C)]
    used = min(threads, C)
    size = -(-C // used)
    per = 128 // itemsize
    parts = []
    for t in range(used):
        begin, end = t * size, min(C, (t + 1) * size)
        if begin >= end:
            continue
        begin -= begin % per
        end = end if end == C else end - end % per
        if begin < end:
            parts.append((begin, end))
    return parts


def reference_sums(x3: np.ndarray, threads: int, lanes: int) -> np.ndarray:
    outer, C, inner = x3.shape
    zero = x3.dtype.type(0)
    if C == 1:
        flat = x3.reshape(-1)
        n = flat.size
        if n < GRAIN or threads == 1:
            return zero + inner_sum(flat, lanes).reshape(1)
        used = min(threads, -(-n // GRAIN))
        size = -(-n // used)
        buffer = np.zeros(threads, x3.dtype)
        for t in range(used):
            buffer[t] = zero + inner_sum(flat[t * size : (t + 1) * size], lanes)
        return zero + inner_sum(buffer, lanes).reshape(1)
    if inner > 1:
        out = np.zeros(C, x3.dtype)
        for j in range(outer):
            out = out + inner_sum(x3[j].T, lanes)
        return out
    x2 = x3[:, :, 0]
    out = np.zeros(C, x3.dtype)
    for begin, end in column_parts(outer, C, threads, x3.dtype.itemsize):
        group = 4 * lanes if end - begin >= lanes else 4
        split = begin + (end - begin) // group * group
        for g in range(begin, split, group):
            out[g : g + group] = out[g : g + group] + cascade(x2[:, g : g + group])
        out[split:end] = out[split:end] + row_sum(x2[:, split:end])
    return out


def reference_moments(x3, variance, dtype, threads=2, vector_bytes=32):
    dtype = np.dtype(dtype)
    x = np.asarray(x3).astype(dtype)
    lanes = vector_bytes // dtype.itemsize
    count = dtype.type(x.shape[0] * x.shape[2])
    mean = reference_sums(x, threads, lanes) / count
    if variance == "two_pass":
        deviation = x - mean[None, :, None]
        return mean, reference_sums(deviation * deviation, threads, lanes) / count
    var = reference_sums(x * x, threads, lanes) / count - mean * mean
    if variance == "sum_of_squares_clamped":
        var = np.maximum(var, dtype.type(0))
    return mean, var


def assert_same_bits(got: tuple, want: tuple) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        assert g.tobytes() == w.tobytes(), (g, w)


def data(shape, offset, seed, dtype=F32):
    rng = np.random.default_rng(seed)
    return (offset + rng.standard_normal(shape)).astype(dtype)


# -- the emulation equals the reference --------------------------------------------------------------

#: (outer, C, inner): NCHW rows (short, vectorized, with leftovers; rows in registers eight at a time
#: across channels and threads' ranges, and the rows left over), NHWC columns (groups of 4 below 8
#: columns, of 32 from 32, split between threads at 32768 values or more), one channel (one run, or
#: per-thread chunks), level 3 of the cascade (4096 items: columns in chunks of rows that end on a level-3
#: boundary, of the cascade alone or of the ilp trees too where some columns take them).
SHAPES = [
    (4, 3, 7),
    (2, 3, 35),
    (5, 7, 49),
    (3, 5, 323),
    (2, 3, 512),
    (2, 2, 784),
    (1, 2, 8184),
    (1, 2, 8192),
    (16, 11, 1),
    (30, 5, 1),
    (28, 3, 1),
    (8, 2, 1),
    (1, 5, 1),
    (1024, 96, 1),
    (700, 65, 1),
    (4100, 4, 1),
    (16400, 5, 1),
    (1, 1, 4),
    (40000, 1, 1),
    (2, 1, 20001),
    (1, 2, 140000),
]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_equals_reference(shape, threads):
    x = data(shape, 1e4, seed=sum(shape) + threads)
    got = torch_reduce.moments(x, "sum_of_squares", F32, threads=threads)
    assert_same_bits(got, reference_moments(x, "sum_of_squares", F32, threads=threads))


@settings(max_examples=40, deadline=None)
@given(
    outer=st.integers(1, 40),
    C=st.integers(1, 40),
    inner=st.sampled_from([1, 1, 2, 5, 8, 9, 16, 33, 70]),
    offset=st.sampled_from([0.0, 1e4]),
    threads=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_equals_reference_random_shapes(outer, C, inner, offset, threads, seed):
    x = data((outer, C, inner), offset, seed)
    got = torch_reduce.moments(x, "sum_of_squares", F32, threads=threads)
    assert_same_bits(got, reference_moments(x, "sum_of_squares", F32, threads=threads))


@pytest.mark.parametrize("variance", ["two_pass", "sum_of_squares_clamped"])
@pytest.mark.parametrize("shape", [(3, 5, 323), (700, 65, 1), (40000, 1, 1)], ids=str)
def test_other_variances(shape, variance):
    x = data(shape, 1e4, seed=7)
    assert_same_bits(torch_reduce.moments(x, variance, F32), reference_moments(x, variance, F32))


@pytest.mark.parametrize("half", [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)], ids=str)
@pytest.mark.parametrize("shape", [(4, 3, 37), (300, 40, 1)], ids=str)
def test_half_inputs_sum_as_float32(shape, half):
    """Keras casts float16 / bfloat16 to float32 before torch.mean: the float32 tree of the same values."""
    x = data(shape, 3.0, seed=11, dtype=half)
    got = torch_reduce.moments(x, "sum_of_squares", F32)
    assert_same_bits(got, torch_reduce.moments(x.astype(F32), "sum_of_squares", F32))
    assert_same_bits(got, reference_moments(x, "sum_of_squares", F32))


@pytest.mark.parametrize("shape", [(3, 5, 70), (50, 33, 1)], ids=str)
def test_float64_tree_has_four_lanes(shape):
    x = data(shape, 1e4, seed=5, dtype=np.float64)
    got = torch_reduce.moments(x, "sum_of_squares", np.float64)
    assert_same_bits(got, reference_moments(x, "sum_of_squares", np.float64))


def test_the_tree_shows():
    """The emulation is not float64 rounded once: at x = 1e4 + randn the variance differs."""
    x = data((8, 16, 1024), 1e4, seed=3)
    _, var = torch_reduce.moments(x, "sum_of_squares", F32)
    xd = x.astype(np.float64)
    exact = (xd * xd).mean(axis=(0, 2)) - xd.mean(axis=(0, 2)) ** 2
    assert np.any(var != exact.astype(F32))


def test_threads_matter_only_for_split_columns():
    rows = data((1024, 96, 1), 1e4, seed=9)  # split 32 + 64 columns on 2 threads: 3 cascade groups
    assert_same_bits(
        torch_reduce.moments(rows, "sum_of_squares", F32, threads=2),
        reference_moments(rows, "sum_of_squares", F32, threads=2),
    )
    nchw = data((4, 6, 4096), 1e4, seed=9)
    assert_same_bits(
        torch_reduce.moments(nchw, "sum_of_squares", F32, threads=1),
        torch_reduce.moments(nchw, "sum_of_squares", F32, threads=4),
    )


# -- against torch 2.13 (CPU, AVX2 sum kernel, 2 threads), recorded -----------------------------------

#: crc32 of torch.mean(x) and torch.mean(x^2) - torch.mean(x)^2 (float32 bytes) for x = 1e4 +
#: randn (seed 2024), as keras.ops.moments computes them (torch.set_num_threads(2)).
TORCH_CRC = {
    ((8, 16, 32, 32), 1): 689102428,
    ((4, 30, 30, 48), 3): 3783590903,
    ((8192, 16), 1): 237181479,
    ((2000, 96), 1): 1871459642,
    ((5, 7, 11, 13), 1): 3102713102,
}


@pytest.mark.parametrize("key", list(TORCH_CRC), ids=str)
def test_matches_recorded_torch(key):
    shape, axis = key
    x = data(shape, 1e4, seed=2024)
    x3 = (
        np.moveaxis(x, axis, -1).reshape(-1, shape[axis], 1)
        if axis == x.ndim - 1
        else x.reshape(shape[0], shape[1], -1)
    )
    mean, var = torch_reduce.moments(x3, "sum_of_squares", F32)
    assert zlib.crc32(mean.tobytes() + var.tobytes()) == TORCH_CRC[key]


def test_keras3_torch_dialect_sums_as_torch():
    assert bn.dialects.get("keras3-torch").reduction == "torch-reduce"
    x = data((8192, 16), 1e4, seed=2024)
    result = bn.normalize_batch(x, dialect="keras3-torch")
    mean, var = torch_reduce.moments(x[:, :, None], "sum_of_squares", F32)
    assert_same_bits((result.mean, result.var), (mean, var))
