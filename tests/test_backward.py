"""Gradients: central finite differences in float64, and PyTorch autograd as a second oracle."""

import numpy as np
import pytest
import torch

import batchnorm as bn


def _loss(x, gamma, beta, dy, axis, eps, training, mean=None, var=None):
    if training:
        y = bn.normalize_batch(x, gamma, beta, axis=axis, eps=eps).y
    else:
        y = bn.normalize(x, mean, var, gamma, beta, axis=axis, eps=eps)
    return float((y * dy).sum())


def _numeric_gradient(f, a, h=1e-6):
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        hi, lo = a.copy(), a.copy()
        hi[i] += h
        lo[i] -= h
        grad[i] = (f(hi) - f(lo)) / (2 * h)
    return grad


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(("shape", "axis"), [((4, 3), -1), ((2, 3, 2, 2), 1), ((2, 2, 3), (1, 2))])
def test_gradients_match_finite_differences(shape, axis, training):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    axes = (axis % len(shape),) if isinstance(axis, int) else axis
    cshape = tuple(shape[a] for a in axes)
    gamma, beta = rng.standard_normal(cshape), rng.standard_normal(cshape)
    mean, var = rng.standard_normal(cshape), rng.uniform(0.5, 2, cshape)
    dy = rng.standard_normal(shape)
    eps = 1e-3
    if training:
        r = bn.normalize_batch(x, gamma, beta, axis=axis, eps=eps)
        mean, var = r.mean, r.var
    kw = dict(axis=axis, eps=eps, training=training)
    stats = dict(mean=mean, var=var)
    dx, dgamma, dbeta = bn.backward(dy, x, gamma, **stats, **kw)
    f_x = lambda a: _loss(a, gamma, beta, dy, axis, eps, training, **stats)  # noqa: E731
    f_g = lambda a: _loss(x, a, beta, dy, axis, eps, training, **stats)  # noqa: E731
    f_b = lambda a: _loss(x, gamma, a, dy, axis, eps, training, **stats)  # noqa: E731
    np.testing.assert_allclose(dx, _numeric_gradient(f_x, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dgamma, _numeric_gradient(f_g, gamma), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dbeta, _numeric_gradient(f_b, beta), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_match_torch_autograd(training, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 5, 5)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    gamma, beta = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    rmean, rvar = rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    tg, tb = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    ty = torch.nn.functional.batch_norm(
        tx, torch.tensor(rmean), torch.tensor(rvar), tg, tb, training=training, eps=1e-5
    )
    ty.backward(torch.tensor(dy))
    if training:
        r = bn.normalize_batch(x, gamma, beta, axis=1, eps=1e-5)
        mean, var = r.mean, r.var
    else:
        mean, var = rmean, rvar
    dx, dgamma, dbeta = bn.backward(dy, x, gamma, mean=mean, var=var, axis=1, eps=1e-5, training=training)
    assert dx.dtype == dtype and dgamma.dtype == dtype
    tol = 50 * np.finfo(dtype).eps
    for ours, theirs in ((dx, tx.grad), (dgamma, tg.grad), (dbeta, tb.grad)):
        t = theirs.numpy()
        np.testing.assert_allclose(ours, t, rtol=0, atol=tol * np.abs(t).max())


def test_layer_backward_stores_the_grads_of_existing_parameters():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    layer = bn.BatchNorm(4, center=False)
    with pytest.raises(bn.BatchNormError, match="forward call first"):
        layer.backward(dy)
    layer(x, training=True)
    dx = layer.backward(dy)
    assert set(layer.grads) == {"gamma"} and dx.shape == x.shape
    r = bn.normalize_batch(x)
    want = bn.backward(dy, x, np.ones(4, np.float32), mean=r.mean, var=r.var)
    np.testing.assert_array_equal(dx, want[0])
    np.testing.assert_array_equal(layer.grads["gamma"], want[1])
