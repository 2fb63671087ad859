"""Batch normalization as pure functions: inference, training forward, running statistics, backward.

Notation, per channel c, over the n values of every non-channel position::

    mean = sum(x) / n,    var = sum((x - mean)^2) / n           (the biased batch variance)
    y    = (x - mean) / sqrt(var + eps) * gamma + beta

``gamma=None`` means 1 (no scale) and ``beta=None`` means 0 (no centre). Statistics and parameters have
the channel shape: ``x.shape[axis]``, or the shape of the channel axes when ``axis`` is a tuple.
Inputs are never modified.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _gradients, _kernels, _reductions, _running, _validate
from ._arithmetic import coefficients, compute_dtype
from ._errors import BatchNormError, BatchNormWarning, FrameworkRuleError
from ._layout import Layout, plan
from ._rounding import round_once
from .dialects import Dialect, get

__all__ = ["BatchResult", "backward", "normalize", "normalize_batch", "update_running"]

Axis = int | tuple[int, ...]


@dataclass(frozen=True)
class BatchResult:
    """The result of a training forward pass.

    Attributes
    ----------
    y : ndarray
        The normalized output, shape and dtype of ``x``.
    mean, var : ndarray
        The batch mean and the **biased** batch variance (divided by n): what ``y`` was normalized with.
        float64 for the exact dialect; the framework's statistics dtype otherwise.
    count : int
        n, the number of values per channel.
    dialect : Dialect
        The dialect as resolved for this input (tf-keras: its fused or unfused path).
    """

    y: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    count: int
    dialect: Dialect
    #: the framework's float32 sum of squared deviations, where its running update divides that sum
    #: by n - 1 rather than correcting the rounded variance (PyTorch); None elsewhere
    _var_sum: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class _Prepared:
    x: np.ndarray
    layout: Layout
    dialect: Dialect
    eps: float
    given_eps: float  # as passed (or the dialect's default), before the dialect stores it as float32


#: What :func:`_prepare` derives from (dialect, axis, eps, shape, strides): repeated calls on inputs of
#: one shape skip the checks and the layout planning. Bounded: cleared when it fills.
_RESOLVED: dict[tuple[Any, ...], tuple[Dialect, Layout, Dialect, float, float]] = {}
_RESOLVED_MAX = 256


def _typed(value: Any) -> Any:
    """A cache key for an argument, with its type (True and 1 must not share an entry)."""
    if isinstance(value, (tuple, list)):
        return tuple(_typed(v) for v in value)
    return type(value), value


def _prepare(x: Any, axis: Axis | None, eps: float | None, dialect: str | Dialect) -> _Prepared:
    d0 = get(dialect)
    x = _validate.input_array(x)
    key: tuple[Any, ...] | None = (id(d0), _typed(axis), _typed(eps), x.shape, x.strides)
    try:
        hit = _RESOLVED.get(key)  # type: ignore[arg-type]
    except TypeError:  # an unhashable argument: checked below, not cached
        hit, key = None, None
    if hit is not None and hit[0] is d0:
        return _Prepared(x, hit[1], hit[2], hit[3], hit[4])
    axes = _validate.channel_axes(d0.axis if axis is None else axis, x.ndim)
    d = d0.for_input(x.ndim, axes, channels=math.prod(x.shape[a] for a in axes))
    given = _validate.epsilon(d.eps if eps is None else eps)
    layout = plan(x, axes)
    effective = d.effective_eps(given)
    if key is not None:
        if len(_RESOLVED) >= _RESOLVED_MAX:
            _RESOLVED.clear()
        _RESOLVED[key] = (d0, layout, d, effective, given)
    return _Prepared(x, layout, d, effective, given)


def _output(p: _Prepared, dtype: np.dtype, out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if out is None:
        return p.layout.new_output(dtype)
    if not isinstance(out, np.ndarray) or out.shape != p.x.shape or out.dtype != dtype:
        got = f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
        raise BatchNormError(
            f"out must be an array of shape {p.x.shape} and dtype {dtype}; got {got}. "
            "Allocate it with numpy.empty_like(x), or leave out=None"
        )
    if out is not p.x and np.shares_memory(out, p.x):
        raise BatchNormError(
            "out may share memory with x only when it is x itself (an in-place call); "
            "got an overlapping view. Pass a separate array, or out=x"
        )
    view = p.layout.view3(out)
    if view is None:
        view = np.empty((p.layout.outer, p.layout.channels, p.layout.inner), dtype)
    return out, view


def _finish(out: np.ndarray, out3: np.ndarray, layout: Layout) -> None:
    if layout.view3(out) is None:
        out[...] = out3.reshape(layout.memory_shape).transpose(layout.inverse_perm)


def _output_dtype(d: Dialect, x: np.ndarray, *params: Any) -> np.dtype:
    """x's dtype; for a promoting dialect (Flax), promoted with the dtypes of the array parameters
    (Python numbers and lists are weak, as in NumPy and JAX)."""
    if not d.promote_output:
        return x.dtype
    return np.result_type(x.dtype, *(p.dtype for p in params if isinstance(p, (np.ndarray, np.generic))))


def _parameters(p: _Prepared, gamma: Any, beta: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    shape = p.layout.channel_shape
    g = None if gamma is None else _validate.channel_parameter(gamma, "gamma", shape)
    b = None if beta is None else _validate.channel_parameter(beta, "beta", shape)
    return g, b


def _transform(
    p: _Prepared,
    mean: np.ndarray,
    var: np.ndarray,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    out: np.ndarray | None,
    raw: tuple[Any, ...] = (),
    inverse_root: np.ndarray | None = None,
) -> np.ndarray:
    layout = p.layout
    co = coefficients(
        p.dialect,
        mean.reshape(-1),
        var.reshape(-1),
        None if gamma is None else gamma.reshape(-1),
        None if beta is None else beta.reshape(-1),
        p.eps,
        compute_dtype(p.dialect, p.x.dtype),
        inverse_root=None if inverse_root is None else inverse_root.reshape(-1),
    )
    if not layout.channels_in_order:
        co = co.reordered(layout.flat_channels)
    y, y3 = _output(p, _output_dtype(p.dialect, p.x, *raw), out)
    _kernels.apply_affine(layout.input3(p.x), co, y3)
    _finish(y, y3, layout)
    return y


def normalize(
    x: Any,
    mean: Any,
    var: Any,
    gamma: Any = None,
    beta: Any = None,
    *,
    axis: Axis | None = None,
    eps: float | None = None,
    dialect: str | Dialect = "exact",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Inference: normalize ``x`` with given statistics.

    ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, per channel, in the dialect's arithmetic
    (the exact dialect: float64, rounded once to the dtype of ``x``).

    Parameters
    ----------
    x : ndarray, rank >= 2, float16, bfloat16, float32 or float64
    mean, var, gamma, beta : array_like of the channel shape (gamma, beta optional)
    axis : int or tuple of ints, optional
        The channel axis or axes; None means the dialect's default (-1 exact/Keras/Flax, 1 torch/ONNX).
    eps : float >= 0, optional
        None means the dialect's default. 0 is allowed; var + eps == 0 in a channel raises.
    dialect : str or Dialect
    out : ndarray, optional
        Where to write y (shape and dtype of the result); may be ``x`` itself.

    Returns
    -------
    ndarray
        The shape of ``x``, and its dtype (Flax promotes to the parameters' dtype, as Flax does).
    """
    p = _prepare(x, axis, eps, dialect)
    shape = p.layout.channel_shape
    m = _validate.channel_parameter(mean, "mean", shape)
    v = _validate.variance(var, shape)
    g, b = _parameters(p, gamma, beta)
    _validate.nonzero_denominator(v, p.eps)
    return _transform(p, m, v, g, b, out, raw=(mean, var, gamma, beta))


def normalize_batch(
    x: Any,
    gamma: Any = None,
    beta: Any = None,
    *,
    axis: Axis | None = None,
    eps: float | None = None,
    dialect: str | Dialect = "exact",
) -> BatchResult:
    """Training forward: normalize ``x`` with its own per-channel mean and biased variance.

    The batch variance is ``sum((x - mean)^2) / n`` computed two-pass in float64 for the exact dialect;
    dialects that reproduce a framework use its algorithm (Flax and Keras 3 on torch: E[x^2] - E[x]^2).
    One value per channel (n = 1) gives variance 0 and a :class:`BatchNormWarning`, unless the dialect's
    framework refuses it (PyTorch).
    """
    p = _prepare(x, axis, eps, dialect)
    g, b = _parameters(p, gamma, beta)
    n = p.layout.count
    _check_training(p, n)
    stats_dtype = _statistics_dtype(p)
    x3 = p.layout.input3(p.x)
    d = p.dialect
    mean3, var3, var_sum3 = _reductions.statistics(
        d.reduction, x3, d.variance, stats_dtype, shape=p.layout.memory_shape, threads=d.reduction_threads
    )
    mean = p.layout.unflat_channels(mean3)
    var = p.layout.unflat_channels(var3)
    var_sum = None if var_sum3 is None else p.layout.unflat_channels(var_sum3)
    _validate.nonzero_denominator(var, p.eps, where="batch variance")
    root = _saved_inverse_root(p, var)
    y = _transform(p, mean, var, g, b, None, raw=(gamma, beta, mean, var), inverse_root=root)
    return BatchResult(y=y, mean=mean, var=var, count=n, dialect=p.dialect, _var_sum=var_sum)


def _saved_inverse_root(p: _Prepared, var: np.ndarray) -> np.ndarray | None:
    """The 1 / sqrt(var + eps) a training step normalizes with, where the dialect forms it apart from
    inference (``training_inverse_root="float64"``): in float64 from the batch variance, eps as given
    (not stored as float32), rounded once to the compute dtype. PyTorch's save_invstd:
    InvStd<acc_type>(var, eps) in aten/src/ATen/native/Normalization.cpp, whose ``var + epsilon``
    (epsilon a double) is a double for every input dtype. None: inference's scale."""
    d = p.dialect
    if d.training_inverse_root == "inference":
        return None
    eps = p.given_eps if p.given_eps > d.eps_floor else d.eps_floor
    with np.errstate(divide="ignore"):
        inverse = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    return inverse.astype(compute_dtype(d, p.x.dtype))


def _statistics_dtype(p: _Prepared) -> np.dtype:
    if p.dialect.statistics_precision == "float64":
        return np.dtype(np.float64)
    return compute_dtype(p.dialect, p.x.dtype)


def _check_training(p: _Prepared, n: int) -> None:
    d = p.dialect
    if n == 0:
        raise BatchNormError(
            f"training needs at least one value per channel; got an empty batch of shape {p.x.shape}. "
            "Skip empty batches, or call normalize() for inference"
        )
    if d.refuses_nonpositive_eps_in_training and p.eps <= 0:
        raise FrameworkRuleError(
            f"{d.framework} refuses eps <= 0 in training; got eps = {p.eps!r}. "
            "Pass eps > 0, or use dialect='exact', which allows eps = 0"
        )
    if n == 1:
        if d.refuses_single_value_in_training:
            raise FrameworkRuleError(
                f"{d.framework} expects more than 1 value per channel when training; got input shape "
                f"{p.x.shape}. Train with a larger batch, or use dialect='exact' (which warns)"
            )
        warnings.warn(
            f"one value per channel (input shape {p.x.shape}): the batch variance is 0, so y = beta "
            "wherever eps > 0. Train with a larger batch",
            BatchNormWarning,
            stacklevel=3,
        )


def update_running(
    moving_mean: Any,
    moving_var: Any,
    batch: BatchResult,
    *,
    momentum: float | str | None = None,
    dialect: str | Dialect = "exact",
    num_batches: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The moving statistics after one batch, as new arrays of the moving arrays' dtype (the input's
    where the dialect stores them there: ONNX's reference evaluator).

    With ``momentum`` weighing the old value (exact, Keras, ONNX, Flax)::

        r <- momentum * r + (1 - momentum) * b

    and weighing the new batch (PyTorch): ``r <- (1 - momentum) * r + momentum * b``.
    ``momentum="cumulative"`` is PyTorch's cumulative average (its ``momentum=None``): the new batch
    weighs ``1 / num_batches``, where ``num_batches`` counts this batch too.

    The variance stored is the batch variance (``"biased"``) or its Bessel correction
    ``var * n / (n - 1)`` (``"unbiased"``, PyTorch and tf-keras' fused path); with n = 1 the
    correction is undefined and the biased value is stored. The exact dialect computes in float64 and
    rounds once; the framework dialects round as the framework does (``Dialect.running_form`` and its
    companions, :mod:`batchnorm._running`), and store in the dtype ``Dialect.running_storage`` names.
    """
    d = get(dialect)
    var_sum = None  # the framework's own sum of squares, where the batch came from this dialect
    if d.name == batch.dialect.name:
        d = batch.dialect  # resolved for the input's layout (tf-keras: fused or unfused path)
        var_sum = batch._var_sum
    shape = batch.mean.shape
    r_mean = _validate.channel_parameter(moving_mean, "moving_mean", shape)
    r_var = _validate.variance(moving_var, shape, name="moving_var")
    rule = _validate.momentum(d.momentum if momentum is None else momentum)
    given, side = _momentum_weight(d, rule, num_batches)
    n = batch.count if d.running_variance == "unbiased" else None
    new_mean = _running.update(d, r_mean, batch.mean, given, side)
    new_var = _running.update(
        d, r_var, batch.var, given, side, count=n, input_dtype=batch.y.dtype, var_sum=var_sum
    )
    mean_dtype, var_dtype = r_mean.dtype, r_var.dtype
    if d.running_storage == "input":
        mean_dtype = var_dtype = batch.y.dtype
    return round_once(new_mean, mean_dtype), round_once(new_var, var_dtype)


def _momentum_weight(d: Dialect, momentum: float | str, num_batches: int | None) -> tuple[float, str]:
    """(the float64 weight the framework is given, the side it weighs: "old" or "new")."""
    if momentum == "cumulative":
        if not isinstance(num_batches, int) or isinstance(num_batches, bool) or num_batches < 1:
            raise BatchNormError(
                f"momentum='cumulative' needs num_batches >= 1 (batches seen, this one included); "
                f"got {num_batches!r}. Pass num_batches=layer.num_batches_tracked + 1"
            )
        return 1.0 / num_batches, "new"
    assert isinstance(momentum, float)
    return momentum, d.momentum_side


def backward(
    dy: Any,
    x: Any,
    gamma: Any = None,
    *,
    mean: Any,
    var: Any,
    axis: Axis | None = None,
    eps: float | None = None,
    training: bool = True,
    dialect: str | Dialect = "exact",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of ``y = (x - mean) / sqrt(var + eps) * gamma + beta``.

    With ``inv = 1 / sqrt(var + eps)`` and ``xh = (x - mean) * inv``, per channel over n values::

        dbeta  = sum(dy)
        dgamma = sum(dy * xh)
        dx     = gamma * inv / n * (n * dy - dbeta - xh * dgamma)     (training: batch statistics)
        dx     = gamma * inv * dy                                     (inference: fixed statistics)

    In training, ``mean`` and ``var`` are the batch statistics the forward pass normalized with
    (``BatchResult.mean``, ``BatchResult.var``). Computed in float64 (``Dialect.gradient`` "closed_form");
    a dialect with ``gradient="autodiff"`` (Flax) instead runs its framework's autodiff of the forward
    graph in float32, operation by operation (:mod:`batchnorm._gradients`). dx has the dtype of ``x``,
    dgamma and dbeta the dtype of ``gamma`` (of ``mean`` when gamma is None).
    """
    p = _prepare(x, axis, eps, dialect)
    dy_arr = _validate.input_array(dy, "dy")
    if dy_arr.shape != p.x.shape:
        raise BatchNormError(
            f"dy must have the shape of x {p.x.shape}; got {dy_arr.shape}. "
            "Pass the gradient of the loss with respect to y"
        )
    layout, shape = p.layout, p.layout.channel_shape
    m = _validate.channel_parameter(mean, "mean", shape)
    v = _validate.variance(var, shape)
    g = None if gamma is None else _validate.channel_parameter(gamma, "gamma", shape)
    _validate.nonzero_denominator(v, p.eps)
    mean_f = layout.flat_channels(m)
    g_f = np.ones(layout.channels) if g is None else layout.flat_channels(g)
    saved = _saved_inverse_root(p, layout.flat_channels(v)) if training else None
    if saved is None:
        inv = 1.0 / np.sqrt(layout.flat_channels(v).astype(np.float64) + p.eps)
    else:  # the training step's own rounded 1 / sqrt(var + eps) (PyTorch's save_invstd)
        inv = saved.astype(np.float64)
    x3, dy3 = layout.input3(p.x), layout.input3(dy_arr)
    grad_dtype = (g if g is not None else m).dtype
    if p.x.size and _gradients.applies(p.dialect, p.x.dtype):  # empty: nothing to differentiate
        dx, dx3 = layout.new_output(p.x.dtype)
        g_flat = None if g is None else layout.flat_channels(g)
        v_f = layout.flat_channels(v)
        args = (p.dialect, dy3, x3, mean_f, v_f, g_flat, p.eps)
        dgamma, dbeta = _gradients.autodiff(*args, training=training, shape=layout.memory_shape, out3=dx3)
        return (
            dx,
            layout.unflat_channels(dgamma).astype(grad_dtype),
            layout.unflat_channels(dbeta).astype(grad_dtype),
        )
    dbeta, dy_xmu = _kernels.grad_sums(dy3, x3, mean_f)
    dgamma = dy_xmu * inv
    a = g_f.astype(np.float64) * inv
    k = c = np.zeros_like(a)
    if training:
        n = layout.count
        k, c = -a * inv * dgamma / n, -a * dbeta / n
    dx, dx3 = layout.new_output(p.x.dtype)
    _kernels.grad_input(dy3, x3, mean_f, a, k, c, dx3)
    return (
        dx,
        round_once(layout.unflat_channels(dgamma), grad_dtype),
        round_once(layout.unflat_channels(dbeta), grad_dtype),
    )
