"""The running-statistics update as each framework rounds it (Dialect.running_*, batchnorm._running).

Each expected value is written out in the framework's own float32 operations (see the sources in
batchnorm/_running.py); the parity suite compares the same against the real frameworks.
"""

from __future__ import annotations

import numpy as np
import pytest

import batchnorm as bn
from batchnorm import _running

F32 = np.float32


def _batch(dialect: str, shape=(6, 64, 5), axis=1, offset=1e4, dtype=np.float32, seed=0):
    x = (offset + np.random.default_rng(seed).normal(0.0, 1.0, shape)).astype(dtype)
    return bn.normalize_batch(x, axis=axis, dialect=dialect)


def _moving(c: int, offset=1e4):
    rng = np.random.default_rng(1)
    return (offset + rng.normal(0, 1, c)).astype(F32), rng.uniform(0.5, 2.0, c).astype(F32)


def test_onnx_float32_attribute():
    """ONNX: mean * m + saved_mean * (1 - m) with m the float32 attribute, all in float32."""
    batch = _batch("onnx")
    rm, rv = _moving(64)
    m = np.float32(0.99)
    mean, var = bn.update_running(rm, rv, batch, momentum=0.99, dialect="onnx")
    np.testing.assert_array_equal(mean, rm * m + batch.mean.astype(F32) * (1 - m))
    np.testing.assert_array_equal(var, rv * m + batch.var.astype(F32) * (1 - m))
    assert mean.dtype == var.dtype == F32


def test_onnx_float32_update_differs_from_exact():
    """1 - fl32(0.99) is 9.5e-7 off relative: at a mean of 1e4 that shows in float32."""
    diffs = 0
    for seed in range(8):
        batch = _batch("onnx", seed=seed)
        rm, rv = _moving(64)
        ours = bn.update_running(rm, rv, batch, momentum=0.99, dialect="onnx")[0]
        exact_update = bn.dialects.get("onnx").derive("onnx-exact", running_form="exact")
        exact = bn.update_running(rm, rv, batch, momentum=0.99, dialect=exact_update)[0]
        diffs += int((ours != exact).sum())
    assert diffs > 0


def test_onnx_reference_stores_in_the_input_dtype():
    batch = _batch("onnx", offset=1.0, dtype=np.float16)
    rm, rv = _moving(64, offset=0.0)
    mean, var = bn.update_running(rm, rv, batch, momentum=0.9, dialect="onnx")
    m = np.float32(0.9)
    assert mean.dtype == var.dtype == np.float16
    np.testing.assert_array_equal(mean, (rm * m + batch.mean.astype(F32) * (1 - m)).astype(np.float16))


def test_onnxruntime_stores_in_the_parameters_dtype():
    x = np.random.default_rng(2).normal(0, 1, (4, 64, 5)).astype(np.float16)
    batch = bn.normalize_batch(x, axis=1, dialect="onnxruntime")
    rm, rv = _moving(64, offset=0.0)
    mean, var = bn.update_running(rm, rv, batch, momentum=0.9, dialect="onnxruntime")
    assert mean.dtype == var.dtype == F32


@pytest.mark.parametrize("dialect", ["keras3-tensorflow", "keras3-jax", "flax"])
def test_keras_and_flax_python_floats(dialect):
    """moving * momentum + batch * (1.0 - momentum): both weights rounded from Python floats."""
    batch = _batch(dialect, shape=(6, 5, 64), axis=-1)
    rm, rv = _moving(64)
    mean, var = bn.update_running(rm, rv, batch, momentum=0.99, dialect=dialect)
    a, w = F32(0.99), F32(1.0 - 0.99)
    np.testing.assert_array_equal(mean, rm * a + batch.mean.astype(F32) * w)
    np.testing.assert_array_equal(var, rv * a + batch.var.astype(F32) * w)


def test_tf_keras_unfused_assign_sub():
    batch = _batch("tf-keras", shape=(6, 5, 64), axis=-1)  # rank 3: the unfused path
    assert batch.dialect.running_form == "delta"
    rm, rv = _moving(64)
    mean, var = bn.update_running(rm, rv, batch, momentum=0.9, dialect="tf-keras")
    decay = F32(1.0 - 0.9)
    np.testing.assert_array_equal(mean, rm - (rm - batch.mean.astype(F32)) * decay)
    np.testing.assert_array_equal(var, rv - (rv - batch.var.astype(F32)) * decay)


def test_tf_keras_fused_kernel():
    """(1 - f) * r + f * b and (1 - f) * r + (f * adjust) * v, f = fl32(1 - momentum)."""
    batch = _batch("tf-keras", shape=(2, 64, 5, 4), axis=1)  # rank 4 NCHW: the fused path
    assert batch.dialect.path == "fused" and batch.dialect.running_bessel == "weight"
    rm, rv = _moving(64)
    mean, var = bn.update_running(rm, rv, batch, momentum=0.1, dialect="tf-keras")
    f = F32(1.0 - 0.1)  # 1 - f is not fl32(0.1): the weights' order shows
    adjust = F32(40) / F32(39)
    np.testing.assert_array_equal(mean, (F32(1) - f) * rm + f * batch.mean.astype(F32))
    np.testing.assert_array_equal(var, (F32(1) - f) * rv + (f * adjust) * batch.var.astype(F32))


def test_torch_float32_mean_and_double_variance_term():
    """PyTorch: momentum_ = float(momentum); the mean in float; unbiased_var = var_sum / (n - 1) in
    float, then momentum_ * unbiased_var + float((1 - momentum_) * running_var) in double."""
    batch = _batch("torch", shape=(8, 64, 4))  # n = 32: var_sum = var * n exactly
    rm, rv = _moving(64)
    mean, var = bn.update_running(rm, rv, batch, momentum=0.95, dialect="torch")
    m = F32(0.95)  # 1 - m is not fl32(1 - 0.95): the weights' order shows
    np.testing.assert_array_equal(mean, m * batch.mean.astype(F32) + (F32(1) - m) * rm)
    unbiased = (batch.var.astype(F32) * F32(32)) / F32(31)
    want = (np.float64(m) * unbiased.astype(np.float64) + ((F32(1) - m) * rv).astype(np.float64)).astype(F32)
    np.testing.assert_array_equal(var, want)


def test_torch_half_inputs_update_in_float32():
    batch = _batch("torch", shape=(8, 64, 4), offset=1.0, dtype=np.float16)
    rm, rv = _moving(64, offset=0.0)
    var = bn.update_running(rm, rv, batch, momentum=0.1, dialect="torch")[1]
    m = F32(0.1)
    unbiased = (batch.var.astype(F32) * F32(32)) / F32(31)
    np.testing.assert_array_equal(var, m * unbiased + (F32(1) - m) * rv)


def test_torch_cumulative_weight_is_rounded_to_float32():
    batch = _batch("torch", shape=(8, 64, 4))
    rm, rv = _moving(64)
    mean = bn.update_running(rm, rv, batch, momentum="cumulative", num_batches=3, dialect="torch")[0]
    w = F32(1.0 / 3)
    np.testing.assert_array_equal(mean, w * batch.mean.astype(F32) + (F32(1) - w) * rm)


def test_exact_dialect_rounds_once_from_float64():
    batch = _batch("exact")
    rm, rv = _moving(64)
    mean, var = bn.update_running(rm, rv, batch, momentum=0.99, dialect="exact")
    n = batch.count
    want_mean = 0.99 * rm.astype(np.float64) + (1.0 - 0.99) * batch.mean
    want_var = 0.99 * rv.astype(np.float64) + (1.0 - 0.99) * (batch.var * (n / (n - 1)))
    np.testing.assert_array_equal(mean, want_mean.astype(F32))
    np.testing.assert_array_equal(var, want_var.astype(F32))


@pytest.mark.parametrize(
    ("form", "old", "new"),
    [
        ("separate", F32(0.99), F32(1.0 - 0.99)),
        ("momentum_first", F32(0.99), F32(1) - F32(0.99)),
        ("complement_first", F32(1) - F32(1.0 - 0.99), F32(1.0 - 0.99)),
    ],
)
def test_weights(form, old, new):
    d = bn.dialects.get("flax").derive("w", running_weights=form)
    a, w = _running.weights(d, 0.99, "old", np.dtype(F32))
    assert (a, w) == (old, new)
    assert _running.weights(d, 0.99, "new", np.dtype(F32)) == (new, old)


def test_the_three_weightings_differ_at_099():
    """Why the field exists: 1 - fl32(0.99) and fl32(1 - 0.99) are different float32 numbers."""
    assert F32(1) - F32(0.99) != F32(1.0 - 0.99)


def test_torch_bessel_divides_its_own_sum_of_squares():
    """PyTorch divides its float32 var_sum by n - 1 (n = 30 here). The batch carries that sum: var =
    fl32(var_sum / n) cannot give it back bit for bit, and a BatchResult built by hand (no sum) falls
    back to fl32(var * n)."""
    from batchnorm._reductions import torch_batchnorm

    x = (1e4 + np.random.default_rng(0).normal(0.0, 1.0, (6, 64, 5))).astype(F32)
    batch = bn.normalize_batch(x, axis=1, dialect="torch")
    var_sum = torch_batchnorm.statistics(x, "two_pass", np.dtype(F32))[2]
    recovered = (batch.var.astype(np.float64) * 30).astype(F32)
    assert (recovered != var_sum).any()  # the channels this test is about
    rm, rv = _moving(64)
    # momentum 1 stores the batch's unbiased variance as it is: fl32(sum / 29)
    assert (var_sum / F32(29) != recovered / F32(29)).any()
    var = bn.update_running(rm, rv, batch, momentum=1.0, dialect="torch")[1]
    np.testing.assert_array_equal(var, var_sum / F32(29))
    by_hand = bn.BatchResult(
        y=batch.y, mean=batch.mean, var=batch.var, count=batch.count, dialect=batch.dialect
    )
    var = bn.update_running(rm, rv, by_hand, momentum=1.0, dialect="torch")[1]
    np.testing.assert_array_equal(var, recovered / F32(29))
