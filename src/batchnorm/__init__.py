"""batchnorm: batch normalization computed exactly, every framework's numbers reproduced.

>>> import numpy as np, batchnorm as bn
>>> x = np.arange(1, 13, dtype=np.float32).reshape(1, 3, 4, 1)
>>> bn.normalize(x, [0.0], [1.0], [1.0], [0.0], eps=0.0).ravel()[-1]
np.float32(12.0)
"""

from . import dialects
from ._convert import Converted, convert
from ._errors import BatchNormError, BatchNormWarning, FrameworkRuleError
from .dialects import Dialect
from .functional import BatchResult, backward, normalize, normalize_batch, update_running
from .layer import BatchNorm

__all__ = [
    "BatchNorm",
    "BatchNormError",
    "BatchNormWarning",
    "BatchResult",
    "Converted",
    "Dialect",
    "FrameworkRuleError",
    "backward",
    "convert",
    "dialects",
    "normalize",
    "normalize_batch",
    "update_running",
]

__version__ = "0.1.0"
