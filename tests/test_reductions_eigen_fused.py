"""The eigen-fused kernel (tf_keras' fused rank-5 statistics) against a NumPy statement of Eigen's tree.

The compiled kernel reads (outer, C, inner) in place, eight channels per vector, Eigen's four accumulators
rotating over rows that run across tiles and image boundaries; the oracle here writes the tree on the
transposed (R, C) rows, channels side by side (each NumPy operation one IEEE rounding per element):
for the channels in whole packets of eight and R >= 16, row j < R - R % 4 into accumulator j % 4, then
((a0 + a1) + a2) + a3, then the last rows one by one; the other channels one chain over the rows.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from batchnorm._kernels import compiled
from batchnorm._reductions import _fused_kernels as k
from batchnorm._reductions import eigen_fused

F32 = np.float32
BF16 = np.dtype(ml_dtypes.bfloat16)


def _sums(terms: np.ndarray, packed: int) -> np.ndarray:
    count, channels = terms.shape
    unrolled = count - count % 4 if count >= eigen_fused.UNROLL_MIN_ROWS else 0
    acc = np.zeros((4, channels), terms.dtype)
    for j in range(unrolled):
        acc[j % 4] += terms[j]
    tree = ((acc[0] + acc[1]) + acc[2]) + acc[3]
    for j in range(unrolled, count):
        tree += terms[j]
    chain = np.zeros(channels, terms.dtype)
    for j in range(count):
        chain += terms[j]
    return np.where(np.arange(channels) < packed, tree, chain)


def _oracle(x3: np.ndarray, lanes: int = 8) -> tuple[np.ndarray, np.ndarray]:
    acc = np.float64 if x3.dtype == np.float64 else F32
    rows = np.moveaxis(x3.astype(acc), 1, 2).reshape(-1, x3.shape[1])
    packed = rows.shape[1] - rows.shape[1] % lanes
    inverse = acc(1) / acc(rows.shape[0])
    mean = _sums(rows, packed) * inverse
    d = rows - mean
    return mean, _sums(d * d, packed) * inverse


def _x3(rng, shape, layout, offset, dtype):
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    if layout == "ncdhw":
        return x.reshape(shape[0], shape[1], -1)
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(-1, shape[1], 1)


def _same(a, b):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


SHAPES = [  # (N, C, D, H, W): R below and above 16, rows of 1 to 21 values (tiles, rotation), C 1 to 40
    (2, 1, 1, 2, 3),
    (1, 5, 1, 3, 5),
    (3, 8, 1, 1, 5),
    (2, 9, 3, 1, 3),
    (5, 16, 1, 2, 3),
    (2, 19, 3, 1, 7),
    (17, 24, 1, 1, 1),
    (3, 33, 2, 2, 5),
    (2, 40, 1, 3, 7),
]


@pytest.mark.parametrize("dtype", [F32, np.float16, BF16, np.float64])
@pytest.mark.parametrize("layout", ["ncdhw", "ndhwc"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_tree(shape, layout, dtype):
    rng = np.random.default_rng(sum(shape))
    stats = np.dtype(np.float64 if dtype == np.float64 else F32)
    for offset in (0.0, 1e4 if np.dtype(dtype).itemsize >= 4 else 100.0):
        x3 = _x3(rng, shape, layout, offset, dtype)
        mean, var = eigen_fused.moments(x3, "two_pass", stats)
        want = _oracle(x3)
        _same(mean, want[0])
        _same(var, want[1])


def test_the_four_accumulators_show_in_the_bits():
    """On these data the tree and one chain per channel differ: the test above can fail."""
    x3 = _x3(np.random.default_rng(5), (3, 16, 2, 3, 7), "ncdhw", 1e4, F32)
    rows = np.moveaxis(x3, 1, 2).reshape(-1, 16)
    assert not np.array_equal(_sums(rows, 16), _sums(rows, 0))
    mean, _ = eigen_fused.moments(x3, "two_pass", np.dtype(F32))
    _same(mean, _oracle(x3)[0])


@pytest.mark.parametrize("layout", ["ncdhw", "ndhwc"])
def test_the_thread_split_changes_nothing(layout):
    x3 = _x3(np.random.default_rng(7), (3, 37, 2, 5, 11), layout, 1e4, F32)
    outer, channels, inner = x3.shape
    count = outer * inner
    results = set()
    for chunks in (1, 2, 3, 5):
        mean, var = np.empty(channels, F32), np.empty(channels, F32)
        args = (x3.reshape(-1), outer, channels, inner, 32, count - count % 4, F32(1) / F32(count), mean, var)
        compiled._launch(k.eigen_moments, *args, chunks)
        results.add(mean.tobytes() + var.tobytes())
    assert len(results) == 1
    _same(mean, _oracle(x3)[0])


@pytest.mark.parametrize("dtype", [np.float16, BF16])
def test_half_inputs_are_summed_as_float32(dtype):
    x3 = _x3(np.random.default_rng(8), (2, 12, 2, 3, 5), "ncdhw", 100.0, dtype)
    mean, var = eigen_fused.moments(x3, "two_pass", np.dtype(F32))
    want = eigen_fused.moments(x3.astype(F32), "two_pass", np.dtype(F32))
    _same(mean, want[0])
    _same(var, want[1])


def test_other_packet_widths_and_inputs():
    rng = np.random.default_rng(9)
    x3 = _x3(rng, (2, 11, 1, 3, 5), "ndhwc", 1e4, F32)
    mean, var = eigen_fused.moments(x3, "two_pass", np.dtype(F32), lanes=4)
    _same(mean, _oracle(x3, lanes=4)[0])
    _same(var, _oracle(x3, lanes=4)[1])
    ints = rng.integers(-50, 50, (3, 9, 7)).astype(np.int32)
    strided = _x3(rng, (2, 10, 1, 3, 6), "ncdhw", 0.0, F32)[:, ::2, :]
    for x in (ints, strided):
        mean, var = eigen_fused.moments(x, "two_pass", np.dtype(F32))
        want = _oracle(x.astype(F32))
        _same(mean, want[0])
        _same(var, want[1])
