"""A correctly rounded float64 fused multiply-add in NumPy: ``fl(a * b + c)`` with one rounding.

NumPy has no fused multiply-add (and Python's ``math.fma`` arrives with 3.13), so the reference kernels
build one from error-free transformations (Boldo and Melquiond, "Emulation of FMA and correctly rounded
sums: proved algorithms using rounding to odd", IEEE Trans. Computers 57(4), 2008)::

    uh + ul = a * b          exactly (Dekker's product, Veltkamp's split)
    th + tl = c + uh         exactly (Knuth's two-sum)
    v = RO(tl + ul)          rounded to odd
    fma = RN(th + v)

Rounding to odd is the two-sum's rounded value moved one ulp toward its error term when that value's
last significand bit is even. The transformations are exact while nothing overflows and the product's
error term stays normal; values outside that range (and mixed infinities) are computed exactly with
:class:`fractions.Fraction` instead, one by one.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

__all__ = ["fma64"]

_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's constant for 53-bit significands
#: magnitudes the transformations take exactly: the split's 2**27 * a and the sums cannot overflow, and
#: a product's error term (about 2**-106 of it) stays a normal float64.
_LARGEST = 2.0**995
_SMALLEST_PRODUCT = 2.0**-900
_SMALLEST_FACTOR = 2.0**-500


def _split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = _SPLIT * a
    hi = t - (t - a)
    return hi, a - hi


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _transformed(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    uh = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    ul = ((ah * bh - uh) + ah * bl + al * bh) + al * bl
    th, tl = _two_sum(c, uh)
    v, err = _two_sum(tl, ul)
    # to odd: an inexact v with an even significand moves one ulp toward err (v != 0 wherever err is)
    bits = v.view(np.int64)
    odd = (err != 0) & ((bits & 1) == 0)
    bits += odd * np.where((err > 0) == (v > 0), 1, -1)
    return th + v


def _exactly(a: float, b: float, c: float) -> float:
    """fma of one triple with rational arithmetic (finite a, b and c)."""
    total = Fraction(a) * Fraction(b) + Fraction(c)
    try:
        return float(total)
    except OverflowError:
        return np.inf if total > 0 else -np.inf


def fma64(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """a * b + c in float64, rounded once (broadcast; IEEE 754 fusedMultiplyAdd, round to nearest even)."""
    result_shape = np.broadcast_shapes(*(np.shape(v) for v in (a, b, c)))
    a, b, c = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (a, b, c))
    shape = np.broadcast_shapes(a.shape, b.shape, c.shape)
    with np.errstate(all="ignore"):
        product = np.abs(a * b)
        safe = (product > _SMALLEST_PRODUCT) & (product < _LARGEST) & (np.abs(c) < _LARGEST)
        for factor in (a, b):
            magnitude = np.abs(factor)
            safe &= (magnitude < _LARGEST) & (magnitude > _SMALLEST_FACTOR)
        if safe.all():  # per-channel factors stay unbroadcast
            return _transformed(a, b, c).reshape(result_shape)
        a, b, c = (np.broadcast_to(v, shape).reshape(-1) for v in (a, b, c))
        safe = np.broadcast_to(safe, shape).reshape(-1)
        out = a * b + c  # exact where a or b is 0, and right for infinities and NaNs in a or b
        factors = np.isfinite(a) & np.isfinite(b)
        out[factors & np.isinf(c)] = c[factors & np.isinf(c)]  # a finite product cannot cancel inf
        nonzero = factors & np.isfinite(c) & (a != 0) & (b != 0)
        out[safe] = _transformed(a[safe], b[safe], c[safe])
    for i in np.flatnonzero(nonzero & ~safe):
        out[i] = _exactly(float(a[i]), float(b[i]), float(c[i]))
    return out.reshape(result_shape)
