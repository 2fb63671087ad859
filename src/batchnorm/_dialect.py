"""The Dialect record: one framework's batch-normalization conventions and float arithmetic."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._errors import BatchNormError

__all__ = ["TF_MIN_EPSILON", "Dialect", "Elementwise", "Path"]

MomentumSide = Literal["old", "new"]
Elementwise = Literal["centered", "affine", "fma", "ratio", "normalized_fma"]
ScaleForm = Literal["reciprocal", "quotient"]
Rsqrt = Literal["correct", "tensorflow", "xla"]
Variance = Literal["two_pass", "sum_of_squares", "sum_of_squares_clamped"]
Precision = Literal["float64", "native"]
Estimator = Literal["biased", "unbiased"]
InverseRoot = Literal["inference", "float64"]
RunningForm = Literal["exact", "lerp", "delta"]
RunningWeights = Literal["separate", "momentum_first", "complement_first"]
RunningBessel = Literal["float64", "weight", "sum"]
RunningAccumulation = Literal["native", "acc_type"]
RunningStorage = Literal["parameters", "input"]
Gradient = Literal["closed_form", "autodiff"]
Reduction = Literal[
    "float64",
    "numpy",
    "torch-batchnorm",
    "torch-reduce",
    "onnxruntime",
    "eigen",
    "eigen-fused",
    "onednn",
    "xla",
]

#: tf.nn.fused_batch_norm's ``min_epsilon`` in TF <= 2.11 (cuDNN's old CUDNN_BN_MIN_EPSILON).
TF_MIN_EPSILON = 1.001e-5


@dataclass(frozen=True)
class Path:
    """A code path a framework takes for some input layouts, and how it differs from the default one.

    ``layouts`` holds (rank, channel axis) pairs, axes non-negative; ``changes`` holds (field, value)
    pairs applied to the dialect on that path. ``channel_multiple`` > 1 restricts the path to channel
    counts divisible by it (tf_keras' fused NHWC kernel vectorizes over 4 channels at a time).
    """

    name: str
    layouts: tuple[tuple[int, int], ...]
    changes: tuple[tuple[str, Any], ...]
    channel_multiple: int = 1

    def applies(self, ndim: int, axes: tuple[int, ...], channels: int | None) -> bool:
        """Whether an input of rank ``ndim`` over channel ``axes`` (``channels`` of them) takes this path."""
        if len(axes) != 1 or (ndim, axes[0]) not in self.layouts:
            return False
        return self.channel_multiple == 1 or (channels is not None and channels % self.channel_multiple == 0)


@dataclass(frozen=True)
class Dialect:
    """One framework's batch-normalization conventions and float arithmetic, as data.

    Inference computes, per channel, with ``e`` the effective epsilon (see :meth:`effective_eps`)::

        scale_form  "reciprocal": s = rsqrt(v + e) * g      "quotient": s = g / sqrt(v + e)
        elementwise "centered":   y = (x - m) * s + b
                    "affine":     y = x * s + (b - m * s)
                    "fma":        y = fma(x, s, fma(-m, s, b))
                    "ratio":      y = g * (x - m) / sqrt(v + e) + b
                    "normalized_fma": y = fma((x - m) * rsqrt(v + e), g, b)

    each operation rounded in the compute precision: float64 throughout for ``precision="float64"``
    (one rounding at the end), else the framework's own (float32 for float32 and half inputs, float64
    for float64 inputs). ``rsqrt`` says how the reciprocal square root is formed: ``"correct"`` is
    ``1 / sqrt`` with both operations correctly rounded; ``"tensorflow"`` and ``"xla"`` are those
    libraries' CPU approximations (within an ulp of it), emulated where the CPU allows.

    Frameworks that switch code paths by input layout (tf_keras' fused kernel for rank 4 and 5) list
    them in ``paths``; :meth:`for_input` resolves the dialect for one input.

    Training statistics follow ``reduction``: ``"float64"`` accumulates in float64 and rounds once (the
    kernels' own order, which no float32 tree can tell apart); every other value names a framework's
    float32 reduction tree, emulated operation by operation in :mod:`batchnorm._reductions`, because at
    a large mean (x = 1e4 + randn) the float32 statistics are the rounding of that tree.
    ``reduction_threads`` is the thread count such a tree depends on (PyTorch's channels-last kernel
    splits the rows among at::get_num_threads() threads); None means the framework's default on this
    machine, as a user who sets nothing gets it (PyTorch: the physical cores).
    ``training_inverse_root`` says how a training step forms 1 / sqrt(var + eps) from the batch variance:
    ``"inference"`` as inference does; ``"float64"`` in float64 with eps as given (not stored as float32),
    rounded once to the compute dtype (PyTorch's save_invstd), also used by the backward pass.

    The running statistics update as ``r <- momentum * r + (1 - momentum) * batch`` when momentum weighs
    the **old** value (Keras, ONNX, Flax) and ``r <- (1 - momentum) * r + momentum * batch`` when it
    weighs the **new** batch (PyTorch). The stored variance is the batch variance (``"biased"``, divided
    by n) or Bessel-corrected (``"unbiased"``, times n / (n - 1)). How the update is rounded
    (:mod:`batchnorm._running`), with ``a`` the weight of the old value and ``w`` that of the new batch::

        running_form "exact": a * r + w * b in float64, rounded once
                     "lerp":  fl(fl(a * r) + fl(w * b))       (PyTorch, ONNX, Keras 3, Flax, tf_keras fused)
                     "delta": fl(r - fl(fl(r - b) * w))       (tf_keras unfused: assign_sub)

    each operation in the compute precision: float32 for float32 and half moving statistics, float64
    for float64 ones. ``running_weights`` says how the two weights are formed from the momentum ``p``
    (a float64 number) the user gives: ``"separate"`` rounds p and 1 - p (computed in float64) each to
    the compute precision (Keras, Flax: Python floats); ``"momentum_first"`` rounds p and forms the
    other weight as fl(1 - fl(p)) (ONNX's float attribute, PyTorch's static_cast<float>(momentum));
    ``"complement_first"`` rounds 1 - p and forms p as fl(1 - fl(1 - p)) (TensorFlow's fused kernel,
    whose exponential_avg_factor is 1 - momentum). ``running_bessel`` says how an unbiased variance
    is formed: ``"float64"`` b = fl(var * n / (n - 1)) in float64; ``"weight"`` the factor k =
    fl(fl(n) / fl(n - 1)) joins the weight, fl(fl(w * k) * var) (TensorFlow's fused kernels);
    ``"sum"`` b = fl(s / fl(n - 1)) from PyTorch's own float32 sum of squares s (var_sum), which
    ``normalize_batch`` carries in its result (a result built without it: s = fl(var * n), exact where
    n is a power of two). ``running_var_accumulation`` ``"acc_type"``
    forms the variance's new-batch term and the sum in float64 for float32 and float64 inputs (float32
    for half inputs), the old term fl(a * r) in the compute precision, rounding once at the end
    (PyTorch's accscalar_t unbiased_var on CPU). ``running_storage`` is the dtype of the stored
    statistics: the moving arrays' (``"parameters"``) or the input's (``"input"``: ONNX's reference
    evaluator returns them as x.dtype).

    The backward pass (:func:`batchnorm.backward`) follows ``gradient``: ``"closed_form"`` forms
    ``dx = g inv (dy - mean(dy) - xh mean(dy xh))`` in float64 from the batch statistics, rounding once;
    ``"autodiff"`` runs the framework's reverse-mode autodiff of its forward graph op by op, each
    operation rounded in float32, its sums by ``reduction`` (Flax: jax's gradient flows through E[x] and
    E[x^2] of the fast variance separately, and those terms cancel in float32 at a large mean; see
    :mod:`batchnorm._gradients`). It applies to the sum-of-squares variances and float32 and half
    inputs; the two-pass variance and float64 inputs keep the closed form.
    """

    name: str
    framework: str
    eps: float
    momentum: float
    momentum_side: MomentumSide
    axis: int
    running_variance: Estimator
    variance: Variance = "two_pass"
    statistics_precision: Precision = "native"
    reduction: Reduction = "float64"
    reduction_threads: int | None = None
    training_inverse_root: InverseRoot = "inference"
    running_form: RunningForm = "exact"
    running_weights: RunningWeights = "separate"
    running_bessel: RunningBessel = "float64"
    running_var_accumulation: RunningAccumulation = "native"
    running_storage: RunningStorage = "parameters"
    gradient: Gradient = "closed_form"
    precision: Precision = "native"
    scale_form: ScaleForm = "reciprocal"
    elementwise: Elementwise = "affine"
    eps_in_float32: bool = True
    eps_floor: float = 0.0
    rsqrt: Rsqrt = "correct"
    promote_output: bool = False
    refuses_nonpositive_eps_in_training: bool = False
    refuses_single_value_in_training: bool = False
    parameter_names: tuple[str, str, str, str] = ("gamma", "beta", "moving_mean", "moving_variance")
    paths: tuple[Path, ...] = ()
    path: str = ""
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise BatchNormError(
                    f"Dialect {self.name!r}: {name} must be one of {', '.join(map(repr, choices))}; got "
                    f"{value!r}. Pass one of those (see batchnorm.Dialect's docstring for what each means)"
                )

    def derive(self, name: str, **changes: Any) -> Dialect:
        """A variant of this dialect under a new name, e.g. ``get("flax").derive("flax-2pass",
        variance="two_pass")`` for Flax with ``use_fast_variance=False``."""
        return dataclasses.replace(self, name=name, **changes)

    def for_input(self, ndim: int, axes: tuple[int, ...], channels: int | None = None) -> Dialect:
        """The dialect as it runs on an input of rank ``ndim`` normalized over channel ``axes``
        (``channels`` values along them; None where unknown: paths that depend on it are not taken).

        tf_keras chooses its fused kernel (FusedBatchNormV3) for rank 4 with axis 1 or 3 and rank 5 with
        axis 1 or 4; that path has its own arithmetic and running-variance estimator
        (tf_keras/layers/normalization/batch_normalization.py, ``_fused_can_be_used``).
        """
        for path in self.paths:
            if path.applies(ndim, axes, channels):
                return dataclasses.replace(self, paths=(), path=path.name, **dict(path.changes))
        return self

    @property
    def approximate_rsqrt(self) -> bool:
        """True where the scale is formed with the framework's rsqrt and that rsqrt is not the
        correctly rounded 1/sqrt (a quotient g / sqrt and ONNX's ratio form no rsqrt at all)."""
        forms_rsqrt = self.elementwise == "normalized_fma" or (
            self.scale_form == "reciprocal" and self.elementwise != "ratio"
        )
        return forms_rsqrt and self.rsqrt != "correct"

    def effective_eps(self, eps: float) -> float:
        """The epsilon the framework actually adds: raised to the floor, stored as float32 if it does."""
        eps = eps if eps > self.eps_floor else self.eps_floor
        return float(np.float32(eps)) if self.eps_in_float32 else float(eps)

    @property
    def momentum_rule(self) -> str:
        """The running update in words, for reprs and explanations."""
        side = "old value" if self.momentum_side == "old" else "new batch"
        return f"momentum weighs the {side}"


#: the fields whose type is a Literal, with the values each may take (checked by Dialect.__post_init__)
_CHOICES = {
    name: typing.get_args(hint)
    for name, hint in typing.get_type_hints(Dialect).items()
    if typing.get_origin(hint) is Literal
}
