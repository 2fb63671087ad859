"""Outputs compared: two arrays (``batchnorm compare``), and every dialect against an observation.

:func:`compare` compares two arrays as a numerics engineer would (differences, ulps, the tolerances
that would pass), modelled on polygraphy's output comparison. ``b`` is the reference: relative
differences divide by ``|b|``, and an element passes when ``|a - b| <= atol + rtol * |b|`` (NumPy's
``allclose`` rule). NaN equals NaN; a NaN on one side only fails. Ulps are counted at the narrower of
the two dtypes, after rounding both arrays to it once.

:func:`run` computes a dialect's output for an explanation's problem, and :func:`match` finds, for an
observed output, the dialects and epsilons that reproduce it (:func:`infer_eps` when no eps is given).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import dialects
from ._errors import BatchNormError
from ._numbers import ordered
from ._rounding import round_once
from .dialects import Dialect
from .functional import normalize, normalize_batch

if TYPE_CHECKING:
    from .explain import Problem

__all__ = [
    "Comparison",
    "Match",
    "compare",
    "implied_eps",
    "infer_eps",
    "match",
    "nominal_eps",
    "ordering",
    "resolved",
    "run",
    "signed_ulps",
    "ulp_distance",
    "ulp_histogram",
    "ulps",
]


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare`. Metrics are None when the shapes differ."""

    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    atol: float
    rtol: float
    max_ulp_allowed: int | None
    passed: bool
    ulp_dtype: str | None = None
    count: int = 0
    failing: int = 0
    nan_mismatch: int = 0
    max_abs: float | None = None
    mean_abs: float | None = None
    max_rel: float | None = None
    mean_rel: float | None = None
    max_ulp: int | None = None
    atol_needed: float | None = None
    rtol_needed: float | None = None
    worst_index: tuple[int, ...] | None = None
    worst_a: float | None = None
    worst_b: float | None = None
    histogram: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def signed_ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b in ulps of their common dtype, elementwise, as int64 (NaN positions are meaningless)."""
    difference = ordered(a) - ordered(b)
    return difference if difference.dtype == np.int64 else difference.view(np.int64)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in ulps of their common dtype, elementwise, as int64 (NaN positions are meaningless)."""
    return np.abs(signed_ulps(a, b))


def ulp_histogram(ulps: np.ndarray) -> list[tuple[str, int]]:
    """Counts in the buckets 0, 1, 2, 3-4, 5-8, 9-16, ... up to the largest one used."""
    if ulps.size == 0:
        return []
    top = int(ulps.max())
    buckets = [(0, 0), (1, 1)]
    hi = 2
    while buckets[-1][1] < top:
        buckets.append((buckets[-1][1] + 1, hi))
        hi *= 2
    return [
        (str(lo) if lo == hi else f"{lo}-{hi}", int(((ulps >= lo) & (ulps <= hi)).sum()))
        for lo, hi in buckets
    ]


def _narrower(a: np.dtype, b: np.dtype) -> np.dtype:
    if a.itemsize != b.itemsize:
        return a if a.itemsize < b.itemsize else b
    return a if np.finfo(a).eps >= np.finfo(b).eps else b


def compare(
    a: np.ndarray, b: np.ndarray, *, atol: float = 1e-5, rtol: float = 1e-5, max_ulp: int | None = None
) -> Comparison:
    """Compare ``a`` with the reference ``b`` (same shape; dtypes may differ)."""
    a, b = np.asarray(a), np.asarray(b)
    head = dict(
        shape_a=a.shape,
        shape_b=b.shape,
        dtype_a=str(a.dtype),
        dtype_b=str(b.dtype),
        atol=atol,
        rtol=rtol,
        max_ulp_allowed=max_ulp,
    )
    if a.shape != b.shape:
        note = f"shapes differ: {a.shape} vs {b.shape}; nothing else was compared"
        return Comparison(**head, passed=False, notes=[note])  # type: ignore[arg-type]
    notes = []
    ulp_dtype = _narrower(a.dtype, b.dtype)
    if a.dtype != b.dtype:
        notes.append(f"dtypes differ ({a.dtype} vs {b.dtype}): differences in float64, ulps in {ulp_dtype}")
    wa, wb = a.astype(np.float64), b.astype(np.float64)
    nan_a, nan_b = np.isnan(wa), np.isnan(wb)
    both = nan_a & nan_b
    nan_mismatch = int((nan_a ^ nan_b).sum())
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        diff = np.where(both | (wa == wb), 0.0, np.abs(wa - wb))
        rel = np.where(diff == 0, 0.0, diff / np.abs(wb))
        ok = ((diff <= atol + rtol * np.abs(wb)) | both) & ~(nan_a ^ nan_b)
    ulps = ulp_distance(round_once(wa, ulp_dtype), round_once(wb, ulp_dtype))
    ulps = np.where(both, 0, np.where(nan_a | nan_b, np.iinfo(np.int64).max, ulps))
    counted = ~(nan_a | nan_b)
    size = max(int(counted.sum()), 1)
    worst = (
        np.unravel_index(int(np.argmax(np.where(np.isnan(diff), np.inf, diff))), a.shape) if a.size else None
    )
    max_ulp_seen = int(ulps[counted].max()) if counted.any() else 0
    passed = bool(ok.all()) and (max_ulp is None or max_ulp_seen <= max_ulp)
    if nan_mismatch:
        notes.append(f"{nan_mismatch} element(s) are NaN on one side only")
    return Comparison(
        **head,  # type: ignore[arg-type]
        passed=passed,
        ulp_dtype=str(ulp_dtype),
        count=int(a.size),
        failing=int((~ok).sum()),
        nan_mismatch=nan_mismatch,
        max_abs=float(diff[counted].max()) if counted.any() else 0.0,
        mean_abs=float(diff[counted].sum() / size),
        max_rel=float(rel[counted].max()) if counted.any() else 0.0,
        mean_rel=float(rel[counted].sum() / size),
        max_ulp=max_ulp_seen,
        atol_needed=float(diff[counted].max()) if counted.any() else 0.0,
        rtol_needed=float(rel[counted].max()) if counted.any() else 0.0,
        worst_index=None if worst is None else tuple(int(i) for i in worst),
        worst_a=None if worst is None else float(wa[worst]),
        worst_b=None if worst is None else float(wb[worst]),
        histogram=ulp_histogram(ulps[counted]),
        notes=notes,
    )


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise ulp distance at ``b``'s dtype (``a`` rounded to it once); NaN against NaN is 0, NaN
    against a number is 2**31 - 1."""
    a = np.asarray(a)
    if a.dtype != b.dtype:
        a = round_once(a.astype(np.float64), b.dtype)
    nan_a, nan_b = np.isnan(a.astype(np.float64)), np.isnan(b.astype(np.float64))
    return np.where(nan_a & nan_b, 0, np.where(nan_a | nan_b, np.iinfo(np.int32).max, ulp_distance(a, b)))


def implied_eps(
    x: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    g: np.ndarray,
    b: np.ndarray,
    y: np.ndarray,
    keep: np.ndarray,
    dtype: np.dtype,
) -> tuple[float, float] | None:
    """The eps that observed ``y`` implies, and the window in which ``y``'s precision cannot tell eps
    values apart.

    ``y = (x - m) / sqrt(v + e) * g + b`` solved for ``e`` at every element (float64, statistics and
    parameters broadcast against ``x``); the median of those estimates. Elements where ``y == b`` or
    ``x == m`` say nothing about ``e`` and are left out; None when no element is left.
    """
    keep = keep & (y != b) & (x != m) & np.isfinite(y)
    if not keep.any():
        return None
    with np.errstate(all="ignore"):
        est = (((x - m) * g / (y - b)) ** 2 - v)[keep]
    total = np.broadcast_to(v, x.shape)[keep]
    estimate = float(np.median(est))
    spread = float(np.median(np.abs(est - estimate)))
    resolution = 32 * float(np.finfo(dtype).eps) * (float(np.median(total)) + max(estimate, 0.0))
    return estimate, max(8 * spread, resolution)


# -- dialect outputs, as the explanation compares them ------------------------------------------


def resolved(d: Dialect, p: Problem) -> Dialect:
    """The dialect as it runs on this input (tf-keras: its fused or unfused path)."""
    return d.for_input(p.x.ndim, p.axes)


def nominal_eps(d: Dialect, eps: float) -> tuple[float, str | None]:
    """The eps a dialect adds, as a decimal (its floor applied), and "floor" when the floor raised it."""
    if d.eps_floor and eps < d.eps_floor:
        return d.eps_floor, "floor"
    return eps, None


def run(d: Dialect, p: Problem, eps: float | None) -> np.ndarray:
    """The dialect's output y for the problem at ``eps`` (None: the dialect's default)."""
    if p.training:
        return normalize_batch(p.x, p.gamma, p.beta, axis=p.axis, eps=eps, dialect=d).y
    return normalize(p.x, p.mean, p.var, p.gamma, p.beta, axis=p.axis, eps=eps, dialect=d)


_FORMS = {
    "centered": "(x-m)*s+b",
    "affine": "x*s+(b-m*s)",
    "fma": "fma(x,s,fma(-m,s,b))",
    "ratio": "g*(x-m)/sqrt(v+e)+b",
    "normalized_fma": "fma((x-m)*r,g,b)",
}
_ROOTS = {"correct": "1/sqrt(v+e)", "tensorflow": "tf.rsqrt(v+e)", "xla": "xla.rsqrt(v+e)"}


def ordering(d: Dialect) -> str:
    """The dialect's inference formula, in the order its float operations round."""
    if d.precision == "float64":
        return "(x-m)/sqrt(v+e)*g+b in float64, rounded once"
    kind = getattr(d, "rsqrt", "approximate" if d.approximate_rsqrt else "correct")
    root = _ROOTS.get(kind, f"{kind} rsqrt(v+e)")
    form = _FORMS.get(d.elementwise, d.elementwise)
    if d.elementwise == "ratio":
        return form
    if d.elementwise == "normalized_fma":
        return f"{form}, r={root}"
    scale = "g/sqrt(v+e)" if d.scale_form == "quotient" else f"({root})*g"
    return f"{form}, s={scale}"


@dataclass(frozen=True)
class Match:
    """A dialect and the eps with which it comes closest to the observation.

    ``exact``: bit-identical. ``reproduced``: within the tolerance (0 ulps, or 1 where the framework's
    rsqrt is an approximation emulated within an ulp). ``also_eps``: other eps values that give the
    same bits. ``eps_source`` as in :class:`batchnorm.explain.DialectResult`."""

    dialect: str
    framework: str
    effective_eps: float
    eps_added: float
    eps_source: str
    max_ulp: int
    mean_ulp: float
    mismatched: int
    exact: bool
    reproduced: bool
    ordering: str
    also_eps: list[float] = field(default_factory=list)


# -- matching an observation -----------------------------------------------------------------------------

#: Epsilons people use; with the dialects' defaults and the data's own estimate, the candidates tried.
COMMON_EPS = (0.0, 1e-3, 1e-5, 1.001e-5, 1e-4, 1e-6, 1e-8, 1e-12, 1e-2, 1e-1)


def _observed_mask(p: Problem) -> Any:
    return p.observed_mask if p.observed_mask is not None else ...


def infer_eps(p: Problem) -> tuple[float, float] | None:
    """The eps the observation implies and the window within which its precision cannot tell."""
    assert p.observed is not None
    if p.training:
        moved = np.moveaxis(p.x.astype(np.float64), p.axes, range(len(p.axes)))
        flat = moved.reshape(p.mean.size, -1)
        mean, var = flat.mean(axis=1), flat.var(axis=1)
    else:
        mean, var = p.mean, p.var
    m, v, g, b = (p.per_element(a) for a in (mean, var, p.gamma, p.beta))
    keep = np.ones(p.x.shape, bool) if p.observed_mask is None else p.observed_mask
    y = p.observed.astype(np.float64)
    return implied_eps(p.x.astype(np.float64), m, v, g, b, y, keep, p.x.dtype)


def match(p: Problem, inferred: tuple[float, float] | None) -> list[Match]:
    """Each dialect at its best eps, best first: reproduced, fewest ulps, eps given or the dialect's
    default before an inferred one, registration order."""
    rank = {"given": 0, "default": 0, "floor": 1, "inferred": 1}
    found = [(i, m) for i, n in enumerate(p.names) if (m := _best_eps(dialects.get(n), p, inferred))]
    found.sort(
        key=lambda im: (not im[1].reproduced, im[1].max_ulp, im[1].mean_ulp, rank[im[1].eps_source], im[0])
    )
    return [m for _, m in found]


def _candidates(d: Dialect, p: Problem, inferred: tuple[float, float] | None) -> list[tuple[float, str]]:
    if p.eps is not None:
        return [(e, "given") for e in p.eps]
    pool = [d.eps, *COMMON_EPS]
    if inferred is not None:
        estimate, window = inferred
        rounded = [float(f"{max(estimate, 0.0):.{k}g}") for k in (1, 2, 3, 4)]
        near = [e for e in pool + rounded if abs(nominal_eps(d, e)[0] - estimate) <= window]
        pool = near or [d.eps, *rounded]
    return [(e, "default" if e == d.eps else "inferred") for e in dict.fromkeys(pool)]


def _best_eps(d: Dialect, p: Problem, inferred: tuple[float, float] | None) -> Match | None:
    assert p.observed is not None
    r = resolved(d, p)
    tolerance = max(p.tolerance, 1 if r.approximate_rsqrt else 0)
    tried: dict[float, Match] = {}
    for eps, source in _candidates(d, p, inferred):
        if r.effective_eps(eps) in tried:
            continue
        try:
            u = ulps(run(d, p, eps), p.observed)[_observed_mask(p)]
        except BatchNormError:
            continue
        value, floored = nominal_eps(r, eps)
        tried[r.effective_eps(eps)] = Match(
            dialect=d.name,
            framework=r.framework,
            effective_eps=value,
            eps_added=r.effective_eps(eps),
            eps_source=floored or source,
            max_ulp=int(u.max()),
            mean_ulp=float(u.mean()),
            mismatched=int((u > 0).sum()),
            exact=int(u.max()) == 0,
            reproduced=int(u.max()) <= tolerance,
            ordering=ordering(r),
        )
    if not tried:
        return None
    best = min(tried.values(), key=lambda m: (m.max_ulp, m.mean_ulp))
    also = [m.effective_eps for m in tried.values() if m is not best and m.exact and best.exact]
    return dataclasses.replace(best, also_eps=also)
