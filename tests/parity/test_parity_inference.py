"""Inference parity: every dialect against its framework, case by case.

float32 (and half-precision input with float32 parameters, at the output's dtype) must be bit-exact,
TensorFlow's and XLA's approximate rsqrt included (batchnorm._rsqrt runs the same instructions);
var + eps == 0 is an error in batchnorm (a division by zero), where the frameworks return inf or NaN.
"""

from __future__ import annotations

import numpy as np
import parity_cases as pc
import parity_compare as cmp
import parity_rules as rules
import pytest

import batchnorm as bn

pytestmark = pytest.mark.parity


def _params(select):
    out = []
    for dialect, framework in pc.PAIRS:
        for case in pc.cases_for(framework):
            if case["kind"] != "inference" or not select(dialect, framework, case):
                continue
            if dialect == "tf-keras-2.11" and pc.clamp_applies(dialect, case):
                continue
            marks = []
            reason = rules.known_gap(framework, case, "y", pc.resolved(dialect, case))
            if reason:
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            out.append(
                pytest.param(dialect, framework, case["id"], id=f"{dialect}-{case['id']}", marks=marks)
            )
    return out


def _refused(framework, case):
    return (framework, cmp.dtype_name(case["x"])) in rules.FRAMEWORK_REFUSALS


@pytest.mark.parametrize(
    ("dialect", "framework", "cid"),
    _params(lambda d, fw, c: not pc.divides_by_zero(d, c) and not _refused(fw, c)),
)
def test_inference_reproduces_the_framework(frameworks, dialect, framework, cid):
    case = pc.by_id(framework)[cid]
    theirs = frameworks.case(framework, cid)
    assert "y" in theirs, f"{framework} gave no output: {theirs.get('error') or theirs.get('unsupported')}"
    ours = cmp.ours_cached(case, dialect)
    y = ours.values["y"]
    assert y.dtype == theirs["y"].dtype, f"output dtype: ours {y.dtype}, {framework} {theirs['y'].dtype}"
    distance = cmp.ulps(y, theirs["y"])
    assert distance == 0, f"not bit-exact: {distance:g} ulps (max |y| {np.abs(theirs['y']).max():g})"


@pytest.mark.parametrize(
    ("dialect", "framework", "cid"),
    _params(lambda d, fw, c: pc.divides_by_zero(d, c) and not _refused(fw, c)),
)
def test_division_by_zero_is_an_error(frameworks, dialect, framework, cid):
    """var + eps == 0 in a channel: batchnorm raises; the framework divides by zero (inf or NaN there)."""
    case = pc.by_id(framework)[cid]
    with pytest.raises(bn.BatchNormError, match="must be > 0"):
        cmp.ours(case, dialect)
    theirs = frameworks.case(framework, cid)
    assert "y" in theirs, theirs.get("error") or theirs.get("unsupported")
    zero = np.flatnonzero(np.asarray(case["moving_var"]) == 0)
    channel = np.take(theirs["y"], zero, axis=case["axis"]).astype(np.float64)
    assert not np.isfinite(channel).all(), f"{framework} returned finite values for var + eps = 0"


@pytest.mark.parametrize(
    ("framework", "cid"),
    [
        pytest.param(fw, c["id"], id=f"{fw}-{c['id']}")
        for fw in pc.FRAMEWORKS
        for c in pc.cases_for(fw)
        if _refused(fw, c)
    ],
)
def test_framework_refusals_are_real(frameworks, framework, cid):
    """The inputs listed in FRAMEWORK_REFUSALS are refused by the framework (no silent gap)."""
    case = pc.by_id(framework)[cid]
    theirs = frameworks.case(framework, cid)
    expected = rules.FRAMEWORK_REFUSALS[(framework, cmp.dtype_name(case["x"]))]
    assert expected in theirs.get("error", ""), f"{framework} ran {cid}: drop it from FRAMEWORK_REFUSALS"


#: Output dtype for float16 / bfloat16 input with float32 parameters: PyTorch and ONNX keep the input's;
#: Keras 3 and tf_keras under the default float32 policy, and Flax, return float32.
HALF_OUTPUT = {
    "torch": "input",
    "onnx": "input",
    "onnxruntime": "input",
    "keras3-tensorflow": "float32",
    "keras3-jax": "float32",
    "keras3-torch": "float32",
    "tf-keras": "float32",
    "tf-keras-unfused": "float32",
    "flax": "float32",
}


@pytest.mark.parametrize(
    ("framework", "cid"),
    [
        pytest.param(fw, c["id"], id=f"{fw}-{c['id']}")
        for fw in pc.FRAMEWORKS
        for c in pc.cases_for(fw)
        if "half" in c["_tags"] and not _refused(fw, c)
    ],
)
def test_half_precision_output_dtype(frameworks, framework, cid):
    case = pc.by_id(framework)[cid]
    theirs = frameworks.case(framework, cid)
    assert "y" in theirs, theirs.get("error") or theirs.get("unsupported")
    want = cmp.dtype_name(case["x"]) if HALF_OUTPUT[framework] == "input" else "float32"
    assert cmp.dtype_name(theirs["y"]) == want, f"{framework} returned {theirs['y'].dtype}"
    assert cmp.dtype_name(cmp.ours_cached(case, framework).values["y"]) == want
