"""Dialects: whose conventions and whose arithmetic a computation follows.

A :class:`Dialect` is a frozen record of data. Defaults (eps, momentum, channel axis), policies (epsilon
floor, momentum side, running-variance estimator, batch-variance algorithm, precision) and the ordering of
the float arithmetic are fields; the kernels read the fields and never test a dialect's name.

Every record (in ``_dialect_records``) cites the framework source it comes from; the parity suite
(``tests/parity``) checks it against the framework itself.

Mapping from each framework's spelling to ours:

============================================  ======================================================
framework                                     batchnorm
============================================  ======================================================
``torch.nn.BatchNorm2d(C, eps, momentum)``    ``BatchNorm(C, axis=1, eps=eps, momentum=momentum,
                                              dialect="torch")``
``keras.layers.BatchNormalization(axis,       ``BatchNorm(C, axis=axis, eps=epsilon, momentum=momentum,
epsilon, momentum)``                          dialect="keras3-tensorflow")``
ONNX ``BatchNormalization(epsilon,            ``normalize(X, input_mean, input_var, scale, B,
momentum)``                                   eps=epsilon, dialect="onnx")``
``flax.linen.BatchNorm(axis, epsilon,         ``BatchNorm(C, axis=axis, eps=epsilon, momentum=momentum,
momentum)``                                   dialect="flax")``
============================================  ======================================================
"""

from __future__ import annotations

from ._dialect import TF_MIN_EPSILON, Dialect
from ._dialect_records import RECORDS
from ._errors import BatchNormError

__all__ = ["TF_MIN_EPSILON", "Dialect", "get", "names", "register"]

_REGISTRY: dict[str, Dialect] = {}


def register(dialect: Dialect) -> Dialect:
    """Add a dialect to the registry (its name must be new) and return it."""
    if dialect.name in _REGISTRY:
        raise BatchNormError(
            f"dialect names are unique: {dialect.name!r} is already registered; "
            "register the variant under a new name"
        )
    _REGISTRY[dialect.name] = dialect
    return dialect


def names() -> tuple[str, ...]:
    """The registered dialect names, in registration order."""
    return tuple(_REGISTRY)


def get(dialect: str | Dialect) -> Dialect:
    """The dialect record for a name (or the record itself when one is given)."""
    if isinstance(dialect, Dialect):
        return dialect
    try:
        return _REGISTRY[dialect]
    except (KeyError, TypeError):
        raise BatchNormError(
            f"dialect must be one of {', '.join(names())}; got {dialect!r}. "
            "Pick one of those names or pass a Dialect record (see batchnorm.dialects)"
        ) from None


for _record in RECORDS:
    register(_record)
