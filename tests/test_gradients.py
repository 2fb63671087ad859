"""The autodiff backward (batchnorm._gradients, Dialect.gradient="autodiff"): Flax's dx, dgamma, dbeta.

Golden bits were measured with jax 0.10.2 / flax 0.12.8 on the development host (AMD Zen 4): jax.vjp of
flax.linen.BatchNorm.apply w.r.t. (x, params), eager, as tests/parity/run_flax.py takes it. The data
are deterministic patterns (no random stream); at an offset of 1e4 the float32 fast variance is mostly
rounding (E[x^2] ~ 1e8 has ulp 8), so the clamp of max(0, E[x^2] - E[x]^2) and its derivative show.
"""

from __future__ import annotations

import numpy as np
import pytest

import batchnorm as bn
from batchnorm import _gradients, _rsqrt
from batchnorm._layout import plan

F = np.float32
FLAX = bn.dialects.get("flax")
CLOSED = FLAX.derive("flax-closed", gradient="closed_form")

pytestmark = pytest.mark.skipif(not _rsqrt.reproduced("xla"), reason="XLA's rsqrt needs x86-64 and numba")


def _data(shape, axis, offset=1e4, dtype=np.float32):
    i = np.arange(int(np.prod(shape)))
    x = (F(offset) + ((i * 37) % 17 - 8).astype(F) / F(7)).reshape(shape).astype(dtype)
    dy = (((i * 11) % 7 - 3).astype(F) / F(3)).reshape(shape)
    c = shape[axis]
    gamma = F(0.75) + np.arange(c, dtype=F) / F(4)
    beta = np.arange(c, dtype=F) - F(1)
    return x, dy, gamma, beta


def _bits(text: str, dtype=np.uint32) -> np.ndarray:
    return np.array([int(v, 16) for v in text.split()], dtype=dtype)


def _grads(x, dy, gamma, beta, axis, eps, dialect=FLAX, training=True):
    if training:
        batch = bn.normalize_batch(x, gamma, beta, axis=axis, eps=eps, dialect=dialect)
        mean, var = batch.mean, batch.var
    else:
        c = x.shape[axis]
        mean, var = np.full(c, 1e4, F), np.ones(c, F)
    return bn.backward(
        dy, x, gamma, mean=mean, var=var, axis=axis, eps=eps, training=training, dialect=dialect
    )


# -- golden bits from jax ---------------------------------------------------------------------------

A_DX = """c1a60503 3d957d48 43bb0000 4196354c bdc01308 c4c88000 403dbc96 be854bb2 43390000 c14d8c4e 3e1ff104
c4eb8000 41d57429 bc29cdc0 c2be0000 412decdf be356508 44df6000 c09e1d28 3e755dac c38c8000 c1a60503
3d952b00 44bc8000"""
C_DX = """db69 54f1 d8f1 58f1 d4f1 5d70 4fe8 dc72 5848 d99a 5bd3 d887 5df8 ca97 de62 54f1 d8f1 58f1 d4f1 5b69
4fe8 dc72 5848 d99a 5b94 d887 5df8 ca97 de62 5769"""
D_DX = """c1d2d18a 4128a7a2 c17cfb73 41a8a7a2 c0a8a7a2 41fcfb72 40a8a7a2 c1fcfb72 417cfb73 c1a8a7a2 41d2d18a
c128a7a2"""
E_DX = """bf3fffc1 3e7fffac beffffac 3effffac be7fffac 3f7fffac 0 bf7fffac 3eaaaa73 bf2aaa73 3f555510
bed55510 3f9fffcc 0 bf9fffcc 3e7fffac beffffac 3effffac be7fffac 3f3fffc1 0 bf7fffac
3eaaaa73 bf2aaa73 3f2aaa73 bed55510 3f9fffcc 0 bf9fffcc 3ed55510"""
F_DX = """bf642e40 3ea9e240 bf9d6b80 3f2e6360 bec79780 3ffbf190 3e2d9680 bfcb3660 3f0fc9e0 bf4ba4e0 3f8ca370
beb4a680 3f9d7cc0 bdcad200 bfe13640 3e87de00 bf521720 3f7251c0 be7c3a80 3fb1dc30 3d034800 bf9b0c90
3f2afba0 bfaff260 3f508540 bf07a580 3fe96ab0 be1a1500 bfa03110 3ed57840 bf298300 3f756d40 befec240
3f690ea0 be74cf80 bff3bd30 3ecc21c0 bf75f0c0 3fa59fe0 bf10f980 3f9fef50 bde6cb00 bf89fba0 3f0721e0
bf837b60 3efd34c0 bf2b7f20 3fd6e3c0 bc8c6c00 bfb21df0 3f43aa20 bf076120 3f519380 bf246f00 3f859840
3dc6b500 bfc74630 3f0832c0 bf8ce540 3f9318f0 beddaf40 3fcaf490 3e705280 bf71d580 3ec69040 bf960250
3f20bc40 beaae980 3fc45cd0 3dedf400 bfc40ad0 3f1e9c60 bf594c00 3f93cf00 bf497cc0 3f96a930 bd303200
bfd9cd10 3e591f80 bf43bfe0 3f809210 be996b80 3fb907c0 3db83600"""

GOLDEN = {
    # name: (shape, axis, eps, x dtype, scale, training, offset, dx bits, dgamma bits, dbeta bits)
    "A_rank2_last": ((8, 3), -1, 1e-3, np.float32, True, True, 1e4, A_DX, "c110c5e5 3c3ffe77 41a2b9ba",
                     "bf800000 3eaaaaab bf2aaaac"),
    "C_rank3_first_f16": ((2, 3, 5), 1, 1e-5, np.float16, True, True, 1e4, C_DX, "0 0 0",
                          "34000000 bf800000 3eaaaaab"),
    "D_rank2_noscale": ((6, 2), -1, 1e-3, np.float32, False, True, 1e4, D_DX, None, "bf7fffff b3000000"),
    "E_inference": ((2, 3, 5), 1, 1e-5, np.float32, True, False, 1e4, E_DX, "be745505 3fb0bfc6 bfedb508",
                    "34000000 bf800000 3eaaaaab"),
    "F_rank3_last_offset100": ((4, 7, 3), -1, 1e-3, np.float32, True, True, 100.0, F_DX,
                               "40541ec0 c024b233 c0121c14", "0 0 b3800000"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_flax_gradients_bit_for_bit(name):
    shape, axis, eps, dtype, scale, training, offset, dx_bits, dg_bits, db_bits = GOLDEN[name]
    x, dy, gamma, beta = _data(shape, axis, offset, dtype)
    gamma = gamma if scale else None
    dx, dgamma, dbeta = _grads(x, dy, gamma, beta, axis, eps, training=training)
    bits = np.uint16 if dtype == np.float16 else np.uint32
    assert dx.dtype == dtype and dgamma.dtype == F and dbeta.dtype == F
    np.testing.assert_array_equal(dx.view(bits).ravel(), _bits(dx_bits, bits))
    if dg_bits is not None:
        np.testing.assert_array_equal(dgamma.view(np.uint32), _bits(dg_bits))
    np.testing.assert_array_equal(dbeta.view(np.uint32), _bits(db_bits))


def test_closed_form_misses_the_flax_bits():
    """The golden dx is not the closed form's: the test above can tell the two apart."""
    for name in ("A_rank2_last", "D_rank2_noscale", "F_rank3_last_offset100"):
        shape, axis, eps, dtype, scale, _, offset, dx_bits, _, _ = GOLDEN[name]
        x, dy, gamma, beta = _data(shape, axis, offset, dtype)
        gamma = gamma if scale else None
        dx = _grads(x, dy, gamma, beta, axis, eps, dialect=CLOSED)[0]
        assert (dx.view(np.uint32).ravel() != _bits(dx_bits)).sum() > dx.size // 2


# -- the documented op sequence, one float32 scalar operation at a time -----------------------------


def _transcribed(x, dy, gamma, mean, var, eps):
    """The module docstring's sequence for a channel-last float32 (..., C) input whose reduced
    dimensions are all <= 32 and smaller than 4096 values: XLA sums each channel in row-major order."""
    c = x.shape[-1]
    xs, dys = x.reshape(-1, c), dy.reshape(-1, c)
    n = xs.shape[0]
    r = F(1) / F(n)
    dx = np.empty_like(xs)
    dgamma, dbeta = np.empty(c, F), np.empty(c, F)
    for j in range(c):
        shifted = F(var[j] + F(eps))
        inv = _rsqrt.rsqrt_xla(np.array([shifted], F))[0]
        g = F(1) if gamma is None else gamma[j]
        s = F(inv * g) if gamma is not None else inv
        sum_dy, t, sum_u = F(0), F(0), F(0)
        for i in range(n):
            sum_dy = F(sum_dy + dys[i, j])
            t = F(t + F(F(xs[i, j] - mean[j]) * dys[i, j]))
            sum_u = F(sum_u + F(dys[i, j] * s))
        dbeta[j], dgamma[j] = sum_dy, F(inv * t)
        tg = F(t * g) if gamma is not None else t
        d2 = F(tg * F(F(-0.5) * F(inv / shifted)))  # var > 0 here: the clamp's slope is 1
        d1 = F(-sum_u + F(-d2 * F(F(2) * mean[j])))
        for i in range(n):
            u = F(dys[i, j] * s)
            dx[i, j] = F(F(u + F(d1 * r)) + F(F(d2 * r) * F(F(2) * xs[i, j])))
    return dx.reshape(x.shape), dgamma, dbeta


@pytest.mark.parametrize("offset", [0.0, 30.0, 1e3])
@pytest.mark.parametrize("scale", [True, False])
def test_matches_the_documented_sequence(offset, scale):
    rng = np.random.default_rng(3)
    shape = (3, 9, 4)  # n = 27, not a power of two: the product by fl(1 / n) shows
    x = (offset + rng.normal(0.0, 1.0, shape)).astype(F)
    dy = rng.normal(0.0, 1.0, shape).astype(F)
    gamma = rng.normal(1.0, 0.5, 4).astype(F) if scale else None
    batch = bn.normalize_batch(x, gamma, None, axis=-1, eps=1e-3, dialect=FLAX)
    assert (batch.var > 0).all()
    ours = bn.backward(dy, x, gamma, mean=batch.mean, var=batch.var, axis=-1, eps=1e-3, dialect=FLAX)
    expected = _transcribed(x, dy, gamma, batch.mean, batch.var, 1e-3)
    for got, want in zip(ours, expected, strict=True):
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


# -- the clamp's derivative, dispatch ---------------------------------------------------------------


def test_clamp_slope_is_one_half_at_a_tie_and_zero_below():
    """Case A's channels have E[x^2] - E[x]^2 = -8, 16 and 0: slopes 0, 1 and 1/2 (jax's max)."""
    x, *_ = _data((8, 3), -1)
    layout = plan(x, (1,))
    var = bn.normalize_batch(x, axis=-1, dialect=FLAX).var
    np.testing.assert_array_equal(var, [0, 16, 0])
    slope = _gradients._clamp_slope(FLAX, layout.input3(x), var, layout.memory_shape)
    np.testing.assert_array_equal(slope, [0, 1, 0.5])
    unclamped = FLAX.derive("flax-unclamped", variance="sum_of_squares")
    np.testing.assert_array_equal(
        _gradients._clamp_slope(unclamped, layout.input3(x), var, layout.memory_shape), [1, 1, 1]
    )


def test_one_value_per_channel_keeps_the_sign_of_zero():
    """n = 1: XLA's reduce is a reshape, so dgamma = inv * ((x - mean) * dy) keeps -0 where dy < 0."""
    x = np.array([[1.0, 2.0, 3.0]], F)
    dy = np.array([[-1.0, 1.0, -2.0]], F)
    with pytest.warns(bn.BatchNormWarning, match="one value per channel"):
        batch = bn.normalize_batch(x, np.ones(3, F), axis=-1, eps=1e-3, dialect=FLAX)
    _, dgamma, _ = bn.backward(dy, x, np.ones(3, F), mean=batch.mean, var=batch.var, axis=-1, eps=1e-3,
                               dialect=FLAX)  # fmt: skip
    np.testing.assert_array_equal(np.signbit(dgamma), [True, False, True])


def test_applies_only_where_documented():
    assert _gradients.applies(FLAX, np.dtype(np.float32))
    assert _gradients.applies(FLAX, np.dtype(np.float16))
    assert not _gradients.applies(FLAX, np.dtype(np.float64))
    assert not _gradients.applies(FLAX.derive("flax-2pass", variance="two_pass"), np.dtype(np.float32))
    assert not _gradients.applies(CLOSED, np.dtype(np.float32))
    for name in ("exact", "torch", "keras3-jax", "keras3-torch", "tf-keras", "onnxruntime"):
        assert bn.dialects.get(name).gradient == "closed_form"


@pytest.mark.parametrize(
    ("dialect", "dtype"),
    [(FLAX.derive("flax-2pass", variance="two_pass"), np.float32), (FLAX, np.float64)],
    ids=["two_pass", "float64"],
)
def test_other_cases_keep_the_closed_form(dialect, dtype):
    x, dy, gamma, beta = _data((4, 7, 3), -1, offset=5.0)
    x, dy = x.astype(dtype), dy.astype(dtype)
    ours = _grads(x, dy, gamma, beta, -1, 1e-3, dialect=dialect)
    closed = _grads(x, dy, gamma, beta, -1, 1e-3, dialect=dialect.derive("closed", gradient="closed_form"))
    for a, b in zip(ours, closed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_other_reduction_sums_in_float64():
    """A dialect with gradient="autodiff" over another reduction sums in float64, rounded once."""
    d = FLAX.derive("flax-f64-sums", reduction="float64")
    x, dy, gamma, beta = _data((4, 7, 3), -1, offset=5.0)
    dx, _, dbeta = _grads(x, dy, gamma, beta, -1, 1e-3, dialect=d)
    np.testing.assert_array_equal(dbeta, dy.reshape(-1, 3).sum(axis=0, dtype=np.float64).astype(F))
    closed = _grads(x, dy, gamma, beta, -1, 1e-3, dialect=d.derive("c", gradient="closed_form"))[0]
    np.testing.assert_allclose(dx, closed, rtol=0, atol=1e-4)


# -- the fused kernels against the same sequence in NumPy -------------------------------------------


def _numpy_sequence(x3, dy3, mean, var, gamma, eps, shape, out_dtype, training=True):
    """The module docstring's sequence with NumPy float32 arrays (the sums by the dialect's tree)."""
    c = x3.shape[1]
    n = x3.shape[0] * x3.shape[2]
    xf, dyf = x3.astype(F), dy3.astype(F)
    m, v = mean.astype(F), var.astype(F)
    shifted = v + F(eps)
    inv = bn._arithmetic.reciprocal_root(FLAX, shifted)
    s = inv if gamma is None else inv * gamma
    dbeta = _gradients._channel_sum(FLAX, dyf, shape)
    t = _gradients._channel_sum(FLAX, (xf - m.reshape(1, c, 1)) * dyf, shape)
    u = dyf * s.reshape(1, c, 1)
    if not training:
        return u.astype(out_dtype), inv * t, dbeta
    tg = t if gamma is None else t * gamma
    d2 = (tg * (F(-0.5) * (inv / shifted))) * _gradients._clamp_slope(FLAX, x3, v, shape)
    d1 = -_gradients._channel_sum(FLAX, u, shape) + (-d2) * (F(2) * m)
    r = F(1) / F(n)
    c1, c2 = (d1 * r).reshape(1, c, 1), (d2 * r).reshape(1, c, 1)
    paths = c2 * (F(2) * xf)
    if out_dtype == F:
        dx = (u + c1) + paths
    else:
        dx = u.astype(out_dtype) + (paths + c1).astype(out_dtype)
    return dx, inv * t, dbeta


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize(("shape", "axis"), [((8, 12, 26, 26), 1), ((8, 26, 26, 12), -1), ((700, 5), -1)])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_fused_kernels_match_the_numpy_sequence(shape, axis, dtype, training):
    """Large enough for YNNPACK's tree and for parallel chunks (> 2^16 values), both walks of the
    kernels (channels innermost, rows of one channel); dx, dgamma, dbeta bit for bit."""
    rng = np.random.default_rng(5)
    x = (F(100) + rng.normal(0.0, 1.0, shape)).astype(dtype)
    dy = rng.normal(0.0, 1.0, shape).astype(F)
    c = shape[axis]
    gamma = rng.normal(1.0, 0.5, c).astype(F)
    batch = bn.normalize_batch(x, gamma, None, axis=axis, eps=1e-3, dialect=FLAX)
    ours = bn.backward(
        dy, x, gamma, mean=batch.mean, var=batch.var, axis=axis, eps=1e-3, training=training, dialect=FLAX
    )
    layout = plan(x, (axis % x.ndim,))
    x3, dy3 = layout.input3(x), layout.input3(dy)
    dx3, dgamma, dbeta = _numpy_sequence(
        x3, dy3, batch.mean, batch.var, gamma, 1e-3, layout.memory_shape, np.dtype(dtype), training
    )
    bits = np.uint16 if dtype == np.float16 else np.uint32
    np.testing.assert_array_equal(layout.input3(ours[0]).view(bits), dx3.view(bits))
    np.testing.assert_array_equal(ours[1].view(np.uint32), dgamma.view(np.uint32))
    np.testing.assert_array_equal(ours[2].view(np.uint32), dbeta.view(np.uint32))


def test_an_empty_input_has_empty_gradients():
    x = np.zeros((4, 0), np.float32)
    dx, dgamma, dbeta = bn.backward(x, x, None, mean=np.zeros(0), var=np.ones(0), axis=1, dialect="flax")
    assert dx.shape == (4, 0) and dgamma.shape == dbeta.shape == (0,)
