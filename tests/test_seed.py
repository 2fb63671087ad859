"""The question the project started from (shared/seed): Keras' BatchNormalization as an identity."""

import numpy as np
import pytest

import batchnorm as bn

SEED_X = np.arange(1, 13, dtype=np.float32).reshape(1, 3, 4, 1)


def seed_layer(eps: float, dialect: str = "exact") -> bn.BatchNorm:
    layer = bn.BatchNorm(1, axis=-1, eps=eps, dialect=dialect)
    layer.set_weights([[1], [0], [0], [1]])
    return layer


def test_eps_zero_is_the_identity():
    y = seed_layer(0.0)(SEED_X)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, SEED_X)


def test_keras_default_eps_is_correctly_rounded():
    y = seed_layer(1e-3)(SEED_X).ravel()
    want = (np.arange(1, 13, dtype=np.float64) / np.sqrt(1.001)).astype(np.float32)
    np.testing.assert_array_equal(y, want)
    assert y[11].view(np.uint32) == 0x413FE771
    # float32 1/sqrt rounds twice and lands one ulp above (what the frameworks print)
    float32_way = np.float32(12) * (np.float32(1) / np.sqrt(np.float32(1) + np.float32(1e-3)))
    assert float32_way.view(np.uint32) == 0x413FE772


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_training_mode_false_leaves_the_weights_alone(eps):
    layer = seed_layer(eps)
    before = layer.get_weights()
    layer(SEED_X, training=False)
    for a, b in zip(before, layer.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_tf_211_fused_path_raises_eps_to_its_floor():
    """SEMANTICS.md section 2: TF <= 2.11 printed 0.999995 ... 11.99994 with epsilon=0."""
    y = seed_layer(0.0, "tf-keras-2.11")(SEED_X).ravel()
    assert y[11].view(np.uint32) == 0x413FFFC1
    np.testing.assert_array_equal(y[[0, 4, 11]], np.float32([0.999995, 4.999975, 11.99994]))
