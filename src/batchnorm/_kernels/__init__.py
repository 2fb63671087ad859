"""The arithmetic layer: kernels over canonical (outer, C, inner) arrays.

``apply_affine``, ``moments``, ``grad_sums`` and ``grad_input`` are the whole interface; the functional
layer calls nothing else. Two implementations:

- :mod:`.compiled` (numba, parallel, at memory bandwidth): used whenever numba imports.
- :mod:`.reference` (NumPy): the oracle for the tests, and the fallback where numba is unavailable.

The environment variable ``BATCHNORM_KERNELS`` forces one: ``reference`` or ``compiled`` (an error if
numba cannot be imported); unset or ``auto`` means compiled when numba imports, else reference. It is
read once, at the first kernel call; :func:`use` switches at run time (tests compare the two).
The compiled path gives bit-identical ``apply_affine`` / ``grad_input`` results and statistics equal to
the reference's to float64 rounding; see :mod:`.compiled`.

numba is imported lazily, at the first kernel call, so ``import batchnorm`` stays fast.
"""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np

from .._arithmetic import Coefficients

__all__ = ["apply_affine", "backend", "grad_input", "grad_sums", "moments", "use"]

ENV = "BATCHNORM_KERNELS"
_CHOICES = ("auto", "compiled", "reference")
_impl: ModuleType | None = None


def _select(choice: str) -> ModuleType:
    choice = choice.strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(
            f"{ENV} must be one of {', '.join(_CHOICES)}; got {choice!r}. "
            f"Unset it, or set {ENV}=reference to use the NumPy kernels"
        )
    if choice == "reference":
        from . import reference

        return reference
    try:
        from . import compiled
    except ImportError:
        if choice == "compiled":
            raise
        from . import reference

        return reference
    return compiled


def _kernels() -> ModuleType:
    global _impl
    if _impl is None:
        _impl = _select(os.environ.get(ENV, "auto"))
    return _impl


def use(choice: str) -> str:
    """Switch the kernels ("auto", "compiled" or "reference"); returns the name now in use."""
    global _impl
    _impl = _select(choice)
    return backend()


def backend() -> str:
    """The kernels in use: "compiled" or "reference"."""
    return _kernels().__name__.rsplit(".", 1)[-1]


def apply_affine(x3: np.ndarray, co: Coefficients, out3: np.ndarray) -> None:
    """out3 = the elementwise form of ``co`` applied to x3, in ``co.dtype``, rounded once."""
    _kernels().apply_affine(x3, co, out3)


def moments(x3: np.ndarray, variance: str, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of x3 (outer, C, inner), in ``dtype``."""
    result: tuple[np.ndarray, np.ndarray] = _kernels().moments(x3, variance, dtype)
    return result


def grad_sums(dy3: np.ndarray, x3: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, in float64: sum(dy) and sum(dy * (x - mean))."""
    result: tuple[np.ndarray, np.ndarray] = _kernels().grad_sums(dy3, x3, mean)
    return result


def grad_input(
    dy3: np.ndarray,
    x3: np.ndarray,
    mean: np.ndarray,
    a: np.ndarray,
    k: np.ndarray,
    c: np.ndarray,
    out3: np.ndarray,
) -> None:
    """out3 = a * dy + k * (x - mean) + c per channel, in float64, rounded once."""
    _kernels().grad_input(dy3, x3, mean, a, k, c, out3)
