"""What ``batchnorm explain`` is asked about: the :class:`Problem` record, and the seed's case."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _validate, dialects
from ._errors import BatchNormError
from .dialects import Dialect

__all__ = ["SEED_OUTPUTS", "Problem", "compute_dtype", "observed_size_error", "seed_problem"]

#: What the seed's Keras (TF 2.11, inference) printed at eps = 1e-3 and at eps = 0.
SEED_OUTPUTS = {
    1e-3: "[[[[ 0.9995004] [ 1.9990008] [ 2.9985013] [ 3.9980016]] [[ 4.997502 ] [ 5.9970026] "
    "[ 6.996503 ] [ 7.996003 ]] [[ 8.995503 ] [ 9.995004 ] [10.994504 ] [11.994005 ]]]]",
    0.0: "[[[[ 0.999995 ] [ 1.99999 ] [ 2.999985 ] [ 3.99998 ]] [[ 4.999975 ] [ 5.99997 ] "
    "[ 6.9999647] [ 7.99996 ]] [[ 8.999955 ] [ 9.99995 ] [10.999945 ] [11.99994 ]]]]",
}


@dataclass(frozen=True)
class Problem:
    """What to explain.

    Statistics and parameters have the channel shape. ``eps=None`` means each dialect's default. With
    ``training`` the statistics come from ``x``, and ``mean``/``var`` are the moving statistics the update
    starts from (``momentum=None``: each dialect's default, in its own convention). ``observed`` has the
    shape and dtype of ``x``; where ``observed_mask`` is False the value was elided (``...``).
    ``element`` is the flat index of the element whose computation is shown (None: the last).
    """

    x: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    axis: int | tuple[int, ...] = -1
    eps: tuple[float, ...] | None = None
    dialects: tuple[str, ...] = ()
    training: bool = False
    momentum: float | None = None
    observed: np.ndarray | None = None
    observed_mask: np.ndarray | None = None
    element: int | None = None
    tolerance: int = 0
    seed: bool = False

    @property
    def axes(self) -> tuple[int, ...]:
        return _validate.channel_axes(self.axis, self.x.ndim)

    @property
    def channel_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[i] for i in self.axes)

    @property
    def names(self) -> tuple[str, ...]:
        return self.dialects or dialects.names()

    @property
    def compute_dtype(self) -> np.dtype:
        return compute_dtype(self.x.dtype)

    @property
    def observed_where(self) -> np.ndarray:
        """Where the observation holds a value (False where ``...`` elided it)."""
        return np.ones(self.x.shape, bool) if self.observed_mask is None else self.observed_mask

    def per_element(self, a: Any) -> np.ndarray:
        """A channel-shaped array as float64, shaped to broadcast against ``x``."""
        shape = [self.x.shape[i] if i in self.axes else 1 for i in range(self.x.ndim)]
        return np.asarray(a, np.float64).reshape(shape)

    def by_channel(self) -> np.ndarray:
        """``x`` as (channels, values per channel), channels flattened in C order."""
        return np.moveaxis(self.x, self.axes, range(len(self.axes))).reshape(self.mean.size, -1)

    def momentum_for(self, d: Dialect) -> float:
        """The momentum asked for, else the dialect's default (in the dialect's own convention)."""
        return d.momentum if self.momentum is None else self.momentum


def seed_problem(**changes: Any) -> Problem:
    """The seed's case: x = 1..12 as float32 (1, 3, 4, 1), one channel, mean 0, var 1, gamma 1, beta 0,
    at eps = 1e-3 (Keras' default) and eps = 0. ``changes`` replace fields; unless they only pick
    dialects, the result is no longer "the seed" (no seed-specific diagnosis)."""
    one = np.ones(1, np.float32)
    base = Problem(
        x=np.arange(1, 13, dtype=np.float32).reshape(1, 3, 4, 1),
        mean=0 * one,
        var=one,
        gamma=one,
        beta=0 * one,
        axis=-1,
        eps=(1e-3, 0.0),
        seed=True,
    )
    return dataclasses.replace(base, **{"seed": set(changes) <= {"dialects"}, **changes})


def compute_dtype(x_dtype: np.dtype) -> np.dtype:
    """The precision frameworks compute in, and parameters are read at: float64 for float64 x, else
    float32."""
    return np.dtype(np.float64) if x_dtype == np.float64 else np.dtype(np.float32)


def observed_size_error(size: int, given: int) -> BatchNormError:
    """The error for an observation that does not hold as many values as x."""
    return BatchNormError(
        f"--observed must hold as many values as x ({size}); got {given}. "
        "Paste the whole output, or elide its middle with ..."
    )
