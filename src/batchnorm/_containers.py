"""Weight containers: a Keras-order list, a PyTorch state dict, ONNX inputs, Flax variables.

Each is read into copies under our names (gamma, beta, moving_mean, moving_variance) and written back
from them; :mod:`batchnorm._convert` changes the conventions in between.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from . import _validate
from ._dialect import Dialect
from ._errors import BatchNormError

__all__ = ["OURS", "fill", "read", "target_format", "write"]

OURS = ("gamma", "beta", "moving_mean", "moving_variance")


@dataclass(frozen=True)
class _Format:
    """A weight container: its names in our order, and which of gamma/beta it must hold."""

    what: str
    names: tuple[str, str, str, str]
    fill: Literal["none", "pair", "both"]  # pair: PyTorch's affine=True holds weight and bias together


_KERAS = _Format("a Keras-order list [gamma, beta, moving_mean, moving_variance]", OURS, "none")
_TORCH = _Format("a PyTorch state dict", ("weight", "bias", "running_mean", "running_var"), "pair")
_ONNX = _Format("ONNX BatchNormalization inputs", ("scale", "B", "input_mean", "input_var"), "both")
_FLAX = _Format("Flax variables", ("scale", "bias", "mean", "var"), "none")
_FLAT = (_TORCH, _ONNX, _KERAS)


def read(weights: Any, *, center: bool | None, scale: bool | None) -> tuple[dict, int | None]:
    """(our-named copies of the arrays, num_batches_tracked or None)."""
    if isinstance(weights, Mapping) and "batch_stats" in weights:
        fmt, raw, counter = _FLAX, _read_flax(weights), None
    elif isinstance(weights, Mapping):
        fmt, raw, counter = _read_flat(weights)
    elif isinstance(weights, (list, tuple)):
        fmt, raw, counter = _KERAS, _read_list(list(weights), center, scale), None
    else:
        raise BatchNormError(
            f"weights must be a Keras-order list, a PyTorch state dict, ONNX inputs or Flax variables; "
            f"got {type(weights).__name__}. Pass e.g. layer.get_weights() or module.state_dict()"
        )
    for flag, name in ((center, "beta"), (scale, "gamma")):
        if flag is not None and bool(flag) != (name in raw):
            raise BatchNormError(
                f"{'center' if name == 'beta' else 'scale'}={flag!r} contradicts the weights, which "
                f"{'hold' if name in raw else 'lack'} {fmt.names[OURS.index(name)]!r} ({fmt.what}). "
                "Leave center/scale out: the weights say which exist"
            )
    return _arrays(raw), counter


def _read_list(weights: list, center: bool | None, scale: bool | None) -> dict[str, Any]:
    if len(weights) == 3:
        if center is None and scale is None:
            raise BatchNormError(
                "a Keras-order list of 3 arrays is [beta, moving_mean, moving_variance] (scale=False) or "
                "[gamma, moving_mean, moving_variance] (center=False); got 3 arrays and neither flag. "
                "Pass scale=False or center=False"
            )
        gamma = bool(scale) if scale is not None else not center
        return dict(zip(("gamma" if gamma else "beta", *OURS[2:]), weights, strict=True))
    if len(weights) not in (2, 4):
        raise BatchNormError(
            f"a Keras-order list holds [gamma, beta, moving_mean, moving_variance], gamma left out when "
            f"scale=False and beta when center=False; got {len(weights)} arrays. Pass layer.get_weights()"
        )
    return dict(zip(OURS[4 - len(weights) :], weights, strict=True))


def _read_flat(weights: Mapping) -> tuple[_Format, dict[str, Any], int | None]:
    keys = set(weights)
    for fmt in _FLAT:
        if fmt.names[2] not in keys:
            continue
        allowed = set(fmt.names) | ({"num_batches_tracked"} if fmt is _TORCH else set())
        if keys - allowed or fmt.names[3] not in keys:
            raise BatchNormError(
                f"{fmt.what} holds {', '.join(sorted(allowed))}; got keys {sorted(map(str, keys))}. "
                "Pass one layer's weights, without a module prefix (e.g. strip 'bn1.')"
            )
        raw = {ours: weights[theirs] for ours, theirs in zip(OURS, fmt.names, strict=True) if theirs in keys}
        return fmt, raw, _counter(weights["num_batches_tracked"]) if "num_batches_tracked" in keys else None
    raise BatchNormError(
        f"a dict of weights must be a PyTorch state dict (running_mean, running_var, ...), ONNX inputs "
        f"(input_mean, input_var, ...) or Flax variables ({{'params': ..., 'batch_stats': ...}}); got "
        f"keys {sorted(map(str, keys))}. Pass one layer's weights under one of those namings"
    )


def _read_flax(weights: Mapping) -> dict[str, Any]:
    params, stats = weights.get("params", {}), weights["batch_stats"]
    if (
        set(weights) - {"params", "batch_stats"}
        or set(params) - {"scale", "bias"}
        or set(stats) != {"mean", "var"}
    ):
        raise BatchNormError(
            "Flax variables are {'params': {'scale', 'bias'}, 'batch_stats': {'mean', 'var'}} (scale/bias "
            f"left out when off); got {describe(weights)}. Pass one BatchNorm's variables, e.g. "
            "{'params': v['params']['BatchNorm_0'], 'batch_stats': v['batch_stats']['BatchNorm_0']}"
        )
    raw = {"gamma": params.get("scale"), "beta": params.get("bias")}
    raw = {k: v for k, v in raw.items() if v is not None}
    return {**raw, "moving_mean": stats["mean"], "moving_variance": stats["var"]}


def _arrays(raw: dict[str, Any]) -> dict[str, np.ndarray]:
    """Validated copies, dtypes kept; the channel shape is the moving mean's."""
    shape = np.shape(raw["moving_mean"])
    if not shape:
        raise BatchNormError(
            f"moving_mean must hold one value per channel; got a scalar {raw['moving_mean']!r}. "
            "Pass an array of shape (C,)"
        )
    out = {}
    for name in (n for n in OURS if n in raw):
        if name == "moving_variance":
            arr = _validate.variance(raw[name], shape, name)
        else:
            arr = _validate.channel_parameter(raw[name], name, shape)
        out[name] = np.array(arr, copy=True)
    return out


def target_format(d: Dialect) -> _Format:
    return next((f for f in (_TORCH, _ONNX, _FLAX) if f.names == d.parameter_names), _KERAS)


def fill(fmt: _Format, arrays: dict[str, np.ndarray], notes: list[str]) -> None:
    """Gamma = 1 and beta = 0 where the target's container must hold them (the same computation)."""
    if fmt.fill == "none" or (fmt.fill == "pair" and "gamma" not in arrays and "beta" not in arrays):
        return
    mean = arrays["moving_mean"]
    for name, value in (("gamma", 1), ("beta", 0)):
        if name not in arrays:
            arrays[name] = np.full_like(mean, value)
            notes.append(
                f"{fmt.names[OURS.index(name)]}: absent from the source; {fmt.what} needs it, "
                f"so it is {value} in every channel (the same computation)"
            )


def write(fmt: _Format, arrays: dict[str, np.ndarray], counter: int | None, notes: list[str]) -> Any:
    named = {fmt.names[OURS.index(k)]: v for k, v in sorted(arrays.items(), key=lambda kv: OURS.index(kv[0]))}
    if fmt is _KERAS:
        return list(named.values())
    if fmt is _TORCH:
        if counter is None:
            notes.append("num_batches_tracked: not in the source, set to 0 (read by momentum='cumulative')")
        return {**named, "num_batches_tracked": np.array(counter or 0, dtype=np.int64)}
    if fmt is _FLAX:
        params = {k: named[k] for k in ("scale", "bias") if k in named}
        stats = {"mean": named["mean"], "var": named["var"]}
        return {"params": params, "batch_stats": stats} if params else {"batch_stats": stats}
    return named


def describe(weights: Any) -> str:
    if isinstance(weights, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in weights.items()) + "}"
    if isinstance(weights, (list, tuple)):
        return "[" + ", ".join(describe(v) for v in weights) + "]"
    return f"array{np.shape(weights)}"


def _counter(value: Any) -> int:
    arr = np.asarray(value)
    if arr.shape != () or arr.dtype.kind not in "iu" or int(arr) < 0:
        raise BatchNormError(
            f"num_batches_tracked must be a non-negative integer scalar; got {value!r}. Pass e.g. "
            "numpy.array(0)"
        )
    return int(arr)
