"""The textbook computation of one element, step by step: exact, and rounded at every step.

``y = (x - mean) / sqrt(var + eps) * gamma + beta``, each step's exact value (40-digit decimal arithmetic
on the float inputs) beside its value when every step is rounded to the compute dtype; then the exact
result rounded once to the output dtype, with its bits. In training the batch mean and (biased)
variance of the element's channel come first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

import numpy as np

from ._numbers import bits, decimal_text, format_eps, format_value
from ._problem import Problem

__all__ = ["Step", "element_steps", "textbook_steps"]


@dataclass(frozen=True)
class Step:
    """One step of the textbook formula for one element: its exact value (40-digit decimal arithmetic
    on the float inputs) and its value when every step is rounded to the compute dtype."""

    label: str
    formula: str
    exact: str
    rounded: str


def element_steps(p: Problem, eps: float, index: int) -> list[Step]:
    """The steps for the element at flat ``index`` of ``p.x``."""
    pos = np.unravel_index(index, p.x.shape)
    channel = tuple(int(pos[a]) for a in p.axes)
    at = lambda a: float(np.asarray(a).reshape(p.mean.shape)[channel])  # noqa: E731
    steps = []
    if p.training:
        values = p.by_channel()[np.ravel_multi_index(channel, p.channel_shape)]
        m, v = _batch_moments(values)
        steps = [
            Step("batch mean", "sum(x) / n", _q(m), "-"),
            Step("batch var", "sum((x-mean)^2) / n", _q(v), "-"),
        ]
    else:
        m, v = Fraction(at(p.mean)), Fraction(at(p.var))
    return steps + textbook_steps(
        float(p.x[pos]), m, v, eps, at(p.gamma), at(p.beta), p.compute_dtype, p.x.dtype
    )


def _batch_moments(values: np.ndarray) -> tuple[Fraction, Fraction]:
    """Mean and biased variance of one channel: exact rationals up to 4096 values, else two-pass with
    correctly rounded float64 sums (math.fsum)."""
    n = values.size
    if n <= 4096:
        exact = [Fraction(float(v)) for v in values]
        mean = sum(exact, Fraction(0)) / n
        return mean, sum(((a - mean) ** 2 for a in exact), Fraction(0)) / n
    wide = values.astype(np.float64)
    mean_f = math.fsum(wide) / n
    return Fraction(mean_f), Fraction(math.fsum((wide - mean_f) ** 2) / n)


def _q(q: Fraction) -> str:
    return decimal_text(_decimal(q))


def _decimal(q: Fraction) -> Decimal:
    return Decimal(q.numerator) / Decimal(q.denominator)


def textbook_steps(
    x: float, m: Fraction, v: Fraction, eps: float, g: float, b: float, dtype: np.dtype, out: np.dtype
) -> list[Step]:
    """``(x - m) / sqrt(v + eps) * g + b`` step by step; the last step rounds once to ``out``."""
    with localcontext() as ctx:
        ctx.prec = 40
        m_d, v_d = _decimal(m), _decimal(v)
        exact = _exact(Decimal(float(x)), m_d, v_d, Decimal(repr(float(eps))), g, b)
    rounded = _rounded([x, float(m), float(v), eps, g, b], dtype)
    fmt = lambda a: format_value(a, dtype)  # noqa: E731
    formulas = [
        ("x - mean", f"{fmt(x)} - {decimal_text(m_d, 10)}"),
        ("var + eps", f"{decimal_text(v_d, 10)} + {format_eps(eps)}"),
        ("sqrt(var + eps)", ""),
        ("(x - mean) / sqrt(var + eps)", ""),
        ("* gamma", f"* {fmt(g)}"),
        ("+ beta", f"+ {fmt(b)}"),
    ]
    steps = [Step(*lf, decimal_text(e), fmt(r)) for lf, e, r in zip(formulas, exact, rounded, strict=True)]
    y = exact[-1]
    once = float(np.asarray(float(y), np.float64).astype(out)) if y.is_finite() else float(y)
    return [*steps, Step(f"rounded once to {out}", "", format_value(once, out), bits(once, out))]


def _exact(x: Decimal, m: Decimal, v: Decimal, eps: Decimal, g: float, b: float) -> list[Decimal]:
    """The six steps in decimal arithmetic, at the caller's precision."""
    centered, total = x - m, v + eps
    root = total.sqrt()
    ratio = centered / root if root else Decimal("Infinity") * (1 if centered >= 0 else -1)
    scaled = ratio * Decimal(float(g))
    return [centered, total, root, ratio, scaled, scaled + Decimal(float(b))]


def _rounded(inputs: list[float], dtype: np.dtype) -> list[Any]:
    """The six steps with every operation rounded to ``dtype``."""
    with np.errstate(all="ignore"):
        x, m, v, e, g, b = (dtype.type(a) for a in inputs)
        centered, total = x - m, v + e
        ratio = centered / np.sqrt(total)
        return [centered, total, np.sqrt(total), ratio, ratio * g, ratio * g + b]
