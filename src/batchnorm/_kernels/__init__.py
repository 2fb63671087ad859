"""The arithmetic layer: kernels over canonical (outer, C, inner) arrays.

``apply_affine``, ``moments``, ``grad_sums`` and ``grad_input`` are the whole interface; the functional
layer calls nothing else. The NumPy reference implementation lives in :mod:`.reference`.
"""

from __future__ import annotations

from .reference import apply_affine, grad_input, grad_sums, moments

__all__ = ["apply_affine", "grad_input", "grad_sums", "moments"]
