"""onnxruntime's CPU BatchNormalization in training mode (reduction ``"onnxruntime"``).

onnxruntime/core/providers/cpu/nn/batch_norm.h (``BatchNorm<T>::Compute``, onnxruntime 1.32) maps X as N*C
Eigen columns of S = H*W... values (NCHW, the channel axis 1) and sums, on the calling thread (plain
loops, no thread pool: the result does not depend on the thread count)::

    for nc in 0 .. N*C-1:  saved_mean[nc % C] += X.col(nc).sum()
    saved_mean /= T(N * S)
    for nc in 0 .. N*C-1:  saved_var[nc % C] += (X.col(nc) - saved_mean[nc % C]).squaredNorm()
    saved_var /= T(N * S)

so each channel adds its N column sums in n order from 0, and divides in T (float32: fl32(sum /
fl32(N*S))). Every column sum is Eigen's vectorized redux (Eigen/src/Core/Redux.h,
``redux_impl<..., LinearVectorizedTraversal, NoUnrolling>``) with the SSE packets the wheel is built with
(4 floats or 2 doubles, 16-byte alignment; measured: the result follows the data address mod 16 only):

- ``X.col(nc).sum()`` (direct access): the ``head`` values before the column's first 16-byte aligned
  address are set aside; from there two packet accumulators p0, p1 over blocks of two packets; p0 += p1;
  p0 += one more packet if one fits; the lanes combined as (l0 + l2) + (l1 + l3) (float; l0 + l1 for
  double); then the head values and the tail added one at a time, in order. Fewer than one packet past
  the head (or data not aligned to its scalar): all values one at a time, in order.
- ``squaredNorm()`` of the expression ``X.col(nc) - m`` (no direct access, so unaligned packets and no
  head): the same tree from the column's first value over the terms fl(fl(x - m)^2) (no FMA).

The head depends on where X lies in memory, and onnxruntime runs on the caller's C-contiguous NumPy
buffer without a copy: ``alignment_offset`` is X's address mod 16, read from x3's own address when None
(x3 is a view of the caller's array for NCHW input). Other memory orders (channels last, say) reach
onnxruntime as a C-contiguous NCHW copy; from ``shape`` (the input's shape in memory order) the channel
axis moves behind the first (batch) axis, the others kept in memory order, and the copy's offset is 0:
NumPy's allocations are 16-byte aligned, and so are onnxruntime's own (64-byte). Measured bit for bit
for channels-last and channel-outermost memory; Fortran order (axes reversed in memory, which ``shape``
cannot tell) is not followed. Channels-last float32 with S % 4 == 0 or S >= 8 is summed in place, as
that copy would be: each column's head follows from its place in the copy.

Half inputs: onnxruntime has no float16 BatchNormalization on CPU; its InsertCastTransformer puts the node
in float32 between Casts, so the statistics are the float32 ones of the upcast input, in a fresh buffer
(offset 0). onnxruntime refuses bfloat16 (NOT_IMPLEMENTED); it is upcast the same way here.

The ``sum_of_squares`` variances (not onnxruntime's) take mean(x^2) - mean^2, x^2 summed as the
squaredNorm. numba kernels (:mod:`._onnx_trees`) run the trees, columns in parallel; without numba (or
with the reference kernels selected) the NumPy code below runs the same operations, all columns at once.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["moments"]

#: Eigen's SSE packet size and alignment, in bytes.
PACKET_BYTES = 16
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def moments(
    x3: np.ndarray,
    variance: str,
    dtype: np.dtype,
    *,
    shape: tuple[int, ...] | None = None,
    alignment_offset: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of x3 (outer, C, inner) as onnxruntime's CPU kernel sums them,
    in ``dtype``. ``shape``: the input's shape in memory order (None: x3 is the input in NCHW order);
    ``alignment_offset``: X's data address mod 16 (None: x3's own address, 0 for a copy)."""
    batch = _channels_last_batch(x3, shape)
    if batch and x3.dtype == np.float32 and _compiled():  # read in place, not copied
        from . import _onnx_trees as trees

        mean, var = trees.channels_last_eigen_moments(x3, batch, variance == "two_pass")
        if variance != "two_pass":
            var = var - mean * mean
        return _finish(mean, var, variance, dtype)
    x, copied = _nchw(x3, shape)
    if x.dtype not in _KERNEL_DTYPES:
        x, copied = x.astype(np.float32), True
    offset = 0 if copied else x.ctypes.data % PACKET_BYTES
    offset = offset if alignment_offset is None else alignment_offset
    if x.dtype == np.float32 and _compiled():
        mean, var = _moments_compiled(x, variance, offset)
    else:
        mean, var = _moments_numpy(x, variance, offset)
    return _finish(mean, var, variance, dtype)


def _finish(
    mean: np.ndarray, var: np.ndarray, variance: str, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    if variance == "sum_of_squares_clamped":
        var = np.maximum(var, var.dtype.type(0))
    return mean.astype(dtype), var.astype(dtype)


def _channels_last_batch(x3: np.ndarray, shape: tuple[int, ...] | None) -> int:
    """N where x3 (N * S, C, 1) is channels-last memory (..., N, ..., C), N > 1 its first axis longer
    than 1 (see :func:`_nchw`), of columns of S values with S % 4 == 0 (all aligned in the NCHW copy) or
    S >= 8 (every column's head and blocks in place), else 0."""
    if shape is None or x3.shape[2] != 1 or shape[-1] != x3.shape[1]:
        return 0
    batch = next((n for n in shape[:-1] if n > 1), 1)
    S = x3.shape[0] // batch
    return batch if batch > 1 and (S % 4 == 0 or S >= 8) else 0


def _nchw(x3: np.ndarray, shape: tuple[int, ...] | None) -> tuple[np.ndarray, bool]:
    """X as onnxruntime sums it, (N, C, S) C-contiguous, and whether that is a copy. ``shape`` (memory
    order, size-1 batch axes first) gives the axes around the channel axis: the batch axis is the first
    longer than 1 before it, else (none but size-1 axes before it: a batch of 1) x3 itself, else (the
    channel outermost) the first after it; the other axes keep their memory order."""
    outer, C, _ = x3.shape
    # the channel axis: the last that fits (size-1 batch axes come first in memory order); none where
    # several axes make the channels, which ONNX cannot express: then x3 as it is
    fits = [i for i in range(len(shape or ())) if shape and shape[i] == C and math.prod(shape[:i]) == outer]
    if shape is None or not fits:
        return np.ascontiguousarray(x3), not x3.flags.c_contiguous
    k = fits[-1]
    before = [i for i in range(k) if shape[i] > 1]
    after = [i for i in range(k + 1, len(shape)) if shape[i] > 1]
    if not before and (k > 0 or not after):
        return np.ascontiguousarray(x3), not x3.flags.c_contiguous
    batch = before[0] if before else after[0]
    order = [batch, k, *(i for i in range(len(shape)) if i not in (batch, k))]
    x = x3.reshape(shape).transpose(order)
    x = x.reshape(x.shape[0], C, -1)
    return (x, False) if x.flags.c_contiguous else (np.ascontiguousarray(x), True)


def _compiled() -> bool:
    from .. import _kernels

    return _kernels.backend() == "compiled"


def _moments_compiled(x: np.ndarray, variance: str, offset: int) -> tuple[np.ndarray, np.ndarray]:
    from . import _onnx_trees as trees

    mean, moment = trees.channel_moments(x, variance == "two_pass", "eigen", offset % PACKET_BYTES)
    return mean, moment if variance == "two_pass" else moment - mean * mean


# -- the same in NumPy, every column at once -----------------------------------------------------------


def _moments_numpy(x: np.ndarray, variance: str, offset: int) -> tuple[np.ndarray, np.ndarray]:
    N, C, S = x.shape
    count = x.dtype.type(N * S)
    columns = x.reshape(N * C, S)
    mean = _per_channel(_column_sums(columns, _heads(N * C, S, x.itemsize, offset)), N, C) / count
    no_heads = np.zeros(N * C, np.int64)
    if variance == "two_pass":
        deviations = columns - np.tile(mean, N)[:, None]
        return mean, _per_channel(_column_sums(deviations * deviations, no_heads), N, C) / count
    return mean, _per_channel(_column_sums(columns * columns, no_heads), N, C) / count - mean * mean


def _heads(columns: int, S: int, itemsize: int, offset: int) -> np.ndarray:
    """Values before each column's first 16-byte aligned address (all S where none is scalar-aligned)."""
    address = offset % PACKET_BYTES + np.arange(columns, dtype=np.int64) * (S * itemsize)
    if offset % itemsize:
        return np.full(columns, S, np.int64)
    return np.minimum((-address % PACKET_BYTES) // itemsize, S)


def _per_channel(sums: np.ndarray, N: int, C: int) -> np.ndarray:
    """The column sums of each channel added in n order (a running sum is sequential by definition)."""
    return np.add.accumulate(sums.reshape(N, C), axis=0)[-1]


def _column_sums(terms: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """Eigen's redux of each row of ``terms`` (columns of X), rows grouped by their head."""
    sums = np.empty(terms.shape[0], terms.dtype)
    for head in np.unique(heads):
        rows = np.flatnonzero(heads == head)
        sums[rows] = _redux(terms[rows], int(head))
    return sums


def _redux(t: np.ndarray, head: int) -> np.ndarray:
    """Eigen's vectorized sum of every row of ``t``, ``head`` values set aside (see the module doc)."""
    S = t.shape[1]
    lanes = PACKET_BYTES // t.itemsize
    size = (S - head) // lanes * lanes
    if size == 0:
        res = t[:, 0].copy()
        for i in range(1, S):
            res += t[:, i]
        return res
    size2 = (S - head) // (2 * lanes) * (2 * lanes)
    packet = t[:, head : head + 2 * lanes].copy()  # p0 | p1 (p1 read only when two packets fit)
    if size > lanes:
        for i in range(head + 2 * lanes, head + size2, 2 * lanes):
            packet += t[:, i : i + 2 * lanes]
        p0 = packet[:, :lanes] + packet[:, lanes:]
        if size > size2:
            p0 += t[:, head + size2 : head + size2 + lanes]
    else:
        p0 = packet[:, :lanes]
    res = (p0[:, 0] + p0[:, 2]) + (p0[:, 1] + p0[:, 3]) if lanes == 4 else p0[:, 0] + p0[:, 1]
    for i in [*range(head), *range(head + size, S)]:
        res += t[:, i]
    return res
