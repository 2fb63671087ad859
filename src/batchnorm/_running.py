"""The running-statistics update as each framework rounds it (the ``running_*`` fields of a Dialect).

With ``a`` the weight of the old value ``r`` and ``w`` that of the batch statistic ``b``, per channel::

    "exact": a * r + w * b                 in float64, rounded once
    "lerp":  fl(fl(a * r) + fl(w * b))     every operation in the compute precision
    "delta": fl(r - fl(fl(r - b) * w))

Measured bit for bit against every framework of the parity suite, step by step (the framework's previous
running statistics in, its next ones out), and read in their sources:

- PyTorch (aten/src/ATen/native/Normalization.cpp, batch_norm_cpu_update_stats_template, contiguous and
  channels-last inputs): ``momentum_ = static_cast<param_t>(momentum)``; the mean is
  ``momentum_ * mean + (1 - momentum_) * running_mean`` in float; the variance's
  ``unbiased_var = var_sum / (n - 1)`` is a float division stored in accscalar_t (double for float
  inputs, float for half ones), so ``momentum_ * unbiased_var`` and the sum are formed in that type while
  ``(1 - momentum_) * running_var`` is a float product.
- ONNX reference evaluator (onnx/reference/ops/op_batch_normalization.py; the attribute is a
  np.float32, onnx/reference/op_run.py) and onnxruntime (core/providers/cpu/nn/batch_norm.h):
  ``mean * momentum + saved_mean * (1 - momentum)`` in float32; the evaluator returns both as x.dtype.
- Keras 3 (keras/src/layers/normalization/batch_normalization.py) and Flax (flax/linen/normalization.py):
  ``moving * momentum + batch * (1.0 - momentum)``, Python floats, each op eager in float32.
- tf_keras unfused (tf_keras/src/layers/normalization/batch_normalization.py, _assign_moving_average):
  ``variable.assign_sub((variable - value) * decay)``, decay = float32(1.0 - momentum).
- tf_keras fused (FusedBatchNormV3; tensorflow/core/kernels/mkl/mkl_fused_batch_norm_op.cc and
  fused_batch_norm_op.cc): exponential_avg_factor f = float32(1 - momentum), ``one_minus_factor = 1 -
  f``, ``(1 - f) * old_mean + f * mean`` and ``(1 - f) * old_var + f * adjust * var`` with adjust =
  float(n) / float(n - 1) (1 where n = 1), left to right.
"""

from __future__ import annotations

import numpy as np

from ._dialect import Dialect

__all__ = ["update", "weights"]

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def weights(d: Dialect, given: float, side: str, dtype: np.dtype) -> tuple[np.generic, np.generic]:
    """(a, w): the weights of the old value and of the new batch in ``dtype``, formed from ``given``
    (a float64 number weighing the ``side`` "old" or "new") as ``d.running_weights`` says."""
    one = dtype.type(1)
    if d.running_weights == "complement_first":
        other = dtype.type(1.0 - given)
        weight = one - other
    else:
        weight = dtype.type(given)
        other = one - weight if d.running_weights == "momentum_first" else dtype.type(1.0 - given)
    return (weight, other) if side == "old" else (other, weight)


def update(
    d: Dialect,
    running: np.ndarray,
    batch: np.ndarray,
    given: float,
    side: str,
    *,
    count: int | None = None,
    input_dtype: np.dtype | None = None,
    var_sum: np.ndarray | None = None,
) -> np.ndarray:
    """One running statistic after one batch, in the compute precision of ``running`` (float32 for
    float32 and half arrays, float64 for float64 ones); callers round it to the stored dtype.

    ``given`` weighs ``side`` ("old" or "new"), as in :func:`weights`. ``count`` is n for a variance
    that the dialect Bessel-corrects (None: the mean, or a biased variance). ``input_dtype`` is the
    batch input's dtype, for ``running_var_accumulation="acc_type"``. ``var_sum``: the framework's own
    sum of squared deviations, for ``running_bessel="sum"`` (else recovered from ``batch`` times n).
    """
    if d.running_form == "exact":
        return _exact(running, batch, given, side, count)
    c = np.result_type(running.dtype, _F32)
    a, w = weights(d, given, side, c)
    r = running.astype(c)
    with np.errstate(over="ignore", invalid="ignore"):
        b, w_k = _corrected(d, batch, w, count, c, var_sum)
        if d.running_form == "delta":
            return r - (r - b) * w_k
        old = a * r
        if count is not None and d.running_var_accumulation == "acc_type":
            acc = _F64 if np.dtype(input_dtype or c) in (_F32, _F64) else c
            return (acc.type(w_k) * b.astype(acc) + old.astype(acc)).astype(c)
        return old + w_k * b


def _corrected(
    d: Dialect,
    batch: np.ndarray,
    w: np.generic,
    count: int | None,
    c: np.dtype,
    var_sum: np.ndarray | None = None,
) -> tuple[np.ndarray, np.generic]:
    """The batch statistic in ``c`` and its weight, Bessel-corrected as ``d.running_bessel`` says."""
    if count is None or count < 2:
        return batch.astype(c), w
    n = count
    if d.running_bessel == "weight":
        return batch.astype(c), w * (c.type(n) / c.type(n - 1))
    if d.running_bessel == "sum":  # the framework's sum itself where the batch carried it
        sum_of_squares = (batch.astype(np.float64) * n).astype(c) if var_sum is None else var_sum.astype(c)
        return sum_of_squares / c.type(n - 1), w
    return (batch.astype(np.float64) * (n / (n - 1))).astype(c), w


def _exact(running: np.ndarray, batch: np.ndarray, given: float, side: str, count: int | None) -> np.ndarray:
    """(1 - w) * r + w * b in float64 (b Bessel-corrected in float64 when ``count`` is given)."""
    w = given if side == "new" else 1.0 - given
    b = batch.astype(np.float64)
    if count is not None and count > 1:
        b = b * (count / (count - 1))
    return (1.0 - w) * running.astype(np.float64) + w * b
