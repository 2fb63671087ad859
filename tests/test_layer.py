"""The layer: weights in Keras order, PyTorch state dicts, the repr, running statistics over steps."""

import numpy as np
import pytest

import batchnorm as bn


def test_get_weights_follows_keras_order_and_flags():
    assert len(bn.BatchNorm(3).get_weights()) == 4
    assert len(bn.BatchNorm(3, scale=False).get_weights()) == 3
    assert len(bn.BatchNorm(3, center=False, scale=False).get_weights()) == 2
    g, b, m, v = bn.BatchNorm(3).get_weights()
    np.testing.assert_array_equal(g, 1)
    np.testing.assert_array_equal(b, 0)
    np.testing.assert_array_equal(m, 0)
    np.testing.assert_array_equal(v, 1)
    assert g.dtype == np.float32


def test_set_weights_copies_and_never_modifies_the_given_arrays():
    weights = [np.float32([2, 3]), np.float32([1, 1]), np.float32([0.5, 0.5]), np.float32([4, 4])]
    copies = [w.copy() for w in weights]
    layer = bn.BatchNorm(2)
    layer.set_weights(weights)
    layer(np.ones((3, 2), np.float32), training=True)
    for w, c in zip(weights, copies, strict=True):
        np.testing.assert_array_equal(w, c)
    weights[0][0] = 99
    assert layer.gamma[0] == 2


def test_state_dict_round_trip_with_torch_keys():
    layer = bn.BatchNorm(3, dialect="torch")
    rng = np.random.default_rng(0)
    for _ in range(3):
        layer(rng.standard_normal((4, 3, 2)).astype(np.float32), training=True)
    state = layer.state_dict()
    assert set(state) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    assert int(state["num_batches_tracked"]) == 3
    other = bn.BatchNorm(3, dialect="torch")
    other.load_state_dict(state)
    for a, b in zip(layer.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert other.num_batches_tracked == 3
    assert set(bn.BatchNorm(3, center=False, scale=False).state_dict()) == {
        "running_mean",
        "running_var",
        "num_batches_tracked",
    }


def test_repr_shows_every_convention():
    text = repr(bn.BatchNorm(64, axis=1, dialect="torch"))
    for part in (
        "64",
        "axis=1",
        "eps=1e-05",
        "momentum=0.1 (weight of the new batch)",
        "running_variance=unbiased",
        "dialect='torch'",
    ):
        assert part in text
    assert "weight of the old value" in repr(bn.BatchNorm(8, dialect="keras3-jax"))
    assert "biased, /n" in repr(bn.BatchNorm(8, dialect="keras3-jax"))
    assert "cumulative" in repr(bn.BatchNorm(8, momentum="cumulative", dialect="torch"))


def test_three_training_steps_match_the_closed_form():
    rng = np.random.default_rng(1)
    layer = bn.BatchNorm(2, momentum=0.9)
    mean, var = np.zeros(2), np.ones(2)
    for _ in range(3):
        x = rng.standard_normal((5, 2)).astype(np.float32)
        layer(x, training=True)
        xb = x.astype(np.float64)
        mean = 0.9 * mean + 0.1 * xb.mean(0)
        var = 0.9 * var + 0.1 * xb.var(0, ddof=1)
    np.testing.assert_allclose(layer.moving_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(layer.moving_variance, var, rtol=1e-6)
    assert layer.num_batches_tracked == 3


def test_cumulative_momentum_is_the_plain_average():
    rng = np.random.default_rng(2)
    layer = bn.BatchNorm(2, momentum="cumulative", dialect="torch")
    batches = [rng.standard_normal((4, 2)).astype(np.float32) for _ in range(4)]
    for x in batches:
        layer(x, training=True)
    means = np.mean([x.astype(np.float64).mean(0) for x in batches], axis=0)
    np.testing.assert_allclose(layer.moving_mean, means, rtol=1e-6)


def test_inference_uses_the_moving_statistics():
    layer = bn.BatchNorm(2, axis=-1, eps=0.0)
    layer.set_weights([[2, 2], [1, 1], [1, 1], [4, 4]])
    np.testing.assert_array_equal(layer(np.float32([[3, 5]])), np.float32([[3, 5]]))


@pytest.mark.parametrize("axis", [1, (1, 2)])
def test_multi_axis_layer(axis):
    shape = (3,) if axis == 1 else (3, 4)
    layer = bn.BatchNorm(shape if axis != 1 else 3, axis=axis)
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5)).astype(np.float32)
    y = layer(x, training=True)
    assert y.shape == x.shape and layer.moving_mean.shape == shape
