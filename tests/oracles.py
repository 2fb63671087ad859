"""Oracles the tests compare against: extended-precision batch normalization and ulp distances."""

from __future__ import annotations

import ml_dtypes
import numpy as np

LONG = np.longdouble


def channel_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[a] for a in axes)


def broadcast(p: np.ndarray, ndim: int, axes: tuple[int, ...]) -> np.ndarray:
    """A channel-shaped parameter reshaped to broadcast against an input of rank ndim."""
    shape = [1] * ndim
    for a, n in zip(axes, p.shape, strict=True):
        shape[a] = n
    return p.reshape(shape)


def reduce_axes(ndim: int, axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(a for a in range(ndim) if a not in axes)


def textbook(x, mean, var, gamma, beta, eps, axes) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * gamma + beta in extended precision (x87 long double)."""
    nd = x.ndim
    b = lambda p: broadcast(np.asarray(p).astype(LONG), nd, axes)  # noqa: E731
    return (x.astype(LONG) - b(mean)) / np.sqrt(b(var) + LONG(eps)) * b(gamma) + b(beta)


def batch_moments(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance per channel, two-pass in long double."""
    red = reduce_axes(x.ndim, axes)
    xl = x.astype(LONG)
    mean = xl.mean(axis=red, keepdims=True)
    var = ((xl - mean) ** 2).mean(axis=red, keepdims=True)
    return mean.reshape(channel_shape(x.shape, axes)), var.reshape(channel_shape(x.shape, axes))


def ulp(value: np.ndarray, dtype) -> np.ndarray:
    """The spacing of ``dtype`` at each |value| (its smallest subnormal spacing near zero)."""
    info = ml_dtypes.finfo(dtype) if np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16) else np.finfo(dtype)
    v = np.abs(np.asarray(value, dtype=np.float64))
    exponent = np.floor(np.log2(np.maximum(v, float(info.tiny))))
    return np.exp2(exponent) * float(info.eps)


def ulp_distance(got: np.ndarray, want: np.ndarray, dtype) -> np.ndarray:
    """|got - want| in units of ``dtype``'s spacing at ``want`` (inf/NaN must agree exactly)."""
    g = np.asarray(got).astype(np.float64)
    w = np.asarray(want).astype(np.float64)
    same = (g == w) | (np.isnan(g) & np.isnan(w))
    with np.errstate(invalid="ignore"):
        dist = np.abs(g - w) / ulp(w, dtype)
    return np.where(same, 0.0, dist)
