"""The ONNX reference evaluator's (NumPy) and onnxruntime's reduction trees (batchnorm._reductions.numpy,
batchnorm._reductions.onnxruntime): the compiled kernels and the NumPy fallbacks against scalar loops in
the documented order and, for the NumPy tree, against NumPy's own ``x.mean`` / ``x.var`` on the original
N-D array (what onnx.reference runs). No framework needed."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import batchnorm as bn
from batchnorm import _kernels
from batchnorm._reductions import _onnx_trees
from batchnorm._reductions import numpy as numpy_tree
from batchnorm._reductions import onnxruntime as ort_tree

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
BF16 = np.dtype(ml_dtypes.bfloat16)
VARIANCES = ["two_pass", "sum_of_squares", "sum_of_squares_clamped"]

#: Original (N, C, ...) shapes: odd sizes, one channel (NumPy: one run), one value per row (S = 1),
#: rows under 8, up to 128 and longer (pairwise splits), NumPy's 8192-value buffer size crossed.
SHAPES = [
    (2, 3),
    (16, 11),
    (1, 5),
    (7, 1),
    (4, 3, 7),
    (2, 3, 5, 7),
    (2, 3, 2, 3, 4),
    (3, 2, 130),
    (2, 3, 17, 19),
    (3, 1, 1500),
    (1, 1, 9000),
    (2, 2, 8200),
    (5, 4, 1, 1),
    (600, 3),
]


@pytest.fixture(autouse=True)
def _kernels_restored(monkeypatch):
    """Tests pick the kernels; every compiled call splits over the threads even for small arrays."""
    monkeypatch.setattr(_onnx_trees, "PARALLEL_MIN", 0)
    before = _kernels.backend()
    yield
    _kernels.use(before)


def sample(rng: np.random.Generator, shape, dtype, offset: float) -> np.ndarray:
    return (offset + rng.standard_normal(shape)).astype(dtype)


def as3(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], x.shape[1], -1)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


# -- scalar oracles, in the order the module docstrings give -------------------------------------------


def pairwise_oracle(values: np.ndarray):
    """NumPy's pairwise sum, one rounded operation at a time."""
    t, n = values.dtype.type, len(values)
    if n < 8:
        res = t(0)
        for v in values:
            res = t(res + v)
        return res
    if n <= 128:
        r = [values[j] for j in range(8)]
        stop = n - n % 8
        for i in range(8, stop, 8):
            for j in range(8):
                r[j] = t(r[j] + values[i + j])
        res = t(t(t(r[0] + r[1]) + t(r[2] + r[3])) + t(t(r[4] + r[5]) + t(r[6] + r[7])))
        for i in range(stop, n):
            res = t(res + values[i])
        return res
    half = n // 2 - (n // 2) % 8
    return t(pairwise_oracle(values[:half]) + pairwise_oracle(values[half:]))


def numpy_sums_oracle(x3: np.ndarray) -> np.ndarray:
    N, C, S = x3.shape
    t = x3.dtype.type
    if C == 1:
        return np.array([pairwise_oracle(x3.reshape(-1))], x3.dtype)
    out = [t(0)] * C
    for n in range(N):
        for c in range(C):
            out[c] = t(out[c] + (x3[n, c, 0] if S == 1 else pairwise_oracle(x3[n, c])))
    return np.array(out, x3.dtype)


def numpy_moments_oracle(x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = x3.shape[0] * x3.shape[2]
    mean = (numpy_sums_oracle(x3).astype(np.float64) / n).astype(x3.dtype)
    deviations = x3 - mean[None, :, None]
    var = (numpy_sums_oracle(deviations * deviations).astype(np.float64) / n).astype(x3.dtype)
    return mean, var


def eigen_oracle(values: np.ndarray, head: int):
    """Eigen's SSE redux of one column, ``head`` values set aside."""
    t, n = values.dtype.type, len(values)
    lanes = 16 // values.itemsize
    size = (n - head) // lanes * lanes
    if size == 0:
        res = values[0]
        for v in values[1:]:
            res = t(res + v)
        return res
    size2 = (n - head) // (2 * lanes) * (2 * lanes)
    p0 = [values[head + j] for j in range(lanes)]
    if size > lanes:
        p1 = [values[head + lanes + j] for j in range(lanes)]
        for i in range(head + 2 * lanes, head + size2, 2 * lanes):
            p0 = [t(p0[j] + values[i + j]) for j in range(lanes)]
            p1 = [t(p1[j] + values[i + lanes + j]) for j in range(lanes)]
        p0 = [t(p0[j] + p1[j]) for j in range(lanes)]
        if size > size2:
            p0 = [t(p0[j] + values[head + size2 + j]) for j in range(lanes)]
    res = t(t(p0[0] + p0[2]) + t(p0[1] + p0[3])) if lanes == 4 else t(p0[0] + p0[1])
    for i in [*range(head), *range(head + size, n)]:
        res = t(res + values[i])
    return res


def ort_moments_oracle(x3: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    N, C, S = x3.shape
    t, item = x3.dtype.type, x3.itemsize
    sums, squares = [t(0)] * C, [t(0)] * C
    for n in range(N):
        for c in range(C):
            address = offset + (n * C + c) * S * item
            head = S if offset % item else min((-address % 16) // item, S)
            sums[c] = t(sums[c] + eigen_oracle(x3[n, c], head))
    mean = np.array(sums, x3.dtype) / t(N * S)
    for n in range(N):
        for c in range(C):
            d = x3[n, c] - mean[c]
            squares[c] = t(squares[c] + eigen_oracle(d * d, 0))
    return mean, np.array(squares, x3.dtype) / t(N * S)


def at_offset(x: np.ndarray, offset: int) -> np.ndarray:
    """A copy of x whose data starts ``offset`` bytes past a 64-byte boundary."""
    buffer = np.empty(x.nbytes + 128, np.uint8)
    start = -buffer.ctypes.data % 64 + offset
    y = buffer[start : start + x.nbytes].view(x.dtype).reshape(x.shape)
    y[...] = x
    return y


# -- the NumPy tree (onnx reference evaluator) -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_numpy_tree_is_numpys_mean_and_var_of_the_nd_array(backend, dtype, shape):
    """What onnx.reference runs: x.mean and x.var over every axis but 1, bit for bit."""
    _kernels.use(backend)
    rng = np.random.default_rng(len(shape) * 1000 + shape[-1])
    axes = (0, *range(2, len(shape)))
    for offset in (0.0, 1e4):
        x = sample(rng, shape, dtype, offset)
        mean, var = numpy_tree.moments(as3(x), "two_pass", dtype)
        assert same_bits(mean, x.mean(axis=axes))
        assert same_bits(var, x.var(axis=axes))


@pytest.mark.parametrize("order", ["channels_last", "fortran"])
@pytest.mark.parametrize("shape", [(4, 5, 7, 3), (3, 9, 2, 130), (2, 4, 5, 6, 3)], ids=str)
def test_numpy_tree_follows_numpy_on_other_memory_orders(order, shape):
    """NumPy walks an N-D array in memory order, and so does the canonical view of batchnorm's layout."""
    _kernels.use("compiled")
    x = sample(np.random.default_rng(19), shape, F32, 1e4)
    x = x.transpose(0, x.ndim - 1, *range(1, x.ndim - 1))  # NCHW logically, channels last in memory
    if order == "fortran":
        x = np.asfortranarray(x)
    axes = (0, *range(2, x.ndim))
    batch = bn.normalize_batch(x, dialect="onnx")
    assert same_bits(batch.mean, x.mean(axis=axes)) and same_bits(batch.var, x.var(axis=axes))


@pytest.mark.parametrize("shape", [s for s in SHAPES if np.prod(s) <= 3000], ids=str)
def test_numpy_tree_follows_the_documented_order(shape):
    _kernels.use("compiled")
    x3 = as3(sample(np.random.default_rng(7), shape, F32, 1e4))
    want = numpy_moments_oracle(x3)
    got = numpy_tree.moments(x3, "two_pass", F32)
    assert same_bits(got[0], want[0]) and same_bits(got[1], want[1])


@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (16, 11), (3, 1, 40), (2, 2, 3, 3000)], ids=str)
def test_numpy_tree_half_inputs_as_numpy_reduces_the_nd_array(dtype, shape):
    """float16 means sum in float32 through NumPy's buffers, float16 variances in float16, bfloat16 in
    bfloat16: x3 (a view) reduces in the N-D array's own order; the statistics come back in float32."""
    _kernels.use("compiled")
    x = sample(np.random.default_rng(3), shape, dtype, 0.3)
    axes = (0, *range(2, len(shape)))
    mean, var = numpy_tree.moments(as3(x), "two_pass", F32)
    assert mean.dtype == var.dtype == F32
    assert same_bits(mean.astype(dtype), np.asarray(x.mean(axis=axes)))
    assert same_bits(var.astype(dtype), np.asarray(x.var(axis=axes)))


# -- the onnxruntime tree (Eigen SSE redux) ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shape", [s for s in SHAPES if np.prod(s) <= 3000], ids=str)
def test_onnxruntime_tree_follows_the_documented_order(dtype, shape):
    rng = np.random.default_rng(11)
    x3 = as3(sample(rng, shape, dtype, 1e4))
    for offset in (0, 4, 8, 12, 2):  # 2: not aligned to the scalar, no packets at all
        want = ort_moments_oracle(x3, offset)
        for backend in ("compiled", "reference"):
            _kernels.use(backend)
            got = ort_tree.moments(x3, "two_pass", dtype, alignment_offset=offset)
            assert same_bits(got[0], want[0]), (backend, offset)
            assert same_bits(got[1], want[1]), (backend, offset)


@given(
    n=st.integers(1, 6),
    c=st.integers(1, 5),
    s=st.integers(1, 80),
    offset=st.sampled_from([0, 4, 8, 12]),
    loc=st.sampled_from([0.0, 1e4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_onnxruntime_compiled_equals_numpy_fallback(n, c, s, offset, loc, seed):
    x3 = sample(np.random.default_rng(seed), (n, c, s), F32, loc)
    _kernels.use("compiled")
    fast = ort_tree.moments(x3, "two_pass", F32, alignment_offset=offset)
    _kernels.use("reference")
    slow = ort_tree.moments(x3, "two_pass", F32, alignment_offset=offset)
    assert same_bits(fast[0], slow[0]) and same_bits(fast[1], slow[1])


def test_onnxruntime_reads_the_alignment_from_the_address():
    """onnxruntime sums the caller's buffer in place: the head of each column follows its address."""
    _kernels.use("compiled")
    x = sample(np.random.default_rng(5), (3, 4, 37), F32, 1e4)
    results = set()
    for offset in (0, 4, 8, 12):
        moved = at_offset(x, offset)
        got = ort_tree.moments(moved, "two_pass", F32)
        explicit = ort_tree.moments(x, "two_pass", F32, alignment_offset=offset)
        assert same_bits(got[0], explicit[0]) and same_bits(got[1], explicit[1])
        results.add(got[0].tobytes() + got[1].tobytes())
    assert len(results) > 1  # at x = 1e4 + randn the head's place shows in the last bits


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize(
    "shape",
    [(4, 6, 7, 5), (3, 5, 9), (2, 3, 4, 5, 6), (3, 5, 2, 2), (2, 9, 2, 6), (3, 7, 4, 4), (2, 7, 1, 4)],
    ids=str,
)
def test_onnxruntime_sums_other_memory_orders_as_an_nchw_copy(backend, shape):
    """Channels-last (and channel-outermost) memory reaches onnxruntime as a C-contiguous NCHW copy
    (read in place when every column holds a multiple of 4 values: S = 4, 12, 16, 120)."""
    _kernels.use(backend)
    x = sample(np.random.default_rng(23), shape, F32, 1e4)
    nchw = ort_tree.moments(as3(x), "two_pass", F32, alignment_offset=0)
    last = np.ascontiguousarray(np.moveaxis(x, 1, -1)).transpose(0, x.ndim - 1, *range(1, x.ndim - 1))
    outermost = np.ascontiguousarray(np.moveaxis(x, 1, 0)).transpose(1, 0, *range(2, x.ndim))
    for view in (last, outermost):
        batch = bn.normalize_batch(view, dialect="onnxruntime")
        assert same_bits(batch.mean, nchw[0]) and same_bits(batch.var, nchw[1])


@given(
    n=st.integers(2, 9),
    s=st.integers(1, 70),
    c=st.integers(1, 40),
    block=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_onnxruntime_channels_last_in_place_equals_the_nchw_copy(n, s, c, block, seed):
    """Channels-last float32 summed in place (S % 4 == 0 or S >= 8: every column's head, blocks, extra
    packet and tail where the copy has them; blocks of a few n, in parallel) against the oracle on the
    NCHW copy. At 1e4 + randn every head's place shows in the last bits."""
    _kernels.use("compiled")
    x = sample(np.random.default_rng(seed), (n, s, c), F32, 1e4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_onnx_trees, "BLOCK_VALUES", block * c)
        got = ort_tree.moments(x.reshape(n * s, c, 1), "two_pass", F32, shape=x.shape)
    want = ort_moments_oracle(np.ascontiguousarray(x.transpose(0, 2, 1)), 0)
    assert same_bits(got[0], want[0]) and same_bits(got[1], want[1])


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_onnxruntime_half_inputs_are_the_float32_statistics_of_the_upcast(dtype):
    """onnxruntime runs the float32 kernel between Casts, on a fresh (aligned) buffer."""
    _kernels.use("compiled")
    x3 = sample(np.random.default_rng(9), (4, 3, 29), dtype, 3.0)
    got = ort_tree.moments(at_offset(x3, 6), "two_pass", F32)
    want = ort_tree.moments(x3.astype(F32), "two_pass", F32, alignment_offset=0)
    assert same_bits(got[0], want[0]) and same_bits(got[1], want[1])


# -- both trees -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [numpy_tree, ort_tree], ids=["numpy", "onnxruntime"])
@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (600, 3), (3, 1, 1500), (2, 3, 300)], ids=str)
def test_compiled_equals_fallback_for_every_variance(module, variance, shape):
    x3 = as3(sample(np.random.default_rng(13), shape, F32, 1e4))
    _kernels.use("compiled")
    fast = module.moments(x3, variance, F32)
    _kernels.use("reference")
    slow = module.moments(x3, variance, F32)
    assert same_bits(fast[0], slow[0]) and same_bits(fast[1], slow[1])
    if variance == "sum_of_squares_clamped":
        assert (fast[1] >= 0).all()


@pytest.mark.parametrize(
    ("dialect", "reduction", "module"),
    [("onnx", "numpy", numpy_tree), ("onnxruntime", "onnxruntime", ort_tree)],
)
@pytest.mark.parametrize(
    "shape", [(4, 6, 9, 7), (1, 1, 1, 4), (1, 1, 3, 40), (2, 3, 1, 1), (1, 5, 3, 3), (2, 4, 1, 5)], ids=str
)
def test_normalize_batch_takes_the_dialects_tree(dialect, reduction, module, shape):
    """NCHW input, size-1 axes included, is summed as it lies (a view: onnxruntime at its own address)."""
    assert bn.dialects.get(dialect).reduction == reduction
    _kernels.use("compiled")
    x = sample(np.random.default_rng(17), shape, F32, 1e4)
    batch = bn.normalize_batch(x, dialect=dialect)
    mean, var = module.moments(as3(x), "two_pass", F32)
    assert same_bits(batch.mean, mean) and same_bits(batch.var, var)
