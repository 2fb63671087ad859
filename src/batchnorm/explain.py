"""Why do my numbers differ? The explanation as data: steps, per-dialect results, attributions, matches.

:func:`explain` takes a :class:`Problem` (an input, its statistics and parameters, the epsilons to try,
optionally the numbers a user observed) and returns an :class:`Explanation`:

- ``scenarios``, one per epsilon: the textbook computation of one element step by step, every dialect's
  output (first and last element, effective eps, formula ordering, ulps against the textbook) and the
  ``attributions`` of each difference: epsilon (given, a dialect's default, a floor), float arithmetic
  ordering (in ulps), and in training the running-variance estimator and the momentum side.
- with ``observed``: ``matches``, the dialects that reproduce the observation with the effective eps that
  does, best first (``closest``: the others); without ``eps``, eps is inferred from the data.
- ``diagnosis``: the answer in a few plain sentences.

Nothing here prints; :mod:`batchnorm.cli` renders. ``Explanation.to_dict()`` is the ``--json`` document.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np

from . import _validate, dialects
from ._errors import BatchNormError
from ._numbers import Step, bits, decimal_text, format_value, parse, textbook_steps
from .compare import Match, infer_eps, match, nominal_eps, ordering, resolved, run, ulps
from .dialects import Dialect
from .functional import normalize_batch, update_running

__all__ = [
    "SEED_OUTPUTS",
    "Attribution",
    "DialectResult",
    "Explanation",
    "Match",
    "Problem",
    "Scenario",
    "Step",
    "explain",
    "ordering",
    "run",
    "seed_problem",
]

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
    def names(self) -> tuple[str, ...]:
        return self.dialects or dialects.names()

    def per_element(self, a: Any) -> np.ndarray:
        """A channel-shaped array as float64, shaped to broadcast against ``x``."""
        shape = [self.x.shape[i] if i in self.axes else 1 for i in range(self.x.ndim)]
        return np.asarray(a, np.float64).reshape(shape)


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


@dataclass(frozen=True)
class DialectResult:
    """One dialect's output. ``eps_source``: "given", "default" (the dialect's), "floor" (raised to the
    dialect's floor) or "inferred"; ``effective_eps`` is the eps added as a decimal, ``eps_added`` the
    float actually added (float32-stored where the framework stores it so). Ulps are elementwise against
    the textbook at the scenario's eps, split into the part eps explains and the rest (arithmetic);
    ``ulp_of_max`` is the largest difference in ulps of max |textbook y|."""

    dialect: str
    framework: str
    eps_source: str
    effective_eps: float
    eps_added: float
    ordering: str
    first: float | None = None
    last: float | None = None
    element: float | None = None
    max_ulp: int | None = None
    ulp_of_max: float | None = None
    ulp_eps: int | None = None
    ulp_arithmetic: int | None = None
    running_mean: float | None = None  # training: the stored moving statistics, first channel
    running_var: float | None = None
    refused: str | None = None


@dataclass(frozen=True)
class Attribution:
    """One cause of difference, the dialects it applies to, and its size in ulps (None where it is not
    an output difference, such as the stored running variance)."""

    kind: str  # "epsilon", "arithmetic", "running_variance", "momentum", "refused"
    cause: str
    dialects: list[str]
    max_ulp: int | None = None


@dataclass(frozen=True)
class Scenario:
    """The explanation at one eps: ``eps_source`` "given", "inferred" (from the observation) or
    "default" (eps None: each dialect its own, the textbook at 1e-5)."""

    eps: float | None
    eps_source: str
    reference_eps: float
    element_index: list[int]
    steps: list[Step]
    textbook: float
    textbook_bits: str
    results: list[DialectResult]
    attributions: list[Attribution]


@dataclass(frozen=True)
class Explanation:
    input: dict[str, Any]
    scenarios: list[Scenario]
    matches: list[Match]
    closest: list[Match]
    inferred_eps: float | None
    diagnosis: list[str]
    reproduced: bool | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def explain(problem: Problem) -> Explanation:
    """Explain ``problem``; raises BatchNormError when the input itself is invalid."""
    _check(problem)
    inferred, ranked = None, []
    if problem.observed is not None:
        inferred = infer_eps(problem)
        ranked = match(problem, inferred)
    matches = [m for m in ranked if m.reproduced]
    closest = [m for m in ranked if not m.reproduced]
    if problem.eps is not None:
        scenarios = [_scenario(problem, e, "given") for e in problem.eps]
    elif ranked:  # eps inferred from the observation: explain at the best match's
        scenarios = [_scenario(problem, ranked[0].effective_eps, "inferred")]
    else:
        scenarios = [_scenario(problem, None, "default")]
    lines = _diagnose(problem, scenarios, matches, closest, inferred)
    reproduced = None if problem.observed is None else bool(matches)
    estimate = None if inferred is None else inferred[0]
    return Explanation(_summary(problem), scenarios, matches, closest, estimate, lines, reproduced)


def _check(p: Problem) -> None:
    run(dialects.get("exact"), p, 1e-3)  # raises BatchNormError for bad shapes, dtypes, axes
    if p.observed is not None and p.observed.shape != p.x.shape:
        raise BatchNormError(
            f"--observed must hold as many values as x ({p.x.size}); got {p.observed.size}. "
            "Paste the whole output, or elide its middle with ..."
        )
    if p.element is not None and not 0 <= p.element < p.x.size:
        raise BatchNormError(
            f"--element must lie in [0, {p.x.size - 1}] (a flat index into x); got {p.element}. "
            "Pass e.g. --element 0"
        )


def _summary(p: Problem) -> dict[str, Any]:
    return {
        "shape": list(p.x.shape),
        "dtype": str(p.x.dtype),
        "axis": list(p.axes),
        "channels": int(p.mean.size),
        "training": p.training,
        "momentum": p.momentum,
        "eps": None if p.eps is None else list(p.eps),
        "dialects": list(p.names),
        "observed": p.observed is not None,
        "seed": p.seed,
    }


# -- one scenario (one eps) ------------------------------------------------------------------------------


def _scenario(p: Problem, eps: float | None, source: str) -> Scenario:
    exact = dialects.get("exact")
    ref_eps = exact.eps if eps is None else eps
    ref = run(exact, p, ref_eps)
    index = p.x.size - 1 if p.element is None else p.element
    results = [_result(dialects.get(n), p, eps, source, ref, index) for n in p.names]
    value = float(ref.ravel()[index])
    return Scenario(
        eps=eps,
        eps_source=source,
        reference_eps=ref_eps,
        element_index=[int(i) for i in np.unravel_index(index, p.x.shape)],
        steps=_steps(p, ref_eps, index),
        textbook=value,
        textbook_bits=bits(value, ref.dtype),
        results=results,
        attributions=_attribute(p, results),
    )


def _result(
    d: Dialect, p: Problem, eps: float | None, source: str, ref: np.ndarray, index: int
) -> DialectResult:
    r = resolved(d, p)
    given = r.eps if eps is None else eps
    value, floored = nominal_eps(r, given)
    head: dict[str, Any] = dict(
        dialect=d.name,
        framework=r.framework,
        eps_source=floored or source,
        effective_eps=value,
        eps_added=r.effective_eps(given),
        ordering=ordering(r),
    )
    try:
        y = run(d, p, eps)
        running = _running(d, p, eps) if p.training else (None, None)
    except BatchNormError as err:
        return DialectResult(**head, refused=str(err))
    at_eps = run(dialects.get("exact"), p, r.effective_eps(given))
    top = np.abs(ref.astype(np.float64)).max()
    unit = float(np.spacing(top.astype(ref.dtype))) if top > 0 else 1.0
    with np.errstate(invalid="ignore"):
        diff = np.abs(y.astype(np.float64) - ref.astype(np.float64))
    flat = y.ravel()
    return DialectResult(
        **head,
        first=float(flat[0]),
        last=float(flat[-1]),
        element=float(flat[index]),
        max_ulp=int(ulps(y, ref).max()),
        ulp_of_max=float(np.max(diff, initial=0.0, where=~np.isnan(diff))) / unit,
        ulp_eps=int(ulps(at_eps, ref).max()),
        ulp_arithmetic=int(ulps(y, at_eps).max()),
        running_mean=running[0],
        running_var=running[1],
    )


def _running(d: Dialect, p: Problem, eps: float | None) -> tuple[float, float]:
    batch = normalize_batch(p.x, p.gamma, p.beta, axis=p.axis, eps=eps, dialect=d)
    m, v = update_running(p.mean, p.var, batch, momentum=p.momentum, dialect=d)
    return float(m.ravel()[0]), float(v.ravel()[0])


def _steps(p: Problem, eps: float, index: int) -> list[Step]:
    pos = np.unravel_index(index, p.x.shape)
    channel = tuple(int(pos[a]) for a in p.axes)
    at = lambda a: float(np.asarray(a).reshape(p.mean.shape)[channel])  # noqa: E731
    steps = []
    if p.training:
        m, v = _batch_moments(np.moveaxis(p.x, p.axes, range(len(p.axes)))[channel].ravel())
        steps = [
            Step("batch mean", "sum(x) / n", _q(m), "-"),
            Step("batch var", "sum((x-mean)^2) / n", _q(v), "-"),
        ]
    else:
        m, v = Fraction(at(p.mean)), Fraction(at(p.var))
    dt = np.dtype(np.float64) if p.x.dtype == np.float64 else np.dtype(np.float32)
    return steps + textbook_steps(float(p.x[pos]), m, v, eps, at(p.gamma), at(p.beta), dt, p.x.dtype)


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
    return decimal_text(Decimal(q.numerator) / Decimal(q.denominator))


# -- attribution -----------------------------------------------------------------------------------------


def _attribute(p: Problem, results: list[DialectResult]) -> list[Attribution]:
    """Each result's differences by cause; dialects sharing a cause and a size are grouped."""
    groups: dict[tuple[str, str, int | None], list[str]] = {}
    for res in results:
        for kind, cause, size in _causes(p, res):
            groups.setdefault((kind, cause, size), []).append(res.dialect)
    return [Attribution(kind, cause, names, size) for (kind, cause, size), names in groups.items()]


def _causes(p: Problem, res: DialectResult) -> list[tuple[str, str, int | None]]:
    if res.refused is not None:
        return [("refused", res.refused, None)]
    d = resolved(dialects.get(res.dialect), p)
    e = _e(res.effective_eps)
    eps = {
        "given": f"eps {e} as given",
        "inferred": f"eps {e}, inferred from the observed numbers",
        "default": f"eps not given: the dialect's default, {e}",
        "floor": f"eps raised to the floor {e} (TF <= 2.11 fused_batch_norm's min_epsilon)",
    }[res.eps_source]
    if res.eps_added != res.effective_eps:
        eps += ", stored as float32"
    arithmetic = ordering(d) if d.precision == "float64" else f"{ordering(d)} in {_compute(p)}"
    if p.training and d.variance != "two_pass":
        arithmetic += "; batch variance E[x^2]-E[x]^2" + (" clamped at 0" if "clamped" in d.variance else "")
    if d.approximate_rsqrt:
        arithmetic += f" ({getattr(d, 'rsqrt', 'an approximate')} rsqrt, emulated within 1 ulp)"
    causes = [("epsilon", eps, res.ulp_eps)]
    if d.name != "exact":  # the reference has no arithmetic of its own to attribute
        causes.append(("arithmetic", arithmetic, res.ulp_arithmetic))
    if p.training:
        est = "unbiased (x n/(n-1))" if d.running_variance == "unbiased" else "biased (/ n)"
        causes.append(("running_variance", f"the moving variance stores the {est} batch variance", None))
        momentum = d.momentum if p.momentum is None else p.momentum
        causes.append(("momentum", f"momentum {momentum:g}: {d.momentum_rule}", None))
    return causes


def _compute(p: Problem) -> str:
    return "float64" if p.x.dtype == np.float64 else "float32"


def _e(v: float) -> str:
    return format_value(v, np.float64)


# -- the diagnosis, in plain words ---------------------------------------------------------------------


def _diagnose(
    p: Problem,
    scenarios: list[Scenario],
    matches: list[Match],
    closest: list[Match],
    inferred: tuple[float, float] | None,
) -> list[str]:
    if p.observed is None:
        lines = [line for s in scenarios for line in _scenario_lines(p, s)]
        return lines + (_seed_lines(p) if p.seed and not p.training else [])
    if matches:
        return _reproduced_lines(p, matches)
    lines = [f"Nothing reproduces the observed numbers (tolerance {p.tolerance} ulp)."]
    if closest:
        c = closest[0]
        lines.append(
            f"Closest: {c.dialect} with eps = {_e(c.effective_eps)}: {c.mismatched} of "
            f"{_count(p)} values differ, by up to {c.max_ulp} ulps."
        )
    if inferred is not None:
        estimate, window = inferred
        if estimate < -window:
            lines.append(
                "The observed values are larger than the textbook's even with eps = 0: "
                "the statistics, gamma or beta differ from those given."
            )
        else:
            asked = "" if p.eps is None else f"; was eps = {', '.join(map(_e, p.eps))} really used?"
            lines.append(f"The data imply eps = {estimate:.4g} (+- {window:.1g}){asked}")
    return lines


def _reproduced_lines(p: Problem, matches: list[Match]) -> list[str]:
    best = matches[0]
    same = [m.dialect for m in matches if m.exact and m.eps_added == best.eps_added]
    near = [f"{m.dialect} ({m.max_ulp} ulp)" for m in matches if not m.exact]
    lines = (
        [f"Reproduced to the bit by {', '.join(same)} with eps = {_e(best.effective_eps)}."] if same else []
    )
    if near:
        lines.append(f"Within the dialect's tolerance: {', '.join(near)}.")
    lines.append(_eps_story(p, best))
    assert p.observed is not None
    textbook = run(dialects.get("exact"), p, best.eps_added)
    rest = int(ulps(p.observed, textbook)[... if p.observed_mask is None else p.observed_mask].max())
    if rest:
        lines.append(
            f"The textbook at that eps, rounded once, differs by {rest} ulp: float rounding in the "
            f"order {best.dialect} computes, {best.ordering}."
        )
    else:
        lines.append("The textbook at that eps, rounded once, gives the same bits.")
    if best.also_eps:
        lines.append(
            f"These numbers cannot tell eps = {_e(best.effective_eps)} from "
            f"{', '.join(map(_e, best.also_eps))}: both give the same bits."
        )
    return lines


def _eps_story(p: Problem, best: Match) -> str:
    e = _e(best.effective_eps)
    if best.eps_source == "floor":
        asked = ", ".join(map(_e, p.eps)) if p.eps is not None else "less"
        return (
            f"eps = {asked} was asked for, but {best.dialect} adds {e}: TF <= 2.11's fused batch norm "
            "never adds less (min_epsilon, removed in TF 2.12; tensorflow/tensorflow#37768). "
            + _scale_note(p, best.effective_eps)
        )
    if best.effective_eps == 0:
        return "No eps was added: y = (x - mean) / sqrt(var) * gamma + beta."
    owners = [n for n in dialects.names() if dialects.get(n).eps == best.effective_eps]
    whose = f" (the default of {', '.join(owners)})" if owners else ""
    how = "as given" if best.eps_source == "given" else f"inferred from the data{whose}"
    return f"eps = {e}, {how}, is added to the variance before the square root. " + _scale_note(
        p, best.effective_eps
    )


def _scale_note(p: Problem, eps: float) -> str:
    v = float(p.var.ravel()[0])
    if p.training or p.var.size != 1 or v <= 0:
        return "It scales each channel by sqrt(var / (var + eps))."
    factor = format_value((v / (v + eps)) ** 0.5)
    return f"With var = {format_value(v)} it multiplies every value by sqrt(var / (var + eps)) = {factor}."


def _scenario_lines(p: Problem, s: Scenario) -> list[str]:
    head = "eps not given (each dialect's default)" if s.eps is None else f"eps = {_e(s.eps)}"
    where = ", ".join(map(str, s.element_index))
    parts = [f"{head}: the textbook gives {format_value(s.textbook, p.x.dtype)} for x[{where}]."]
    for a in s.attributions:
        if a.kind == "epsilon" and a.max_ulp:
            parts.append(f"Because of eps, {_who(a.dialects)} by up to {_ulps(a.max_ulp)}: {a.cause}.")
        elif a.kind == "refused":
            parts.append(f"Refused by {', '.join(a.dialects)}: {a.cause.rstrip('.')}.")
    worst = max((a.max_ulp or 0 for a in s.attributions if a.kind == "arithmetic"), default=0)
    parts.append(f"Float arithmetic order accounts for at most {_ulps(worst)}.")
    if p.training:
        parts.append(_moving_line(p, s))
    return [" ".join(parts)]


def _moving_line(p: Problem, s: Scenario) -> str:
    groups: dict[tuple[float, str], list[str]] = {}
    for r in s.results:
        if r.running_var is not None:
            d = resolved(dialects.get(r.dialect), p)
            momentum = d.momentum if p.momentum is None else p.momentum
            how = f"{d.running_variance}, momentum {momentum:g} weighs the {d.momentum_side} value"
            groups.setdefault((r.running_var, how.replace("new value", "new batch")), []).append(r.dialect)
    start = format_value(float(p.var.ravel()[0]), p.x.dtype)
    each = "; ".join(
        f"{format_value(v, p.x.dtype)} ({', '.join(n)}: {how})" for (v, how), n in groups.items()
    )
    return f"The moving variance after this batch, from {start}: {each}."


def _who(names: list[str]) -> str:
    return f"{names[0]} differs" if len(names) == 1 else f"{', '.join(names)} differ"


def _ulps(n: int) -> str:
    return f"{n} ulp" if n == 1 else f"{n} ulps"


def _seed_lines(p: Problem) -> list[str]:
    """What the seed's printed Keras outputs are, in the light of the dialects."""
    lines = []
    for eps, text in SEED_OUTPUTS.items():
        printed = parse(text, p.x.dtype, "--observed").values.reshape(p.x.shape)
        who = [n for n in p.names if not ulps(run(dialects.get(n), p, eps), printed).max()]
        shown = f"{format_value(printed.ravel()[0])} ... {format_value(printed.ravel()[-1])}"
        lines.append(
            f"The seed's Keras (TF 2.11) printed {shown} at eps = {_e(eps)}; these dialects "
            f"give exactly those bits: {', '.join(who) or 'none'}."
        )
    lines.append(
        "So 0.9995004 = 1/sqrt(1 + 0.001) is Keras' default epsilon at work, not an error; and "
        "with eps = 0, TF <= 2.11 still adds 1.001e-05 (run with --observed to check a "
        "printed output)."
    )
    return lines


def _count(p: Problem) -> int:
    return int(p.observed_mask.sum()) if p.observed_mask is not None else int(p.x.size)
