"""batchnorm.explain: the explanation as data (issue 5)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from batchnorm import BatchNormError
from batchnorm._numbers import parse
from batchnorm.explain import SEED_OUTPUTS, explain, seed_problem

F32 = np.dtype(np.float32)


def _observed(text: str) -> np.ndarray:
    return parse(text, F32, "--observed").values.reshape(1, 3, 4, 1)


def _by_name(scenario):
    return {r.dialect: r for r in scenario.results}


def test_seed_textbook_steps_are_exact_and_round_once():
    e = explain(seed_problem())
    steps = {s.label: s for s in e.scenarios[0].steps}
    assert steps["var + eps"].exact == "1.001"
    assert steps["sqrt(var + eps)"].exact.startswith("1.000499875062461")  # sqrt(1.001)
    assert steps["+ beta"].exact.startswith("11.99400449625327")  # 12 / sqrt(1.001)
    assert steps["rounded once to float32"].rounded == "0x413fe771"
    assert e.scenarios[0].textbook_bits == "0x413fe771"
    assert e.scenarios[0].element_index == [0, 2, 3, 0]
    assert [s.steps[-2].exact for s in e.scenarios][1] == "12"  # eps = 0: the identity


def test_seed_dialects_differ_from_the_textbook_by_arithmetic_at_eps_1e_3():
    first = _by_name(explain(seed_problem()).scenarios[0])
    assert first["exact"].max_ulp == 0
    torch = first["torch"]
    assert torch.last == pytest.approx(11.994005, abs=1e-6)
    assert (torch.max_ulp, torch.ulp_eps, torch.ulp_arithmetic) == (1, 0, 1)
    assert torch.eps_added == float(np.float32(1e-3))  # stored as float32
    assert "fma" in torch.ordering


def test_seed_eps_zero_is_attributed_to_the_tf_2_11_floor():
    scenario = explain(seed_problem()).scenarios[1]
    results = _by_name(scenario)
    floor = results["tf-keras-2.11"]
    assert (floor.eps_source, floor.effective_eps) == ("floor", 1.001e-5)
    assert floor.ulp_eps > 50 and floor.last == pytest.approx(11.99994, abs=1e-6)
    assert all(r.max_ulp == 0 for n, r in results.items() if n != "tf-keras-2.11")
    (attribution,) = [a for a in scenario.attributions if a.kind == "epsilon" and a.max_ulp]
    assert attribution.dialects == ["tf-keras-2.11"] and "1.001e-05" in attribution.cause


def test_seed_diagnosis_names_who_printed_what():
    text = "\n".join(explain(seed_problem()).diagnosis)
    assert "0.9995004 ... 11.994005" in text and "0.999995 ... 11.99994" in text
    assert "exactly those bits: tf-keras-2.11." in text


def test_eps_is_inferred_when_not_given():
    e = explain(seed_problem(eps=None, observed=_observed(SEED_OUTPUTS[1e-3])))
    assert e.reproduced is True
    assert e.inferred_eps == pytest.approx(1e-3, rel=1e-3)
    assert {m.effective_eps for m in e.matches} == {1e-3}
    assert e.matches[0].eps_source == "default"  # a Keras dialect, whose default this is
    assert "inferred from the data" in " ".join(e.diagnosis)


def test_seed_zero_eps_without_eps_cannot_tell_1e_5_from_the_floor():
    e = explain(seed_problem(eps=None, observed=_observed(SEED_OUTPUTS[0.0])))
    assert e.reproduced is True
    assert {m.effective_eps for m in e.matches} <= {1e-5, 1.001e-5}
    assert any(m.dialect == "tf-keras-2.11" and m.eps_source == "floor" for m in e.matches)
    assert "cannot tell" in " ".join(e.diagnosis)


def test_given_eps_that_does_not_fit_is_not_reproduced():
    e = explain(seed_problem(eps=(1e-3,), observed=_observed(SEED_OUTPUTS[0.0])))
    assert e.reproduced is False and e.matches == []
    assert e.closest[0].max_ulp > 1000
    assert any("imply eps = 1.00" in line for line in e.diagnosis)


def test_observation_of_the_textbook_prefers_eps_zero():
    x = seed_problem().x
    e = explain(seed_problem(eps=None, observed=x.copy()))
    assert e.matches[0].effective_eps == 0.0 and e.matches[0].exact


def test_training_refusal_is_a_result_not_an_error():
    e = explain(seed_problem(eps=(0.0,), training=True, dialects=("torch", "keras3-torch")))
    results = _by_name(e.scenarios[0])
    assert "refuses eps <= 0" in results["torch"].refused
    assert results["keras3-torch"].running_var == pytest.approx(0.99 + 0.01 * 143 / 12, rel=1e-6)
    kinds = {a.kind for a in e.scenarios[0].attributions}
    assert {"refused", "running_variance", "momentum"} <= kinds


def test_channels_and_a_chosen_element():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    c = np.ones(3, np.float32)
    problem = dataclasses.replace(
        seed_problem(),
        x=x,
        mean=0 * c,
        var=2 * c,
        gamma=c,
        beta=0 * c,
        axis=1,
        eps=None,
        element=5,
        seed=False,
    )
    e = explain(problem)
    assert e.scenarios[0].element_index == [0, 1, 0, 1]
    keras = _by_name(e.scenarios[0])["keras3-tensorflow"]
    assert (keras.eps_source, keras.effective_eps) == ("default", 1e-3)
    assert keras.ulp_eps > 0  # Keras' default eps against the textbook's 1e-5


def test_bad_inputs_raise_batchnorm_error():
    with pytest.raises(BatchNormError, match="as many values as x"):
        explain(seed_problem(observed=np.zeros((1, 3, 4), np.float32)))
    with pytest.raises(BatchNormError, match="--element"):
        explain(seed_problem(element=12))


def test_to_dict_is_json():
    e = explain(seed_problem(eps=None, observed=_observed(SEED_OUTPUTS[1e-3])))
    doc = json.loads(json.dumps(e.to_dict(), allow_nan=False))
    assert doc["matches"][0]["exact"] is True and doc["input"]["shape"] == [1, 3, 4, 1]
