"""Weights and hyperparameters carried from one dialect's conventions to another's.

The weights are per-channel arrays; only their names, their container and three conventions differ
between frameworks. :func:`convert` maps each:

- **names and container**: a Keras-order list ``[gamma, beta, moving_mean, moving_variance]`` (gamma/beta
  left out when scale/center is off), a PyTorch state dict (``weight, bias, running_mean, running_var,
  num_batches_tracked``), ONNX BatchNormalization inputs (``scale, B, input_mean, input_var``) or Flax
  variables (``{"params": {"scale", "bias"}, "batch_stats": {"mean", "var"}}``). The input's container is
  recognised from its shape; the output takes the container of the target's ``parameter_names``.
- **eps** is carried as is (it is a constant of the formula, in every framework's same place).
- **momentum** ``m`` weighs the new batch in PyTorch (``r <- (1 - m) r + m b``) and the old value
  elsewhere (``r <- m r + (1 - m) b``): between the two sides it becomes ``1 - m``.
- **running variance**: a dialect stores a running average of Bessel-corrected batch variances
  (``var * n / (n - 1)``, ``running_variance="unbiased"``: PyTorch) or of the batch variance itself
  (``/ n``, "biased": Keras 3, ONNX, Flax). Between the two the average is rescaled by ``n / (n - 1)`` or
  its inverse, n the count of values per channel in one training batch, or kept as stored.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import numpy as np

from . import _containers, _validate
from ._containers import OURS
from ._errors import BatchNormError, BatchNormWarning
from ._rounding import round_once
from .dialects import Dialect, get
from .layer import BatchNorm

__all__ = ["Converted", "convert"]


@dataclass(frozen=True, repr=False)
class Converted:
    """Weights in the target's container and hyperparameters in the target's conventions.

    Attributes
    ----------
    weights : list of ndarray or dict
        New arrays (dtypes kept) in the target's container: a Keras-order list, a PyTorch state dict
        (numpy values; ``torch.as_tensor`` each before ``load_state_dict``), ONNX inputs by name, or
        Flax variables ``{"params": ..., "batch_stats": ...}``.
    dialect : Dialect
        The target dialect.
    eps, momentum, axis
        The target layer's hyperparameters, in the target's convention (``momentum`` weighs what the
        target's momentum weighs; ``axis`` is the input's channel axis, unchanged by conversion).
    center, scale : bool
        Whether the weights hold beta and gamma.
    notes : tuple of str
        Every choice made, in words: defaults used, momentum flipped, variance rescaled or kept, arrays
        filled in.
    """

    weights: list[np.ndarray] | dict[str, Any]
    dialect: Dialect
    eps: float
    momentum: float | str
    axis: int | tuple[int, ...]
    center: bool
    scale: bool
    notes: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"Converted(dialect={self.dialect.name!r}, eps={self.eps!r}, momentum={self.momentum!r}, "
            f"axis={self.axis!r}, center={self.center}, scale={self.scale}, "
            f"weights={_containers.describe(self.weights)})"
        )

    def layer(self) -> BatchNorm:
        """A :class:`~batchnorm.BatchNorm` of the target dialect holding these weights."""
        arrays, counter = _containers.read(self.weights, center=self.center, scale=self.scale)
        mean = arrays["moving_mean"]
        layer = BatchNorm(
            mean.shape,
            axis=self.axis,
            eps=self.eps,
            momentum=self.momentum,
            center=self.center,
            scale=self.scale,
            dialect=self.dialect,
            param_dtype=mean.dtype,
        )
        layer.set_weights([arrays[name] for name in OURS if name in arrays])
        layer.num_batches_tracked = 0 if counter is None else counter
        return layer


def convert(
    weights: Any,
    *,
    source: str | Dialect,
    target: str | Dialect,
    eps: float | None = None,
    momentum: float | str | None = None,
    axis: int | tuple[int, ...] | None = None,
    ndim: int | None = None,
    count: int | None = None,
    running_variance: Literal["rescale", "keep"] = "rescale",
    center: bool | None = None,
    scale: bool | None = None,
) -> Converted:
    """Carry a batch-normalization layer's weights and hyperparameters from ``source`` to ``target``.

    Parameters
    ----------
    weights : list, or dict
        A Keras-order list (``[gamma, beta, moving_mean, moving_variance]``, gamma/beta left out when
        scale/center is off: pass ``center``/``scale`` when only one is left out), a PyTorch state dict,
        ONNX inputs ``{scale, B, input_mean, input_var}`` or Flax variables. Never modified.
    source, target : str or Dialect
    eps : float, optional
        The source layer's epsilon; None means the source's default (e.g. 1e-5 for torch). Carried as is,
        except where the source raised it to a floor (tf-keras-2.11's fused path): then the raised value.
    momentum : float or "cumulative", optional
        The source layer's momentum in the source's convention; None means the source's default (0.1 for
        torch, 0.99 for Keras). Between a new-batch and an old-value side it becomes ``1 - momentum``
        (computed on the decimal written: 1 - 0.99 gives 0.01). PyTorch's ``"cumulative"`` average has
        no fixed-weight equivalent and is refused for an old-value target.
    axis, ndim : int, optional
        The channel axis and rank of the layer's input; axis None means the source's default (the data
        keeps its layout). ``ndim`` is needed where a dialect's path depends on the input: tf-keras stores
        an unbiased running variance on its fused path (rank 4 with axis 1 or 3, rank 5 with axis 1 or 4)
        and a biased one otherwise.
    count : int, optional
        n, the number of values per channel in one training batch (``N*H*W`` for ``N, C, H, W`` images).
    running_variance : {"rescale", "keep"}
        Where the source stores the unbiased running variance and the target the biased one (or the
        reverse): ``"rescale"`` multiplies it by ``(n - 1) / n`` (or ``n / (n - 1)``), giving what the
        target would have stored, and needs ``count``; ``"keep"`` carries it unchanged, so that the
        target computes the same inference output as the source.
    center, scale : bool, optional
        Whether beta and gamma exist; read from the weights, needed only for a Keras list of 3 arrays.

    Returns
    -------
    Converted
        ``.weights`` in the target's container, ``.eps``, ``.momentum``, ``.axis`` for the target layer,
        ``.notes``; ``.layer()`` builds the target's :class:`~batchnorm.BatchNorm`.

    Raises
    ------
    BatchNormError
        Unrecognised weights, a needed ``count`` or ``ndim`` missing, a cumulative momentum for an
        old-value target. BatchNormWarning where the target would raise eps to its floor.
    """
    src_d, tgt_d = get(source), get(target)
    arrays, counter = _containers.read(weights, center=center, scale=scale)
    notes: list[str] = []
    axis = _axis(src_d, tgt_d, axis, notes)
    src, tgt = _paths(src_d, tgt_d, ndim, axis)
    eps_value = _eps(src, tgt, eps, notes)
    rule = _momentum(src, tgt, momentum, counter, notes)
    arrays["moving_variance"] = _variance(src, tgt, arrays["moving_variance"], count, running_variance, notes)
    fmt = _containers.target_format(tgt_d)
    _containers.fill(fmt, arrays, notes)
    return Converted(
        weights=_containers.write(fmt, arrays, counter, notes),
        dialect=tgt_d,
        eps=eps_value,
        momentum=rule,
        axis=axis,
        center="beta" in arrays,
        scale="gamma" in arrays,
        notes=tuple(notes),
    )


# -- the conventions -----------------------------------------------------------------------------


def _paths(src: Dialect, tgt: Dialect, ndim: int | None, axis: Any) -> tuple[Dialect, Dialect]:
    """Both dialects as they run on the layer's input (tf-keras: its fused or unfused path)."""
    if ndim is None:
        which = next((d for d in (src, tgt) if d.paths), None)
        if which is None:
            return src, tgt
        ranks: dict[int, list[str]] = {}
        for rank, a in sorted({layout for p in which.paths for layout in p.layouts}):
            ranks.setdefault(rank, []).append(str(a))
        layouts = ", ".join(f"rank {r} with axis {' or '.join(a)}" for r, a in ranks.items())
        raise BatchNormError(
            f"{which.name} runs another path for some inputs ({layouts}) with its own running-variance "
            "estimator and epsilon policy, so the conversion depends on the layer's input; got "
            "ndim=None. Pass ndim= and axis= of the input, e.g. ndim=4, axis=-1 for NHWC images"
        )
    if isinstance(ndim, bool) or not isinstance(ndim, numbers.Integral) or ndim < 2:
        raise BatchNormError(
            f"ndim is the rank of the layer's input, an int >= 2; got {ndim!r}. Pass e.g. ndim=4 for images"
        )
    axes = _validate.channel_axes(axis, int(ndim))
    return src.for_input(int(ndim), axes), tgt.for_input(int(ndim), axes)


def _eps(src: Dialect, tgt: Dialect, eps: float | None, notes: list[str]) -> float:
    if eps is None:
        notes.append(f"eps: not given, {src.name}'s default {src.eps!r}")
    value = _validate.epsilon(src.eps if eps is None else eps)
    if src.eps_floor and value < src.eps_floor:
        notes.append(
            f"eps: {src.name} raised {value!r} to {src.eps_floor!r} on this path and computed "
            f"with it; carried {src.eps_floor!r}"
        )
        value = src.eps_floor
    if tgt.eps_floor and value < tgt.eps_floor:
        message = (
            f"{tgt.name} raises eps to {tgt.eps_floor!r} on this path, so it cannot compute with the "
            f"source's eps {value!r}; its outputs will differ. Convert to its unfused path instead "
            "(tf_keras fused=False)"
        )
        warnings.warn(message, BatchNormWarning, stacklevel=3)
        notes.append(message)
    return value


def _axis(src: Dialect, tgt: Dialect, axis: Any, notes: list[str]) -> Any:
    if axis is not None:
        return axis
    if src.axis != tgt.axis:
        notes.append(
            f"axis: not given, {src.name}'s {src.axis} kept (the input keeps its layout; "
            f"{tgt.name}'s default is {tgt.axis})"
        )
    return src.axis


def _momentum(
    src: Dialect, tgt: Dialect, momentum: float | str | None, counter: int | None, notes: list[str]
) -> float | str:
    if momentum is None:
        notes.append(f"momentum: not given, {src.name}'s default {src.momentum!r}")
    rule = _validate.momentum(src.momentum if momentum is None else momentum)
    if rule == "cumulative" and tgt.momentum_side != "new":
        raise BatchNormError(
            f"{tgt.name}'s momentum weighs the old value by a fixed factor; got momentum='cumulative' "
            "(PyTorch's momentum=None: the k-th batch weighs 1/k), which has no fixed equivalent. "
            "Pass the fixed momentum to use instead, in the source's convention (e.g. momentum=0.1)"
        )
    if rule == "cumulative" and counter is None:
        raise BatchNormError(
            "momentum='cumulative' weighs the k-th batch by 1/k, so the target needs the count of "
            "batches seen; got weights without num_batches_tracked. Pass a PyTorch state dict (e.g. "
            "layer.state_dict()) as the weights, or a fixed momentum"
        )
    if rule == "cumulative":
        return rule
    if src.momentum_side == tgt.momentum_side:
        return rule
    flipped = float(Decimal(1) - Decimal(repr(float(rule))))
    notes.append(
        f"momentum: {rule!r} weighs the {_side(src)} in {src.name}; {flipped!r} weighs the "
        f"{_side(tgt)} in {tgt.name} (the same update)"
    )
    return flipped


def _side(d: Dialect) -> str:
    return "new batch" if d.momentum_side == "new" else "old value"


def _count(count: Any) -> int:
    if isinstance(count, (bool, np.bool_)) or not isinstance(count, numbers.Integral) or count < 2:
        raise BatchNormError(
            f"count is n, the number of values per channel in one training batch (N*H*W for N, C, H, W "
            f"images), an int >= 2; got {count!r}. Pass e.g. count=32*28*28"
        )
    return int(count)


def _variance(
    src: Dialect, tgt: Dialect, var: np.ndarray, count: Any, mode: str, notes: list[str]
) -> np.ndarray:
    n = None if count is None else _count(count)
    if mode not in ("rescale", "keep"):
        raise BatchNormError(
            f"running_variance must be 'rescale' or 'keep'; got {mode!r}. Pass 'keep' for the same "
            "inference output, 'rescale' (with count=n) for what the target would have stored"
        )
    same = src.running_variance == tgt.running_variance
    if same or mode == "keep":
        if not same:
            notes.append(
                f"running variance: kept as stored ({src.running_variance} in {src.name}, "
                f"{tgt.running_variance} in {tgt.name}): the same inference output"
            )
        if n is not None:
            notes.append("count: unused, the running variance is carried as stored")
        return var
    if n is None:
        raise BatchNormError(
            f"{src.name} stores the {_estimator(src)} running variance and {tgt.name} the "
            f"{_estimator(tgt)} one, so rescaling it needs n, the values per channel in a training batch; "
            "got count=None. Pass count=n (N*H*W for images) to store what the target would have, or "
            "running_variance='keep' to carry it unchanged (the same inference output)"
        )
    wide = var.astype(np.float64)
    scaled = wide * n / (n - 1) if tgt.running_variance == "unbiased" else wide * (n - 1) / n
    notes.append(
        f"running variance: {_estimator(src)} -> {_estimator(tgt)}, times "
        f"{'n/(n-1)' if tgt.running_variance == 'unbiased' else '(n-1)/n'} with n = {n}"
    )
    return round_once(scaled, var.dtype)


def _estimator(d: Dialect) -> str:
    return "unbiased (n/(n-1))" if d.running_variance == "unbiased" else "biased (/n)"
