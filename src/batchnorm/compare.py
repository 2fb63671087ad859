"""Two arrays compared as a numerics engineer would (``batchnorm compare``), and distances in ulps.

:func:`compare` reports differences, ulps and the tolerances that would pass, modelled on polygraphy's
output comparison. ``b`` is the reference: relative differences divide by ``|b|``, and an element
passes when ``|a - b| <= atol + rtol * |b|`` (NumPy's ``allclose`` rule). NaN equals NaN; a NaN on one
side only fails. Ulps are counted at the narrower of the two dtypes, after rounding both arrays to it
once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._rounding import round_once

__all__ = ["Comparison", "compare", "signed_ulps", "ulp_distance", "ulp_histogram", "ulps"]


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare`. Metrics are None when the shapes differ."""

    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    atol: float
    rtol: float
    max_ulp_allowed: int | None
    passed: bool
    ulp_dtype: str | None = None
    count: int = 0
    failing: int = 0
    nan_mismatch: int = 0
    max_abs: float | None = None
    mean_abs: float | None = None
    max_rel: float | None = None
    mean_rel: float | None = None
    max_ulp: int | None = None
    atol_needed: float | None = None
    rtol_needed: float | None = None
    worst_index: tuple[int, ...] | None = None
    worst_a: float | None = None
    worst_b: float | None = None
    histogram: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def signed_ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b in ulps of their common dtype, elementwise, as int64 (NaN positions are meaningless)."""
    difference = _ordered(a) - _ordered(b)
    return difference if difference.dtype == np.int64 else difference.view(np.int64)


def _ordered(a: np.ndarray) -> np.ndarray:
    """Floats mapped to integers that count ulps: adjacent floats differ by 1, +0 and -0 are both 0.

    int64 for float16, bfloat16 and float32; for float64, uint64 offset by 2**63, whose differences
    wrap to the right int64 (see :func:`signed_ulps`).
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


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in ulps of their common dtype, elementwise, as int64 (NaN positions are meaningless)."""
    return np.abs(signed_ulps(a, b))


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise ulp distance at ``b``'s dtype (``a`` rounded to it once); NaN against NaN is 0, NaN
    against a number is 2**31 - 1."""
    a = np.asarray(a)
    if a.dtype != b.dtype:
        a = round_once(a.astype(np.float64), b.dtype)
    nan_a, nan_b = np.isnan(a.astype(np.float64)), np.isnan(b.astype(np.float64))
    return np.where(nan_a & nan_b, 0, np.where(nan_a | nan_b, np.iinfo(np.int32).max, ulp_distance(a, b)))


def ulp_histogram(ulps: np.ndarray) -> list[tuple[str, int]]:
    """Counts in the buckets 0, 1, 2, 3-4, 5-8, 9-16, ... up to the largest one used."""
    if ulps.size == 0:
        return []
    top = int(ulps.max())
    buckets = [(0, 0), (1, 1)]
    hi = 2
    while buckets[-1][1] < top:
        buckets.append((buckets[-1][1] + 1, hi))
        hi *= 2
    return [
        (str(lo) if lo == hi else f"{lo}-{hi}", int(((ulps >= lo) & (ulps <= hi)).sum()))
        for lo, hi in buckets
    ]


def compare(
    a: np.ndarray, b: np.ndarray, *, atol: float = 1e-5, rtol: float = 1e-5, max_ulp: int | None = None
) -> Comparison:
    """Compare ``a`` with the reference ``b`` (same shape; dtypes may differ)."""
    a, b = np.asarray(a), np.asarray(b)
    head = dict(
        shape_a=a.shape,
        shape_b=b.shape,
        dtype_a=str(a.dtype),
        dtype_b=str(b.dtype),
        atol=atol,
        rtol=rtol,
        max_ulp_allowed=max_ulp,
    )
    if a.shape != b.shape:
        note = f"shapes differ: {a.shape} vs {b.shape}; nothing else was compared"
        return Comparison(**head, passed=False, notes=[note])  # type: ignore[arg-type]
    ulp_dtype = _narrower(a.dtype, b.dtype)
    notes = (
        []
        if a.dtype == b.dtype
        else [f"dtypes differ ({a.dtype} vs {b.dtype}): differences in float64, ulps in {ulp_dtype}"]
    )
    wa, wb = a.astype(np.float64), b.astype(np.float64)
    nan_a, nan_b = np.isnan(wa), np.isnan(wb)
    diff, rel, ok = _differences(wa, wb, nan_a & nan_b, nan_a ^ nan_b, atol, rtol)
    counted = ~(nan_a | nan_b)
    ulps = ulp_distance(round_once(wa, ulp_dtype), round_once(wb, ulp_dtype))[counted]
    max_ulp_seen = int(ulps.max()) if ulps.size else 0
    nan_mismatch = int((nan_a ^ nan_b).sum())
    if nan_mismatch:
        notes.append(f"{nan_mismatch} element(s) are NaN on one side only")
    max_abs, mean_abs = _max_and_mean(diff[counted])
    max_rel, mean_rel = _max_and_mean(rel[counted])
    worst = (
        np.unravel_index(int(np.argmax(np.where(np.isnan(diff), np.inf, diff))), a.shape) if a.size else None
    )
    return Comparison(
        **head,  # type: ignore[arg-type]
        passed=bool(ok.all()) and (max_ulp is None or max_ulp_seen <= max_ulp),
        ulp_dtype=str(ulp_dtype),
        count=int(a.size),
        failing=int((~ok).sum()),
        nan_mismatch=nan_mismatch,
        max_abs=max_abs,
        mean_abs=mean_abs,
        max_rel=max_rel,
        mean_rel=mean_rel,
        max_ulp=max_ulp_seen,
        atol_needed=max_abs,
        rtol_needed=max_rel,
        worst_index=None if worst is None else tuple(int(i) for i in worst),
        worst_a=None if worst is None else float(wa[worst]),
        worst_b=None if worst is None else float(wb[worst]),
        histogram=ulp_histogram(ulps),
        notes=notes,
    )


def _narrower(a: np.dtype, b: np.dtype) -> np.dtype:
    if a.itemsize != b.itemsize:
        return a if a.itemsize < b.itemsize else b
    return a if np.finfo(a).eps >= np.finfo(b).eps else b


def _differences(
    wa: np.ndarray, wb: np.ndarray, both_nan: np.ndarray, lone_nan: np.ndarray, atol: float, rtol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|a - b| and |a - b| / |b| (0 where equal, NaN against NaN included), and where allclose holds."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        diff = np.where(both_nan | (wa == wb), 0.0, np.abs(wa - wb))
        rel = np.where(diff == 0, 0.0, diff / np.abs(wb))
        ok = ((diff <= atol + rtol * np.abs(wb)) | both_nan) & ~lone_nan
    return diff, rel, ok


def _max_and_mean(values: np.ndarray) -> tuple[float, float]:
    """Largest and mean of ``values``; 0 for none."""
    return (float(values.max()) if values.size else 0.0), float(values.sum() / max(values.size, 1))
