"""Numbers as people paste them: a framework's printed array, a list, a ``.npy`` or ``.npz`` file.

Commas, whitespace, brackets and parentheses separate numbers, and a framework's wrapper words
(``array(``, ``tensor(``, ``tf.Tensor(``, ``dtype=float32``, ``shape=(1, 3)``) are ignored, so the output
of ``print(y)`` pastes as it is. Square brackets give the shape when they nest rectangularly. ``...``
(NumPy's summary of a large array) marks elided values: what comes before it are the first values, what
comes after it the last.

Each number is rounded **once**, correctly, to the target dtype: a printed float32 reads back as the very
bits that were printed (the decimal is compared exactly with its two float32 neighbours, so no double
rounding through float64 can move it).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from ._errors import BatchNormError
from ._rounding import round_once

__all__ = [
    "DTYPES",
    "Numbers",
    "Step",
    "bits",
    "decimal_text",
    "format_value",
    "load",
    "ordered",
    "parse",
    "textbook_steps",
    "to_dtype",
]

DTYPES = {
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_WRAPPERS = re.compile(
    r"\b(?:dtype|shape|device|grad_fn|requires_grad|layout|weak_type)\s*=\s*(?:\([^)]*\)|<[^>]*>|[^\s,\])]+)"
    r"|\b(?:tf\.Tensor|tensor|array|Array|numpy|np\.float\d+|float\d+)\b"
)
_TOKEN = re.compile(r"\[|\]|\.\.\.|…|[^\s,\[\]()<>:=]+")


@dataclass(frozen=True)
class Numbers:
    """Numbers read: ``values`` flat, ``shape`` from the brackets or the file (None: unknown), ``split``:
    with ``...`` in the text, how many values precede it (the rest are the last values)."""

    values: np.ndarray
    shape: tuple[int, ...] | None
    split: int | None = None
    from_file: bool = False

    def array(self) -> np.ndarray:
        return self.values if self.shape is None else self.values.reshape(self.shape)


def ordered(a: np.ndarray) -> np.ndarray:
    """Floats mapped to integers that count ulps: adjacent floats differ by 1, +0 and -0 are both 0.

    int64 for float16, bfloat16 and float32; for float64, uint64 offset by 2**63, whose differences
    wrap to the right int64 (see :func:`batchnorm.compare.signed_ulps`).
    """
    a = np.asarray(a)
    size = a.dtype.itemsize
    if size <= 4:
        signed = a.view(f"i{size}").astype(np.int64)
        return np.where(signed < 0, np.iinfo(f"i{size}").min - signed, signed)
    bits = a.view(np.uint64)
    sign = np.uint64(1) << np.uint64(63)
    magnitude = bits & (sign - np.uint64(1))
    return np.where(bits & sign, sign - magnitude, sign + magnitude)


def to_dtype(text_values: list[str], dtype: np.dtype) -> np.ndarray:
    """Decimal strings rounded once, to nearest (ties to even), to ``dtype``."""
    wide = np.array([float(t) for t in text_values], dtype=np.float64)
    if dtype == np.float64:
        return wide
    with np.errstate(over="ignore"):
        out = wide.astype(dtype)
    for i in np.flatnonzero(np.isfinite(out) & (out.astype(np.float64) != wide)):
        out[i] = _nearest(Fraction(text_values[i]), out[i], dtype)
    return out


def _nearest(exact: Fraction, guess: Any, dtype: np.dtype) -> Any:
    """Of ``guess`` and its two neighbours in ``dtype``, the nearest to ``exact`` (ties: even bits)."""
    uint = _UINT[dtype.itemsize]
    bits = int(np.asarray(guess, dtype).view(uint))
    near = [b for b in (bits - 1, bits, bits + 1) if 0 <= b < 1 << (8 * dtype.itemsize)]
    values = {b: float(np.array(b, uint).view(dtype)) for b in near}
    finite = [b for b in near if np.isfinite(values[b])]
    best = min(finite, key=lambda b: (abs(Fraction(values[b]) - exact), b & 1))
    return np.array(best, uint).view(dtype)[()]


def parse(text: str, dtype: np.dtype, name: str) -> Numbers:
    """Numbers pasted as text, rounded once to ``dtype``; raises BatchNormError saying what to fix."""
    tokens = _TOKEN.findall(_WRAPPERS.sub(" ", text))
    numbers = [t for t in tokens if t not in "[]"]
    for token in numbers:
        if token not in ("...", "…"):
            try:
                float(token)
            except ValueError:
                raise BatchNormError(
                    f"{name} holds numbers separated by commas, spaces or brackets; got {token!r}. "
                    "Paste the printed array as it is, or give a .npy file"
                ) from None
    split = next((i for i, t in enumerate(numbers) if t in ("...", "…")), None)
    values = [t for t in numbers if t not in ("...", "…")]
    if not values:
        raise BatchNormError(f"{name} must hold at least one number; got {text!r}. Pass e.g. 1,2,3")
    shape = None if split is not None else _bracket_shape(tokens, name)
    return Numbers(to_dtype(values, dtype), shape, split)


def _bracket_shape(tokens: list[str], name: str) -> tuple[int, ...] | None:
    """The shape that nested square brackets describe, None when there are none."""
    stack: list[list] = [[]]
    for t in tokens:
        if t == "[":
            stack.append([])
        elif t == "]":
            if len(stack) == 1:
                raise BatchNormError(f"{name} has a ']' without its '['. Paste the whole array")
            inner = stack.pop()
            stack[-1].append(inner)
        else:
            stack[-1].append(0.0)
    if len(stack) != 1:
        raise BatchNormError(f"{name} has a '[' that is never closed. Paste the whole array")
    top = stack[0]
    if not any(isinstance(v, list) for v in top):
        return None
    try:
        return np.array(top[0] if len(top) == 1 else top, dtype=np.float64).shape
    except ValueError:
        raise BatchNormError(
            f"{name}: the brackets do not form a rectangular array (rows of different lengths). "
            "Paste the whole array, or pass the numbers without brackets and give --shape"
        ) from None


def load(arg: str, name: str, text_dtype: np.dtype, file_dtype: np.dtype | None = None) -> Numbers:
    """An argument as numbers: ``-`` (stdin), a .npy file, ``file.npz:key``, a text file, or the text.

    Text is read at ``text_dtype``; arrays from files keep their dtype unless ``file_dtype`` is given.
    """
    path, key = _split_path(arg)
    if path is not None:
        data = _read_array(path, key, name, file_dtype)
        return Numbers(data.ravel(), data.shape, from_file=True)
    if arg == "-":
        text = sys.stdin.read()
    elif len(arg) < 4096 and os.path.isfile(arg):
        text = Path(arg).read_text()
    else:
        text = arg
    return parse(text, text_dtype, name)


def _split_path(arg: str) -> tuple[str | None, str | None]:
    m = re.fullmatch(r"(.+\.npz)(?::(.+))?|(.+\.npy)", arg.strip())
    if m is None:
        return None, None
    if m.group(3):
        return m.group(3), None
    return m.group(1), m.group(2)


def _read_array(path: str, key: str | None, name: str, dtype: np.dtype | None) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BatchNormError(
            f"{name}: cannot read {path!r} as a NumPy file ({e}). Check the path, or paste the numbers"
        ) from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            names = list(data.keys())
            if key is None and len(names) == 1:
                key = names[0]
            if key not in names:
                asked = "no name" if key is None else f"{key!r}"
                raise BatchNormError(
                    f"{name}: {path!r} holds {', '.join(names) or 'no arrays'}; got {asked}. "
                    f"Name one as {path}:NAME"
                )
            data = data[key]
    if data.dtype not in DTYPES.values():
        if data.dtype.kind not in "biuf":
            raise BatchNormError(f"{name}: {path!r} holds {data.dtype} values; pass an array of real numbers")
        data = data.astype(dtype or np.float64)
    return data if dtype is None else _cast(data, dtype)


def _cast(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return data if data.dtype == dtype else round_once(data.astype(np.float64), dtype)


# -- numbers as the textbook computes them, and as people read them ------------------------------------


def format_value(v: float | None, dtype: Any = np.float32) -> str:
    """The shortest text that reads back as the same value of ``dtype`` (as NumPy prints it)."""
    if v is None:
        return "-"
    value: Any = np.asarray(v, np.float64).astype(dtype)[()]
    if not np.isfinite(value) or np.dtype(dtype) == DTYPES["bfloat16"]:
        return str(float(value)) if not np.isfinite(value) else str(value)
    if value != 0 and not 1e-4 <= abs(float(value)) < 1e7:
        return np.format_float_scientific(value, unique=True, trim="-")
    return np.format_float_positional(value, unique=True, trim="-")


def bits(v: float, dtype: np.dtype) -> str:
    """The bit pattern of ``v`` rounded to ``dtype``, in hex (``0x413fe771``)."""
    a = np.asarray(v, np.float64).astype(dtype)
    return f"0x{int(a.view(_UINT[dtype.itemsize])):0{2 * dtype.itemsize}x}"


def decimal_text(d: Decimal, digits: int = 17) -> str:
    if not d.is_finite():
        return str(d)
    text = f"{d:.{digits}g}"
    return text.rstrip("0").rstrip(".") if "." in text and "e" not in text.lower() else text


@dataclass(frozen=True)
class Step:
    """One step of the textbook formula for one element: its exact value (40-digit decimal arithmetic
    on the float inputs) and its value when every step is rounded to the compute dtype."""

    label: str
    formula: str
    exact: str
    rounded: str


def textbook_steps(
    x: float, m: Fraction, v: Fraction, eps: float, g: float, b: float, dtype: np.dtype, out: np.dtype
) -> list[Step]:
    """``(x - m) / sqrt(v + eps) * g + b`` step by step; the last step rounds once to ``out``."""
    with localcontext() as ctx, np.errstate(all="ignore"):
        ctx.prec = 40
        m_d = Decimal(m.numerator) / Decimal(m.denominator)
        v_d = Decimal(v.numerator) / Decimal(v.denominator)
        e_d = Decimal(repr(float(eps)))
        centered, total = Decimal(float(x)) - m_d, v_d + e_d
        root = total.sqrt()
        ratio = centered / root if root else Decimal("Infinity") * (1 if centered >= 0 else -1)
        scaled = ratio * Decimal(float(g))
        y = scaled + Decimal(float(b))
        f = [dtype.type(a) for a in (x, float(m), float(v), eps, g, b)]
        r = [f[0] - f[1], f[2] + f[3]]
        r += [np.sqrt(r[1]), r[0] / np.sqrt(r[1])]
        r += [r[3] * f[4], r[3] * f[4] + f[5]]
    fmt = lambda a: format_value(a, dtype)  # noqa: E731
    rounded = np.asarray(float(y), np.float64).astype(out) if y.is_finite() else float(y)
    return [
        Step("x - mean", f"{fmt(x)} - {decimal_text(m_d, 10)}", decimal_text(centered), fmt(r[0])),
        Step(
            "var + eps",
            f"{decimal_text(v_d, 10)} + {format_value(eps, np.float64)}",
            decimal_text(total),
            fmt(r[1]),
        ),
        Step("sqrt(var + eps)", "", decimal_text(root), fmt(r[2])),
        Step("(x - mean) / sqrt(var + eps)", "", decimal_text(ratio), fmt(r[3])),
        Step("* gamma", f"* {fmt(g)}", decimal_text(scaled), fmt(r[4])),
        Step("+ beta", f"+ {fmt(b)}", decimal_text(y), fmt(r[5])),
        Step(f"rounded once to {out}", "", format_value(float(rounded), out), bits(float(rounded), out)),
    ]
