"""The backward pass as a framework's autodiff computes it: ``Dialect.gradient = "autodiff"``.

The closed form (``gradient="closed_form"``, :func:`batchnorm.functional.backward`) writes
``dx = g inv (dy - mean(dy) - xh mean(dy xh))`` in float64 from the batch statistics. Flax does not: its
dx is jax's reverse-mode autodiff of the forward graph it runs (flax/linen/normalization.py
``_compute_stats`` with ``use_fast_variance=True`` and ``_normalize``)::

    mean = S(x) / n                       mean2 = S(x * x) / n
    var  = max(0, mean2 - mean * mean)
    y    = (x - mean) * (rsqrt(var + eps) * g) + b

and the gradient reaches x through three paths: ``x - mean`` directly, E[x] (-2 mean / n per value)
and E[x^2] (2 x / n per value). At x = 1e4 + randn the last two are ~2e4 / n each and cancel, in
float32, to the O(1 / n) term the closed form computes directly: dx then carries the float32 rounding
of ~2e4 / n terms, which no float64 formula reproduces. This module runs the same operations, each
rounded in float32, in the order jax's transposed graph runs them eagerly (jax 0.10.2: one XLA program
per primitive, ``jax.vjp`` as tests/parity/run_flax.py takes it; the sequence read off
``jax.make_jaxpr`` of the vjp and the programs XLA compiled for it)::

    inv = rsqrt(var + eps)      s = inv * g                     (forward residuals, as y used them)
    dbeta  = S(dy)                                              reduce_sum
    t      = S(fl((x - mean) * dy))          dgamma = fl(inv * t)
    u      = fl(dy * s)                                         the cotangent of x - mean
    dvar   = fl(fl(t * g) * fl(-0.5 * fl(inv / (var + eps))))   d rsqrt(v) = -0.5 rsqrt(v) / v
    d2     = fl(dvar * slope)            slope = d max(0, o) / do: 1 (o > 0), 1/2 (o == 0), 0 (o < 0)
    d1     = fl(-S(u) + fl(-d2 * fl(2 mean)))                   the cotangent of E[x]
    r      = fl(1 / n)
    dx     = fl(fl(u + fl(d1 * r)) + fl(fl(d2 * r) * fl(2 x)))  float32 input
    dx     = h(u) + h(fl(fl(d1 * r) + fl(fl(d2 * r) * fl(2 x))))   half input: h() rounds to x's dtype,
                                                                 the last sum in x's dtype

``S`` is the per-channel float32 sum of the dialect's reduction (:mod:`batchnorm._reductions.xla` for
``reduction="xla"``: each reduce_sum is its own XLA program, summed by the same tree as the forward
statistics). The transposed means divide by n (eager ``div`` by a float32 scalar), which XLA turns
into the product by fl(1 / n), as in the forward mean (measured: every n from 1 to 299 and seven larger
ones give the product's bits, where a true division differs for all but 10 of them). rsqrt is the
dialect's (:func:`batchnorm._arithmetic.reciprocal_root`).
Without a scale, ``s = inv`` and ``fl(t * g)`` is ``t``. In inference (fixed statistics) only
``u`` reaches x: dx = h(u).

``mean`` and ``var`` are the forward's batch statistics (bit-exact from ``normalize_batch``). The clamp's
slope needs the unclamped ``o = mean2 - mean^2`` only where ``var == 0``; it is recomputed there. The
form applies to the fast variance (``variance`` "sum_of_squares" or "sum_of_squares_clamped") and to
float32 and half inputs; float64 inputs (JAX's x64 mode) and the two-pass variance, whose gradient does
not cancel, keep the closed form (the caller decides: :func:`applies`).

Speed: jax writes the product and u out before summing them; here XLA's tree forms those terms on the
way (:func:`batchnorm._reductions.xla._sums` with ``other``, and ``scales`` for S(u) beside S(dy): the
tiles of a reduce of a written-out array, the same bits), and dx is one fused float32 pass
(:mod:`batchnorm._gradient_kernels`), each operation rounded as above. Passes over x's size for a
float32 input: S(dy), S(u) and S(product) in one (:func:`batchnorm._reductions.xla.sums_with_product`;
the three reduces have the same tiles: each job sums its rows of dy, then of x and dy, dy's again from
cache), then dx (x and dy): four reads and one write, as the closed form. Half inputs also write u into
a float32 scratch of x's size, which dx = h(u) + h(...) adds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _reductions
from ._arithmetic import reciprocal_root
from ._dialect import Dialect

__all__ = ["applies", "autodiff"]

_F32 = np.float32


def applies(dialect: Dialect, x_dtype: np.dtype) -> bool:
    """True where ``dialect``'s backward follows its framework's autodiff (this module)."""
    return (
        dialect.gradient == "autodiff"
        and dialect.variance != "two_pass"
        and dialect.precision == "native"
        and np.dtype(x_dtype) != np.float64
    )


def autodiff(
    dialect: Dialect,
    dy3: np.ndarray,
    x3: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    gamma: np.ndarray | None,
    eps: float,
    *,
    training: bool,
    shape: tuple[int, ...],
    out3: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """dx into ``out3`` (x's dtype) and float32 (dgamma, dbeta), as the module docstring computes them.

    ``dy3``, ``x3``: (outer, C, inner) views; ``mean``, ``var``, ``gamma``: flat per channel (C,);
    ``eps`` the effective epsilon; ``shape`` the input's shape in memory order (for the reduction tree).
    """
    from . import _gradient_kernels as kernels  # numba: imported on first use
    from ._kernels.compiled import _chunks, _launch

    f = _F32
    outer, channels, inner = x3.shape
    n = outer * inner
    m = np.ascontiguousarray(mean, f)  # the kernels' per-channel arrays: contiguous float32
    v = np.asarray(var, f)
    xf = _flat32(x3)
    dyf = _flat32(dy3)
    direct = out3.dtype == f and out3.flags.c_contiguous  # dx written in place, u never written
    args = (channels, inner, _chunks(outer * channels, x3.size))

    def total(a: np.ndarray, **term: np.ndarray) -> np.ndarray:
        return _channel_sum(dialect, a.reshape(x3.shape), shape, **term)

    def written_u(s: np.ndarray) -> np.ndarray:  # u = fl(dy * s), into dx's own buffer where dx is float32
        u = out3.reshape(-1) if direct else np.empty(x3.size, f)
        _launch(kernels.scaled, dyf, s, u, *args)
        return u.reshape(x3.shape)

    with np.errstate(all="ignore"):
        shifted = v + f(eps)
        inv = reciprocal_root(dialect, shifted)
        s = np.ascontiguousarray(inv if gamma is None else inv * gamma.astype(f), f)
        if training:  # S(dy), S(u) and S(fl(fl(x - mean) * dy)): one pass over dy and x
            dbeta, u_sum, t = _three_sums(dialect, dyf, xf, x3.shape, shape, s, m)
        else:
            dbeta = total(dyf)
            t = total(xf, means=m, other=dyf)  # S(fl(fl(x - mean) * dy))
        dgamma = inv * t
        if not training:
            u3 = written_u(s)
            if not direct:
                out3[...] = u3
            return dgamma, dbeta
        tg = t if gamma is None else t * gamma.astype(f)
        d2 = (tg * (f(-0.5) * (inv / shifted))) * _clamp_slope(dialect, x3, v, shape)
        d1 = -u_sum + (-d2) * (f(2) * m)
        reciprocal = f(1) / f(n)
        c1 = np.ascontiguousarray(d1 * reciprocal, f)
        c2 = np.ascontiguousarray(d2 * reciprocal, f)
        if direct:  # fl(fl(u + c1) + fl(c2 * fl(2 x))), u formed from dy on the way
            _launch(kernels.input_gradient, xf, dyf, s, c1, c2, out3.reshape(-1), *args)
        else:  # each path's cotangent converted to x's dtype, then added there
            u3 = written_u(s)
            paths = np.empty(x3.size, f)
            _launch(kernels.paths, xf, c1, c2, paths, *args)
            np.add(u3.astype(out3.dtype), paths.reshape(x3.shape).astype(out3.dtype), out=out3)
    return dgamma, dbeta


def _flat32(a3: np.ndarray) -> np.ndarray:
    """The values of ``a3`` as a flat C-contiguous float32 array (no copy where it is one already)."""
    return np.ascontiguousarray(a3, dtype=_F32).reshape(-1)


def _channel_sum(
    dialect: Dialect,
    a3: np.ndarray,
    shape: tuple[int, ...],
    *,
    means: np.ndarray | None = None,
    other: np.ndarray | None = None,
    factors: np.ndarray | None = None,
) -> np.ndarray:
    """The per-channel float32 sum of the terms of the (outer, C, inner) float32 ``a3``: a3 itself,
    fl(fl(a3 - means) * other) (``other`` flat, a3's size) or fl(a3 * factors), as jax would write them
    out and sum them, by the dialect's reduction: XLA's tree for ``"xla"`` (the terms formed on the way);
    any other reduction: the float64 sum rounded once. One value per channel is returned as is (XLA's
    simplifier turns a reduce of size-1 dimensions into a reshape: -0 stays -0)."""
    from ._reductions import xla

    if _by_xla(dialect, a3):
        return _xla_sums(dialect, a3, shape, means, other=other, factors=factors)[0]
    terms = xla.written_terms(a3, means, other, factors)
    if a3.shape[0] * a3.shape[2] == 1:
        return terms.reshape(a3.shape[1]).astype(_F32)
    return terms.sum(axis=(0, 2), dtype=np.float64).astype(_F32)


def _three_sums(
    dialect: Dialect,
    dy: np.ndarray,
    x: np.ndarray,
    shape3: tuple[int, int, int],
    shape: tuple[int, ...],
    scales: np.ndarray,
    means: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S(dy), S(fl(dy * scales)), S(fl(fl(x - means) * dy))) per channel of the flat float32 ``dy`` and
    ``x`` (canonical shape ``shape3``) as :func:`_channel_sum` gives them: by XLA's tree one pass over dy
    and x (the three reduces have the same shape, so the same tiles)."""
    dy3, x3 = dy.reshape(shape3), x.reshape(shape3)
    if not _by_xla(dialect, dy3):
        return (
            _channel_sum(dialect, dy3, shape),
            _channel_sum(dialect, dy3, shape, factors=scales),
            _channel_sum(dialect, x3, shape, means=means, other=dy),
        )
    from ._reductions import xla

    start, stop, threads = _xla_layout(dialect, dy3, shape)
    sums, scaled, products = xla.sums_with_product(dy3, x3, shape, start, stop, threads, scales, means)
    return sums, scaled, products


def _by_xla(dialect: Dialect, a3: np.ndarray) -> bool:
    """Whether XLA's tree sums the (outer, C, inner) ``a3``: the dialect's reduction is XLA's and a
    channel has more than one value (else a reshape, see :func:`_channel_sum`)."""
    return dialect.reduction == "xla" and a3.shape[0] * a3.shape[2] > 1


def _xla_sums(
    dialect: Dialect, a3: np.ndarray, shape: tuple[int, ...], means: np.ndarray | None, **kinds: Any
) -> list[np.ndarray]:
    """:func:`batchnorm._reductions.xla._sums` of a3 with the dialect's pool size and the channel axes
    that ``shape`` (the input's, in memory order) gives."""
    from ._reductions import xla

    start, stop, threads = _xla_layout(dialect, a3, shape)
    return xla._sums(a3, shape, start, stop, means, threads, **kinds)


def _xla_layout(dialect: Dialect, a3: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The channel axes [start, stop) of ``shape`` (the input's, in memory order) and the pool size."""
    from ._reductions import xla

    start, stop = xla._channel_block(shape, a3.shape[0], a3.shape[1])
    threads = _reductions.process_cpus() if dialect.reduction_threads is None else dialect.reduction_threads
    return start, stop, threads


def _clamp_slope(dialect: Dialect, x3: np.ndarray, var: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """jax's derivative of max(0, o) at each channel's o = E[x^2] - E[x]^2: 1 where o > 0, 1/2 where
    o == 0 (jax splits a tie evenly), 0 where o < 0; 1 throughout for the unclamped variance."""
    slope = np.ones(var.shape, _F32)
    if dialect.variance != "sum_of_squares_clamped" or not (var == 0).any():
        return slope
    _, unclamped = _reductions.moments(
        dialect.reduction,
        x3,
        "sum_of_squares",
        np.dtype(_F32),
        shape=shape,
        threads=dialect.reduction_threads,
    )
    slope[var == 0] = np.where(unclamped[var == 0] == 0, _F32(0.5), _F32(0.0))
    return slope
