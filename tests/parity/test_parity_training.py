"""Training parity: forward (y, running statistics after each of 3 steps), backward, the running-variance
estimator, the frameworks' refusals, and the momentum conventions end to end through ``bn.BatchNorm``.

Bounds are in ``parity_rules.BOUNDS`` (ulps of each quantity's scale); comparisons the arithmetic layer
cannot pass yet are strict xfails naming the gap (``parity_rules.known_gap``).
"""

from __future__ import annotations

import warnings

import numpy as np
import parity_cases as pc
import parity_compare as cmp
import parity_rules as rules
import pytest

import batchnorm as bn

pytestmark = pytest.mark.parity

FORWARD = ("y", "running_mean", "running_var")
BACKWARD = ("dx", "dgamma", "dbeta")


def _comparable(dialect: str, framework: str, case: dict) -> bool:
    if dialect == "tf-keras-2.11" and pc.clamp_applies(dialect, case):
        return False
    if (framework, cmp.dtype_name(case["x"])) in rules.FRAMEWORK_REFUSALS:
        return False
    return not pc.divides_by_zero(dialect, case) and not pc.torch_refuses(dialect, case)


def _params(quantities, kinds):
    out = []
    for dialect, framework in pc.PAIRS:
        for case in pc.cases_for(framework):
            if case["kind"] not in kinds or not _comparable(dialect, framework, case):
                continue
            if rules.aggregated_offset(framework, case):  # test_parity_offsets.py
                continue
            for q in quantities:
                if q in BACKWARD and (framework in pc.NO_AUTOGRAD or case.get("dy") is None):
                    continue
                if (q == "dgamma" and not case["scale"]) or (q == "dbeta" and not case["center"]):
                    continue
                marks = []
                reason = rules.known_gap(framework, case, q, pc.resolved(dialect, case))
                if reason:
                    marks.append(pytest.mark.xfail(strict=True, reason=reason))
                out.append(
                    pytest.param(
                        dialect, framework, case["id"], q, id=f"{dialect}-{case['id']}-{q}", marks=marks
                    )
                )
    return out


def _theirs(frameworks, framework: str, cid: str) -> dict:
    theirs = frameworks.case(framework, cid)
    assert "error" not in theirs and "unsupported" not in theirs, theirs.get("error") or theirs["unsupported"]
    return theirs


@pytest.mark.parametrize(("dialect", "framework", "cid", "quantity"), _params(FORWARD, ("training",)))
def test_training_forward(frameworks, dialect, framework, cid, quantity):
    _assert_within_bound(frameworks, dialect, framework, cid, quantity)


@pytest.mark.parametrize(
    ("dialect", "framework", "cid", "quantity"), _params(BACKWARD, ("training", "inference"))
)
def test_backward(frameworks, dialect, framework, cid, quantity):
    _assert_within_bound(frameworks, dialect, framework, cid, quantity)


def _assert_within_bound(frameworks, dialect, framework, cid, quantity):
    """Ours against the framework's for one quantity, within parity_rules.BOUNDS."""
    case = pc.by_id(framework)[cid]
    theirs = _theirs(frameworks, framework, cid)
    ours = cmp.ours_cached(case, dialect)
    bound = rules.bound(framework, quantity)
    d = cmp.distance(case, ours, theirs, quantity)
    assert d <= bound, f"{quantity}: {d:g} ulps of {cmp.error_scales(case, ours)[quantity]:g} (bound {bound})"


def _store_params():
    out = []
    for dialect, framework in pc.PAIRS:
        for case in pc.cases_for(framework):
            if "store" not in case["_tags"]:
                continue
            d = pc.resolved(dialect, case)
            weight_new = case["momentum"] if d.momentum_side == "new" else 1 - case["momentum"]
            if weight_new == 1:
                out.append(pytest.param(dialect, framework, case["id"], id=f"{dialect}-{case['id']}"))
    return out


@pytest.mark.parametrize(("dialect", "framework", "cid"), _store_params())
def test_running_variance_estimator(frameworks, dialect, framework, cid):
    """n = 2 values per channel, momentum storing the batch whole: the stored variance is the biased
    batch variance, or twice it (n/(n-1) = 2) where the record says unbiased. Rounding cannot blur a
    factor of 2: this catches a wrong estimator in the record or in the framework."""
    case = pc.by_id(framework)[cid]
    theirs = _theirs(frameworks, framework, cid)
    ours = cmp.ours_cached(case, dialect)
    x = np.asarray(case["x_steps"][0], np.float64)
    axis = case["axis"] % x.ndim
    biased = x.var(axis=tuple(i for i in range(x.ndim) if i != axis))
    n = x.size // x.shape[axis]
    assert n == 2
    assert ours.dialect is not None
    factor = n / (n - 1) if ours.dialect.running_variance == "unbiased" else 1.0
    stored = theirs["running_var"][0].astype(np.float64)
    # 1% identifies the estimator (2 against 1) through the cancellation of E[x^2] - E[x]^2 dialects
    np.testing.assert_allclose(
        stored / biased, factor, rtol=1e-2, err_msg=f"{framework} stores another estimator"
    )
    np.testing.assert_allclose(ours.values["running_var"][0] / stored, 1.0, rtol=1e-2)


def _refusal_params():
    return [
        pytest.param(fw, c["id"], id=f"{fw}-{c['id']}")
        for fw in pc.FRAMEWORKS
        for c in pc.cases_for(fw)
        if pc.torch_refuses(fw, c)
    ]


@pytest.mark.parametrize(("framework", "cid"), _refusal_params())
def test_framework_rules_are_refused(frameworks, framework, cid):
    """PyTorch refuses eps <= 0 and one value per channel in training: so does its dialect."""
    case = pc.by_id(framework)[cid]
    theirs = frameworks.case(framework, cid)
    assert "error" in theirs, f"{framework} accepted {cid}"
    assert "eps must be positive" in theirs["error"] or "more than 1 value per channel" in theirs["error"]
    with pytest.raises(bn.FrameworkRuleError):
        cmp.ours(case, framework)


@pytest.mark.parametrize(
    ("dialect", "framework", "cid"),
    [
        pytest.param(d, fw, c["id"], id=f"{d}-{c['id']}")
        for d, fw in pc.PAIRS
        for c in pc.cases_for(fw)
        if "one-per-channel" in c["_tags"] and not pc.torch_refuses(d, c)
    ],
)
def test_one_value_per_channel_warns(frameworks, dialect, framework, cid):
    """Frameworks that accept one value per channel in training: batchnorm follows, with a warning."""
    case = pc.by_id(framework)[cid]
    theirs = _theirs(frameworks, framework, cid)
    assert "y" in theirs
    gamma = case["gamma"] if case["scale"] else None
    beta = case["beta"] if case["center"] else None
    with pytest.warns(bn.BatchNormWarning, match="one value per channel"):
        bn.normalize_batch(case["x"], gamma, beta, axis=case["axis"], eps=case["eps"], dialect=dialect)


@pytest.mark.parametrize(
    ("dialect", "framework", "cid"),
    [
        pytest.param(d, fw, c["id"], id=f"{d}-{c['id']}")
        for d, fw in pc.PAIRS
        for c in pc.cases_for(fw)
        if c["kind"] == "training" and pc.divides_by_zero(d, c) and not pc.torch_refuses(d, c)
    ],
)
def test_training_division_by_zero_is_an_error(frameworks, dialect, framework, cid):
    """A constant channel with eps = 0: batchnorm raises where the framework divides by zero."""
    case = pc.by_id(framework)[cid]
    with pytest.raises(bn.BatchNormError, match="must be > 0"):
        cmp.ours(case, dialect)
    theirs = _theirs(frameworks, framework, cid)
    assert not np.isfinite(theirs["y"].astype(np.float64)).all(), f"{framework} returned finite values"


@pytest.mark.parametrize(
    ("dialect", "framework", "cid"),
    [
        pytest.param(d, fw, c["id"], id=f"{d}-{c['id']}")
        for d, fw in pc.PAIRS
        for c in pc.cases_for(fw)
        if "e2e" in c["_tags"]
    ],
)
def test_layer_end_to_end(frameworks, dialect, framework, cid):
    """bn.BatchNorm(C, axis, eps, momentum, dialect=X), fresh, stepped 3 times: the framework's layer,
    built with the same numbers (its own momentum convention, or its default), stores the same moving
    statistics after every step. No conversion anywhere: the dialect carries the convention."""
    case = pc.by_id(framework)[cid]
    theirs = _theirs(frameworks, framework, cid)
    c = case["gamma"].shape[0]
    runs_as = cmp.as_runners_run(dialect)  # the framework's thread count, as its runner pinned it
    layer = bn.BatchNorm(c, axis=case["axis"], eps=case["eps"], momentum=case["momentum"], dialect=runs_as)
    np.testing.assert_array_equal(layer.moving_mean, case["moving_mean"])
    np.testing.assert_array_equal(layer.moving_variance, case["moving_var"])
    np.testing.assert_array_equal(layer.gamma, case["gamma"])
    np.testing.assert_array_equal(layer.beta, case["beta"])
    bound = max(rules.bound(framework, "running_mean"), rules.bound(framework, "running_var"))
    for step, x in enumerate(case["x_steps"]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            layer(cmp.as_run(case, x), training=True)  # and its memory layout
        for name, ours in (("running_mean", layer.moving_mean), ("running_var", layer.moving_variance)):
            distance = cmp.ulps_of_max(ours, theirs[name][step])
            assert distance <= bound, (
                f"{name} after step {step + 1}: {distance:g} ulps of max (bound {bound})"
            )


def _torch_stat_cases():
    return [
        c
        for c in pc.cases_for("torch")
        if c["kind"] == "training" and not pc.torch_refuses("torch", c) and not pc.divides_by_zero("torch", c)
    ]


def _double_accumulated(case) -> bool:
    """PyTorch's contiguous kernel (image size > 1) sums in float64; (N, C), N C 1 1 and channels-last
    inputs take its channels-last kernel: float32 per-thread partial sums once N*H*W > threads."""
    return not case.get("memory_format") and int(np.prod(case["x"].shape[2:])) > 1


def _torch_mean_distance(frameworks, case) -> float:
    theirs = _theirs(frameworks, "torch", case["id"])
    ours = cmp.ours_cached(case, "torch")
    return cmp.ulps(ours.values["batch_mean"].astype(np.float32), theirs["batch_mean"])


@pytest.mark.parametrize(
    "cid", [pytest.param(c["id"], id=c["id"]) for c in _torch_stat_cases() if _double_accumulated(c)]
)
def test_torch_batch_mean_is_exact(frameworks, cid):
    """Where PyTorch accumulates in float64, its saved batch mean is batchnorm's, rounded to float32."""
    assert _torch_mean_distance(frameworks, pc.by_id("torch")[cid]) == 0


def test_torch_batch_mean_float32_partial_sums(frameworks):
    """(N, C) and channels-last inputs: PyTorch's float32 per-thread partial sums (all cases at once)."""
    distances = {
        c["id"]: _torch_mean_distance(frameworks, c)
        for c in _torch_stat_cases()
        if not _double_accumulated(c)
    }
    assert max(distances.values()) == 0, distances


def test_torch_batch_invstd(frameworks):
    """PyTorch's saved 1/sqrt(var + eps) is fl32(1 / sqrt(var + eps)) in float64, eps as given, from
    batchnorm's batch variance (the scale the torch dialect trains with), all training cases at once."""
    distances = {}
    for case in _torch_stat_cases():
        theirs = _theirs(frameworks, "torch", case["id"])
        var = cmp.ours_cached(case, "torch").values["batch_var"]
        s = (1.0 / np.sqrt(np.asarray(var, np.float64) + case["eps"])).astype(np.float32)
        distances[case["id"]] = cmp.ulps(s, theirs["batch_invstd"])
    assert max(distances.values()) == 0, distances
