"""batchnorm._reductions.eigen against a plain NumPy reference of TensorFlow's Eigen reduction order.

The reference below restates the order documented in the module (one NumPy operation per float32 or
float64 rounding, vectorized across channels only, where every channel rounds on its own); the compiled
kernels must agree with it bit for bit on every layout TensorFlow's shape simplification distinguishes.
The agreement with TensorFlow itself is the parity suite's (tests/parity, dialects keras3-tensorflow and
tf-keras-unfused at x = 1e4 + randn).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import batchnorm as bn
from batchnorm._reductions import eigen

LANES32 = eigen.VECTOR_BYTES // 4


# -- the reference: Eigen's orders restated plainly -------------------------------------------------


def _leaf(v: np.ndarray, first: int, count: int, lanes: int) -> np.generic:
    """InnerMostDimReducer without the tree: four packet accumulators, then packets, then scalars."""
    packets = [np.zeros(lanes, v.dtype) for _ in range(4)]
    start = 0
    if count >= 4 * lanes:
        start = count // (4 * lanes) * 4 * lanes
        for j in range(0, start, 4 * lanes):
            for k in range(4):
                packets[k] = packets[k] + v[first + j + k * lanes : first + j + (k + 1) * lanes]
        packets[0] = ((packets[0] + packets[1]) + packets[2]) + packets[3]
    while start + lanes <= count:
        packets[0] = packets[0] + v[first + start : first + start + lanes]
        start += lanes
    scalar = v.dtype.type(0)
    for j in range(start, count):
        scalar = scalar + v[first + j]
    p = packets[0]
    while p.size > 1:
        p = p[: p.size // 2] + p[p.size // 2 :]
    return scalar + p[0]


def _tree(v: np.ndarray, first: int, count: int, lanes: int) -> np.generic:
    if count <= lanes * eigen.LEAF_SIZE:
        return _leaf(v, first, count, lanes)
    split = lanes * -(-(first + -(-count // 2)) // lanes)
    return _tree(v, first, split - first, lanes) + _tree(v, split, first + count - split, lanes)


def _sums(x3: np.ndarray, lanes: int, threads: int) -> np.ndarray:
    """Per-channel Eigen sums of x3 (outer, C, inner), the layout picked as TensorFlow picks it."""
    outer, C, inner = x3.shape
    if outer * inner == 1:
        return x3.reshape(C).copy()
    if C == 1:
        flat = x3.reshape(-1)
        n = flat.size
        shards = eigen.full_reduction_threads(n, flat.itemsize, lanes, threads)
        if shards == 1:
            return np.array([_tree(flat, 0, n, lanes)])
        block = n // shards
        blocks = n // block
        total = _tree(flat, blocks * block, n - blocks * block, lanes) if blocks * block < n else 0 * flat[0]
        for i in range(blocks):
            total = total + _tree(flat, i * block, block, lanes)
        return np.array([total])
    if outer == 1:
        flat = x3.reshape(-1)
        return np.array([_tree(flat, c * inner, inner, lanes) for c in range(C)])
    if inner == 1:
        rows = x3.reshape(outer, C)
        whole = C - C % lanes
        out = np.zeros(C, x3.dtype)
        start = 0
        if outer >= 16 and whole:
            start = outer // 4 * 4
            acc = [np.zeros(whole, x3.dtype) for _ in range(4)]
            for j in range(start):
                acc[j % 4] = acc[j % 4] + rows[j, :whole]
            out[:whole] = ((acc[0] + acc[1]) + acc[2]) + acc[3]
        for j in range(start, outer):
            out[:whole] = out[:whole] + rows[j, :whole]
        for j in range(outer):
            out[whole:] = out[whole:] + rows[j, whole:]
        return out
    out = np.zeros(C, x3.dtype)
    for b in range(inner):
        for a in range(outer):
            out = out + x3[a, :, b]
    return out


def reference(x3: np.ndarray, variance: str, vector_bytes: int = 32, threads: int = 2):
    work = np.dtype(np.float64 if x3.dtype == np.float64 else np.float32)
    x = x3.astype(work)
    lanes = vector_bytes // work.itemsize
    n = work.type(x.shape[0] * x.shape[2])
    mean = _sums(x, lanes, threads) / n
    if variance == "two_pass":
        d = x - mean[None, :, None]
        var = _sums(d * d, lanes, threads) / n
    else:
        var = _sums(x * x, lanes, threads) / n - mean * mean
        if variance == "sum_of_squares_clamped":
            var = np.maximum(var, work.type(0))
    return mean, var


# -- tests ------------------------------------------------------------------------------------------

SHAPES = {
    "planes": (5, 11, 37),  # NCHW: for b: for a, a group of 8 channels and 3 more
    "planes-16": (3, 16, 300),  # two whole groups, tiles of 256 and a remainder
    "planes-wide": (2, 37, 261),  # float32: three groups of 16 lanes (the last clamped), blocks of 128
    # columns, 4-column transposes and one column left over
    "rows": (37, 13, 1),  # channels last: 8 channels in packets (4 accumulators), 5 one by one
    "rows-short": (9, 20, 1),  # fewer than 16 rows: packets summed row after row
    "rows-narrow": (40, 3, 1),  # no whole packet
    "rows-wide": (203, 136, 1),  # float32: 64 + 64 + 8 channels in registers, two blocks of rows, 3 left
    "inner": (1, 5, 203),  # batch of one: one leaf per channel, packets and scalars
    "inner-tree": (1, 3, 20001),  # above 8 * 1024 values: the tree, splits aligned from the start
    "full": (7, 1, 77),  # one channel: a full reduction
    "single": (1, 6, 1),  # n = 1: a copy
}


def _data(shape: tuple[int, ...], offset: float, dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (offset + rng.standard_normal(shape)).astype(dtype)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.all(a.view(np.uint8) == b.view(np.uint8)))


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("variance", ["two_pass", "sum_of_squares_clamped"])
def test_matches_reference_float32(name, offset, variance):
    x3 = _data(SHAPES[name], offset, np.float32)
    mean, var = eigen.moments(x3, variance, np.dtype(np.float32))
    want_mean, want_var = reference(x3, variance)
    assert _same(mean, want_mean.astype(np.float32))
    assert _same(var, want_var.astype(np.float32))


@pytest.mark.parametrize("name", ["planes", "rows", "inner", "full"])
def test_matches_reference_float64(name):
    """float64 inputs sum in float64, four lanes to the packet."""
    x3 = _data(SHAPES[name], 1e4, np.float64, seed=1)
    mean, var = eigen.moments(x3, "two_pass", np.dtype(np.float64))
    want_mean, want_var = reference(x3, "two_pass")
    assert _same(mean, want_mean) and _same(var, want_var)


@pytest.mark.parametrize("half", [np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("name", ["planes", "planes-wide", "rows", "rows-wide", "inner", "full"])
def test_half_inputs_sum_in_float32(half, name):
    x3 = _data(SHAPES[name], 100.0, half, seed=2)
    mean, var = eigen.moments(x3, "two_pass", np.dtype(np.float32))
    want_mean, want_var = reference(x3.astype(np.float32), "two_pass")
    assert _same(mean, want_mean) and _same(var, want_var)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_full_reduction_shards(threads):
    """One channel of n >= 160000 values: the sum is split into one shard per pool thread (up to 3)."""
    x3 = _data((1, 1, 200003), 1e4, np.float32, seed=3)
    assert eigen.full_reduction_threads(200003, 4, LANES32, threads) == threads
    mean, var = eigen.moments(x3, "two_pass", np.dtype(np.float32), threads=threads)
    want_mean, want_var = reference(x3, "two_pass", threads=threads)
    assert _same(mean, want_mean) and _same(var, want_var)


def test_full_reduction_threads_follows_eigens_cost_model():
    # float32, 8 lanes: 11/64 * 4 + 10/8 = 1.9375 cycles a value; a second thread from 210000 cycles
    assert eigen.full_reduction_threads(108387, 4, 8, 16) == 1
    assert eigen.full_reduction_threads(108388, 4, 8, 16) == 2
    assert eigen.full_reduction_threads(10**7, 4, 8, 2) == 2


def test_packet_width_is_a_parameter():
    """AVX-512 builds (64-byte packets) sum in another order: the parameter reaches the kernels."""
    x3 = _data((1, 2, 1000), 1e4, np.float32, seed=4)
    mean16, _ = eigen.moments(x3, "two_pass", np.dtype(np.float32), vector_bytes=64)
    assert _same(mean16, reference(x3, "two_pass", vector_bytes=64)[0].astype(np.float32))


def test_the_order_matters_here():
    """The data above tell orders apart: at x = 1e4 + randn, the four row accumulators give other
    float32 means than the correctly rounded ones and than summing the rows one after another."""
    x3 = _data((64, 16, 1), 1e4, np.float32, seed=5)
    mean, _ = eigen.moments(x3, "two_pass", np.dtype(np.float32))
    exact = (x3.astype(np.float64).sum(axis=(0, 2)) / 64).astype(np.float32)
    in_row_order = np.zeros(16, np.float32)
    for row in x3[:, :, 0]:
        in_row_order = in_row_order + row
    assert not np.array_equal(mean, exact)
    assert not np.array_equal(mean, in_row_order / np.float32(64))


@pytest.mark.parametrize("variance", ["two_pass", "sum_of_squares"])
def test_strided_input_sums_like_its_contiguous_copy(variance):
    """A view that is not C-contiguous (a channel slice) sums as its values in C order."""
    x3 = _data((4, 40, 21), 1e4, np.float32, seed=8)[:, ::2, :]
    mean, var = eigen.moments(x3, variance, np.dtype(np.float32))
    want_mean, want_var = reference(np.ascontiguousarray(x3), variance)
    assert _same(mean, want_mean) and _same(var, want_var)


def test_constant_channel_two_pass_is_exact():
    x3 = np.full((3, 9, 40), 0.1, np.float32)
    mean, var = eigen.moments(x3, "two_pass", np.dtype(np.float32))
    want_mean, want_var = reference(x3, "two_pass")
    assert _same(mean, want_mean) and _same(var, want_var)


@pytest.mark.parametrize("dialect", ["keras3-tensorflow", "tf-keras-unfused"])
def test_dialects_use_the_eigen_tree(dialect):
    x = _data((6, 5, 4, 3), 1e4, np.float32, seed=6)
    result = bn.normalize_batch(x, dialect=dialect)
    x3 = np.ascontiguousarray(x).reshape(-1, 3, 1)
    mean, var = eigen.moments(x3, "two_pass", np.dtype(np.float32))
    assert bn.dialects.get(dialect).reduction == "eigen"
    assert _same(np.asarray(result.mean), mean) and _same(np.asarray(result.var), var)


def test_tf_keras_takes_the_eigen_tree_for_rank_2_and_3():
    x = _data((40, 9), 1e4, np.float32, seed=7)
    assert _same(
        np.asarray(bn.normalize_batch(x, dialect="tf-keras").mean),
        eigen.moments(x.reshape(40, 9, 1), "two_pass", np.dtype(np.float32))[0],
    )
