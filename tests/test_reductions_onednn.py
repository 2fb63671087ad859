"""tf_keras' fused training statistics: oneDNN's trees (rank 4) and TF's Eigen kernel (rank 5).

The compiled emulations are checked against plain Python loops that add float32 scalars in the order
the module docstrings give (the FMA of the JIT kernel's variance rounded exactly, with fractions), and
against bit patterns TF 2.21 produced on this project's machine (2 intra-op threads).
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import batchnorm as bn
from batchnorm._errors import BatchNormError
from batchnorm._reductions import eigen_fused, onednn

F32 = np.float32
BF16 = np.dtype(ml_dtypes.bfloat16)


def _fma32(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """a * b + c rounded once to float32 (ties to even), exactly."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    guess = np.float32(float(exact))
    candidates = [np.nextafter(guess, F32(-np.inf)), guess, np.nextafter(guess, F32(np.inf))]
    return min(candidates, key=lambda v: (abs(Fraction(float(v)) - exact), int(v.view(np.uint32)) & 1))


def _chain(values, mean=None, fused=False, start=None) -> np.float32:
    """Values (or their squared deviations from ``mean``) added one by one from ``start`` (+0)."""
    s = F32(0) if start is None else start
    for v in values:
        if mean is None:
            s = F32(s + v)
        else:
            d = F32(v - mean)
            s = _fma32(d, d, s) if fused else F32(s + F32(d * d))
    return s


def _oracle_ncsp(x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NCHW (and H = W = 1 with C % 4 != 0): per channel one chain over (n, hw)."""
    x = x3.astype(F32)
    n = F32(x.shape[0] * x.shape[2])
    mean = np.array([F32(_chain(x[:, c, :].ravel()) / n) for c in range(x.shape[1])])
    var = np.array([F32(_chain(x[:, c, :].ravel(), mean[c]) / n) for c in range(x.shape[1])])
    return mean, var


def _oracle_chunks(x3: np.ndarray, images: int, parts: np.ndarray, fused: bool) -> tuple[np.ndarray, ...]:
    """Channels-last: per channel a chain per chunk (rows n * spatial + s), the chunks added in order."""
    x = x3.astype(F32)[:, :, 0]
    spatial = x.shape[0] // images
    count = F32(x.shape[0])

    def column(c, mean):
        total = None
        for n0, n1, s0, s1 in parts:
            values = [x[n * spatial + s, c] for n in range(n0, n1) for s in range(s0, s1)]
            part = _chain(values, mean, fused)
            total = part if total is None else F32(total + part)
        return total

    mean = np.array([F32(column(c, None) / count) for c in range(x.shape[1])])
    var = np.array([F32(column(c, mean[c]) / count) for c in range(x.shape[1])])
    return mean, var


def _oracle_eigen(x3: np.ndarray, lanes: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Rank 5: rows (n, spatial) per channel; four-way InnerMostDimPreserver for packet channels."""
    x = x3.astype(F32)
    rows = np.moveaxis(x, 1, 2).reshape(-1, x.shape[1])
    count = rows.shape[0]
    inverse = F32(F32(1) / F32(count))
    packed = x.shape[1] - x.shape[1] % lanes

    def column(c, mean):
        values = rows[:, c]
        if mean is not None:
            values = [F32(F32(v - mean) * F32(v - mean)) for v in values]
        if c >= packed or count < 16:
            return _chain(values)
        unrolled = count - count % 4
        acc = [_chain(values[k:unrolled:4]) for k in range(4)]
        return _chain(values[unrolled:], start=F32(F32(F32(acc[0] + acc[1]) + acc[2]) + acc[3]))

    mean = np.array([F32(column(c, None) * inverse) for c in range(x.shape[1])])
    var = np.array([F32(column(c, mean[c]) * inverse) for c in range(x.shape[1])])
    return mean, var


def _data(rng, shape, offset, dtype=F32):
    return (offset + rng.standard_normal(shape)).astype(dtype)


def _same(a, b):
    np.testing.assert_array_equal(np.asarray(a, F32).view(np.uint32), np.asarray(b, F32).view(np.uint32))


# -- the splits -------------------------------------------------------------------------------------


def test_balance211_splits_in_order_with_the_larger_parts_first():
    for n in range(0, 23):
        for team in range(1, 9):
            parts = [onednn.balance211(n, team, i) for i in range(team)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
            sizes = [e - s for s, e in parts]
            assert sizes == sorted(sizes, reverse=True) and sizes[0] - sizes[-1] <= 1


@pytest.mark.parametrize(
    ("images", "spatial", "channels", "threads", "parts", "fused"),
    [
        (3, 5, 8, 2, [(0, 2, 0, 5), (2, 3, 0, 5)], True),  # JIT: images split first
        (1, 5, 16, 2, [(0, 1, 0, 3), (0, 1, 3, 5)], True),  # JIT, one image: space split
        (2, 5, 12, 4, [(0, 1, 0, 3), (0, 1, 3, 5), (1, 2, 0, 3), (1, 2, 3, 5)], True),
        (4, 3, 256, 8, [(0, 4, 0, 3)], True),  # 16 blocks of 16 on 8 threads: channels split only
        (4, 3, 144, 6, [(0, 2, 0, 3), (2, 4, 0, 3)], True),  # gcd(6, 9 blocks) = 3 channel parts
        (3, 5, 7, 2, [(0, 2, 0, 5), (2, 3, 0, 5)], False),  # nspc reference kernel
        (2, 5, 7, 4, [(0, 1, 0, 5), (1, 2, 0, 5), (2, 2, 0, 5), (2, 2, 0, 5)], False),
        (6, 1, 7, 2, [(0, 6, 0, 1)], False),  # H = W = 1, C % 4 != 0: the NCHW kernel's one chain
    ],
)
def test_chunks_follow_onednn_thread_distribution(images, spatial, channels, threads, parts, fused):
    got, got_fused = onednn.chunks(images, spatial, channels, threads)
    assert got.tolist() == [list(p) for p in parts]
    assert got_fused is fused


# -- the kernels against the loops ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, np.float16, BF16])
@pytest.mark.parametrize("shape", [(2, 3, 35), (3, 11, 7), (1, 17, 5), (5, 7, 1)])
def test_nchw_is_one_chain_per_channel(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    for offset in (0.0, 1e4):
        x3 = _data(rng, shape, offset, dtype)
        mean, var = onednn.moments(x3, "two_pass", np.dtype(F32))
        want = _oracle_ncsp(x3)
        _same(mean, want[0])
        _same(var, want[1])


@pytest.mark.parametrize(
    ("images", "spatial", "channels", "threads"),
    [(3, 5, 8, 2), (1, 6, 16, 2), (2, 5, 12, 4), (5, 3, 7, 2), (2, 4, 7, 4), (3, 2, 20, 3), (2, 3, 4, 1)],
)
def test_channels_last_chunks_and_fma(images, spatial, channels, threads):
    rng = np.random.default_rng(images * 100 + spatial * 10 + channels)
    parts, fused = onednn.chunks(images, spatial, channels, threads)
    for offset in (0.0, 1e4):
        x3 = _data(rng, (images * spatial, channels, 1), offset)
        mean, var = onednn.moments(x3, "two_pass", np.dtype(F32), images=images, threads=threads)
        want = _oracle_chunks(x3, images, parts, fused)
        _same(mean, want[0])
        _same(var, want[1])


def test_fma_changes_the_variance_here():
    """The JIT kernel's fma(d, d, q) is not fl(q + fl(d * d)) on these data: the oracle has teeth (at
    offset 1e4, d has so few bits that d * d is exact and both agree)."""
    x3 = _data(np.random.default_rng(2), (40, 4, 1), 0.0)
    parts = np.array([(0, 40, 0, 1)])
    assert not np.array_equal(_oracle_chunks(x3, 40, parts, True)[1], _oracle_chunks(x3, 40, parts, False)[1])


@pytest.mark.parametrize("dtype", [F32, np.float16])
@pytest.mark.parametrize("shape", [(2, 3, 4), (24, 9, 1), (3, 8, 7), (17, 17, 1), (16, 1, 1), (5, 12, 3)])
def test_rank5_is_eigens_column_tree(shape, dtype):
    rng = np.random.default_rng(sum(shape) + 7)
    for offset in (0.0, 1e4):
        x3 = _data(rng, shape, offset, dtype)
        mean, var = eigen_fused.moments(x3, "two_pass", np.dtype(F32))
        want = _oracle_eigen(x3)
        _same(mean, want[0])
        _same(var, want[1])


def test_float64_follows_the_same_tree_in_float64():
    x3 = _data(np.random.default_rng(3), (3, 9, 5), 1e4, np.float64)
    mean, var = onednn.moments(x3, "two_pass", np.dtype(np.float64))
    s = 0.0
    for v in x3[:, 4, :].ravel():
        s += v
    assert mean[4] == s / 15
    assert mean.dtype == var.dtype == np.float64


# -- TF 2.21 itself, recorded -----------------------------------------------------------------------


def _recorded_input(shape):
    n = int(np.prod(shape))
    return (1e4 + ((np.arange(n) * 7919) % 2003 - 1001) / 337).astype(F32).reshape(shape)


def _bits(words):
    return np.array([int(w, 16) for w in words.split()], dtype=np.uint32).view(F32)


RECORDED = [  # shape, channel axis, (mean, var) bits from tf.raw_ops.FusedBatchNormV3, 2 intra-op threads
    (
        (3, 5, 4, 7),
        1,
        "461c40f3 461c3fc2 461c3fb4 461c4035 461c3fde",
        "40442cd8 4032f7a3 403300b7 40514878 4031904a",
    ),
    (
        (3, 4, 5, 7),
        3,
        "461c3f80 461c3f96 461c4011 461c408d 461c40a1 461c4052 461c4003",
        "40405ac9 40433531 4043345f 403e3060 4037943c 403512bf 40350f29",
    ),
    (
        (3, 4, 5, 8),
        3,
        "461c3fd3 461c3fe9 461c4064 461c3fb0 461c402a 461c4040 461c3ff0 461c406b",
        "40409587 4040e6b2 403f706d 403f24b3 403e7512 403c8bed 403c3573 403957c4",
    ),
    (
        (1, 6, 5, 16),
        3,
        "461c3f17 461c3f91 461c400e 461c3fbe 461c4039 461c3fea 461c3f9a 461c4015 "
        "461c4090 461c4040 461c40bb 461c3fa1 461c401c 461c4096 461c4046 461c40c2",
        "403a967a 40406feb 40435b92 4043b046 4042351c 4040589f 404232a2 4043b52b "
        "40424029 4040719c 403a9932 403a9286 403aae73 4037d373 40354c66 402e0e62",
    ),
    (
        (2, 2, 3, 2, 9),
        4,
        "461c3fad 461c3f90 461c4072 461c3f57 461c4037 461c401a 461c3ffe 461c3fe0 461c3fc4",
        "403dc376 403c6fd8 403bbc32 403bc3be 403d574c 403f1b0f 403bc03b 403eaa0a 403c6a8c",
    ),
    ((2, 3, 2, 3, 4), 1, "461c4013 461c4056 461c4017", "40441fb7 4037571b 4030ebe6"),
]


@pytest.mark.parametrize(("shape", "axis", "mean_bits", "var_bits"), RECORDED)
def test_matches_tensorflow_as_recorded(shape, axis, mean_bits, var_bits):
    x = _recorded_input(shape)
    x3 = x.reshape(shape[0], shape[1], -1) if axis == 1 else x.reshape(-1, shape[-1], 1)
    if len(shape) == 5:
        mean, var = eigen_fused.moments(x3, "two_pass", np.dtype(F32))
    else:
        mean, var = onednn.moments(x3, "two_pass", np.dtype(F32), images=shape[0], threads=2)
    _same(mean, _bits(mean_bits))
    _same(var, _bits(var_bits))
    correctly_rounded = x3.astype(np.float64).var(axis=(0, 2)).astype(F32)
    assert not np.array_equal(correctly_rounded, _bits(var_bits))  # the tree shows in these bits


# -- wiring -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "axis", "module"), [((2, 3, 5, 7), 1, onednn), ((2, 2, 3, 2, 9), -1, eigen_fused)]
)
def test_tf_keras_fused_paths_use_these_trees(shape, axis, module):
    x = _data(np.random.default_rng(11), shape, 1e4)
    batch = bn.normalize_batch(x, axis=axis, dialect="tf-keras")
    x3 = x.reshape(shape[0], shape[1], -1) if axis == 1 else x.reshape(-1, shape[-1], 1)
    mean, var = module.moments(x3, "two_pass", np.dtype(F32))
    _same(batch.mean, mean)
    _same(batch.var, var)


@pytest.mark.parametrize("module", [onednn, eigen_fused])
def test_only_the_two_pass_variance(module):
    with pytest.raises(BatchNormError, match="two-pass"):
        module.moments(np.ones((2, 3, 4), F32), "sum_of_squares", np.dtype(F32))
