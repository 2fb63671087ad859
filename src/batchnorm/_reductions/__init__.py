"""Framework batch statistics, reduction tree and all.

A framework's float32 batch mean and variance are the rounding of its own summation order: at x = 1e4 +
randn the float32 mean is only good to about ulp(1e4), and which float32 value comes out is decided by
the tree. Each module here emulates one framework's tree operation by operation, so that its
statistics match to the bit; :attr:`batchnorm.Dialect.reduction` names the module.

``"float64"`` names no framework: the kernels' own float64 accumulation. Every module exposes
``moments(x3, variance, dtype, *, shape) -> (mean, var)``: per-channel mean and biased variance (divided
by n) of the canonical (outer, C, inner) array ``x3`` (see :mod:`batchnorm._layout`), ``variance`` as in
:attr:`batchnorm.Dialect.variance`, results in ``dtype``; ``shape`` is the input's shape in memory
order, for the trees that split its dimensions.
"""

from __future__ import annotations

import importlib
import os

import numpy as np

__all__ = ["moments", "process_cpus", "statistics"]


def process_cpus() -> int:
    """The CPUs this process may run on: the default intra-op pool of TensorFlow, oneDNN and XLA."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def moments(
    reduction: str,
    x3: np.ndarray,
    variance: str,
    dtype: np.dtype,
    *,
    shape: tuple[int, ...],
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of ``x3`` as the framework named by ``reduction`` sums them.

    ``shape`` is the input's shape in memory order (:attr:`batchnorm._layout.Layout.memory_shape`): some
    trees split the input's own dimensions, not the (outer, C, inner) view. ``threads``
    (:attr:`batchnorm.Dialect.reduction_threads`) goes to the modules whose tree depends on it when it
    is set (None: each module's framework default on this machine). ``"float64"`` is the compiled
    kernels' own float64 accumulation (:func:`batchnorm._kernels.moments`)."""
    mean, var, _ = statistics(reduction, x3, variance, dtype, shape=shape, threads=threads)
    return mean, var


def statistics(
    reduction: str,
    x3: np.ndarray,
    variance: str,
    dtype: np.dtype,
    *,
    shape: tuple[int, ...],
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`moments`, and the framework's own sum of squared deviations where its running update
    divides that sum rather than the variance (a module's ``statistics``: torch); None elsewhere."""
    if reduction == "float64":
        from .. import _kernels

        mean, var = _kernels.moments(x3, variance, np.dtype(dtype))
        return mean, var, None
    module = importlib.import_module(f".{reduction.replace('-', '_')}", __name__)
    options = {} if threads is None else {"threads": threads}
    if hasattr(module, "statistics"):
        result: tuple[np.ndarray, np.ndarray, np.ndarray] = module.statistics(
            x3, variance, np.dtype(dtype), shape=shape, **options
        )
        return result
    mean, var = module.moments(x3, variance, np.dtype(dtype), shape=shape, **options)
    return mean, var, None
