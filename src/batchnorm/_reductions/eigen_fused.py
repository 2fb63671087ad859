"""tf_keras' fused training statistics of rank 5: TensorFlow's own FusedBatchNormV3 CPU kernel (Eigen).

oneDNN takes rank 4 only (see :mod:`.onednn`); rank 5 runs ``FusedBatchNorm<CPUDevice, T, U, true>``
(tensorflow/core/kernels/fused_batch_norm_op.cc): NCDHW is transposed to NDHWC, the tensor is viewed as
``(R, C)`` (R = N * D * H * W rows, channels last), and in float32::

    mean = fl(S * inv),  var = fl(Q * inv),  inv = fl(1 / fl(R))   (a product, not a division)
    S = sum of x over the rows,  Q = sum of fl(d * d), d = fl(x - mean)   (no FMA)

both sums Eigen reductions over dimension 0 on the ThreadPoolDevice
(unsupported/Eigen/CXX11/src/Tensor/TensorReduction.h): channels in whole packets of ``lanes`` (c <
C - C % lanes) go through ``InnerMostDimPreserver``: with R >= 16, row j goes to accumulator j % 4 for
j < R - R % 4, the accumulators add as ((a0 + a1) + a2) + a3, then the last R % 4 rows add one by one;
with R < 16, and for the last C % lanes channels (``GenericDimReducer``), the rows add one after another.
Every accumulator starts at +0. ``lanes`` is Eigen's float32 packet in TensorFlow's wheels: 8 (AVX),
measured (4 and 16 do not match). Threads split channels only, so nothing depends on the thread count.

Half inputs are summed as float32 (tf_keras casts them to its float32 compute dtype first); float64
follows the same tree in float64. Verified bit for bit against TF 2.21 (Zen 4) on NCDHW and NDHWC
shapes from (2, 2, 2, 2, 1) to (8, 8, 16, 16, 12), C = 1 to 40, offsets 0 and 1e4.

The tree runs in :func:`._fused_kernels.eigen_moments` on ``x3`` in place (no transposed copy; half
inputs upcast as read), eight channels per vector, one parallel launch for both passes, about the exact
dialect's speed; another ``lanes`` takes a scalar column loop over a transposed float copy.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from .._errors import BatchNormError

__all__ = ["LANES", "moments"]

#: Eigen's float32 packet in TensorFlow's CPU wheels (AVX).
LANES = 8
#: rows from which InnerMostDimPreserver uses its four accumulators.
UNROLL_MIN_ROWS = 16
#: storage the kernel reads as it is (float16 and bfloat16 upcast to float32 in registers).
_TILED = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32), np.dtype(np.float64))


def moments(
    x3: np.ndarray,
    variance: str,
    dtype: np.dtype,
    *,
    shape: tuple[int, ...] | None = None,
    lanes: int = LANES,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of ``x3`` (outer, C, inner) as TF's fused CPU kernel sums them
    (the tree follows x3 alone; ``shape`` is not needed)."""
    if variance != "two_pass":
        raise BatchNormError(
            f"the eigen-fused reduction computes the two-pass variance only (TF's fused kernel); got "
            f"variance={variance!r}. Use variance='two_pass' with reduction='eigen-fused'"
        )
    acc = np.dtype(np.float64) if x3.dtype == np.float64 else np.dtype(np.float32)
    outer, channels, inner = x3.shape
    count = outer * inner
    packed = channels - channels % lanes  # channels in whole packets
    unrolled = count - count % 4 if count >= UNROLL_MIN_ROWS else 0
    inverse = acc.type(1) / acc.type(count)
    from .._kernels import compiled
    from . import _fused_kernels as k

    if lanes != k.LANES:  # another packet width: the column loop over a transposed copy
        rows = np.ascontiguousarray(np.moveaxis(np.asarray(x3, dtype=acc), 1, 2)).reshape(-1, channels)
        mean = k.column_tree_sums(rows, np.zeros(channels, acc), packed, unrolled, k.SUM) * inverse
        var = k.column_tree_sums(rows, mean, packed, unrolled, k.SQUARES) * inverse
        return mean.astype(dtype), var.astype(dtype)
    x = np.ascontiguousarray(x3, dtype=x3.dtype if x3.dtype in _TILED else acc)
    mean, var = np.empty(channels, acc), np.empty(channels, acc)
    args = (compiled._storage(x), outer, channels, inner, packed, unrolled, inverse, mean, var)
    compiled._launch(k.eigen_moments, *args, compiled._chunks(-(-channels // k.LANES), x.size))
    return mean.astype(dtype), var.astype(dtype)
