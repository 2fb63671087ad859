"""Argument checks. Each raises BatchNormError naming the rule, the value received and the fix."""

from __future__ import annotations

import math
import numbers
from typing import Any

import ml_dtypes
import numpy as np

from ._errors import BatchNormError

__all__ = [
    "FLOAT_DTYPES",
    "channel_axes",
    "channel_parameter",
    "epsilon",
    "input_array",
    "momentum",
    "nonzero_denominator",
]

FLOAT_DTYPES = tuple(np.dtype(t) for t in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64))
_FLOAT_NAMES = "float16, bfloat16, float32 or float64"


def input_array(x: Any, name: str = "x") -> np.ndarray:
    """``x`` as an ndarray of a supported float dtype and rank >= 2 (never copied here)."""
    x = np.asarray(x)
    if x.dtype not in FLOAT_DTYPES:
        raise BatchNormError(
            f"{name} must be a {_FLOAT_NAMES} array; got dtype {x.dtype}. "
            f"Convert it first, e.g. {name}.astype(numpy.float32)"
        )
    if x.ndim < 2:
        raise BatchNormError(
            f"{name} must have at least 2 dimensions (batch and channel); got shape {x.shape}. "
            f"Add a batch axis, e.g. {name}[None, :] for a single sample"
        )
    return x


def channel_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """The channel axes as a sorted tuple of non-negative ints, after bounds and repetition checks."""
    raw = axis if isinstance(axis, (tuple, list)) else (axis,)
    for a in raw:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, numbers.Integral):
            raise BatchNormError(
                f"axis must be an int or a tuple of ints; got {axis!r}. Pass e.g. axis=1 or axis=(1, 2)"
            )
        if not -ndim <= int(a) < ndim:
            raise BatchNormError(
                f"axis must lie in [{-ndim}, {ndim - 1}] for an input of rank {ndim}; got {axis!r}. "
                "Use the channel axis of this input (e.g. 1 for NCHW, -1 for NHWC)"
            )
    axes = tuple(int(a) % ndim for a in raw)
    if len(set(axes)) != len(axes) or not axes:
        raise BatchNormError(
            f"axis must name each channel axis once; got {axis!r} (axes {axes} for rank {ndim}). "
            "Remove the repeated axis"
        )
    if len(axes) == ndim:
        raise BatchNormError(
            f"axis must leave at least one axis to average over; got {axis!r} for rank {ndim}. "
            "Name only the channel axes"
        )
    return tuple(sorted(axes))


def channel_parameter(value: Any, name: str, shape: tuple[int, ...], *, finite: bool = True) -> np.ndarray:
    """A per-channel parameter as a float array of exactly ``shape``; NaN/inf refused when ``finite``."""
    arr = np.asarray(value)
    if arr.dtype.kind in "biu":
        arr = arr.astype(np.float64)
    if arr.dtype not in FLOAT_DTYPES:
        raise BatchNormError(
            f"{name} must hold real numbers ({_FLOAT_NAMES}); got dtype {arr.dtype}. "
            f"Pass {name} as a float array of shape {shape}"
        )
    if arr.shape != shape and arr.shape != (math.prod(shape),):
        raise BatchNormError(
            f"{name} must have the channel shape {shape}; got shape {arr.shape}. "
            f"Pass one value per channel, e.g. {name}.reshape({shape})"
        )
    arr = arr.reshape(shape)
    wide = arr.astype(np.float64)
    if finite and not np.isfinite(wide).all():
        bad = _first_channel(~np.isfinite(wide))
        raise BatchNormError(
            f"{name} must be finite; got {wide[bad]} at channel {bad}. "
            "Reload or re-initialise the parameters (a NaN here usually means training diverged)"
        )
    return arr


def variance(value: Any, shape: tuple[int, ...], name: str = "var") -> np.ndarray:
    """A variance parameter: finite and >= 0 in every channel."""
    arr = channel_parameter(value, name, shape, finite=False)
    wide = arr.astype(np.float64)
    bad_mask = ~(wide >= 0) | np.isinf(wide)
    if bad_mask.any():
        bad = _first_channel(bad_mask)
        raise BatchNormError(
            f"{name} must be finite and >= 0 in every channel; got {wide[bad]} at channel {bad}. "
            "A variance cannot be negative: check the statistics (E[x^2] - E[x]^2 can go negative)"
        )
    return arr


def epsilon(eps: Any) -> float:
    """eps as a float: finite and >= 0 (0 is allowed; var + eps == 0 is checked per channel)."""
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise BatchNormError(f"eps must be a real number >= 0; got {eps!r}. Pass e.g. eps=1e-5")
    value = float(eps)
    if not (np.isfinite(value) and value >= 0):
        raise BatchNormError(
            f"eps must be finite and >= 0; got {value!r}. Pass e.g. eps=1e-5, or eps=0.0 for none"
        )
    return value


def momentum(value: Any) -> float | str:
    """momentum as a float in [0, 1], or the named rule ``"cumulative"``."""
    if value == "cumulative":
        return "cumulative"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise BatchNormError(
            f"momentum must be a number in [0, 1] or 'cumulative'; got {value!r}. Pass e.g. momentum=0.1"
        )
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise BatchNormError(
            f"momentum must lie in [0, 1]; got {value!r}. "
            "Momentum is a weight: PyTorch's 0.1 (new batch) is Keras' 0.9 (old value)"
        )
    return value


def nonzero_denominator(var: np.ndarray, eps: float, where: str = "var") -> None:
    """Refuse var + eps == 0: the division by sqrt(var + eps) would be a division by zero."""
    zero = (var.astype(np.float64) + eps) == 0
    if zero.any():
        bad = _first_channel(zero)
        raise BatchNormError(
            f"{where} + eps must be > 0 in every channel (it divides); got {where} = 0 and eps = {eps!r} "
            f"at channel {bad}. Pass eps > 0 (e.g. 1e-5), or drop the constant channel"
        )


def _first_channel(mask: np.ndarray) -> int | tuple[int, ...]:
    index = tuple(int(i) for i in np.argwhere(mask)[0])
    return index[0] if len(index) == 1 else index
