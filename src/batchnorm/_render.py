"""What the ``batchnorm`` command shows: an explanation or a comparison as a :class:`Doc` (headings,
paragraphs, tables), rendered as plain text or with rich, or as one JSON document.

Every function returns text; :mod:`batchnorm.cli` prints it.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Collection
from typing import Any

import numpy as np

from ._numbers import format_eps, format_value, ulp_text
from ._problem import Problem
from .compare import Comparison
from .explain import Explanation, Scenario

__all__ = ["Doc", "comparison_doc", "explanation_doc", "json_text", "render"]

WIDTH = 100


class Doc:
    """What to show, in order: headings, paragraphs, tables; rendered plain or with rich."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def h(self, text: str) -> None:
        self.blocks.append(("h", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, title: str, head: list[str], rows: list[list[Any]], right: Collection[int] = ()) -> None:
        self.blocks.append(("table", (title, head, [[str(c) for c in r] for r in rows], right)))


# -- batchnorm explain -----------------------------------------------------------------------------------


def explanation_doc(p: Problem, e: Explanation) -> Doc:
    doc = Doc()
    doc.h("batchnorm explain" + (": the seed's case" if p.seed else ""))
    stats = ", ".join(f"{n} {_brief(getattr(p, n))}" for n in ("mean", "var", "gamma", "beta"))
    mode = "training (batch statistics; mean and var start the moving ones)" if p.training else "inference"
    c = p.mean.size
    doc.p(
        f"x: {p.x.dtype} {p.x.shape}, {c} channel{'s' * (c > 1)} on axis "
        f"{', '.join(map(str, p.axes))}; {mode}; {stats}."
    )
    for s in e.scenarios:
        _scenario_doc(doc, p, s)
    if p.observed is not None:
        _matches_doc(doc, e)
    doc.h("Diagnosis")
    for line in e.diagnosis:
        doc.p(line)
    return doc


def _matches_doc(doc: Doc, e: Explanation) -> None:
    doc.h("Which dialect reproduces the observed numbers")
    head = ["", "dialect", "eps", "from", "max ulp", "mean ulp", "differ", "reproduced"]
    rows = [
        [
            i + 1,
            m.dialect,
            format_eps(m.effective_eps),
            m.eps_source,
            m.max_ulp,
            f"{m.mean_ulp:.2f}",
            m.mismatched,
            "bit-exact" if m.exact else ("yes" if m.reproduced else "no"),
        ]
        for i, m in enumerate(e.matches + e.closest[:4])
    ]
    doc.table("", head, rows, right={0, 4, 5, 6})


def _scenario_doc(doc: Doc, p: Problem, s: Scenario) -> None:
    title = {"default": "eps: each dialect's default", "given": f"eps = {format_eps(s.eps or 0)}"}
    doc.h(title.get(s.eps_source, f"eps = {format_eps(s.eps or 0)}, inferred from the observed numbers"))
    rounded = "float64" if p.x.dtype == np.float64 else "float32 steps"
    steps = [[st.label, st.formula, st.exact, st.rounded] for st in s.steps]
    where = ", ".join(map(str, s.element_index))
    doc.table(f"The textbook, one element: x[{where}]", ["step", "with values", "exact", rounded], steps)
    head = ["dialect", "eps", "from", "y[0]", "y[-1]", "ulps", "of max"]
    head += ["moving mean", "moving var"] if p.training else ["eps", "arith"]
    doc.table("Each dialect", head, _result_rows(p, s), right={3, 4, 5, 6, 7, 8})
    split = (
        ""
        if p.training
        else "; eps, arith: the part of ulps that eps explains, and the rest (float arithmetic)"
    )
    at = format_eps(s.reference_eps)
    doc.p(f"ulps: the largest distance from the textbook at eps = {at}, in ulps of each element; of max: in "
          f"ulps of max |y|{split}.")  # fmt: skip
    doc.p("Why they differ:")
    for a in sorted(s.attributions, key=lambda a: -(a.max_ulp or 0)):
        if a.kind != "arithmetic" or a.max_ulp:
            size = "" if a.max_ulp is None else f"{ulp_text(a.max_ulp)}, "
            doc.p(f"- {size}{a.kind.replace('_', ' ')}: {a.cause} [{', '.join(a.dialects)}]")


def _result_rows(p: Problem, s: Scenario) -> list[list[Any]]:
    fmt = lambda v: format_value(v, p.x.dtype)  # noqa: E731
    rows: list[list[Any]] = []
    for r in s.results:
        eps = format_eps(r.effective_eps)
        if r.refused is not None:
            rows.append([r.dialect, eps, r.eps_source, "refused", "", "", "", "", ""])
            continue
        tail = [fmt(r.running_mean), fmt(r.running_var)] if p.training else [r.ulp_eps, r.ulp_arithmetic]
        of_max = f"{r.ulp_of_max:.3g}" if r.ulp_of_max is not None else ""
        rows.append([r.dialect, eps, r.eps_source, fmt(r.first), fmt(r.last), r.max_ulp, of_max, *tail])
    return rows


def _brief(a: np.ndarray) -> str:
    values = [format_value(v, a.dtype) for v in a.ravel()[:4]]
    return values[0] if a.size == 1 else f"[{', '.join(values)}{', ...' if a.size > 4 else ''}]"


# -- batchnorm compare -----------------------------------------------------------------------------------


def comparison_doc(c: Comparison) -> Doc:
    doc = Doc()
    doc.h("batchnorm compare")
    doc.p(f"A: {c.dtype_a} {c.shape_a}   B (the reference): {c.dtype_b} {c.shape_b}")
    for note in c.notes:
        doc.p(note)
    if c.max_abs is None:
        doc.p("FAILED: the shapes differ")
        return doc
    g = lambda v: f"{v:.6g}"  # noqa: E731
    worst_a, worst_b = format_value(c.worst_a, c.dtype_a), format_value(c.worst_b, c.dtype_b)
    worst = f"{list(c.worst_index or ())}: A {worst_a}, B {worst_b}"
    doc.table(
        "",
        ["", ""],
        [
            ["max |A - B|", g(c.max_abs)],
            ["mean |A - B|", g(c.mean_abs)],
            ["max |A - B| / |B|", g(c.max_rel)],
            ["mean |A - B| / |B|", g(c.mean_rel)],
            [f"max ulps ({c.ulp_dtype})", c.max_ulp],
            ["worst element", worst],
            ["smallest atol that passes (rtol 0)", g(c.atol_needed)],
            ["smallest rtol that passes (atol 0)", g(c.rtol_needed)],
        ],
    )
    doc.table("ulp histogram", ["ulps", "count", ""], _histogram_rows(c.histogram), right={1})
    rule = f"|A - B| <= {c.atol:g} + {c.rtol:g} * |B|"
    rule += "" if c.max_ulp_allowed is None else f", and at most {c.max_ulp_allowed} ulps"
    doc.p(f"PASSED: {rule}" if c.passed else f"FAILED ({c.failing} of {c.count} elements): {rule}")
    return doc


def _histogram_rows(histogram: list[tuple[str, int]]) -> list[list[Any]]:
    """The buckets from the first used to the last used, each with a bar of up to 40 #."""
    used = [i for i, (_, n) in enumerate(histogram) if n]
    shown = histogram[used[0] : used[-1] + 1] if used else []
    top = max((n for _, n in shown), default=1)
    return [[k, n, "#" * math.ceil(40 * n / top)] for k, n in shown]


# -- rendering -------------------------------------------------------------------------------------------


def json_text(data: dict[str, Any]) -> str:
    """One JSON document; JSON has no inf or nan: those floats become the strings "inf", "-inf", "nan"."""
    return json.dumps(_jsonable(data), indent=2)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def render(doc: Doc, *, terminal: bool) -> str:
    """The document as text, newline-terminated: for a ``terminal``, rich's rules and tables where rich
    is installed (``batchnorm[cli]``); else plain."""
    if terminal:
        try:
            import rich  # noqa: F401
        except ImportError:
            pass
        else:
            return _rich(doc)
    return _plain(doc) + "\n"


def _plain(doc: Doc) -> str:
    out: list[str] = []
    for kind, body in doc.blocks:
        if kind == "h":
            out += ["", body, "=" * len(body)]
        elif kind == "p":
            out.append(textwrap.fill(body, WIDTH, subsequent_indent="  ", break_on_hyphens=False))
        else:
            out += _plain_table(*body)
    return "\n".join(out).lstrip("\n")


def _plain_table(title: str, head: list[str], rows: list[list[str]], right: Collection[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        padded = (
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return ("  " + "  ".join(padded)).rstrip()

    out = [title] if title else []
    out += [line(head), "  " + "-" * (sum(widths) + 2 * len(widths) - 2)] if any(head) else []
    return out + [line(r) for r in rows]


def _rich(doc: Doc) -> str:
    from rich.console import Console
    from rich.text import Text

    console = Console(width=min(Console().width, WIDTH), highlight=False)
    with console.capture() as captured:
        for i, (kind, body) in enumerate(doc.blocks):
            if kind == "h":
                console.print() if i else None
                console.rule(Text(body, style="bold"), align="left")
            elif kind == "p":
                console.print(_rich_paragraph(body))
            else:
                console.print(_rich_table(*body))
    return captured.get()


def _rich_paragraph(body: str) -> Any:
    from rich.table import Table
    from rich.text import Text

    if body.startswith("- "):  # a bullet: wrapped lines hang under its text
        bullet = Table.grid(padding=(0, 1))
        bullet.add_row("-", Text(body[2:]))
        return bullet
    style = "bold green" if body.startswith("PASSED") else "bold red" if body.startswith("FAILED") else ""
    return Text(body, style=style)


_STYLES = {"bit-exact": "green", "yes": "green", "no": "dim", "refused": "yellow"}


def _rich_table(title: str, head: list[str], rows: list[list[str]], right: Collection[int]) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD, show_header=any(head))
    for j, name in enumerate(head):
        table.add_column(name, justify="right" if j in right else "left", header_style="bold")
    for row in rows:
        table.add_row(*(Text(c, style=_STYLES.get(c, "")) for c in row))
    return table
