"""Inference: the exact dialect against an extended-precision oracle, layouts, out=, mixed precision."""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import batchnorm as bn
from oracles import textbook, ulp_distance
from strategies import inference_case

BF16 = np.dtype(ml_dtypes.bfloat16)


@given(inference_case())
def test_exact_is_within_one_ulp_of_extended_precision(case):
    x, mean, var, gamma, beta, eps, spec, axes = case
    y = bn.normalize(x, mean, var, gamma, beta, axis=spec, eps=eps)
    assert y.dtype == x.dtype and y.shape == x.shape
    want = textbook(x, mean, var, gamma, beta, eps, axes)
    assert ulp_distance(y, want, x.dtype).max(initial=0) <= 1.0


@given(inference_case(dtypes=[np.dtype(np.float64)]))
def test_exact_float64_is_within_a_few_ulps_of_max(case):
    x, mean, var, gamma, beta, eps, spec, axes = case
    y = bn.normalize(x, mean, var, gamma, beta, axis=spec, eps=eps)
    want = textbook(x, mean, var, gamma, beta, eps, axes).astype(np.float64)
    scale = max(np.abs(want).max(initial=0), 1.0)
    np.testing.assert_allclose(y, want, rtol=0, atol=4 * np.finfo(np.float64).eps * scale)


SAME_ARITHMETIC_IN_BOTH_LAYOUTS = [
    name
    for name in bn.dialects.names()
    if bn.dialects.get(name).for_input(4, (1,), 4) == bn.dialects.get(name).for_input(4, (3,), 4)
]


def test_only_tf_keras_fused_paths_depend_on_the_layout():
    assert set(bn.dialects.names()) - set(SAME_ARITHMETIC_IN_BOTH_LAYOUTS) == {"tf-keras", "tf-keras-2.11"}


@given(inference_case(), st.sampled_from(SAME_ARITHMETIC_IN_BOTH_LAYOUTS))
def test_channel_first_equals_channel_last_transposed(case, dialect):
    x, mean, var, gamma, beta, eps, _, _ = case
    if x.ndim != 4:
        x = x.reshape(1, -1, 1, 1)
        mean, var, gamma, beta = (np.resize(p, x.shape[1]) for p in (mean, var, gamma, beta))
    else:
        c = x.shape[1]
        mean, var, gamma, beta = (np.resize(p, c) for p in (mean, var, gamma, beta))
    nchw = bn.normalize(x, mean, var, gamma, beta, axis=1, eps=eps, dialect=dialect)
    nhwc = bn.normalize(
        x.transpose(0, 2, 3, 1).copy(), mean, var, gamma, beta, axis=-1, eps=eps, dialect=dialect
    )
    np.testing.assert_array_equal(nchw.transpose(0, 2, 3, 1), nhwc)


def _params(c, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=c).astype(np.float32),
        rng.uniform(0.5, 2, c).astype(np.float32),
        rng.normal(size=c).astype(np.float32),
        rng.normal(size=c).astype(np.float32),
    )


@pytest.mark.parametrize("axis", [1, -1, (1, 2)])
def test_fortran_and_strided_inputs_give_the_c_order_result(axis):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    cshape = tuple(x.shape[a] for a in ((axis,) if isinstance(axis, int) else axis))
    params = [p.reshape(cshape) for p in _params(int(np.prod(cshape)))]
    want = bn.normalize(x, *params, axis=axis)
    for variant in (np.asfortranarray(x), x.transpose(3, 2, 1, 0).copy().transpose(3, 2, 1, 0)):
        np.testing.assert_array_equal(bn.normalize(variant, *params, axis=axis), want)
    big = np.zeros((8, 3, 10, 6), np.float32)
    big[::2, :, ::2] = x
    np.testing.assert_array_equal(bn.normalize(big[::2, :, ::2], *params, axis=axis), want)


def test_out_receives_the_result_in_any_layout_and_in_place():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    params = _params(3)
    want = bn.normalize(x, *params, axis=1)
    for out in (
        np.empty_like(x),
        np.asfortranarray(np.empty_like(x)),
        np.empty((2, 3, 4, 10), np.float32)[..., ::2],
    ):
        result = bn.normalize(x, *params, axis=1, out=out)
        assert result is out
        np.testing.assert_array_equal(out, want)
    inplace = x.copy()
    assert bn.normalize(inplace, *params, axis=1, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, want)


@pytest.mark.parametrize("dtype", [np.float16, BF16])
def test_half_input_with_float32_parameters_keeps_the_input_dtype(dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 6)).astype(dtype)
    params = _params(6)
    y = bn.normalize(x, *params, axis=-1)
    assert y.dtype == np.dtype(dtype)
    want = textbook(x, *params, 1e-5, (1,))
    assert ulp_distance(y, want, dtype).max() <= 1.0


def test_flax_promotes_bfloat16_input_with_float32_parameters():
    x = np.ones((2, 3), BF16)
    mean, var, gamma, beta = _params(3)
    assert bn.normalize(x, mean, var, gamma, beta, dialect="flax").dtype == np.float32
    assert bn.normalize(x, [0.0] * 3, [1.0] * 3, dialect="flax").dtype == BF16


def test_exact_rounds_bfloat16_once():
    # 1 + 2**-8 + 2**-20 lies just above a bfloat16 tie; rounding through float32 first would not see it
    x = np.array([[1.0], [0.0]], BF16)
    y = bn.normalize(x, [0.0], [1.0], [1 + 2**-8 + 2**-20], [0.0], eps=0.0)
    assert float(y[0, 0]) == 1 + 2**-7


def test_empty_batch_normalizes_to_empty():
    x = np.empty((0, 3), np.float32)
    assert bn.normalize(x, [0] * 3, [1] * 3).shape == (0, 3)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    params = list(_params(4))
    copies = [a.copy() for a in (x, *params)]
    bn.normalize(x, *params)
    bn.normalize_batch(x, params[2], params[3])
    for a, b in zip((x, *params), copies, strict=True):
        np.testing.assert_array_equal(a, b)
