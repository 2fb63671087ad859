"""The torch-batchnorm reduction: the numba kernels against a scalar loop in the documented order.

The oracle below is plain Python over NumPy scalars, one rounding per operation as the module's
docstring (and PyTorch's batch_norm_kernel.cpp) orders them; an FMA is rounded exactly with fractions.
No framework is needed: the parity suite compares with PyTorch itself.
"""

from __future__ import annotations

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import batchnorm as bn
from batchnorm._reductions import torch_batchnorm as tb

F32, F64 = np.float32, np.float64
BF16 = np.dtype(ml_dtypes.bfloat16)


def _fma(a, b, c, dtype):
    """a * b + c rounded once to ``dtype`` (float32 or float64), exactly."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if dtype == F64:
        return F64(float(exact))  # float(Fraction) rounds correctly
    near = F32(float(exact))
    candidates = (np.nextafter(near, F32(-np.inf)), near, np.nextafter(near, F32(np.inf)))
    best = min(abs(Fraction(float(v)) - exact) for v in candidates)
    ties = [v for v in candidates if abs(Fraction(float(v)) - exact) == best]
    return min(ties, key=lambda v: int(v.view(np.int32)) & 1)  # ties to even


def _contiguous(x3, fused):
    """float32 / float64, inner > 1: float64 sums in memory order."""
    outer, C, inner = x3.shape
    dt = x3.dtype.type
    n = outer * inner
    means, sums = [], []
    for c in range(C):
        s = 0.0
        for o in range(outer):
            for i in range(inner):
                s += float(x3[o, c, i])
        m = dt(s / n)
        s = F64(0.0)
        for o in range(outer):
            for i in range(inner):
                d = dt(x3[o, c, i] - m)
                last_odd = fused and dt is F64 and inner % 2 == 1 and i == inner - 1
                s = _fma(d, d, s, F64) if last_odd else F64(s + F64(dt(d * d)))
        means.append(m)
        sums.append(dt(s))
    return means, sums


def _lanes(x3):
    """half inputs, inner > 1: 8 float32 lanes over blocks of 16, a scalar for the rest of each row."""
    outer, C, inner = x3.shape
    n = F32(outer * inner)
    body = inner - inner % 16
    means, sums = [], []
    for c in range(C):
        m = None
        for step in ("mean", "var"):
            lanes = [F32(0.0)] * 8
            s = F32(0.0)
            for o in range(outer):
                for i in range(inner):
                    v = F32(x3[o, c, i])
                    term = v if m is None else F32(F32(v - m) * F32(v - m))
                    if i < body:
                        lanes[i % 8] = F32(lanes[i % 8] + term)
                    else:
                        s = F32(s + term)
            r = lanes[0]
            for lane in lanes[1:]:
                r = F32(r + lane)
            s = F32(s + r)
            if step == "mean":
                m = F32(s / n)
        means.append(m)
        sums.append(s)
    return means, sums


def _channels_last(x3, threads, fused):
    """inner == 1: per-thread row chunks, merged in thread order."""
    rows, C, _ = x3.shape
    half = x3.dtype not in (np.dtype(F32), np.dtype(F64))
    dt = F32 if half else x3.dtype.type
    merge = F32 if half else F64
    n = rows
    means, sums = [], []
    serial = rows <= threads and not half
    chunk = -(-rows // min(threads, rows))
    for c in range(C):
        column = [dt(v) for v in x3[:, c, 0]]
        if serial:
            s = dt(0.0)
            for v in column:
                s = dt(s + v)
            m = dt(s / dt(n))
            acc = dt(0.0)
            for v in column:
                d = dt(v - m)
                acc = _fma(d, d, acc, dt) if fused else dt(acc + dt(d * d))
            means.append(m)
            sums.append(acc)
            continue
        parts = [column[t * chunk : (t + 1) * chunk] for t in range(threads)]
        total = merge(0.0)
        for part in parts:
            s = dt(0.0)
            for v in part:
                s = dt(s + v)
            total = merge(total + merge(s))
        m = dt(merge(total / merge(n)))
        total = merge(0.0)
        for part in parts:
            acc = dt(0.0)
            for v in part:
                d = dt(v - m)
                acc = _fma(d, d, acc, dt)
            total = merge(total + merge(acc))
        means.append(m)
        sums.append(dt(total))
    return means, sums


def oracle(x3, threads, fused=True):
    outer, _, inner = x3.shape
    half = x3.dtype not in (np.dtype(F32), np.dtype(F64))
    if inner > 1:
        means, sums = _lanes(x3) if half else _contiguous(x3, fused)
    else:
        means, sums = _channels_last(x3, threads, fused)
    dt = F32 if half else x3.dtype.type
    var = [dt(s / dt(outer * inner)) for s in sums]
    return np.array(means, dt), np.array(var, dt)


def _bits_equal(a, b):
    return np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


def _inputs(seed):
    rng = np.random.default_rng(seed)
    for dtype in (F32, F64, np.float16, BF16):
        for offset in (0.0, 1e4):
            if dtype in (np.float16, BF16) and offset:
                offset = 100.0
            for _ in range(3):
                outer, C = int(rng.integers(1, 10)), int(rng.integers(1, 7))
                inner = int(rng.choice([1, 1, int(rng.integers(2, 40))]))
                if outer * inner < 2:
                    outer = 2
                scale = 10.0 ** rng.uniform(-3, 3)
                x = offset + scale * rng.standard_normal((outer, C, inner))
                yield np.asarray(x).astype(dtype)


@pytest.mark.parametrize("seed", range(3))
def test_kernels_follow_the_documented_order(seed):
    for x3 in _inputs(seed):
        for threads in (1, 2, 3, 5):
            if x3.shape[2] > 1 and threads != 2:
                continue  # contiguous inputs do not depend on the thread count
            stat = np.float64 if x3.dtype == F64 else np.float32
            ours = tb.moments(x3, "two_pass", np.dtype(stat), threads=threads)
            want = oracle(x3, threads)
            assert _bits_equal(ours[0], want[0]), (x3.dtype, x3.shape, threads, "mean")
            assert _bits_equal(ours[1], want[1]), (x3.dtype, x3.shape, threads, "var")


def test_unfused_variant_follows_the_documented_order():
    rng = np.random.default_rng(7)
    for shape, dtype in (((3, 4, 7), F64), ((2, 5, 1), F32), ((9, 3, 1), F64)):
        x3 = (1e4 + rng.standard_normal(shape)).astype(dtype)
        ours = tb.moments(x3, "two_pass", np.dtype(dtype), threads=2, fused=False)
        want = oracle(x3, 2, fused=False)
        assert _bits_equal(ours[0], want[0]) and _bits_equal(ours[1], want[1]), shape


def test_the_thread_count_changes_channels_last_sums_only():
    rng = np.random.default_rng(3)
    rows = (1e4 + rng.standard_normal((4096, 8, 1))).astype(F32)
    results = {t: tb.moments(rows, "two_pass", np.dtype(F32), threads=t)[1] for t in (1, 2, 3)}
    assert not (_bits_equal(results[1], results[2]) and _bits_equal(results[2], results[3]))
    planes = np.ascontiguousarray(rows.reshape(16, 256, 8).transpose(0, 2, 1))
    contiguous = {t: tb.moments(planes, "two_pass", np.dtype(F32), threads=t)[1] for t in (1, 2, 3)}
    assert _bits_equal(contiguous[1], contiguous[2]) and _bits_equal(contiguous[2], contiguous[3])


def test_dialect_threads_reach_the_reduction():
    rng = np.random.default_rng(4)
    x = (1e4 + rng.standard_normal((4096, 8))).astype(F32)
    for threads in (1, 3):
        d = bn.dialects.get("torch").derive(f"torch-{threads}-threads", reduction_threads=threads)
        batch = bn.normalize_batch(x, dialect=d)
        mean, var = tb.moments(x.reshape(4096, 8, 1), "two_pass", np.dtype(F64), threads=threads)
        assert _bits_equal(batch.mean, mean) and _bits_equal(batch.var, var)


def test_training_scale_is_formed_in_float64_eps_as_given():
    """y = fma(x, a, fma(-mean, a, b)), a = fl32(invstd * g), invstd = fl32(1 / sqrt(var + eps)) in
    float64 with eps not rounded to float32 (PyTorch's save_invstd)."""
    rng = np.random.default_rng(5)
    x = (3.0 + rng.standard_normal((6, 5, 4, 3))).astype(F32)
    g = rng.normal(1, 0.5, 5).astype(F32)
    b = rng.normal(0, 1, 5).astype(F32)
    batch = bn.normalize_batch(x, g, b, eps=1e-5, dialect="torch")
    invstd = (1.0 / np.sqrt(batch.var.astype(F64) + 1e-5)).astype(F32)
    a = invstd * g
    offset = (-batch.mean.astype(F64) * a + b).astype(F32)
    want = (x.astype(F64) * a[:, None, None] + offset[:, None, None]).astype(F32)
    assert _bits_equal(batch.y, want)
    # backward in training uses the same rounded scale
    dy = rng.standard_normal(x.shape).astype(F32)
    _, dgamma, _ = bn.backward(dy, x, g, mean=batch.mean, var=batch.var, eps=1e-5, dialect="torch")
    xmu = x.astype(F64) - batch.mean.astype(F64)[:, None, None]
    want_dgamma = ((dy.astype(F64) * xmu).sum(axis=(0, 2, 3)) * invstd.astype(F64)).astype(F32)
    np.testing.assert_allclose(dgamma, want_dgamma, rtol=1e-6)


def test_only_two_pass_and_positive_threads():
    x3 = np.ones((4, 2, 3), F32)
    with pytest.raises(bn.BatchNormError, match="two-pass"):
        tb.moments(x3, "sum_of_squares", np.dtype(F32))
    with pytest.raises(bn.BatchNormError, match="threads"):
        tb.moments(x3, "two_pass", np.dtype(F32), threads=0)


def test_default_threads(monkeypatch):
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = tb.default_threads()
    assert cores >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert tb.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "4096")
    assert tb.default_threads() == cores  # torch caps a larger request at the cores
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    assert tb.default_threads() == 1  # MKL_NUM_THREADS wins over OMP_NUM_THREADS
