"""Framework batch statistics, reduction tree and all.

A framework's float32 batch mean and variance are the rounding of its own summation order: at x = 1e4 +
randn the float32 mean is only good to about ulp(1e4), and which float32 value comes out is decided by
the tree. Each module here emulates one framework's tree operation by operation, so that its
statistics match to the bit; :attr:`batchnorm.Dialect.reduction` names the module.

Every module exposes ``moments(x3, variance, dtype) -> (mean, var)``: per-channel mean and biased
variance (divided by n) of the canonical (outer, C, inner) array ``x3`` (see :mod:`batchnorm._layout`),
``variance`` as in :attr:`batchnorm.Dialect.variance`, results in ``dtype``.
"""

from __future__ import annotations

import importlib

import numpy as np

__all__ = ["moments"]


def moments(reduction: str, x3: np.ndarray, variance: str, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of ``x3`` as the framework named by ``reduction`` sums them."""
    module = importlib.import_module(f".{reduction.replace('-', '_')}", __name__)
    result: tuple[np.ndarray, np.ndarray] = module.moments(x3, variance, np.dtype(dtype))
    return result
