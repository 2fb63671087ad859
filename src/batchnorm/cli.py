"""The ``batchnorm`` command: ``explain`` (why do my numbers differ?) and ``compare`` (two arrays).

The only module that prints. Rich tables on a terminal when rich is installed (``batchnorm[cli]``),
plain text when piped, one JSON document with ``--json``. Exit codes: 0 reproduced / passed,
1 not reproduced / failed, 2 bad input (one line on stderr: what was wrong and how to fix it).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _validate, dialects
from ._errors import BatchNormError
from ._numbers import DTYPES, Numbers, load
from ._plot import plot_comparison, plot_explanation
from ._problem import compute_dtype, observed_size_error
from ._render import Doc, comparison_doc, explanation_doc, json_text, render
from ._rounding import round_once
from .compare import compare
from .explain import Problem, explain, seed_problem

__all__ = ["main"]

F32 = DTYPES["float32"]


class UsageError(Exception):
    """Bad command-line input; the message says what was wrong and how to fix it."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line instead of usage + error, and no exit here
        raise UsageError(f"{message}. Run '{self.prog} --help' for the options")


def _parser() -> argparse.ArgumentParser:
    top = _Parser(prog="batchnorm", description="Batch normalization, exactly; why numbers differ.")
    sub = top.add_subparsers(dest="command", parser_class=_Parser)
    for p in (_explain_parser(sub), _compare_parser(sub)):
        p.add_argument("--json", action="store_true", help="one JSON document on stdout")
        p.add_argument("--plain", action="store_true", help="plain text even on a terminal")
        p.add_argument("--plot", metavar="FILE.png", help="ulp differences as a picture (matplotlib)")
    return top


def _explain_parser(sub: Any) -> argparse.ArgumentParser:
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
    return ex


def _compare_parser(sub: Any) -> argparse.ArgumentParser:
    cmp = sub.add_parser("compare", help="compare two arrays, B the reference")
    cmp.add_argument("a", metavar="A", help=".npy, file.npz:NAME, or pasted numbers")
    cmp.add_argument("b", metavar="B", help="the reference, as A")
    cmp.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (1e-5)")
    cmp.add_argument("--rtol", type=float, default=1e-5, help="relative to |B| (1e-5)")
    cmp.add_argument("--max-ulp", type=int, help="also fail beyond this many ulps")
    cmp.add_argument("--dtype", choices=list(DTYPES), help="of pasted numbers (default: the file's)")
    return cmp


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


def _show(args: argparse.Namespace, data: dict[str, Any], doc: Callable[[], Doc]) -> None:
    """``data`` as JSON with --json, else the document: rich on a terminal, plain when piped."""
    if args.json:
        print(json_text(data))
    else:
        print(render(doc(), terminal=not args.plain and sys.stdout.isatty()), end="")


def _pyplot() -> Any:
    """matplotlib's pyplot, drawing to files."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'batchnorm[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- explain ---------------------------------------------------------------------------------------------


def _explain(args: argparse.Namespace) -> int:
    problem = _problem(args)
    result = explain(problem)
    if args.plot:
        plot_explanation(_pyplot(), args.plot, problem, result)
    _show(args, result.to_dict(), lambda: explanation_doc(problem, result))
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
    stats = {n: _parameter(getattr(a, n), n, channels, compute_dtype(x.dtype), f) for n, f in _FILL.items()}
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
    if values.size == 1:
        return np.full(channels, values[0], values.dtype)
    if values.size != int(np.prod(channels)):
        raise UsageError(
            f"--{name} needs one value per channel, {int(np.prod(channels))} for channel shape {channels}; "
            f"got {values.size}. Give one value for all channels or one per channel"
        )
    return values.reshape(channels)


def _observed(arg: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The observation at x's shape, and where ``...`` elided values, the mask of the rest. Text is read
    at x's dtype; a float64 file is rounded to it; other file dtypes are kept (Flax's promoted output)."""
    n = load(arg, "--observed", x.dtype)
    if n.values.dtype == np.float64 != x.dtype:  # float32 numbers saved as float64: back to x's dtype
        n = dataclasses.replace(n, values=round_once(n.values, x.dtype))
    given = n.values.size
    if given > x.size or (n.split is None and given != x.size):
        raise observed_size_error(x.size, given)
    if n.split is None:
        return n.values.reshape(x.shape), None
    values, mask = np.full(x.size, np.nan, n.values.dtype), np.zeros(x.size, bool)
    keep = np.r_[0 : n.split, x.size - (given - n.split) : x.size]
    values[keep], mask[keep] = n.values, True
    return values.reshape(x.shape), mask.reshape(x.shape)


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
        plot_comparison(_pyplot(), args.plot, x, y)
    _show(args, dataclasses.asdict(result), lambda: comparison_doc(result))
    return 0 if result.passed else 1


def _pair(a: Numbers, b: Numbers) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays shaped; a pasted flat list takes the other side's shape when the sizes agree."""
    if a.split is not None or b.split is not None:
        raise UsageError("compare needs every value: paste them all (no ...), or give .npy files")
    same = a.values.size == b.values.size
    shape_a = a.shape or (b.shape if same and b.shape else (a.values.size,))
    shape_b = b.shape or (shape_a if same else (b.values.size,))
    return a.values.reshape(shape_a), b.values.reshape(shape_b)
