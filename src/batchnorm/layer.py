"""BatchNorm: hyperparameters and state over :mod:`batchnorm.functional`.

The layer stores gamma, beta, the moving statistics and the batch counter; every computation is a call
into ``functional``. Weights travel in Keras order (``get_weights``/``set_weights``) or as a PyTorch
state dict (``state_dict``/``load_state_dict``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from . import _validate, functional
from ._errors import BatchNormError
from .dialects import Dialect, get

__all__ = ["BatchNorm"]


class BatchNorm:
    """Batch normalization layer for any rank: ``y = (x - mean) / sqrt(var + eps) * gamma + beta``.

    Parameters
    ----------
    num_features : int or tuple of ints
        The channel count (the channel shape when ``axis`` is a tuple).
    axis, eps, momentum : optional
        None means the dialect's default. ``momentum`` is in the dialect's own convention (see the
        repr: PyTorch's weighs the new batch, the others the old value); ``"cumulative"`` is
        PyTorch's cumulative average (its ``momentum=None``).
    center, scale : bool
        Whether beta and gamma exist (as Keras: absent from ``get_weights`` when off).
    dialect : str or Dialect
    param_dtype : dtype
        The dtype of gamma, beta and the moving statistics (float32, as in every framework).

    ``layer(x, training=True)`` normalizes with the batch statistics and updates the moving statistics;
    ``training=False`` normalizes with the moving statistics. ``layer.backward(dy)`` differentiates the
    last call and stores ``layer.grads``.
    """

    def __init__(
        self,
        num_features: int | tuple[int, ...],
        *,
        axis: int | tuple[int, ...] | None = None,
        eps: float | None = None,
        momentum: float | str | None = None,
        center: bool = True,
        scale: bool = True,
        dialect: str | Dialect = "exact",
        param_dtype: Any = np.float32,
    ) -> None:
        self.dialect = get(dialect)
        self.channel_shape = _channel_shape(num_features)
        self.axis = self.dialect.axis if axis is None else axis
        self.eps = _validate.epsilon(self.dialect.eps if eps is None else eps)
        self.momentum = _validate.momentum(self.dialect.momentum if momentum is None else momentum)
        self.center, self.scale = bool(center), bool(scale)
        dtype = np.dtype(param_dtype)
        self.gamma = np.ones(self.channel_shape, dtype) if self.scale else None
        self.beta = np.zeros(self.channel_shape, dtype) if self.center else None
        self.moving_mean = np.zeros(self.channel_shape, dtype)
        self.moving_variance = np.ones(self.channel_shape, dtype)
        self.num_batches_tracked = 0
        self.grads: dict[str, np.ndarray] = {}
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray, bool, Dialect] | None = None

    def __repr__(self) -> str:
        d = self.dialect
        side = "new batch" if d.momentum_side == "new" else "old value"
        momentum = (
            "'cumulative' (average over all batches)"
            if self.momentum == "cumulative"
            else f"{self.momentum} (weight of the {side})"
        )
        estimator = "unbiased, n/(n-1)" if d.running_variance == "unbiased" else "biased, /n"
        features = self.channel_shape[0] if len(self.channel_shape) == 1 else self.channel_shape
        return (
            f"BatchNorm({features}, axis={self.axis!r}, eps={self.eps!r}, momentum={momentum}, "
            f"running_variance={estimator}, center={self.center}, scale={self.scale}, "
            f"dialect={d.name!r})"
        )

    def __call__(self, x: Any, *, training: bool = False) -> np.ndarray:
        x = _validate.input_array(x)
        self._check_channels(x)
        if not training:
            y = functional.normalize(
                x,
                self.moving_mean,
                self.moving_variance,
                self.gamma,
                self.beta,
                axis=self.axis,
                eps=self.eps,
                dialect=self.dialect,
            )
            self._last = (x, self.moving_mean, self.moving_variance, False, self.dialect)
            return y
        batch = functional.normalize_batch(
            x, self.gamma, self.beta, axis=self.axis, eps=self.eps, dialect=self.dialect
        )
        self.moving_mean, self.moving_variance = functional.update_running(
            self.moving_mean,
            self.moving_variance,
            batch,
            momentum=self.momentum,
            dialect=batch.dialect,
            num_batches=self.num_batches_tracked + 1,
        )
        self.num_batches_tracked += 1
        self._last = (x, batch.mean, batch.var, True, batch.dialect)
        return batch.y

    def backward(self, dy: Any) -> np.ndarray:
        """dx for the last call; stores dgamma and dbeta in ``self.grads`` (keys of existing params)."""
        if self._last is None:
            raise BatchNormError(
                "backward needs a forward call first; got none. Call layer(x, training=...) before "
                "layer.backward(dy)"
            )
        x, mean, var, training, dialect = self._last
        dx, dgamma, dbeta = functional.backward(
            dy,
            x,
            self.gamma,
            mean=mean,
            var=var,
            axis=self.axis,
            eps=self.eps,
            training=training,
            dialect=dialect,
        )
        self.grads = {}
        if self.scale:
            self.grads["gamma"] = dgamma.astype(self.moving_mean.dtype)
        if self.center:
            self.grads["beta"] = dbeta.astype(self.moving_mean.dtype)
        return dx

    def _check_channels(self, x: np.ndarray) -> None:
        axes = _validate.channel_axes(self.axis, x.ndim)
        got = tuple(x.shape[a] for a in axes)
        if got != self.channel_shape:
            raise BatchNormError(
                f"the layer was built for channel shape {self.channel_shape} on axis {self.axis!r}; "
                f"got input shape {x.shape} with channel shape {got}. Pass an input with "
                f"{self.channel_shape} channels there, or build BatchNorm({got}, axis={self.axis!r})"
            )

    # -- weights ---------------------------------------------------------------------------------

    def _weight_names(self) -> list[str]:
        return (
            (["gamma"] if self.scale else [])
            + (["beta"] if self.center else [])
            + [
                "moving_mean",
                "moving_variance",
            ]
        )

    def get_weights(self) -> list[np.ndarray]:
        """Copies of [gamma, beta, moving_mean, moving_variance] (Keras order; gamma/beta left out
        when scale/center is False)."""
        return [np.array(getattr(self, name)) for name in self._weight_names()]

    def set_weights(self, weights: list[Any]) -> None:
        """Load weights in the order of :meth:`get_weights`; the given arrays are copied, not kept."""
        names = self._weight_names()
        if len(weights) != len(names):
            raise BatchNormError(
                f"set_weights takes {len(names)} arrays [{', '.join(names)}]; got {len(weights)}. "
                "Keras leaves gamma out when scale=False and beta when center=False"
            )
        self._assign(dict(zip(names, weights, strict=True)))

    def _assign(self, values: dict[str, Any]) -> None:
        staged: dict[str, np.ndarray] = {}
        for name, value in values.items():
            arr = (
                _validate.variance(value, self.channel_shape, name)
                if name == "moving_variance"
                else _validate.channel_parameter(value, name, self.channel_shape)
            )
            staged[name] = np.array(arr, dtype=self.moving_mean.dtype)
        for name, arr in staged.items():
            setattr(self, name, arr)

    _TORCH_KEYS: ClassVar[dict[str, str]] = {
        "weight": "gamma",
        "bias": "beta",
        "running_mean": "moving_mean",
        "running_var": "moving_variance",
    }

    def state_dict(self) -> dict[str, Any]:
        """PyTorch keys: weight, bias, running_mean, running_var, num_batches_tracked (copies)."""
        ours = set(self._weight_names())
        d: dict[str, Any] = {
            key: np.array(getattr(self, name)) for key, name in self._TORCH_KEYS.items() if name in ours
        }
        d["num_batches_tracked"] = np.array(self.num_batches_tracked, dtype=np.int64)
        return d

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a PyTorch-keyed state dict (exactly the keys of :meth:`state_dict`)."""
        expected = set(self.state_dict())
        if set(state) != expected:
            raise BatchNormError(
                f"load_state_dict needs exactly the keys {sorted(expected)}; got {sorted(state)}. "
                "weight/bias exist only when scale/center is True"
            )
        count = np.asarray(state["num_batches_tracked"])
        if count.shape != () or count.dtype.kind not in "iu" or int(count) < 0:
            raise BatchNormError(
                f"num_batches_tracked must be a non-negative integer scalar; got {count!r}. "
                "Pass e.g. numpy.array(0)"
            )
        self._assign({self._TORCH_KEYS[k]: v for k, v in state.items() if k in self._TORCH_KEYS})
        self.num_batches_tracked = int(count)


def _channel_shape(num_features: Any) -> tuple[int, ...]:
    shape = num_features if isinstance(num_features, tuple) else (num_features,)
    if not shape or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in shape
    ):
        raise BatchNormError(
            f"num_features must be a positive int (or a tuple of them for several channel axes); "
            f"got {num_features!r}. Pass the channel count, e.g. BatchNorm(64)"
        )
    return tuple(int(n) for n in shape)
