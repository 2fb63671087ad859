"""tf-keras-2.11: TF 2.11 does not install on Python 3.11, so its dialect is held to the measured seed
(SEMANTICS.md section 2) here, and to tf_keras 2.21 wherever its epsilon clamp does not apply (the
inference and training modules compare it case by case, through ``parity_cases.PAIRS``). Where the clamp
applies, it must compute exactly tf-keras with eps = 1.001e-5.
"""

from __future__ import annotations

import numpy as np
import parity_cases as pc
import parity_compare as cmp
import pytest

import batchnorm as bn

pytestmark = pytest.mark.parity

SEED = np.arange(1, 13, dtype=np.float32).reshape(1, 3, 4, 1)  # rank 4, channel last: the fused path


def _seed(dialect, eps, axis=-1, x=SEED):
    return bn.normalize(x, [0.0], [1.0], [1.0], [0.0], axis=axis, eps=eps, dialect=dialect).ravel()


def test_seed_eps0_is_raised_to_the_clamp():
    """SEMANTICS.md section 2, measured on TF 2.11: 0.999995 ... 11.99994, y[11] bits 0x413fffc1."""
    y = _seed("tf-keras-2.11", 0.0)
    assert y.dtype == np.float32
    assert int(y[11].view(np.uint32)) == 0x413FFFC1
    assert f"{y[0]:.6g}" == "0.999995"
    assert f"{y[11]:.7g}" == "11.99994"


def test_seed_eps_1e3_matches_tf_keras_221():
    """eps = 1e-3 is above the clamp: 0.9995004 ... 11.994005 (0x413fe772), as tf_keras 2.21."""
    y = _seed("tf-keras-2.11", 1e-3)
    assert int(y[11].view(np.uint32)) == 0x413FE772
    np.testing.assert_array_equal(y, _seed("tf-keras", 1e-3))


def test_seed_unfused_path_has_no_clamp():
    """TF 2.11 with fused=False (here: rank 2, the unfused path) returns 1.0 ... 12.0 for eps = 0."""
    y = _seed("tf-keras-2.11", 0.0, axis=1, x=SEED.reshape(12, 1))
    np.testing.assert_array_equal(y, np.arange(1, 13, dtype=np.float32))


@pytest.mark.parametrize(
    "cid",
    [
        pytest.param(c["id"], id=c["id"])
        for c in pc.cases_for("tf-keras")
        if pc.clamp_applies("tf-keras-2.11", c) and not pc.divides_by_zero("tf-keras", c)
    ],
)
def test_where_the_clamp_applies_it_is_tf_keras_with_eps_1_001e_5(frameworks, cid):
    """Fused path with eps <= 1.001e-5: tf-keras-2.11 computes exactly tf-keras at eps = 1.001e-5 (which
    is visible only where var is small against 1e-5: the edge cases, and the seed above)."""
    case = pc.by_id("tf-keras")[cid]
    old = cmp.ours(case, "tf-keras-2.11").values
    raised = cmp.ours(dict(case, eps=bn.dialects.TF_MIN_EPSILON), "tf-keras").values
    for name, value in old.items():
        np.testing.assert_array_equal(value, raised[name], err_msg=name)
    if "edge" in case["_tags"] and case["kind"] == "inference":  # var 1e-12 in a channel: the clamp shows
        theirs = frameworks.case("tf-keras", cid)
        assert cmp.ulps(old["y"], theirs["y"]) > 0, "tf_keras 2.21 computed the clamped value"
