"""An observed output matched to the dialects and epsilons that reproduce it.

:func:`infer_eps` estimates the eps an observation implies when none is given; :func:`match` runs every
dialect at each candidate eps and ranks them, best first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from . import _rsqrt, dialects
from ._dialect_runs import nominal_eps, resolved, run, run_fields
from ._errors import BatchNormError
from ._problem import Problem
from .compare import ulps
from .dialects import Dialect

__all__ = ["COMMON_EPS", "RSQRT_STAND_IN_ULPS", "Match", "implied_eps", "infer_eps", "match"]

#: The tolerance for a dialect whose approximate rsqrt cannot run here (1/sqrt stands in; see _rsqrt).
RSQRT_STAND_IN_ULPS = 3

#: Epsilons people use; with the dialects' defaults and the data's own estimate, the candidates tried.
COMMON_EPS = (0.0, 1e-3, 1e-5, 1.001e-5, 1e-4, 1e-6, 1e-8, 1e-12, 1e-2, 1e-1)


@dataclass(frozen=True)
class Match:
    """A dialect and the eps with which it comes closest to the observation.

    ``exact``: bit-identical. ``reproduced``: within the tolerance (0 ulps, or
    :data:`RSQRT_STAND_IN_ULPS` where the framework's approximate rsqrt cannot run on this CPU).
    ``also_eps``: other eps values that give the same bits. ``eps_source`` as in
    :class:`batchnorm.explain.DialectResult`."""

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


def infer_eps(p: Problem) -> tuple[float, float] | None:
    """The eps the observation implies and the window within which its precision cannot tell."""
    assert p.observed is not None
    if p.training:
        flat = p.by_channel().astype(np.float64)
        mean, var = flat.mean(axis=1), flat.var(axis=1)
    else:
        mean, var = p.mean, p.var
    m, v, g, b = (p.per_element(a) for a in (mean, var, p.gamma, p.beta))
    y = p.observed.astype(np.float64)
    return implied_eps(p.x.astype(np.float64), m, v, g, b, y, p.observed_where, p.x.dtype)


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
    r = resolved(d, p)
    stand_in = r.approximate_rsqrt and not _rsqrt.reproduced(r.rsqrt)
    tolerance = max(p.tolerance, RSQRT_STAND_IN_ULPS if stand_in else 0)
    tried: dict[float, Match] = {}
    for eps, source in _candidates(d, p, inferred):
        if r.effective_eps(eps) not in tried:
            try:
                tried[r.effective_eps(eps)] = _scored(d, p, eps, source, tolerance)
            except BatchNormError:
                continue
    if not tried:
        return None
    best = min(tried.values(), key=lambda m: (m.max_ulp, m.mean_ulp))
    also = [m.effective_eps for m in tried.values() if m is not best and m.exact and best.exact]
    return dataclasses.replace(best, also_eps=also)


def _scored(d: Dialect, p: Problem, eps: float, source: str, tolerance: int) -> Match:
    """The dialect at ``eps`` against the observation; raises BatchNormError where it refuses."""
    assert p.observed is not None
    u = ulps(run(d, p, eps), p.observed)[p.observed_where]
    return Match(
        **run_fields(d, p, eps, source),
        max_ulp=int(u.max()),
        mean_ulp=float(u.mean()),
        mismatched=int((u > 0).sum()),
        exact=int(u.max()) == 0,
        reproduced=int(u.max()) <= tolerance,
    )
