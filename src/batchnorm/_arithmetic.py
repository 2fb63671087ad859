"""Per-channel coefficients of the inference map, in a dialect's own float arithmetic.

The elementwise work (see :mod:`batchnorm._kernels`) is one of four forms over per-channel arrays::

    centered: y = (x - shift) * scale + offset
    affine:   y = x * scale + offset                  offset = beta - mean * scale
    fma:      y = fma(x, scale, offset)               offset = fma(-mean, scale, beta)
    ratio:    y = (x - shift) * scale / divisor + offset     scale = gamma, divisor = sqrt(var + eps)
    normalized_fma: y = fma((x - shift) * scale, gain, offset)   scale = rsqrt(var + eps), gain = gamma

This module forms those arrays per channel (C values, negligible cost) exactly as the framework rounds
them: ``scale = (1 / sqrt(var + eps)) * gamma`` ("reciprocal") or ``gamma / sqrt(var + eps)``
("quotient"), every operation rounded in the compute dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _rsqrt
from ._dialect import Dialect, Elementwise

__all__ = ["Coefficients", "coefficients", "compute_dtype", "fma", "reciprocal_root"]


@dataclass(frozen=True)
class Coefficients:
    """The per-channel arrays of one elementwise form, all in ``dtype`` (flat, length C)."""

    form: Elementwise
    shift: np.ndarray
    scale: np.ndarray
    divisor: np.ndarray
    offset: np.ndarray
    gain: np.ndarray | None = None

    @property
    def dtype(self) -> np.dtype:
        return self.scale.dtype

    def reordered(self, order: Callable[[np.ndarray], np.ndarray]) -> Coefficients:
        """The same coefficients with every per-channel array passed through ``order``."""
        arrays: dict[str, Any] = {
            f.name: order(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
        return dataclasses.replace(self, **arrays)


def compute_dtype(dialect: Dialect, x_dtype: np.dtype) -> np.dtype:
    """float64 for the exact dialect and for float64 input; float32 (the frameworks' opmath) otherwise."""
    if dialect.precision == "float64" or np.dtype(x_dtype) == np.float64:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def fma(a: np.ndarray, b: np.ndarray, c: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """a * b + c rounded once to float32 (the product of two float32 is exact in float64).

    For float64 the product is rounded before the sum: numpy has no fused multiply-add, so float64 fma
    dialects are reproduced within an ulp rather than to the bit.
    """
    wide = a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)
    return wide.astype(dtype)


_APPROXIMATIONS = {"tensorflow": _rsqrt.rsqrt_tensorflow, "xla": _rsqrt.rsqrt_xla}


def reciprocal_root(dialect: Dialect, shifted_var: np.ndarray) -> np.ndarray:
    """rsqrt(var + eps) as the dialect's library computes it: TensorFlow's and XLA's float32
    approximations where the CPU lets :mod:`batchnorm._rsqrt` run them, else ``1 / sqrt``."""
    approximation = _APPROXIMATIONS.get(dialect.rsqrt)
    if approximation is not None and shifted_var.dtype == np.float32:
        try:
            return approximation(shifted_var)
        except _rsqrt.RsqrtUnavailable:
            pass
    with np.errstate(divide="ignore"):
        return shifted_var.dtype.type(1) / np.sqrt(shifted_var)


def coefficients(
    dialect: Dialect,
    mean: np.ndarray,
    var: np.ndarray,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    eps: float,
    dtype: np.dtype,
    *,
    inverse_root: np.ndarray | None = None,
) -> Coefficients:
    """The coefficients of ``dialect``'s inference map for flat per-channel statistics and parameters.

    The channels must come in the C order of the channel shape: TensorFlow's rsqrt depends on each
    value's position in the vector it is given. ``inverse_root``: 1 / sqrt(var + eps) as the caller has
    already formed it (a training step's saved value, see ``functional._saved_inverse_root``), used in
    place of the dialect's own reciprocal root.
    """
    m = mean.astype(dtype)
    g = np.ones_like(m) if gamma is None else gamma.astype(dtype)
    b = np.zeros_like(m) if beta is None else beta.astype(dtype)
    shifted = var.astype(dtype) + dtype.type(eps)
    with np.errstate(divide="ignore", invalid="ignore"):  # a negative E[x^2] - E[x]^2 gives NaN, as there
        root = np.sqrt(shifted)
        if dialect.scale_form == "quotient":
            s = g / root
        else:
            s = _inverse(dialect, shifted, inverse_root) * g
        form = dialect.elementwise
        if form == "affine":
            return Coefficients(form, m, s, root, b - m * s)
        if form == "fma":
            return Coefficients(form, m, s, root, fma(-m, s, b, dtype))
        if form == "ratio":
            return Coefficients(form, m, g, root, b)
        if form == "normalized_fma":
            return Coefficients(form, m, _inverse(dialect, shifted, inverse_root), root, b, gain=g)
        return Coefficients(form, m, s, root, b)


def _inverse(dialect: Dialect, shifted: np.ndarray, given: np.ndarray | None) -> np.ndarray:
    """rsqrt(var + eps): the value the caller formed, else the dialect's own (:func:`reciprocal_root`)."""
    return reciprocal_root(dialect, shifted) if given is None else given.astype(shifted.dtype)
