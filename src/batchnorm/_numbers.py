"""Numbers as people paste them: a framework's printed array, a list, a ``.npy`` or ``.npz`` file.

Commas, whitespace, brackets and parentheses separate numbers, and a framework's wrapper words
(``array(``, ``tensor(``, ``tf.Tensor(``, ``dtype=float32``, ``shape=(1, 3)``) are ignored, so the output
of ``print(y)`` pastes as it is. Square brackets give the shape when they nest rectangularly. ``...``
(NumPy's summary of a large array) marks elided values: what comes before it are the first values, what
comes after it the last.

Each number is rounded **once**, correctly, to the target dtype: a printed float32 reads back as the very
bits that were printed (the decimal is compared exactly with its two float32 neighbours, so no double
rounding through float64 can move it).

Read back, a number is written as the shortest text that gives the same bits (:func:`format_value`).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from decimal import Decimal
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
    "bits",
    "decimal_text",
    "format_eps",
    "format_value",
    "load",
    "parse",
    "to_dtype",
    "ulp_text",
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


# -- numbers as people read them -----------------------------------------------------------------------


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


def format_eps(eps: float) -> str:
    """An epsilon as the shortest float64 text: ``0.001``, ``1.001e-05``."""
    return format_value(eps, np.float64)


def ulp_text(n: int) -> str:
    """``1 ulp``, ``3 ulps``."""
    return f"{n} ulp" if n == 1 else f"{n} ulps"


def bits(v: float, dtype: np.dtype) -> str:
    """The bit pattern of ``v`` rounded to ``dtype``, in hex (``0x413fe771``)."""
    a = np.asarray(v, np.float64).astype(dtype)
    return f"0x{int(a.view(_UINT[dtype.itemsize])):0{2 * dtype.itemsize}x}"


def decimal_text(d: Decimal, digits: int = 17) -> str:
    """``d`` to ``digits`` significant digits, without trailing zeros."""
    if not d.is_finite():
        return str(d)
    text = f"{d:.{digits}g}"
    return text.rstrip("0").rstrip(".") if "." in text and "e" not in text.lower() else text
