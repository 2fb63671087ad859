"""Training forward, batch statistics and the moving averages."""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import batchnorm as bn
from oracles import batch_moments, textbook, ulp_distance
from strategies import inference_case


@given(inference_case())
def test_exact_batch_statistics_and_output(case):
    x, _, _, gamma, beta, eps, spec, axes = case
    n = x.size // int(np.prod([x.shape[a] for a in axes]))
    if n == 1:
        with pytest.warns(bn.BatchNormWarning, match="one value per channel"):
            r = bn.normalize_batch(x, gamma, beta, axis=spec, eps=max(eps, 1e-5))
        assert (r.var == 0).all()
        return
    mean, var = batch_moments(x, axes)
    if (var + eps == 0).any():
        with pytest.raises(bn.BatchNormError, match="batch variance"):
            bn.normalize_batch(x, gamma, beta, axis=spec, eps=eps)
        return
    r = bn.normalize_batch(x, gamma, beta, axis=spec, eps=eps)
    assert r.count == n and r.mean.dtype == np.float64
    np.testing.assert_allclose(r.mean, mean.astype(np.float64), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(r.var, var.astype(np.float64), rtol=1e-12, atol=1e-12)
    want = textbook(x, mean, var, gamma, beta, eps, axes)
    assert ulp_distance(r.y, want, x.dtype).max() <= 1.0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_an_output_that_cancels_beta_exactly_is_zero(dtype):
    """x = [3, 0]: mean 1.5, var 2.25, (0 - 1.5) / 1.5 * 1 + 1 = 0 exactly. The product rounded on its
    own lands on -1 and the sum on 0; a multiply-add fused in float64 would keep s's rounding error
    (5.6e-17)."""
    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    x = np.array([[3.0], [0.0]]).astype(dt)
    one = np.ones(1, np.float32)
    r = bn.normalize_batch(x, one, one, axis=-1, eps=0.0)
    np.testing.assert_array_equal(r.y.astype(np.float64), [[2.0], [0.0]])
    y = bn.normalize(x, r.mean, r.var, one, one, axis=-1, eps=0.0)
    np.testing.assert_array_equal(y.astype(np.float64), [[2.0], [0.0]])


@given(inference_case(), st.sampled_from(bn.dialects.names()))
def test_inference_with_the_batch_statistics_equals_the_training_output(case, dialect):
    x, _, _, gamma, beta, _, spec, axes = case
    # PyTorch trains with save_invstd formed in float64, infers with 1/sqrtf
    assume(bn.dialects.get(dialect).training_inverse_root == "inference")
    batch_axis = next(a for a in range(x.ndim) if a not in axes)
    x = np.concatenate([x, x + 1], axis=batch_axis)  # two values per channel at least, variance > 0
    r = bn.normalize_batch(x, gamma, beta, axis=spec, eps=1e-3, dialect=dialect)
    # ONNX's reference evaluator sums a float16 variance in float16: it may overflow to inf, which
    # normalize refuses as a given variance
    assume(np.isfinite(r.var).all())
    y = bn.normalize(x, r.mean, r.var, gamma, beta, axis=spec, eps=1e-3, dialect=dialect)
    np.testing.assert_array_equal(y, r.y)


def test_a_float16_variance_overflows_in_the_onnx_reference_as_there():
    x = np.float16([[100.0], [21.0], [-100.0], [61.0], [-93.0], [101.0], [22.0], [-99.0], [62.0], [-92.0]])
    assert np.isinf(bn.normalize_batch(x, axis=1, dialect="onnx").var).all()
    assert np.isfinite(bn.normalize_batch(x, axis=1, dialect="exact").var).all()


@pytest.mark.parametrize(("offset", "spread"), [(1e4, 1.0), (1e6, 0.01)])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_large_offsets_keep_the_batch_variance(offset, spread, layout):
    rng = np.random.default_rng(0)
    x = (offset + spread * rng.standard_normal((16, 8, 12, 12))).astype(np.float32)
    axis = 1
    if layout == "NHWC":
        x, axis = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), -1
    r = bn.normalize_batch(x, axis=axis)
    _, want = batch_moments(x, (axis % 4,))
    rel = np.abs(r.var - want.astype(np.float64)) / want.astype(np.float64)
    assert rel.max() <= 1e-6


def test_sum_of_squares_dialects_lose_the_variance_at_large_offsets():
    """Flax's fast variance (E[x^2] - E[x]^2 in float32) is why exact exists."""
    rng = np.random.default_rng(0)
    x = (1e4 + 0.01 * rng.standard_normal((64, 4))).astype(np.float32)
    exact = bn.normalize_batch(x).var
    flax = bn.normalize_batch(x, dialect="flax").var
    assert np.abs(flax / exact - 1).max() > 0.1


def _batch(mean, var, count):
    return bn.BatchResult(
        y=np.empty(0),
        mean=np.float64(mean).reshape(1),
        var=np.float64(var).reshape(1),
        count=count,
        dialect=bn.dialects.get("exact"),
    )


def test_momentum_weighs_the_old_value_in_exact_and_keras():
    batch = _batch(2.0, 4.0, 5)
    m, v = bn.update_running(
        np.float32([1.0]), np.float32([1.0]), batch, momentum=0.9, dialect="keras3-tensorflow"
    )
    assert m[0] == np.float32(0.9 * 1 + 0.1 * 2) and v[0] == np.float32(0.9 + 0.1 * 4)
    m, v = bn.update_running(np.float32([1.0]), np.float32([1.0]), batch, momentum=0.9)
    assert m[0] == np.float32(1.1) and v[0] == np.float32(0.9 + 0.1 * 4 * 5 / 4)


def test_torch_momentum_weighs_the_new_batch_and_stores_unbiased_variance():
    batch = _batch(2.0, 4.0, 5)
    m, v = bn.update_running(np.float32([1.0]), np.float32([1.0]), batch, momentum=0.1, dialect="torch")
    assert m[0] == np.float32(1.1)
    assert v[0] == np.float32(0.9 + 0.1 * 4 * 5 / 4)


def test_cumulative_average_is_named_and_needs_the_batch_count():
    batch = _batch(4.0, 2.0, 3)
    m, v = bn.update_running(
        np.float32([1.0]), np.float32([1.0]), batch, momentum="cumulative", dialect="torch", num_batches=3
    )
    assert m[0] == np.float32(1 + (4 - 1) / 3) and v[0] == np.float32(1 + (3 - 1) / 3)
    with pytest.raises(bn.BatchNormError, match="num_batches"):
        bn.update_running(np.float32([1.0]), np.float32([1.0]), batch, momentum="cumulative")


@pytest.mark.parametrize("momentum", [0.0, 0.5, 1.0])
def test_momentum_extremes(momentum):
    batch = _batch(3.0, 2.0, 2)
    m, _ = bn.update_running(np.float32([1.0]), np.float32([1.0]), batch, momentum=momentum)
    assert m[0] == np.float32(momentum * 1 + (1 - momentum) * 3)


def test_torch_refuses_what_torch_refuses():
    x = np.ones((1, 3), np.float32)
    with pytest.raises(bn.FrameworkRuleError, match="more than 1 value per channel"):
        bn.normalize_batch(x, dialect="torch")
    with pytest.raises(bn.FrameworkRuleError, match="eps <= 0"):
        bn.normalize_batch(np.ones((2, 3), np.float32), eps=0.0, dialect="torch")


def test_tf_keras_stores_unbiased_variance_on_its_fused_path_only():
    rng = np.random.default_rng(0)
    x4 = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    x2 = x4.reshape(-1, 4)
    for x, estimator in ((x4, "unbiased"), (x2, "biased")):
        layer = bn.BatchNorm(4, dialect="tf-keras", momentum=0.0)
        layer(x, training=True)
        r = bn.normalize_batch(x, dialect="tf-keras")
        factor = 18 / 17 if estimator == "unbiased" else 1.0
        np.testing.assert_allclose(layer.moving_variance, r.var * factor, rtol=1e-6)
