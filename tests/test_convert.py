"""bn.convert: weights and hyperparameters between dialects (issue 3, "Conversion")."""

import copy
import itertools

import numpy as np
import pytest

import batchnorm as bn
from batchnorm import Converted, convert

NAMES = bn.dialects.names()
PAIRS = list(itertools.product(NAMES, NAMES))
C = 5
IMAGE = dict(ndim=4, axis=1)  # NCHW: tf-keras runs its fused path
# Dialects differ in float32 orderings by a few ulps of the output (2 measured here); a convention carried
# wrong (eps 1e-3 vs 1e-5, n/(n-1), momentum) moves it by 1e-3 relative, thousands of ulps.
ULPS = 16


def weights(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "gamma": (1 + 0.5 * rng.standard_normal(C)).astype(dtype),
        "beta": rng.standard_normal(C).astype(dtype),
        "moving_mean": (3 * rng.standard_normal(C)).astype(dtype),
        "moving_variance": (0.01 + 4 * rng.random(C)).astype(dtype),
    }


def native(dialect, w, num_batches=7):
    """The dialect's own container, written out by hand (the oracle for the converter's reader/writer)."""
    names = bn.dialects.get(dialect).parameter_names
    g, b, m, v = (w.get(k) for k in ("gamma", "beta", "moving_mean", "moving_variance"))
    if names == ("weight", "bias", "running_mean", "running_var"):
        d = {"weight": g, "bias": b, "running_mean": m, "running_var": v}
        d = {k: a for k, a in d.items() if a is not None}
        return {**d, "num_batches_tracked": np.array(num_batches)}
    if names == ("scale", "B", "input_mean", "input_var"):
        return {"scale": g, "B": b, "input_mean": m, "input_var": v}
    if names == ("scale", "bias", "mean", "var"):
        params = {k: a for k, a in (("scale", g), ("bias", b)) if a is not None}
        return {"params": params, "batch_stats": {"mean": m, "var": v}}
    return [a for a in (g, b, m, v) if a is not None]


def ours(c: Converted):
    """The converted weights back under our names, through the target layer."""
    layer = c.layer()
    return dict(zip(layer._weight_names(), layer.get_weights(), strict=True))


def flat(container):
    if isinstance(container, dict):
        return (
            {k: a for k, v in container.items() for k, a in flat(v).items()}
            if any(isinstance(v, dict) for v in container.values())
            else dict(container)
        )
    return dict(enumerate(container))


def assert_same_bits(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        x, y = np.asarray(fa[k]), np.asarray(fb[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert x.tobytes() == y.tobytes(), k


def estimator(name):
    return bn.dialects.get(name).for_input(4, (1,)).running_variance


# -- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_round_trip_keeps_every_bit(a, b):
    w = native(a, weights(), num_batches=0)  # a counter survives only between PyTorch containers
    there = convert(w, source=a, target=b, eps=1e-3, momentum=0.5, running_variance="keep", **IMAGE)
    back = convert(
        there.weights,
        source=b,
        target=a,
        eps=there.eps,
        momentum=there.momentum,
        running_variance="keep",
        **IMAGE,
    )
    assert_same_bits(back.weights, w)
    assert (back.eps, back.momentum, back.axis) == (1e-3, 0.5, 1)


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_round_trip_with_rescale_is_within_one_ulp(a, b):
    w = weights()
    there = convert(native(a, w), source=a, target=b, eps=1e-3, count=24, **IMAGE)
    back = ours(
        convert(there.weights, source=b, target=a, eps=1e-3, momentum=there.momentum, count=24, **IMAGE)
    )
    for name in ("gamma", "beta", "moving_mean"):
        assert back[name].tobytes() == w[name].tobytes()
    ulps = np.abs(back["moving_variance"].view(np.int32) - w["moving_variance"].view(np.int32))
    assert ulps.max() <= (0 if estimator(a) == estimator(b) else 1)


@pytest.mark.parametrize("m", [0.0, 0.001, 0.01, 0.1, 0.3, 0.5, 0.9, 0.99, 0.999, 1.0])
def test_momentum_round_trip_is_exact(m):
    there = convert(
        native("torch", weights()),
        source="torch",
        target="keras3-tensorflow",
        momentum=m,
        running_variance="keep",
    )
    back = convert(
        there.weights,
        source="keras3-tensorflow",
        target="torch",
        momentum=there.momentum,
        running_variance="keep",
    )
    assert back.momentum == m


# -- hyperparameters -------------------------------------------------------------------------------


@pytest.mark.parametrize(("torch_m", "keras_m"), [(0.1, 0.9), (0.01, 0.99), (0.001, 0.999), (0.5, 0.5)])
def test_momentum_flips_between_the_new_batch_and_the_old_value(torch_m, keras_m):
    w = native("torch", weights())
    c = convert(w, source="torch", target="keras3-jax", momentum=torch_m, running_variance="keep")
    assert c.momentum == keras_m  # 1 - 0.99 is 0.01 here, not 0.010000000000000009
    assert any("new batch" in n and "old value" in n for n in c.notes)
    same_side = convert(w, source="torch", target="torch", momentum=torch_m)
    assert same_side.momentum == torch_m


def test_defaults_are_the_source_dialects_and_say_so():
    c = convert(native("torch", weights()), source="torch", target="flax", running_variance="keep")
    assert (c.eps, c.momentum, c.axis) == (1e-5, 0.9, 1)  # torch's 1e-5 and 0.1, not Flax's 0.99
    assert "eps: not given, torch's default 1e-05" in c.notes
    assert "momentum: not given, torch's default 0.1" in c.notes
    k = convert(native("keras3-torch", weights()), source="keras3-torch", target="torch", count=8)
    assert (k.eps, k.momentum, k.axis) == (1e-3, 0.01, -1)
    assert any(n.startswith("axis: not given") and "default is 1" in n for n in k.notes)


@pytest.mark.parametrize("eps", [0.0, 1e-8, 1e-3])
def test_eps_is_carried_as_is(eps):
    c = convert(native("onnx", weights()), source="onnx", target="keras3-tensorflow", eps=eps)
    assert c.eps == eps and not any(n.startswith("eps") for n in c.notes)


def test_tf_keras_211_fused_path_carries_the_eps_it_computed_with():
    w = native("tf-keras-2.11", weights())
    fused = convert(w, source="tf-keras-2.11", target="torch", eps=0.0, ndim=4, axis=3, count=9)
    assert fused.eps == 1.001e-5 and any("raised 0.0 to 1.001e-05" in n for n in fused.notes)
    unfused = convert(w, source="tf-keras-2.11", target="torch", eps=0.0, ndim=3, axis=-1, count=9)
    assert unfused.eps == 0.0


def test_a_target_that_raises_eps_warns():
    w = native("torch", weights())
    with pytest.warns(bn.BatchNormWarning, match=r"raises eps to 1\.001e-05"):
        c = convert(w, source="torch", target="tf-keras-2.11", **IMAGE)
    assert c.eps == 1e-5
    quiet = convert(w, source="torch", target="tf-keras-2.11", eps=1e-3, **IMAGE)
    assert quiet.eps == 1e-3


def test_cumulative_momentum_stays_in_pytorch_with_its_counter():
    w = native("torch", weights(), num_batches=12)
    c = convert(w, source="torch", target="torch", momentum="cumulative")
    assert c.momentum == "cumulative" and int(c.weights["num_batches_tracked"]) == 12
    assert c.layer().num_batches_tracked == 12


def test_cumulative_momentum_has_no_old_value_equivalent():
    w = native("torch", weights())
    with pytest.raises(bn.BatchNormError, match=r"momentum='cumulative'.*no fixed equivalent.*momentum=0\.1"):
        convert(w, source="torch", target="keras3-tensorflow", momentum="cumulative", running_variance="keep")


def test_cumulative_momentum_needs_the_batch_counter():
    w = native("exact", weights())
    with pytest.raises(bn.BatchNormError, match="without num_batches_tracked"):
        convert(w, source="exact", target="torch", momentum="cumulative")


# -- running variance ------------------------------------------------------------------------------


def test_rescale_needs_the_count():
    with pytest.raises(bn.BatchNormError, match="count=None") as info:
        convert(native("torch", weights()), source="torch", target="keras3-tensorflow")
    message = str(info.value)
    assert "unbiased" in message and "biased" in message and "running_variance='keep'" in message


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rescale_is_bessels_factor_rounded_once(dtype):
    w = weights(dtype)
    n = 7
    down = ours(convert(native("torch", w), source="torch", target="onnx", count=n))["moving_variance"]
    want = (w["moving_variance"].astype(np.float64) * (n - 1) / n).astype(dtype)
    assert down.dtype == dtype and down.tobytes() == want.tobytes()
    up = ours(convert(native("onnx", w), source="onnx", target="torch", count=n))["moving_variance"]
    assert up.tobytes() == (w["moving_variance"].astype(np.float64) * n / (n - 1)).astype(dtype).tobytes()


def test_keep_carries_the_variance_for_the_same_inference_output():
    w = weights()
    c = convert(native("torch", w), source="torch", target="onnx", running_variance="keep")
    assert c.weights["input_var"].tobytes() == w["moving_variance"].tobytes()
    assert any("kept as stored" in n for n in c.notes)


def test_tf_keras_estimator_follows_its_path():
    w = native("torch", weights())
    fused = convert(w, source="torch", target="tf-keras", ndim=4, axis=1)  # both unbiased: no count
    assert fused.weights[3].tobytes() == w["running_var"].tobytes()
    with pytest.raises(bn.BatchNormError, match="count=None"):
        convert(w, source="torch", target="tf-keras", ndim=2, axis=1)  # unfused: biased
    paths = r"another path for some inputs \(rank 4 with axis 1 or 3, rank 5 with axis 1 or 4\)"
    with pytest.raises(bn.BatchNormError, match=paths + ".*ndim=None"):
        convert(w, source="torch", target="tf-keras")


def test_count_is_noted_when_unused():
    c = convert(native("onnx", weights()), source="onnx", target="flax", count=10)
    assert "count: unused, the running variance is carried as stored" in c.notes


@pytest.mark.parametrize("count", [1, 0, -3, 2.5, True, "8"])
def test_count_must_be_an_int_of_at_least_two(count):
    with pytest.raises(bn.BatchNormError, match="count is n, the number of values per channel"):
        convert(native("torch", weights()), source="torch", target="onnx", count=count)


def test_running_variance_names_its_two_modes():
    with pytest.raises(bn.BatchNormError, match="'rescale' or 'keep'"):
        convert(native("torch", weights()), source="torch", target="onnx", running_variance="biased")


@pytest.mark.parametrize("ndim", [1, 0, 4.0, True])
def test_ndim_is_a_rank(ndim):
    with pytest.raises(bn.BatchNormError, match="ndim is the rank"):
        convert(native("torch", weights()), source="torch", target="torch", ndim=ndim)


def test_axis_must_fit_the_rank():
    with pytest.raises(bn.BatchNormError, match="axis must lie in"):
        convert(native("torch", weights()), source="torch", target="torch", ndim=2, axis=3)


# -- containers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "center", "scale"),
    [
        *(
            (a, b, c, s)
            for a, b in [("keras3-tensorflow", "flax"), ("flax", "exact"), ("exact", "keras3-torch")]
            for c, s in [(True, False), (False, True), (False, False)]
        ),
        ("torch", "torch", False, False),  # PyTorch holds weight and bias together (affine)
        ("tf-keras", "torch", False, False),
    ],
)
def test_absent_gamma_and_beta_stay_absent(a, b, center, scale):
    w = weights()
    w = {k: v for k, v in w.items() if (k != "beta" or center) and (k != "gamma" or scale)}
    c = convert(native(a, w), source=a, target=b, center=center, scale=scale, count=6, **IMAGE)
    assert (c.center, c.scale) == (center, scale)
    counter = 7 if a == "torch" else 0
    want = native(b, {**w, "moving_variance": ours(c)["moving_variance"]}, num_batches=counter)
    assert_same_bits(c.weights, want)


def test_onnx_and_torch_targets_fill_in_gamma_and_beta():
    w = {"beta": weights()["beta"], **{k: weights()[k] for k in ("moving_mean", "moving_variance")}}
    onnx = convert(native("keras3-tensorflow", w), source="keras3-tensorflow", target="onnx", scale=False)
    assert (onnx.weights["scale"] == 1).all() and onnx.weights["scale"].dtype == np.float32
    assert (onnx.center, onnx.scale) == (True, True)
    assert any(n.startswith("scale: absent from the source") for n in onnx.notes)
    torch = convert(
        native("keras3-tensorflow", w), source="keras3-tensorflow", target="torch", scale=False, count=4
    )
    assert (torch.weights["weight"] == 1).all() and "bias" in torch.weights
    none = {k: w[k] for k in ("moving_mean", "moving_variance")}
    unaffine = convert(native("flax", none), source="flax", target="torch", count=4)
    assert set(unaffine.weights) == {"running_mean", "running_var", "num_batches_tracked"}
    flax = convert(native("torch", none), source="torch", target="flax", count=4)
    assert set(flax.weights) == {"batch_stats"}


def test_a_keras_list_of_three_needs_a_flag():
    w = weights()
    three = [w["beta"], w["moving_mean"], w["moving_variance"]]
    with pytest.raises(bn.BatchNormError, match=r"list of 3 arrays.*Pass scale=False or center=False"):
        convert(three, source="keras3-tensorflow", target="onnx")
    c = convert(three, source="keras3-tensorflow", target="keras3-jax", scale=False)
    assert (c.center, c.scale) == (True, False)
    assert c.weights[0].tobytes() == w["beta"].tobytes()


def test_flags_that_contradict_the_weights_are_refused():
    with pytest.raises(bn.BatchNormError, match="center=False contradicts the weights, which hold 'bias'"):
        convert(native("torch", weights()), source="torch", target="torch", center=False)
    with pytest.raises(bn.BatchNormError, match="scale=True contradicts"):
        w = weights()
        convert([w["moving_mean"], w["moving_variance"]], source="exact", target="exact", scale=True)


@pytest.mark.parametrize(
    ("container", "match"),
    [
        ({"bn1.weight": 1, "bn1.running_mean": 1, "bn1.running_var": 1}, "a dict of weights must be"),
        ({"running_mean": np.zeros(C), "running_var": np.ones(C), "momentum": 0.1}, "strip 'bn1.'"),
        ({"input_mean": np.zeros(C)}, "ONNX BatchNormalization inputs holds"),
        (
            {"params": {"gamma": np.ones(C)}, "batch_stats": {"mean": np.zeros(C), "var": np.ones(C)}},
            "Flax variables are",
        ),
        ({"batch_stats": {"mean": np.zeros(C)}}, "Flax variables are"),
        ([np.zeros(C)], "Keras-order list holds"),
        ([np.zeros(C)] * 5, "Keras-order list holds"),
        (np.zeros((4, C)), "got ndarray"),
    ],
)
def test_unrecognised_containers_name_what_is_expected(container, match):
    with pytest.raises(bn.BatchNormError, match=match):
        convert(container, source="torch", target="torch")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"running_var": -np.ones(C)}, "must be finite and >= 0"),
        ({"running_mean": np.full(C, np.nan)}, "moving_mean must be finite"),
        ({"weight": np.ones(C + 1)}, "gamma must have the channel shape"),
        ({"running_mean": np.float32(0)}, "one value per channel"),
        ({"bias": np.array(["a"] * C)}, "beta must hold real numbers"),
        ({"num_batches_tracked": np.array(-1)}, "num_batches_tracked must be a non-negative integer"),
        ({"num_batches_tracked": np.array(1.5)}, "num_batches_tracked must be a non-negative integer"),
    ],
)
def test_bad_arrays_are_refused(change, match):
    w = {**native("torch", weights()), **change}
    with pytest.raises(bn.BatchNormError, match=match):
        convert(w, source="torch", target="torch")


def test_unknown_dialects_are_refused():
    with pytest.raises(bn.BatchNormError, match="dialect must be one of"):
        convert(native("torch", weights()), source="pytorch", target="torch")


def test_inputs_are_never_modified_nor_shared():
    for a, b in PAIRS:
        w = native(a, weights())
        before = copy.deepcopy(w)
        c = convert(w, source=a, target=b, eps=1e-3, count=11, **IMAGE)
        assert_same_bits(w, before)
        for x in flat(c.weights).values():
            assert not any(np.shares_memory(x, y) for y in flat(w).values())


def test_the_record_reads_well():
    c = convert(native("torch", weights()), source="torch", target="keras3-tensorflow", count=4)
    assert repr(c) == (
        "Converted(dialect='keras3-tensorflow', eps=1e-05, momentum=0.9, axis=1, center=True, scale=True, "
        "weights=[array(5,), array(5,), array(5,), array(5,)])"
    )


# -- the converted layer computes what the source computed -----------------------------------------


def batch(seed=1):
    rng = np.random.default_rng(seed)
    return (2 + 3 * rng.standard_normal((4, C, 3, 2))).astype(np.float32)


def source_layer(dialect, w):
    layer = bn.BatchNorm(C, axis=1, eps=1e-3, momentum=0.5, dialect=dialect)
    layer.set_weights([w[k] for k in ("gamma", "beta", "moving_mean", "moving_variance")])
    return layer


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_kept_variance_gives_the_same_inference_output(a, b):
    w, x = weights(), batch()
    c = convert(native(a, w), source=a, target=b, eps=1e-3, momentum=0.5, running_variance="keep", **IMAGE)
    want, got = source_layer(a, w)(x), c.layer()(x)
    assert got.dtype == np.float32
    assert np.abs(got - want).max() <= ULPS * np.spacing(np.abs(want).max())


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_rescaled_conversion_commutes_with_a_training_step(a, b):
    """convert(step_a(w)) == step_b(convert(w)) when count is the batch's n: momentum and estimator
    are both carried right."""
    w, x = weights(), batch()
    n = x.size // C
    kw = dict(source=a, target=b, eps=1e-3, momentum=0.5, count=n, **IMAGE)
    first = source_layer(a, w)
    first(x, training=True)
    stepped = dict(zip(first._weight_names(), first.get_weights(), strict=True))
    then_convert = ours(convert(native(a, stepped), **kw))
    second = convert(native(a, w), **kw).layer()
    second(x, training=True)
    convert_then = dict(zip(second._weight_names(), second.get_weights(), strict=True))
    for name in ("moving_mean", "moving_variance"):
        got, want = convert_then[name], then_convert[name]
        assert np.abs(got - want).max() <= ULPS * np.spacing(np.abs(want).max()), name
