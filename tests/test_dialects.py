"""The dialect registry: records are data, variants are derived, tf-keras resolves its path."""

import dataclasses

import numpy as np
import pytest

import batchnorm as bn


def test_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        bn.dialects.get("torch").eps = 1.0  # type: ignore[misc]


def test_contract_defaults():
    get = bn.dialects.get
    assert (get("exact").axis, get("torch").axis, get("onnx").axis, get("flax").axis) == (-1, 1, 1, -1)
    assert get("keras3-tensorflow").eps == 1e-3 and get("torch").eps == 1e-5
    assert get("torch").momentum_side == "new" and get("keras3-jax").momentum_side == "old"


def test_derive_makes_a_variant_without_touching_the_original():
    flax = bn.dialects.get("flax")
    two_pass = flax.derive("flax-two-pass", variance="two_pass")
    assert two_pass.variance == "two_pass" and flax.variance == "sum_of_squares_clamped"
    x = (1e4 + 0.01 * np.random.default_rng(0).standard_normal((64, 2))).astype(np.float32)
    exact = bn.normalize_batch(x).var
    np.testing.assert_allclose(bn.normalize_batch(x, dialect=two_pass).var, exact, rtol=0.05)
    assert np.abs(bn.normalize_batch(x, dialect=flax).var / exact - 1).max() > 0.1


@pytest.mark.parametrize(
    ("field", "value"),
    [("elementwise", "nope"), ("reduction", "torch"), ("variance", "welford"), ("running_form", None)],
)
def test_a_variant_with_an_unknown_choice_is_refused(field, value):
    """Refused where the dialect is made, naming the field, the value and the choices."""
    with pytest.raises(bn.BatchNormError, match=rf"{field} must be one of .*; got {value!r}\."):
        bn.dialects.get("torch").derive("torch-typo", **{field: value})


def test_register_refuses_a_taken_name():
    with pytest.raises(bn.BatchNormError, match="already registered"):
        bn.dialects.register(bn.dialects.get("torch"))


@pytest.mark.parametrize(
    ("ndim", "axes", "path"),
    [
        (4, (3,), "fused"),
        (4, (1,), "fused"),
        (5, (4,), "fused"),
        (5, (1,), "fused"),
        (4, (2,), "unfused"),
        (2, (1,), "unfused"),
        (3, (2,), "unfused"),
        (4, (1, 3), "unfused"),
    ],
)
def test_tf_keras_chooses_its_path_like_tf_keras(ndim, axes, path):
    resolved = bn.dialects.get("tf-keras").for_input(ndim, axes)
    assert resolved.path == path
    assert resolved.running_variance == ("unbiased" if path == "fused" else "biased")


def test_eps_floor_applies_on_the_fused_path_only():
    d = bn.dialects.get("tf-keras-2.11")
    assert d.for_input(4, (3,)).effective_eps(0.0) == np.float32(1.001e-5)
    assert d.for_input(2, (1,)).effective_eps(0.0) == 0.0
    assert d.for_input(4, (3,)).effective_eps(1e-3) == np.float32(1e-3)


@pytest.mark.parametrize(
    ("channels", "form"), [(4, "normalized_fma"), (8, "normalized_fma"), (3, "centered"), (None, "centered")]
)
def test_tf_keras_fused_nhwc_arithmetic_depends_on_the_channel_count(channels, form):
    resolved = bn.dialects.get("tf-keras").for_input(4, (3,), channels)
    assert resolved.path == "fused" and resolved.elementwise == form
