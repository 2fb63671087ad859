"""What the parity suite demands of each dialect, and the known gaps: one place to tighten.

Three tables and a function:

- :data:`BOUNDS`: training and backward quantities, in ulps of each quantity's scale.
- :data:`FRAMEWORK_REFUSALS`: inputs a framework cannot run that no dialect field describes.
- :func:`known_gap`: comparisons that fail because the arithmetic layer lacks something; the tests mark
  them ``xfail(strict=True)`` with the reason, so a fix shows up as an XPASS to remove from here.
"""

from __future__ import annotations

import batchnorm as bn

# -- training and backward --------------------------------------------------------------------------

#: Bounds in ulps (at the framework output's dtype) of each quantity's error scale, defined and argued in
#: parity_compare.error_scales: the largest term the framework's float32 arithmetic rounds, so that the
#: input's conditioning counts (a float32 batch mean is good to ~ulp(max |x|) however it is summed; dx
#: cancels to exactly 0 when n = 2; a sum is accurate to ulps of the sum of its terms' magnitudes):
#: y: max(max |y|, |gamma / sqrt(var + eps)| * max |x|); running_mean: max(max |r|, w * max |x|);
#: running_var: max |r|, each step of 3 compared; dx: |gamma| inv (max |dy| + inv max |x| sum |dy xh| / n);
#: dgamma: inv (sum |dy (x - mean)| + max |x| sum |dy|); dbeta: sum |dy| (maxima over channels).
BOUNDS = {"y": 4, "running_mean": 8, "running_var": 8, "dx": 8, "dgamma": 8, "dbeta": 8}

# -- framework refusals no dialect field describes --------------------------------------------------

#: (framework, input dtype) -> the error text the framework must raise.
FRAMEWORK_REFUSALS = {("onnxruntime", "bfloat16"): "NOT_IMPLEMENTED"}

# -- known gaps ---------------------------------------------------------------------------------------

GAP_REDUCTION_ORDER = (
    "float32 batch statistics depend on the framework's reduction order (x = 1e4 + randn: the float32 "
    "mean is only good to ~ulp(1e4) = 1e-3, amplified by |mean|/std = 1e4 in y, dx and dgamma, squared "
    "into the variance); batchnorm sums pairwise (reference) or in float64 (compiled), and no dialect "
    "field names a framework's reduction tree (Eigen/TF, XLA CPU, onnxruntime MLAS, torch cascade sum)"
)
GAP_TORCH_TRAINING = (
    "torch training (aten/src/ATen/native/Normalization.cpp batch_norm_cpu_update_stats_template, "
    "cpu/batch_norm_kernel.cpp), measured bit for bit on NCHW float32: mean32 = fl32(sum_double(x) / n), "
    "var_sum32 = fl32(sum_double(fl32((x - mean32)^2))), var32 = fl32(var_sum32 / n) (a float division), "
    "save_invstd = fl32(1 / sqrt((double)var32 + eps)) in double; (N, C), N C 1 1 and channels-last "
    "inputs sum in float32 per-thread partial sums (at::get_num_threads() of them) merged in double. "
    "batchnorm's torch dialect takes a float64 two-pass mean and variance and forms 1/sqrtf(fl32(var) + "
    "fl32(eps)) in float32: invstd differs by an ulp, and y = fma(x, a, fma(-mean, a, b)), a = invstd * g, "
    "carries it times |mean * a|"
)
GAP_SUM_OF_SQUARES = (
    "E[x^2] - E[x]^2 in float32 at x = 1e4 + randn: E[x^2] ~ 1e8 has ulp 8 against a variance of 1, so "
    "the variance (and everything after it) is the rounding of the framework's own reduction tree "
    "(torch.mean cascade sum for keras3-torch, XLA CPU for flax), which batchnorm does not emulate"
)
GAP_XLA_MEAN = (
    "XLA computes a mean as fl32(sum) * fl32(1/n), not fl32(sum) / n (jnp.mean of 30 copies of 3.0 gives "
    "3.0000002); batchnorm's moments divide by n. A constant channel then has x - mean = -2.4e-7, "
    "amplified by 1/sqrt(eps)"
)
GAP_NEGATIVE_VARIANCE = (
    "keras3-torch stores the negative E[x^2] - E[x]^2 as its moving variance and goes on (NaN outputs); "
    "batchnorm reproduces the negative batch variance but refuses a negative moving_var in "
    "update_running and a negative var in backward (BatchNormError)"
)

#: Frameworks whose training statistics at a large offset (x = 1e4 + randn) depend on their float32
#: reduction tree (two-pass: GAP_REDUCTION_ORDER; E[x^2] - E[x]^2: GAP_SUM_OF_SQUARES). Their offset
#: training cases are compared in aggregate (test_parity_offsets.py): exactly (a strict xfail per
#: framework) and loosely (must pass). PyTorch sums in float64 and is held to BOUNDS case by case.
OFFSET_GAPS = {
    "onnx": GAP_REDUCTION_ORDER,
    "onnxruntime": GAP_REDUCTION_ORDER,
    "keras3-tensorflow": GAP_REDUCTION_ORDER,
    "keras3-jax": GAP_REDUCTION_ORDER,
    "tf-keras": GAP_REDUCTION_ORDER,
    "tf-keras-unfused": GAP_REDUCTION_ORDER,
    "flax": GAP_SUM_OF_SQUARES,
    "keras3-torch": GAP_SUM_OF_SQUARES + "; " + GAP_NEGATIVE_VARIANCE,
}

#: The loose bound of the aggregated offset comparison, in ulps of the same scales as BOUNDS: wide
#: enough for a different float32 reduction order (measured up to ~110 ulps of the running variance),
#: far below what a wrong convention gives (eps, momentum side, estimator: 1e4 ulps and more).
LOOSE_OFFSET_ULPS = 512


def aggregated_offset(framework: str, case: dict) -> bool:
    """True for the offset training cases compared in aggregate (see OFFSET_GAPS)."""
    return framework in OFFSET_GAPS and case["kind"] == "training" and "offset" in case["_tags"]


def known_gap(framework: str, case: dict, quantity: str, dialect: bn.Dialect) -> str | None:
    """The reason ``quantity`` of ``case`` cannot match ``framework`` yet, or None.

    ``dialect`` is ours, resolved for the case's input. Each rule names one gap of the arithmetic
    layer (see the GAP_* texts); the affected tests are strict xfails.
    """
    if case["kind"] == "inference":
        return None
    for (fws, cids, quantities), reason in _LISTED:
        if framework in fws and case["id"] in cids and quantity in quantities:
            return reason
    return None


#: Measured failures, one line per (frameworks, case ids, quantities): each is deterministic (it does
#: not depend on batchnorm's kernel backend). ``pytest -rX`` shows an XPASS when a gap closes.
_LISTED: list[tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], str]] = [
    ((("keras3-jax",), ("tr_r4l_edge_eps1e-08",), ("dx",)), GAP_XLA_MEAN),
]
