"""Our side of a parity case, and the distances the parity suite measures.

:func:`ours` runs one case through ``batchnorm`` with one dialect, exactly as the framework runner runs
it (inference call, or ``steps`` training steps from the given moving statistics; the backward pass at
the first step). :func:`ulps` and :func:`ulps_of_max` measure disagreement at the framework output's
dtype.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import case_io
import ml_dtypes
import numpy as np

import batchnorm as bn

BF16 = np.dtype(ml_dtypes.bfloat16)
_BITS = {np.dtype(np.float16): (np.int16, 10), BF16: (np.int16, 7), np.dtype(np.float32): (np.int32, 23)}
_BITS[np.dtype(np.float64)] = (np.int64, 52)


@dataclass
class Ours:
    """batchnorm's outputs for one case (names as the runners write them)."""

    values: dict[str, np.ndarray] = field(default_factory=dict)
    warnings: list[warnings.WarningMessage] = field(default_factory=list)
    dialect: bn.Dialect | None = None
    count: int = 0


def as_runners_run(dialect: str | bn.Dialect) -> bn.Dialect:
    """``dialect`` with the thread count the runners give its framework: PyTorch's is pinned
    (case_io.TORCH_THREADS); the other frameworks take their default, as the dialects do."""
    d = bn.dialects.get(dialect)
    if d.reduction.startswith("torch"):
        return d.derive(d.name, reduction_threads=case_io.TORCH_THREADS)
    return d


def ours(case: dict, dialect: str | bn.Dialect) -> Ours:
    """Run ``case`` through batchnorm with ``dialect``; errors propagate, warnings are recorded."""
    dialect = as_runners_run(dialect)
    out = Ours()
    gamma = case["gamma"] if case["scale"] else None
    beta = case["beta"] if case["center"] else None
    axis, eps = case["axis"], case["eps"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if case["kind"] == "inference":
            x, mean, var = as_run(case, case["x"]), case["moving_mean"], case["moving_var"]
            out.values["y"] = bn.normalize(x, mean, var, gamma, beta, axis=axis, eps=eps, dialect=dialect)
            training = False
        else:
            xs = [as_run(case, x) for x in case["x_steps"]]
            rm, rv = case["moving_mean"], case["moving_var"]
            means, variances = [], []
            first = None
            for x in xs:
                batch = bn.normalize_batch(x, gamma, beta, axis=axis, eps=eps, dialect=dialect)
                first = first or batch
                rm, rv = bn.update_running(rm, rv, batch, momentum=case["momentum"], dialect=dialect)
                means.append(rm)
                variances.append(rv)
            assert first is not None
            out.values.update(
                y=first.y,
                running_mean=np.stack(means),
                running_var=np.stack(variances),
                batch_mean=first.mean,
                batch_var=first.var,
            )
            out.dialect, out.count = first.dialect, first.count
            x, mean, var = xs[0], first.mean, first.var
            training = True
        if case.get("dy") is not None:
            dx, dgamma, dbeta = bn.backward(
                as_run(case, case["dy"]),
                x,
                gamma,
                mean=mean,
                var=var,
                axis=axis,
                eps=eps,
                training=training,
                dialect=dialect,
            )
            out.values.update(dx=dx, dgamma=dgamma, dbeta=dbeta)
    out.warnings = list(caught)
    if out.dialect is None:
        out.dialect = bn.dialects.get(dialect).for_input(np.ndim(case["x"]), _axes(case))
    return out


def as_run(case: dict, a: np.ndarray) -> np.ndarray:
    """``a`` in the memory layout the runner gives the framework: a channels-last view for the
    ``memory_format`` cases (the values are NCHW), whose strides batchnorm's layout follows as the
    framework's kernels do (PyTorch's channels-last statistics sum in another order)."""
    if not case.get("memory_format"):
        return a
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1)


def _axes(case: dict) -> tuple[int, ...]:
    return (case["axis"] % np.ndim(case["x"]),)


def _ordered(a: np.ndarray) -> np.ndarray:
    """Floats -> int64 keys, monotone in the value, consecutive for neighbouring floats."""
    itype, _ = _BITS[a.dtype]
    i = a.view(itype).astype(np.int64)
    width = np.iinfo(itype).bits
    return np.where(i < 0, -(i & ((1 << (width - 1)) - 1)), i)


def ulps(ours_: np.ndarray, theirs: np.ndarray) -> float:
    """Max elementwise distance in ulps on the grid of ``theirs``' dtype (``ours_`` rounded to it).

    NaN against NaN counts 0, NaN against a number inf; -0 and +0 count 0.
    """
    theirs = np.asarray(theirs)
    a = np.asarray(ours_).astype(theirs.dtype)
    if a.shape != theirs.shape:
        raise AssertionError(f"shapes differ: ours {a.shape}, theirs {theirs.shape}")
    na, nb = np.isnan(a.astype(np.float64)), np.isnan(theirs.astype(np.float64))
    if (na != nb).any():
        return float("inf")
    if na.all():
        return 0.0
    return float(np.abs(_ordered(a[~na]) - _ordered(theirs[~na])).max())


def ulp_at(value: float, dtype: np.dtype) -> float:
    """The spacing of ``dtype``'s floats at ``value`` (the smallest subnormal step near 0)."""
    _, mantissa = _BITS[np.dtype(dtype)]
    tiny = float(ml_dtypes.finfo(dtype).smallest_normal)
    exponent = np.floor(np.log2(max(abs(value), tiny)))
    return float(2.0 ** (exponent - mantissa))


def ulps_of_max(ours_: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| in ulps of max |theirs| at theirs' dtype (NaN positions must agree)."""
    b = np.asarray(theirs, np.float64)
    return ulps_of(ours_, theirs, np.abs(b[~np.isnan(b)]).max(initial=0.0))


def ulps_of(ours_: np.ndarray, theirs: np.ndarray, scale: np.ndarray | float) -> float:
    """max |ours - theirs| / ulp(scale), elementwise, on the grid of theirs' dtype (scale broadcasts)."""
    theirs = np.asarray(theirs)
    a = np.asarray(ours_).astype(np.float64)
    b = theirs.astype(np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: ours {a.shape}, theirs {b.shape}")
    if (np.isnan(a) != np.isnan(b)).any():
        return float("inf")
    scale = np.broadcast_to(np.abs(np.asarray(scale, np.float64)), b.shape)
    ok = ~np.isnan(b)
    if not ok.any():
        return 0.0
    ulp = np.vectorize(lambda v: ulp_at(v, theirs.dtype), otypes=[np.float64])(scale[ok])
    return float((np.abs(a[ok] - b[ok]) / ulp).max())


def error_scales(case: dict, out: Ours) -> dict[str, float]:
    """The error scale of each training and backward quantity, in float64 from the case and our
    batch statistics. The bounds of ``parity_rules.BOUNDS`` are in ulps of these.

    Each is the size of the largest term the framework's float32 arithmetic rounds, so that the
    conditioning of the input shows: the batch mean of float32 data is a float32 value, good to about
    ulp(max |x|) however it is summed, and everything downstream carries that error times the scale.

    - y: max(max |y|, max over channels of |s| * max |x|), s = gamma / sqrt(var + eps);
    - running_mean: max(max |running mean|, w * max |x|), w the weight of the new batch;
    - running_var: max |running var|;
    - dx: max over channels of |gamma| * inv * (max |dy| + inv * max |x| * sum |dy * xh| / n),
      inv = 1 / sqrt(var + eps), xh = (x - mean) * inv (dx itself cancels, to exactly 0 when n = 2);
    - dgamma: max over channels of inv * (sum |dy * (x - mean)| + max |x| * sum |dy|);
    - dbeta: max over channels of sum |dy|.
    """
    assert out.dialect is not None
    d = out.dialect
    training = case["kind"] == "training"
    x = np.asarray(case["x_steps"][0] if training else case["x"], np.float64)
    axis = case["axis"] % x.ndim
    reduce = tuple(i for i in range(x.ndim) if i != axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    if training:
        mean, var = out.values["batch_mean"], out.values["batch_var"]
    else:
        mean, var = case["moving_mean"], case["moving_var"]
    mean = np.asarray(mean, np.float64).reshape(shape)
    inv = 1.0 / np.sqrt(np.asarray(var, np.float64).reshape(shape) + d.effective_eps(case["eps"]))
    gamma = (
        np.abs(np.asarray(case["gamma"], np.float64).reshape(shape)) if case["scale"] else np.ones_like(inv)
    )
    xmax = np.abs(x).max(axis=reduce, keepdims=True)
    n = x.size // x.shape[axis]
    scales: dict[str, float] = {}
    if "y" in out.values and training:
        scales["y"] = float(max(np.abs(out.values["y"].astype(np.float64)).max(), (gamma * inv * xmax).max()))
    if training:
        momentum = d.momentum if case["momentum"] is None else case["momentum"]
        w = momentum if d.momentum_side == "new" else 1.0 - momentum
        all_x = np.abs(np.asarray(case["x_steps"], np.float64)).max()
        scales["running_mean"] = max(float(np.abs(out.values["running_mean"]).max()), w * float(all_x))
        scales["running_var"] = float(np.abs(out.values["running_var"]).max())
    if case.get("dy") is not None:
        dy = np.abs(np.asarray(case["dy"], np.float64))
        xh = np.abs(x - mean) * inv
        sum_dy_xh = (dy * xh).sum(axis=reduce, keepdims=True)
        sum_dy = dy.sum(axis=reduce, keepdims=True)
        dymax = dy.max(axis=reduce, keepdims=True)
        scales["dx"] = float((gamma * inv * (dymax + inv * xmax * sum_dy_xh / n)).max())
        scales["dgamma"] = float(
            (inv * ((dy * np.abs(x - mean)).sum(axis=reduce, keepdims=True) + xmax * sum_dy)).max()
        )
        scales["dbeta"] = float(sum_dy.max())
    return scales


_OURS: dict[tuple[str, str], Ours | BaseException] = {}


def ours_cached(case: dict, dialect: str) -> Ours:
    """:func:`ours` once per (dialect, case id); an exception it raised is raised again."""
    key = (dialect, case["id"])
    if key not in _OURS:
        try:
            _OURS[key] = ours(case, dialect)
        except Exception as exc:
            _OURS[key] = exc
    got = _OURS[key]
    if isinstance(got, BaseException):
        raise got
    return got


def dtype_name(a: np.ndarray | np.dtype) -> str:
    """ "float32", "float16", "bfloat16", ..."""
    dtype = a if isinstance(a, np.dtype) else np.asarray(a).dtype
    return "bfloat16" if dtype == BF16 else str(dtype)


def distance(case: dict, out: Ours, theirs: dict, quantity: str) -> float:
    """Ours against theirs for one training or backward quantity: the largest distance over the steps,
    in ulps of :func:`error_scales`. Raises AssertionError on a shape or (y, dx) dtype mismatch."""
    got, want = out.values[quantity], theirs[quantity]
    if quantity in ("y", "dx") and got.dtype != want.dtype:
        raise AssertionError(f"{quantity} dtype: ours {got.dtype}, theirs {want.dtype}")
    if quantity in ("running_mean", "running_var"):
        if got.shape != want.shape:
            raise AssertionError(f"{quantity}: shapes {got.shape} vs {want.shape}")
    else:
        got, want = got[None], want[None]
    scale = error_scales(case, out)[quantity]
    return max(ulps_of(got[k], want[k], scale) for k in range(want.shape[0]))
