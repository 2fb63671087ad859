"""Every bad input is refused with BatchNormError naming the rule, the value and the fix."""

import numpy as np
import pytest

import batchnorm as bn

X = np.ones((4, 3), np.float32)
ONES, ZEROS = np.ones(3, np.float32), np.zeros(3, np.float32)


def refused(match, fn, *args, **kwargs):
    with pytest.raises(bn.BatchNormError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "; got" in message and len(message.split(". ")) >= 2  # rule; value. fix
    return message


@pytest.mark.parametrize(
    "x", [np.ones((4, 3), np.int32), np.ones((4, 3), bool), np.ones((4, 3), np.complex64)]
)
def test_non_float_input(x):
    msg = refused("must be a float16, bfloat16, float32 or float64 array", bn.normalize, x, ZEROS, ONES)
    assert str(x.dtype) in msg


def test_rank_below_two():
    refused("at least 2 dimensions", bn.normalize, np.ones(3, np.float32), ZEROS, ONES)


@pytest.mark.parametrize(
    ("axis", "match"),
    [
        (2, r"in \[-2, 1\]"),
        (-3, r"in \[-2, 1\]"),
        ((1, 1), "each channel axis once"),
        ((0, 1), "leave at least"),
        (1.0, "int or a tuple"),
        (True, "int or a tuple"),
    ],
)
def test_bad_axis(axis, match):
    refused(match, bn.normalize, X, ZEROS, ONES, axis=axis)


@pytest.mark.parametrize("name", ["mean", "var", "gamma", "beta"])
def test_parameter_of_the_wrong_shape(name):
    args = dict(mean=ZEROS, var=ONES, gamma=ONES, beta=ZEROS)
    args[name] = np.ones(4, np.float32)
    msg = refused(f"{name} must have the channel shape", bn.normalize, X, **args)
    assert "(3,)" in msg and "(4,)" in msg


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), float("inf"), "1e-5", True])
def test_bad_eps(eps):
    refused("eps must be", bn.normalize, X, ZEROS, ONES, eps=eps)


@pytest.mark.parametrize(("good", "bad"), [(dict(axis=1), dict(axis=True)), (dict(eps=1), dict(eps=True))])
def test_refused_after_an_equal_valid_call(good, bad):
    """A valid call does not vouch for an argument that compares equal to it (True == 1)."""
    bn.normalize(X, ZEROS, ONES, **good)
    refused("must be", bn.normalize, X, ZEROS, ONES, **bad)


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan"), "0.9", True])
def test_bad_momentum(momentum):
    r = bn.normalize_batch(X + np.arange(4, dtype=np.float32)[:, None])
    refused("momentum must", bn.update_running, ZEROS, ONES, r, momentum=momentum)
    refused("momentum must", bn.BatchNorm, 3, momentum=momentum)


@pytest.mark.parametrize("var", [[-1.0, 1, 1], [float("nan"), 1, 1], [float("inf"), 1, 1]])
def test_bad_variance(var):
    msg = refused("var must be finite and >= 0", bn.normalize, X, ZEROS, var)
    assert "channel 0" in msg


@pytest.mark.parametrize("name", ["mean", "gamma", "beta"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_parameters(name, bad):
    args = dict(mean=ZEROS.copy(), var=ONES, gamma=ONES.copy(), beta=ZEROS.copy())
    args[name] = args[name].copy()
    args[name][2] = bad
    assert "channel 2" in refused(f"{name} must be finite", bn.normalize, X, **args)


def test_zero_variance_with_zero_eps_names_the_channel():
    msg = refused(r"var \+ eps must be > 0", bn.normalize, X, ZEROS, [1.0, 0.0, 1.0], eps=0.0)
    assert "channel 1" in msg
    constant = np.ones((4, 3), np.float32)
    assert "channel 0" in refused("batch variance", bn.normalize_batch, constant, eps=0.0)


def test_empty_batch_in_training():
    refused("empty batch", bn.normalize_batch, np.empty((0, 3), np.float32))


def test_unknown_dialect():
    msg = refused("dialect must be one of", bn.normalize, X, ZEROS, ONES, dialect="pytorch")
    assert "'pytorch'" in msg and "torch" in msg


def test_layer_called_with_the_wrong_channel_count():
    refused("built for channel shape", bn.BatchNorm(4), X)


def test_set_weights_with_wrong_number_or_shapes():
    layer = bn.BatchNorm(3, scale=False)
    refused("set_weights takes 3 arrays", layer.set_weights, [ONES, ZEROS, ZEROS, ONES])
    before = layer.get_weights()
    refused("moving_variance must", layer.set_weights, [ZEROS, ZEROS, ONES[:2]])
    refused("moving_variance must be finite and >= 0", layer.set_weights, [ZEROS, ZEROS, -ONES])
    for a, b in zip(before, layer.get_weights(), strict=True):  # nothing was half-loaded
        np.testing.assert_array_equal(a, b)


def test_bad_num_features_and_state_dict():
    refused("num_features must be a positive int", bn.BatchNorm, 0)
    layer = bn.BatchNorm(3)
    refused("needs exactly the keys", layer.load_state_dict, {"weight": ONES})


def test_out_of_the_wrong_shape_or_overlapping():
    refused("out must be an array of shape", bn.normalize, X, ZEROS, ONES, out=np.empty((4, 4), np.float32))
    big = np.zeros((5, 3), np.float32)
    refused("share memory", bn.normalize, big[:4], ZEROS, ONES, out=big[1:])


def test_dy_of_the_wrong_shape():
    refused("dy must have the shape", bn.backward, np.ones((2, 3), np.float32), X, mean=ZEROS, var=ONES)
