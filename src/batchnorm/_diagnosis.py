"""The answer to "why do my numbers differ?" in a few plain sentences, from an explanation's data.

Without an observation: per eps, what the textbook gives, which differences eps explains and how much
float arithmetic adds (and for the seed, who computes what its Keras printed). With one: who reproduces
it, with which eps and why; or, when nothing does, what came closest and the eps the data imply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import dialects
from ._dialect_runs import resolved, run, textbook
from ._matching import Match
from ._numbers import format_eps, format_value, parse, ulp_text
from ._problem import SEED_OUTPUTS, Problem
from .compare import ulps

if TYPE_CHECKING:
    from .explain import Scenario

__all__ = ["diagnose"]


def diagnose(
    p: Problem,
    scenarios: list[Scenario],
    matches: list[Match],
    closest: list[Match],
    inferred: tuple[float, float] | None,
) -> list[str]:
    """The diagnosis: a list of sentences."""
    if p.observed is None:
        lines = [line for s in scenarios for line in _scenario_lines(p, s)]
        return lines + (_seed_lines(p) if p.seed and not p.training else [])
    if matches:
        return _reproduced_lines(p, matches)
    return _unreproduced_lines(p, closest, inferred)


# -- an observation reproduced -------------------------------------------------------------------------


def _reproduced_lines(p: Problem, matches: list[Match]) -> list[str]:
    best = matches[0]
    same = [m.dialect for m in matches if m.exact and m.eps_added == best.eps_added]
    near = [f"{m.dialect} ({m.max_ulp} ulp)" for m in matches if not m.exact]
    e = format_eps(best.effective_eps)
    lines = [f"Reproduced to the bit by {', '.join(same)} with eps = {e}."] if same else []
    if near:
        lines.append(f"Within the dialect's tolerance: {', '.join(near)}.")
    lines += [_eps_story(p, best), _rounding_line(p, best)]
    if best.also_eps:
        lines.append(
            f"These numbers cannot tell eps = {e} from "
            f"{', '.join(map(format_eps, best.also_eps))}: both give the same bits."
        )
    return lines


def _rounding_line(p: Problem, best: Match) -> str:
    """How far the textbook at the best match's eps, rounded once, is from the observation."""
    assert p.observed is not None
    rest = int(ulps(p.observed, textbook(p, best.eps_added))[p.observed_where].max())
    if not rest:
        return "The textbook at that eps, rounded once, gives the same bits."
    return (
        f"The textbook at that eps, rounded once, differs by {rest} ulp: float rounding in the "
        f"order {best.dialect} computes, {best.ordering}."
    )


def _eps_story(p: Problem, best: Match) -> str:
    e = format_eps(best.effective_eps)
    if best.eps_source == "floor":
        asked = ", ".join(map(format_eps, p.eps)) if p.eps is not None else "less"
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


# -- an observation not reproduced ----------------------------------------------------------------------


def _unreproduced_lines(p: Problem, closest: list[Match], inferred: tuple[float, float] | None) -> list[str]:
    lines = [f"Nothing reproduces the observed numbers (tolerance {p.tolerance} ulp)."]
    if closest:
        c = closest[0]
        lines.append(
            f"Closest: {c.dialect} with eps = {format_eps(c.effective_eps)}: {c.mismatched} of "
            f"{int(p.observed_where.sum())} values differ, by up to {c.max_ulp} ulps."
        )
    if inferred is None:
        return lines
    estimate, window = inferred
    if estimate < -window:
        lines.append(
            "The observed values are larger than the textbook's even with eps = 0: "
            "the statistics, gamma or beta differ from those given."
        )
    else:
        asked = "" if p.eps is None else f"; was eps = {', '.join(map(format_eps, p.eps))} really used?"
        lines.append(f"The data imply eps = {estimate:.4g} (+- {window:.1g}){asked}")
    return lines


# -- no observation: each scenario ----------------------------------------------------------------------


def _scenario_lines(p: Problem, s: Scenario) -> list[str]:
    head = "eps not given (each dialect's default)" if s.eps is None else f"eps = {format_eps(s.eps)}"
    where = ", ".join(map(str, s.element_index))
    parts = [f"{head}: the textbook gives {format_value(s.textbook, p.x.dtype)} for x[{where}]."]
    for a in s.attributions:
        if a.kind == "epsilon" and a.max_ulp:
            parts.append(f"Because of eps, {_who(a.dialects)} by up to {ulp_text(a.max_ulp)}: {a.cause}.")
        elif a.kind == "refused":
            parts.append(f"Refused by {', '.join(a.dialects)}: {a.cause.rstrip('.')}.")
    worst = max((a.max_ulp or 0 for a in s.attributions if a.kind == "arithmetic"), default=0)
    parts.append(f"Float arithmetic order accounts for at most {ulp_text(worst)}.")
    if p.training:
        parts.append(_moving_line(p, s))
    return [" ".join(parts)]


def _moving_line(p: Problem, s: Scenario) -> str:
    groups: dict[tuple[float, str], list[str]] = {}
    for r in s.results:
        if r.running_var is not None:
            d = resolved(dialects.get(r.dialect), p)
            weighs = d.momentum_rule.removeprefix("momentum ")
            how = f"{d.running_variance}, momentum {p.momentum_for(d):g} {weighs}"
            groups.setdefault((r.running_var, how), []).append(r.dialect)
    start = format_value(float(p.var.ravel()[0]), p.x.dtype)
    each = "; ".join(
        f"{format_value(v, p.x.dtype)} ({', '.join(n)}: {how})" for (v, how), n in groups.items()
    )
    return f"The moving variance after this batch, from {start}: {each}."


def _who(names: list[str]) -> str:
    return f"{names[0]} differs" if len(names) == 1 else f"{', '.join(names)} differ"


def _seed_lines(p: Problem) -> list[str]:
    """What the seed's printed Keras outputs are, in the light of the dialects."""
    lines = []
    for eps, text in SEED_OUTPUTS.items():
        printed = parse(text, p.x.dtype, "--observed").values.reshape(p.x.shape)
        who = [n for n in p.names if not ulps(run(dialects.get(n), p, eps), printed).max()]
        shown = f"{format_value(printed.ravel()[0])} ... {format_value(printed.ravel()[-1])}"
        lines.append(
            f"The seed's Keras (TF 2.11) printed {shown} at eps = {format_eps(eps)}; these dialects "
            f"give exactly those bits: {', '.join(who) or 'none'}."
        )
    lines.append(
        "So 0.9995004 = 1/sqrt(1 + 0.001) is Keras' default epsilon at work, not an error; and "
        "with eps = 0, TF <= 2.11 still adds 1.001e-05 (run with --observed to check a "
        "printed output)."
    )
    return lines
