"""Any rank, any channel axes, any memory order -> a 3-D array (outer, C, inner).

Kernels see one shape only: ``(outer, C, inner)``, C-contiguous, channel in the middle. NCHW is
``(N, C, H*W)``; NHWC is ``(N*H*W, C, 1)``; several channel axes flatten into C. The axes are permuted
into the array's own memory order (largest stride first), so C-ordered, Fortran-ordered and channels-last
arrays all give a view without a copy; only inputs whose channel axes are not adjacent in memory, or that
are not contiguous, are copied once into channels-last order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["Layout", "plan"]


@dataclass(frozen=True)
class Layout:
    """How an array of ``shape`` maps onto ``(outer, C, inner)`` through the axis permutation ``perm``."""

    shape: tuple[int, ...]
    axes: tuple[int, ...]
    perm: tuple[int, ...]
    outer: int
    channels: int
    inner: int

    @cached_property
    def channel_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.axes)

    @cached_property
    def memory_shape(self) -> tuple[int, ...]:
        """The input's shape in its memory order (largest stride first): the dimensions a framework's
        reduction sees, (N, C, H, W) for NCHW and (N, H, W, C) for channels-last memory."""
        return tuple(self.shape[p] for p in self.perm)

    @property
    def count(self) -> int:
        """Values per channel: the n of the batch statistics."""
        return self.outer * self.inner

    def view3(self, a: np.ndarray) -> np.ndarray | None:
        """``a`` as (outer, C, inner) without a copy, or None if its memory order does not allow it."""
        t = a.transpose(self.perm)
        if not t.flags.c_contiguous:
            return None
        return t.reshape(self.outer, self.channels, self.inner)

    def input3(self, x: np.ndarray) -> np.ndarray:
        """``x`` as (outer, C, inner): a view where possible, else one contiguous copy."""
        v = self.view3(x)
        if v is None:
            v = np.ascontiguousarray(x.transpose(self.perm)).reshape(self.outer, self.channels, self.inner)
        return v

    def new_output(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """A fresh array of ``shape`` laid out like the input, and its (outer, C, inner) view."""
        permuted = np.empty(self.memory_shape, dtype=dtype)
        return permuted.transpose(self.inverse_perm), permuted.reshape(self.outer, self.channels, self.inner)

    @cached_property
    def inverse_perm(self) -> tuple[int, ...]:
        """The permutation that undoes ``perm``."""
        return tuple(int(i) for i in np.argsort(self.perm))

    @property
    def channels_in_order(self) -> bool:
        """True when memory holds the channels in the C order of the channel shape (one channel axis,
        or several in increasing order): then flattening a parameter needs no transpose."""
        return [a for a in self.perm if a in self.axes] == list(self.axes)

    def flat_channels(self, p: np.ndarray) -> np.ndarray:
        """A parameter of the channel shape, flattened in the order the channels have in memory."""
        if self.channels_in_order:
            return p.reshape(self.channels)
        order = [self.axes.index(a) for a in self.perm if a in self.axes]
        return p.reshape(self.channel_shape).transpose(order).reshape(self.channels)

    def unflat_channels(self, p: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`flat_channels`: a flat per-channel array back to the channel shape."""
        in_memory = [a for a in self.perm if a in self.axes]
        shaped = p.reshape([self.shape[a] for a in in_memory])
        return shaped.transpose([in_memory.index(a) for a in self.axes])


def plan(x: np.ndarray, axes: tuple[int, ...]) -> Layout:
    """The layout that views ``x`` (normalized over channel ``axes``) as (outer, C, inner)."""
    perm = _memory_order(x, axes)
    positions = [perm.index(a) for a in axes]
    if max(positions) - min(positions) != len(axes) - 1:
        perm = tuple(a for a in range(x.ndim) if a not in axes) + axes
        positions = [perm.index(a) for a in axes]
    first, last = min(positions), max(positions)
    sizes = [x.shape[p] for p in perm]
    return Layout(
        shape=x.shape,
        axes=axes,
        perm=perm,
        outer=math.prod(sizes[:first]),
        channels=math.prod(sizes[first : last + 1]),
        inner=math.prod(sizes[last + 1 :]),
    )


def _memory_order(x: np.ndarray, axes: tuple[int, ...]) -> tuple[int, ...]:
    """Axes by decreasing stride; size-1 batch axes first (their stride means nothing)."""
    loose = [a for a in range(x.ndim) if x.shape[a] == 1 and a not in axes]
    rest = [a for a in range(x.ndim) if a not in loose]
    rest.sort(key=lambda a: (-abs(x.strides[a]), a))
    return tuple(loose + rest)
