"""The NumPy float64 fused multiply-add against the CPU's own and against rational arithmetic."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from batchnorm._fma64 import fma64


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64)


def rational(a: float, b: float, c: float) -> float:
    """IEEE 754 fusedMultiplyAdd of one triple, from exact rational arithmetic."""
    if math.isfinite(a) and math.isfinite(b) and math.isinf(c):
        return c  # a finite product, however large, does not cancel an infinity
    if not all(math.isfinite(v) for v in (a, b, c)):
        return a * b + c
    if a == 0 or b == 0:
        return a * b + c
    total = Fraction(a) * Fraction(b) + Fraction(c)
    if total == 0:
        return 0.0
    try:
        return float(total)
    except OverflowError:
        return math.inf if total > 0 else -math.inf


def hard_cases(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Products near cancellation, sums near rounding ties, and the batch-norm case: float32 x minus a
    float64 mean, times a float64 scale, plus a float64 offset."""
    a = rng.standard_normal(n) * np.exp2(rng.integers(-60, 60, n))
    b = rng.standard_normal(n) * np.exp2(rng.integers(-60, 60, n))
    p = a * b
    third = n // 3
    c = np.concatenate(
        [
            -p[:third] * (1 + rng.integers(-4, 5, third) * 2.0**-52),
            np.ldexp(rng.integers(-8, 9, third).astype(float), np.frexp(p[third : 2 * third])[1] - 54)
            + p[third : 2 * third] * rng.standard_normal(third) * np.exp2(rng.integers(-60, 3, third)),
            rng.standard_normal(n - 2 * third) * np.exp2(rng.integers(-130, 130, n - 2 * third)),
        ]
    )
    x = rng.standard_normal(n).astype(np.float32).astype(np.float64) * 1e3
    a[: n // 2] = x[: n // 2] - rng.standard_normal(n // 2) * 1e3
    return a, b, c


def test_equals_the_cpus_fused_multiply_add():
    pytest.importorskip("numba")
    from numba import njit

    from batchnorm._kernels.compiled import _fma64

    @njit
    def hardware(a, b, c, out):
        for i in range(a.size):
            out[i] = _fma64(a[i], b[i], c[i])

    rng = np.random.default_rng(20261127)
    for _ in range(4):
        a, b, c = hard_cases(rng, 1 << 20)
        want = np.empty_like(a)
        hardware(a, b, c, want)
        np.testing.assert_array_equal(bits(fma64(a, b, c)), bits(want))
        plain = a * b + c
        assert (bits(plain) != bits(want)).sum() > 1000  # the cases do tell a fused result apart


SPECIAL = [
    0.0,
    -0.0,
    1.0,
    -1.5,
    3.0,
    0.1,
    5e-324,
    -2.5e-320,
    2.2250738585072014e-308,
    1e-200,
    1e-160,
    1e150,
    1e200,
    1e300,
    1.7976931348623157e308,
    np.inf,
    -np.inf,
    np.nan,
]


def test_special_values_and_ranges_equal_rational_arithmetic():
    """Zeros of both signs, subnormals, products that underflow or overflow, infinities and NaN: where
    the error-free transformations cannot be exact, the exact fallback must agree too."""
    a, b, c = (g.reshape(-1) for g in np.meshgrid(SPECIAL, SPECIAL, SPECIAL, indexing="ij"))
    got = fma64(a, b, c)
    with np.errstate(all="ignore"):
        want = np.array([rational(*t) for t in zip(a.tolist(), b.tolist(), c.tolist(), strict=True)])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want)
    np.testing.assert_array_equal(bits(got[finite]), bits(want[finite]))


def test_random_triples_equal_rational_arithmetic():
    rng = np.random.default_rng(7)
    n = 20000
    a = rng.standard_normal(n) * np.exp2(rng.integers(-1070, 1020, n))
    b = rng.standard_normal(n) * np.exp2(rng.integers(-600, 600, n))
    c = rng.standard_normal(n) * np.exp2(rng.integers(-1070, 1020, n))
    with np.errstate(all="ignore"):
        got = fma64(a, b, c)
    want = np.array([rational(*t) for t in zip(a.tolist(), b.tolist(), c.tolist(), strict=True)])
    np.testing.assert_array_equal(bits(got), bits(want))


def test_broadcasts_and_keeps_the_shape():
    got = fma64(np.full((2, 3, 1), 0.1), np.float64(10.0), np.array([-1.0, 0.0, 1.0, 2.0]))
    assert got.shape == (2, 3, 4) and got.dtype == np.float64
    assert got[0, 0, 0] == float(Fraction(0.1) * 10 - 1)  # 2**-54 + 2**-56: a plain a * b + c gives 0
