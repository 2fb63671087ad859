"""The one exception of the package, and the one warning.

Every message states the rule that was broken, the value received and the fix.
"""

from __future__ import annotations

__all__ = ["BatchNormError", "BatchNormWarning", "FrameworkRuleError"]


class BatchNormError(ValueError):
    """Bad input to batch normalization: the message names the rule, the value and the fix."""


class FrameworkRuleError(BatchNormError):
    """An input the emulated framework itself refuses (for example PyTorch and eps <= 0 in training)."""


class BatchNormWarning(UserWarning):
    """A computation that is valid but probably not what was meant (one value per channel in training)."""
