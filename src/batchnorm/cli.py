"""The ``batchnorm`` command: ``explain`` (why do my numbers differ?) and ``compare`` (two arrays).

The only module that prints. Rich tables on a terminal when rich is installed (``batchnorm[cli]``),
plain text when piped, one JSON document with ``--json``. Exit codes: 0 reproduced / passed,
1 not reproduced / failed, 2 bad input (one line on stderr: what was wrong and how to fix it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import textwrap
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from . import _validate, dialects
from ._errors import BatchNormError
from ._numbers import DTYPES, Numbers, format_value, load
from ._rounding import round_once
from .compare import Comparison, compare, run, signed_ulps
from .explain import Explanation, Problem, Scenario, explain, seed_problem

__all__ = ["main"]

WIDTH = 100
F32 = DTYPES["float32"]


class UsageError(Exception):
    """Bad command-line input; the message says what was wrong and how to fix it."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line instead of usage + error, and no exit here
        raise UsageError(f"{message}. Run '{self.prog} --help' for the options")


def _parser() -> argparse.ArgumentParser:
    top = _Parser(prog="batchnorm", description="Batch normalization, exactly; why numbers differ.")
    sub = top.add_subparsers(dest="command", parser_class=_Parser)
    ex = sub.add_parser(
        "explain",
        help="explain batch norm numbers, dialect by dialect",
        description="With no options: the seed's case (x = 1..12, mean 0, var 1, eps 1e-3 and 0).",
    )
    numbers = "numbers (commas, spaces, newlines, brackets separate: paste a printed array), .npy or -"
    helps = {
        "x": numbers, "mean": "per channel; one value stands for all (default 0)", "var": "(default 1)",
        "gamma": "(default 1)", "beta": "(default 0)", "observed": "the output to explain, read at x's dtype",
    }  # fmt: skip
    for name, text in helps.items():
        ex.add_argument(f"--{name}", metavar="NUMBERS", help=text)
    ex.add_argument("--shape", help="shape of x, e.g. 1,3,4,1 (default: from the brackets)")
    ex.add_argument("--axis", default="-1", help="channel axis or axes, e.g. -1 or 1 (default -1)")
    ex.add_argument(
        "--eps",
        type=float,
        action="append",
        help="repeatable; default: inferred from --observed, else each dialect's own (the seed: 1e-3 and 0)",
    )
    ex.add_argument("--dialect", action="append", help=f"repeatable: {', '.join(dialects.names())}")
    ex.add_argument("--dtype", choices=list(DTYPES), help="dtype of pasted x (default float32)")
    ex.add_argument("--training", action="store_true", help="batch statistics; --mean/--var are moving")
    ex.add_argument("--momentum", type=float, help="in each dialect's own convention (default its own)")
    ex.add_argument("--element", type=int, help="flat index of the element shown step by step (last)")
    ex.add_argument("--tolerance", type=int, default=0, help="ulps still counted as reproduced (0)")
    cmp = sub.add_parser("compare", help="compare two arrays, B the reference")
    cmp.add_argument("a", metavar="A", help=".npy, file.npz:NAME, or pasted numbers")
    cmp.add_argument("b", metavar="B", help="the reference, as A")
    cmp.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (1e-5)")
    cmp.add_argument("--rtol", type=float, default=1e-5, help="relative to |B| (1e-5)")
    cmp.add_argument("--max-ulp", type=int, help="also fail beyond this many ulps")
    cmp.add_argument("--dtype", choices=list(DTYPES), help="of pasted numbers (default: the file's)")
    for p in (ex, cmp):
        p.add_argument("--json", action="store_true", help="one JSON document on stdout")
        p.add_argument("--plain", action="store_true", help="plain text even on a terminal")
        p.add_argument("--plot", metavar="FILE.png", help="ulp differences as a picture (matplotlib)")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``batchnorm`` with ``argv`` (default: the command line); returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return _explain(args) if args.command == "explain" else _compare(args)
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        sys.stdout = open(os.devnull, "w")  # so that the interpreter's last flush is silent too
        return 1
    except (UsageError, BatchNormError, OSError) as err:
        print("batchnorm: error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2


# -- explain ---------------------------------------------------------------------------------------------


def _explain(args: argparse.Namespace) -> int:
    problem = _problem(args)
    result = explain(problem)
    if args.plot:
        _plot_explanation(args.plot, problem, result)
    if args.json:
        print(json.dumps(_jsonable(result.to_dict()), indent=2))
    else:
        _render(_explanation_doc(problem, result), plain=args.plain)
    return 1 if result.reproduced is False else 0


def _problem(a: argparse.Namespace) -> Problem:
    """The Problem the options describe; what they leave out is the seed's."""
    picked = tuple(dialects.get(d).name for d in a.dialect or ())
    given = (a.x, a.mean, a.var, a.gamma, a.beta, a.eps, a.observed, a.shape, a.element, a.dtype)
    if all(v is None for v in given) and not a.training and a.axis == "-1":
        return seed_problem(dialects=picked)
    dtype = DTYPES[a.dtype] if a.dtype else None
    x = seed_problem().x if a.x is None else _shaped_x(load(a.x, "--x", dtype or F32, dtype), a)
    x = x if dtype is None else x.astype(dtype)
    axes = _validate.channel_axes(_axis(a.axis), x.ndim)
    channels = tuple(x.shape[i] for i in axes)
    pdt = x.dtype if x.dtype == np.float64 else F32
    stats = {n: _parameter(getattr(a, n), n, channels, pdt, f) for n, f in _FILL.items()}
    observed, mask = (None, None) if a.observed is None else _observed(a.observed, x)
    eps = tuple(a.eps) if a.eps else None if (a.observed or a.x) else (1e-3, 0.0)
    return Problem(
        x=x,
        **stats,
        axis=axes if len(axes) > 1 else axes[0],
        eps=eps,
        dialects=picked,
        training=a.training,
        momentum=a.momentum,
        observed=observed,
        observed_mask=mask,
        element=a.element,
        tolerance=a.tolerance,
    )


_FILL = {"mean": 0.0, "var": 1.0, "gamma": 1.0, "beta": 0.0}


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace("(", " ").replace(")", " ").replace(",", " ").split())
    except ValueError:
        raise UsageError(f"{option} takes integers such as 1,3,4,1; got {text!r}") from None


def _axis(text: str) -> int | tuple[int, ...]:
    axes = _ints(text, "--axis")
    if not axes:
        raise UsageError("--axis needs a channel axis, e.g. --axis -1 (NHWC) or --axis 1 (NCHW)")
    return axes if len(axes) > 1 else axes[0]


def _shaped_x(n: Numbers, a: argparse.Namespace) -> np.ndarray:
    if n.split is not None:
        raise UsageError("--x cannot elide values with ...; paste all of x, or give a .npy file")
    size = n.values.size
    shape = _ints(a.shape, "--shape") if a.shape else n.shape
    if shape is None or len(shape) < 2:  # a flat list: (n / C, C) with C the channels of --mean
        channels = 1 if a.mean is None else load(a.mean, "--mean", F32).values.size
        if size % channels:
            raise UsageError(
                f"--x has {size} values, not a multiple of the {channels} channels of --mean. Give --shape"
            )
        shape = (size // channels, channels)
    if math.prod(shape) != size:
        raise UsageError(
            f"--shape {shape} needs {math.prod(shape)} values; --x has {size}. Fix --shape, or paste all of x"
        )
    return n.values.reshape(shape)


def _parameter(arg: str | None, name: str, channels: tuple[int, ...], dtype: Any, fill: float) -> Any:
    """One value per channel; a single value stands for every channel."""
    if arg is None:
        return np.full(channels, fill, dtype)
    values = load(arg, f"--{name}", dtype).values
    return np.full(channels, values[0], values.dtype) if values.size == 1 else values


def _observed(arg: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The observation at x's shape, and where ``...`` elided values, the mask of the rest. Text is read
    at x's dtype; a float64 file is rounded to it; other file dtypes are kept (Flax's promoted output)."""
    n = load(arg, "--observed", x.dtype)
    if n.values.dtype == np.float64 != x.dtype:  # float32 numbers saved as float64: back to x's dtype
        n = dataclasses.replace(n, values=round_once(n.values, x.dtype))
    given = n.values.size
    if given > x.size or (n.split is None and given != x.size):
        raise UsageError(
            f"--observed must hold as many values as x ({x.size}); got {given}. "
            "Paste the whole output, or elide its middle with ..."
        )
    if n.split is None:
        return n.values.reshape(x.shape), None
    values, mask = np.full(x.size, np.nan, n.values.dtype), np.zeros(x.size, bool)
    keep = np.r_[0 : n.split, x.size - (given - n.split) : x.size]
    values[keep], mask[keep] = n.values, True
    return values.reshape(x.shape), mask.reshape(x.shape)


def _explanation_doc(p: Problem, e: Explanation) -> _Doc:
    doc = _Doc()
    doc.h("batchnorm explain" + (": the seed's case" if p.seed else ""))
    stats = ", ".join(f"{n} {_brief(getattr(p, n))}" for n in _FILL)
    mode = "training (batch statistics; mean and var start the moving ones)" if p.training else "inference"
    c = p.mean.size
    doc.p(
        f"x: {p.x.dtype} {p.x.shape}, {c} channel{'s' * (c > 1)} on axis "
        f"{', '.join(map(str, p.axes))}; {mode}; {stats}."
    )
    for s in e.scenarios:
        _scenario_doc(doc, p, s)
    if p.observed is not None:
        doc.h("Which dialect reproduces the observed numbers")
        head = ["", "dialect", "eps", "from", "max ulp", "mean ulp", "differ", "reproduced"]
        rows = [
            [
                i + 1,
                m.dialect,
                _e(m.effective_eps),
                m.eps_source,
                m.max_ulp,
                f"{m.mean_ulp:.2f}",
                m.mismatched,
                "bit-exact" if m.exact else ("yes" if m.reproduced else "no"),
            ]
            for i, m in enumerate(e.matches + e.closest[:4])
        ]
        doc.table("", head, rows, right={0, 4, 5, 6})
    doc.h("Diagnosis")
    for line in e.diagnosis:
        doc.p(line)
    return doc


def _scenario_doc(doc: _Doc, p: Problem, s: Scenario) -> None:
    fmt = lambda v: format_value(v, p.x.dtype)  # noqa: E731
    title = {"default": "eps: each dialect's default", "given": f"eps = {_e(s.eps or 0)}"}
    doc.h(title.get(s.eps_source, f"eps = {_e(s.eps or 0)}, inferred from the observed numbers"))
    rounded = "float64" if p.x.dtype == np.float64 else "float32 steps"
    steps = [[st.label, st.formula, st.exact, st.rounded] for st in s.steps]
    where = ", ".join(map(str, s.element_index))
    doc.table(f"The textbook, one element: x[{where}]", ["step", "with values", "exact", rounded], steps)
    head = ["dialect", "eps", "from", "y[0]", "y[-1]", "ulps", "of max"]
    head += ["moving mean", "moving var"] if p.training else ["eps", "arith"]
    rows: list[list[Any]] = []
    for r in s.results:
        if r.refused is not None:
            rows.append([r.dialect, _e(r.effective_eps), r.eps_source, "refused", "", "", "", "", ""])
            continue
        tail = [fmt(r.running_mean), fmt(r.running_var)] if p.training else [r.ulp_eps, r.ulp_arithmetic]
        of_max = f"{r.ulp_of_max:.3g}" if r.ulp_of_max is not None else ""
        rows.append(
            [
                r.dialect,
                _e(r.effective_eps),
                r.eps_source,
                fmt(r.first),
                fmt(r.last),
                r.max_ulp,
                of_max,
                *tail,
            ]
        )
    doc.table("Each dialect", head, rows, right={3, 4, 5, 6, 7, 8})
    split = (
        ""
        if p.training
        else "; eps, arith: the part of ulps that eps explains, and the rest (float arithmetic)"
    )
    at = _e(s.reference_eps)
    doc.p(f"ulps: the largest distance from the textbook at eps = {at}, in ulps of each element; of max: in "
          f"ulps of max |y|{split}.")  # fmt: skip
    doc.p("Why they differ:")
    for a in sorted(s.attributions, key=lambda a: -(a.max_ulp or 0)):
        if a.kind != "arithmetic" or a.max_ulp:
            size = "" if a.max_ulp is None else f"{a.max_ulp} ulp{'s' * (a.max_ulp != 1)}, "
            doc.p(f"- {size}{a.kind.replace('_', ' ')}: {a.cause} [{', '.join(a.dialects)}]")


def _brief(a: np.ndarray) -> str:
    values = [format_value(v, a.dtype) for v in a.ravel()[:4]]
    return values[0] if a.size == 1 else f"[{', '.join(values)}{', ...' if a.size > 4 else ''}]"


def _e(v: float) -> str:
    return format_value(v, np.float64)


# -- compare ---------------------------------------------------------------------------------------------


def _compare(args: argparse.Namespace) -> int:
    dtype = DTYPES[args.dtype] if args.dtype else None
    a, b = (load(text, name, dtype or F32, dtype) for text, name in ((args.a, "A"), (args.b, "B")))
    if dtype is None and a.from_file != b.from_file:  # pasted numbers are read at the file's dtype
        if a.from_file:
            b = load(args.b, "B", a.values.dtype)
        else:
            a = load(args.a, "A", b.values.dtype)
    x, y = _pair(a, b)
    result = compare(x, y, atol=args.atol, rtol=args.rtol, max_ulp=args.max_ulp)
    if args.plot:
        _plot_compare(args.plot, x, y)
    if args.json:
        print(json.dumps(_jsonable(dataclasses.asdict(result)), indent=2))
    else:
        _render(_comparison_doc(result), plain=args.plain)
    return 0 if result.passed else 1


def _pair(a: Numbers, b: Numbers) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays shaped; a pasted flat list takes the other side's shape when the sizes agree."""
    if a.split is not None or b.split is not None:
        raise UsageError("compare needs every value: paste them all (no ...), or give .npy files")
    same = a.values.size == b.values.size
    shape_a = a.shape or (b.shape if same and b.shape else (a.values.size,))
    shape_b = b.shape or (shape_a if same else (b.values.size,))
    return a.values.reshape(shape_a), b.values.reshape(shape_b)


def _comparison_doc(c: Comparison) -> _Doc:
    doc = _Doc()
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
    used = [i for i, (_, n) in enumerate(c.histogram) if n]
    shown = c.histogram[used[0] : used[-1] + 1] if used else []
    top = max((n for _, n in shown), default=1)
    doc.table(
        "ulp histogram",
        ["ulps", "count", ""],
        [[k, n, "#" * math.ceil(40 * n / top)] for k, n in shown],
        right={1},
    )
    rule = f"|A - B| <= {c.atol:g} + {c.rtol:g} * |B|"
    rule += "" if c.max_ulp_allowed is None else f", and at most {c.max_ulp_allowed} ulps"
    doc.p(f"PASSED: {rule}" if c.passed else f"FAILED ({c.failing} of {c.count} elements): {rule}")
    return doc


# -- rendering -------------------------------------------------------------------------------------------


class _Doc:
    """What to show, in order: headings, paragraphs, tables; rendered plain or with rich."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def h(self, text: str) -> None:
        self.blocks.append(("h", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, title: str, head: list[str], rows: list[list[Any]], right: Collection[int] = ()) -> None:
        self.blocks.append(("table", (title, head, [[str(c) for c in r] for r in rows], right)))


def _jsonable(obj: Any) -> Any:
    """JSON has no inf or nan: those floats become the strings "inf", "-inf", "nan"."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _render(doc: _Doc, *, plain: bool) -> None:
    if not plain and sys.stdout.isatty():
        try:
            import rich  # noqa: F401  (optional: batchnorm[cli])
        except ImportError:
            pass
        else:
            return _render_rich(doc)
    print(_plain(doc))


def _plain(doc: _Doc) -> str:
    out: list[str] = []
    for kind, body in doc.blocks:
        if kind == "h":
            out += ["", body, "=" * len(body)]
        elif kind == "p":
            out.append(textwrap.fill(body, WIDTH, subsequent_indent="  ", break_on_hyphens=False))
        else:
            title, head, rows, right = body
            widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

            def line(cells: list[str], widths: list[int] = widths, right: Collection[int] = right) -> str:
                padded = (
                    c.rjust(w) if i in right else c.ljust(w)
                    for i, (c, w) in enumerate(zip(cells, widths, strict=True))
                )
                return ("  " + "  ".join(padded)).rstrip()

            out += [title] if title else []
            out += [line(head), "  " + "-" * (sum(widths) + 2 * len(widths) - 2)] if any(head) else []
            out += [line(r) for r in rows]
    return "\n".join(out).lstrip("\n")


def _render_rich(doc: _Doc) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=min(Console().width, WIDTH), highlight=False)
    styles = {"bit-exact": "green", "yes": "green", "no": "dim", "refused": "yellow"}
    for i, (kind, body) in enumerate(doc.blocks):
        if kind == "h":
            console.print() if i else None
            console.rule(Text(body, style="bold"), align="left")
        elif kind == "p" and body.startswith("- "):  # a bullet: wrapped lines hang under its text
            bullet = Table.grid(padding=(0, 1))
            bullet.add_row("-", Text(body[2:]))
            console.print(bullet)
        elif kind == "p":
            style = (
                "bold green" if body.startswith("PASSED") else "bold red" if body.startswith("FAILED") else ""
            )
            console.print(Text(body, style=style))
        else:
            title, head, rows, right = body
            table = Table(
                title=title or None, title_justify="left", box=box.SIMPLE_HEAD, show_header=any(head)
            )
            for j, name in enumerate(head):
                table.add_column(name, justify="right" if j in right else "left", header_style="bold")
            for row in rows:
                table.add_row(*(Text(c, style=styles.get(c, "")) for c in row))
            console.print(table)


# -- pictures --------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'batchnorm[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_explanation(path: str, p: Problem, e: Explanation) -> None:
    """A heat map per scenario: each dialect's output in signed ulps from the textbook, element by
    element; with an observation, one more map of each dialect (at its best eps) from the observation."""
    plt = _pyplot()
    panels = []
    for s in e.scenarios:
        ref = run(dialects.get("exact"), p, s.reference_eps)
        rows = {r.dialect: run(dialects.get(r.dialect), p, s.eps) for r in s.results if r.refused is None}
        if p.observed is not None:
            rows["observed"] = p.observed
        panels.append((f"eps = {_e(s.reference_eps)}: ulps from the textbook", rows, ref))
    if p.observed is not None:
        found = {m.dialect: run(dialects.get(m.dialect), p, m.effective_eps) for m in e.matches + e.closest}
        panels.append(("each dialect at its best eps: ulps from the observed numbers", found, p.observed))
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(9, 1.2 + 0.28 * len(p.names) * len(panels) + 0.6 * len(panels)),
        squeeze=False,
    )
    for ax, (title, rows, ref) in zip(axes[:, 0], panels, strict=True):
        names = [n for n, y in rows.items() if y.dtype == ref.dtype]
        grid = np.array([signed_ulps(rows[n], ref).ravel() for n in names], dtype=np.float64)
        top = max(float(np.abs(grid).max()), 1.0)
        image = ax.imshow(
            grid,
            aspect="auto",
            interpolation="nearest",
            cmap="RdBu_r",
            norm=_colors().SymLogNorm(linthresh=1, vmin=-top, vmax=top),
        )
        ax.set(title=title, yticks=range(len(names)), yticklabels=names, xlabel="element (flat index)")
        fig.colorbar(image, ax=ax, label="ulps")
        if grid.shape[1] <= 32:  # few elements: write the numbers in
            for (i, j), v in np.ndenumerate(grid):
                ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=7)
    _save(plt, fig, path)


def _colors() -> Any:
    import matplotlib.colors

    return matplotlib.colors


def _plot_compare(path: str, a: np.ndarray, b: np.ndarray) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    if a.shape == b.shape and a.dtype == b.dtype:
        ax.plot(signed_ulps(a, b).ravel(), ".", ms=3)
    ax.set(title="A - B in ulps", xlabel="element (flat index)", ylabel="ulps")
    _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
