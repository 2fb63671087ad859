"""Each dialect run on an explanation's problem: its output, its moving statistics, and how it ran.

The outputs are the core's (:func:`batchnorm.normalize`, ``normalize_batch``, ``update_running``): an
explanation never re-implements a dialect's arithmetic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import dialects
from ._problem import Problem
from .dialects import Dialect
from .functional import normalize, normalize_batch, update_running

__all__ = ["nominal_eps", "ordering", "resolved", "run", "run_fields", "running", "textbook"]


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


def textbook(p: Problem, eps: float) -> np.ndarray:
    """The textbook's y at ``eps``: the exact dialect, computed in float64 and rounded once."""
    return run(dialects.get("exact"), p, eps)


def running(d: Dialect, p: Problem, eps: float | None) -> tuple[float, float]:
    """Training: the moving mean and variance the dialect stores after this batch, first channel."""
    batch = normalize_batch(p.x, p.gamma, p.beta, axis=p.axis, eps=eps, dialect=d)
    m, v = update_running(p.mean, p.var, batch, momentum=p.momentum, dialect=d)
    return float(m.ravel()[0]), float(v.ravel()[0])


def run_fields(d: Dialect, p: Problem, eps: float, source: str) -> dict[str, Any]:
    """Which dialect ran with which eps, as the fields that results and matches share: ``eps_source``
    is ``source``, or "floor" where the dialect's floor raised ``eps``."""
    r = resolved(d, p)
    value, floored = nominal_eps(r, eps)
    return dict(
        dialect=d.name,
        framework=r.framework,
        eps_source=floored or source,
        effective_eps=value,
        eps_added=r.effective_eps(eps),
        ordering=ordering(r),
    )


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
    root = _ROOTS.get(d.rsqrt, f"{d.rsqrt} rsqrt(v+e)")
    form = _FORMS.get(d.elementwise, d.elementwise)
    if d.elementwise == "ratio":
        return form
    if d.elementwise == "normalized_fma":
        return f"{form}, r={root}"
    scale = "g/sqrt(v+e)" if d.scale_form == "quotient" else f"({root})*g"
    return f"{form}, s={scale}"
