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
The parts live in private modules: the problem (``_problem``), each dialect's run (``_dialect_runs``),
the textbook steps (``_textbook``), the matching of an observation (``_matching``) and the sentences
(``_diagnosis``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _rsqrt, dialects
from ._diagnosis import diagnose
from ._dialect_runs import ordering, resolved, run, run_fields, running, textbook
from ._errors import BatchNormError
from ._matching import Match, infer_eps, match
from ._numbers import bits, format_eps
from ._problem import SEED_OUTPUTS, Problem, observed_size_error, seed_problem
from ._textbook import Step, element_steps
from .compare import ulps
from .dialects import Dialect

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
    """The whole answer; ``input`` summarises the problem, ``reproduced`` is None without an observation."""

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
    scenarios = _scenarios(problem, ranked)
    lines = diagnose(problem, scenarios, matches, closest, inferred)
    reproduced = None if problem.observed is None else bool(matches)
    estimate = None if inferred is None else inferred[0]
    return Explanation(_summary(problem), scenarios, matches, closest, estimate, lines, reproduced)


def _check(p: Problem) -> None:
    textbook(p, 1e-3)  # raises BatchNormError for bad shapes, dtypes, axes
    if p.observed is not None and p.observed.shape != p.x.shape:
        raise observed_size_error(p.x.size, p.observed.size)
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


def _scenarios(p: Problem, ranked: list[Match]) -> list[Scenario]:
    """One scenario per eps given; else at the best match's eps (inferred); else at each default."""
    if p.eps is not None:
        return [_scenario(p, e, "given") for e in p.eps]
    if ranked:
        return [_scenario(p, ranked[0].effective_eps, "inferred")]
    return [_scenario(p, None, "default")]


def _scenario(p: Problem, eps: float | None, source: str) -> Scenario:
    ref_eps = dialects.get("exact").eps if eps is None else eps
    ref = textbook(p, ref_eps)
    index = p.x.size - 1 if p.element is None else p.element
    results = [_result(dialects.get(n), p, eps, source, ref, index) for n in p.names]
    value = float(ref.ravel()[index])
    return Scenario(
        eps=eps,
        eps_source=source,
        reference_eps=ref_eps,
        element_index=[int(i) for i in np.unravel_index(index, p.x.shape)],
        steps=element_steps(p, ref_eps, index),
        textbook=value,
        textbook_bits=bits(value, ref.dtype),
        results=results,
        attributions=_attribute(p, results),
    )


def _result(
    d: Dialect, p: Problem, eps: float | None, source: str, ref: np.ndarray, index: int
) -> DialectResult:
    given = resolved(d, p).eps if eps is None else eps
    fields = run_fields(d, p, given, source)
    try:
        y = run(d, p, eps)
        moving = running(d, p, eps) if p.training else (None, None)
    except BatchNormError as err:
        return DialectResult(**fields, refused=str(err))
    at_eps = textbook(p, fields["eps_added"])
    flat = y.ravel()
    return DialectResult(
        **fields,
        first=float(flat[0]),
        last=float(flat[-1]),
        element=float(flat[index]),
        max_ulp=int(ulps(y, ref).max()),
        ulp_of_max=_ulps_of_max(y, ref),
        ulp_eps=int(ulps(at_eps, ref).max()),
        ulp_arithmetic=int(ulps(y, at_eps).max()),
        running_mean=moving[0],
        running_var=moving[1],
    )


def _ulps_of_max(y: np.ndarray, ref: np.ndarray) -> float:
    """The largest |y - ref| in ulps of max |ref| (NaN differences left out)."""
    top = np.abs(ref.astype(np.float64)).max()
    unit = float(np.spacing(top.astype(ref.dtype))) if top > 0 else 1.0
    with np.errstate(invalid="ignore"):
        diff = np.abs(y.astype(np.float64) - ref.astype(np.float64))
    return float(np.max(diff, initial=0.0, where=~np.isnan(diff))) / unit


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
    causes = [("epsilon", _eps_cause(res), res.ulp_eps)]
    if d.name != "exact":  # the reference has no arithmetic of its own to attribute
        causes.append(("arithmetic", _arithmetic_cause(p, d), res.ulp_arithmetic))
    if p.training:
        est = "unbiased (x n/(n-1))" if d.running_variance == "unbiased" else "biased (/ n)"
        causes.append(("running_variance", f"the moving variance stores the {est} batch variance", None))
        causes.append(("momentum", f"momentum {p.momentum_for(d):g}: {d.momentum_rule}", None))
    return causes


def _eps_cause(res: DialectResult) -> str:
    e = format_eps(res.effective_eps)
    cause = {
        "given": f"eps {e} as given",
        "inferred": f"eps {e}, inferred from the observed numbers",
        "default": f"eps not given: the dialect's default, {e}",
        "floor": f"eps raised to the floor {e} (TF <= 2.11 fused_batch_norm's min_epsilon)",
    }[res.eps_source]
    return cause + (", stored as float32" if res.eps_added != res.effective_eps else "")


def _arithmetic_cause(p: Problem, d: Dialect) -> str:
    cause = ordering(d) if d.precision == "float64" else f"{ordering(d)} in {p.compute_dtype}"
    if p.training and d.variance != "two_pass":
        cause += "; batch variance E[x^2]-E[x]^2" + (" clamped at 0" if "clamped" in d.variance else "")
    if d.approximate_rsqrt:
        here = _rsqrt.reproduced(d.rsqrt)
        how = "reproduced bit for bit" if here else "not available here: 1/sqrt stands in"
        cause += f" ({d.rsqrt} rsqrt, {how})"
    return cause
