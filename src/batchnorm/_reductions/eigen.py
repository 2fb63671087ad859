"""TensorFlow's batch moments on CPU: ``tf.nn.moments`` through the Mean kernel and Eigen's Sum trees.

Keras 3 on TensorFlow (keras/src/backend/tensorflow/nn.py ``moments``, float16/bfloat16 cast to float32
first) and tf_keras' unfused path (tf_keras/src/layers/normalization/batch_normalization.py ->
tensorflow/python/ops/nn_impl.py ``moments``) compute, in float32 (float64 for float64 inputs)::

    mean = Mean(x)                          # Sum(x) / n, one division
    var  = Mean(SquaredDifference(x, mean)) # (x - mean) * (x - mean) rounded per operation

The Mean kernel (tensorflow/core/kernels/reduction_ops.h, ``ReduceEigenImpl<..., MeanReducer>``) is
Eigen's ``in.reduce(axes, SumReducer) / n`` on the ThreadPoolDevice, no wider accumulator for float32
or float64. tensorflow/core/kernels/reduction_ops_common.h (``ReductionHelper::Simplify``) first drops
leading size-1 dimensions, merges size-1 dimensions into the run before them and adjacent reduced
(or kept) dimensions into one, so that the canonical view (outer, C, inner) of a C-ordered tensor
reduces as one of (Eigen: unsupported/Eigen/CXX11/src/Tensor/TensorReduction.h):

- ``n == 1``: nothing is reduced; the mean is x itself (a copy), the variance (x - x)^2.
- ``C == 1``: a full reduction (FullReducer): on the thread pool, ``threads`` shards of n // threads
  values each summed by the tree below, the remainder's sum plus each shard's in order. ``threads``
  comes from Eigen's cost model (TensorCostModel::numThreads, see :func:`full_reduction_threads`),
  capped at the intra-op pool size: the one quantity here that depends on the machine.
- ``outer == 1``: (C, inner) reduced along rows, InnerMostDimReducer's tree per channel: above
  ``lanes * 1024`` values split at the first packet boundary (counted from the tensor's start) at or
  after the middle, left + right; below it, four packet accumulators take packets 0, 1, 2, 3 of each
  group of four, are summed ((p0 + p1) + p2) + p3, whole packets after the last group go to p0, the
  last ``count % lanes`` values to a scalar s, and the sum is s + predux(p0) (predux: add the upper
  half of the lanes to the lower half until one is left).
- ``inner == 1``: (R, C) reduced over rows (channels last; 2-D inputs): channels in whole packets
  (c < C - C % lanes) sum as InnerMostDimPreserver: with R >= 16, rows j to accumulator j % 4 for
  j < R - R % 4, ((a0 + a1) + a2) + a3, then the remaining rows into it one by one; otherwise (and for
  the last C % lanes channels) the rows one after another.
- otherwise: (outer, C, inner) reduced over outer and inner (NCHW), GenericDimReducer: one scalar
  accumulator per channel, ``for i in inner: for o in outer: s += x[o, c, i]``.

``lanes`` is the packet width of the Eigen build: the tensorflow-cpu wheels compile Eigen for AVX
(TensorFlow logs "To enable the following instructions: AVX2 AVX512F ... rebuild TensorFlow"), so 32
bytes (8 float32, 4 float64) on any x86-64 CPU, this project's Zen 4 included. float16 and bfloat16
inputs are summed as float32 (Keras 3 casts them, tf_keras' float32 policy autocasts them); float64
inputs in float64. ``x3`` must hold the tensor in the logical C order TensorFlow sees (what
:mod:`batchnorm._layout` gives for C-contiguous arrays).

Measured against TF 2.21 (tf.nn.moments and both Keras layers), bit for bit in mean and variance:
NCHW, NHWC, 2-D, rank 3 and 5, N = 1, C = 1 (pool sizes 1 to 4), H*W = 1, odd sizes up to
32x64x56x56, offsets 0 and 1e4, float32 and float64.
"""

from __future__ import annotations

import numpy as np

from .._errors import BatchNormError
from . import process_cpus

__all__ = ["LEAF_SIZE", "VECTOR_BYTES", "full_reduction_threads", "moments"]

#: Bytes per Eigen packet in TensorFlow's CPU wheels (AVX: 8 float32).
VECTOR_BYTES = 32
#: Values per packet above which Eigen's InnerMostDimReducer splits in two (Eigen's LeafSize).
LEAF_SIZE = 1024
#: Channels per task of the channels-last kernels at least: threads that split narrower rows read the same
#: cache lines (32x112x112x64 float32 on 2 threads: 9.6 ms split in two, 7.0 ms on one).
ROW_TASK_CHANNELS = 128
VARIANCES = ("two_pass", "sum_of_squares", "sum_of_squares_clamped")
#: the second sum each variance takes: 1 of (x - mean)^2, 2 of x^2.
SECOND = {"two_pass": 1, "sum_of_squares": 2, "sum_of_squares_clamped": 2}


def full_reduction_threads(n: int, itemsize: int, lanes: int, pool: int) -> int:
    """Shards of Eigen's FullReducer over n values: TensorCostModel::numThreads with a cost per value of
    a load (itemsize * 11 / 64 cycles) and the SumReducer's default functor cost 10 per packet."""
    cost = n * (itemsize * 11 / 64 + 10 / lanes)
    threads = (cost - 100000) / 100000 + 0.9
    return max(1, min(pool, int(threads)))


def moments(
    x3: np.ndarray,
    variance: str,
    dtype: np.dtype,
    *,
    shape: tuple[int, ...] | None = None,
    vector_bytes: int = VECTOR_BYTES,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of ``x3`` (outer, C, inner) as TensorFlow sums them (the
    tree follows x3 alone; ``shape`` is not needed).

    ``variance``: "two_pass" is tf.nn.moments; "sum_of_squares" (Keras 3's synchronized moments)
    is Mean(Square(x)) - Square(mean), "sum_of_squares_clamped" that at least 0. ``vector_bytes``: the
    Eigen build's packet size in bytes. ``threads``: the intra-op pool size (default:
    :func:`batchnorm._reductions.process_cpus`), which only a single channel's sum uses.
    """
    if variance not in VARIANCES:
        raise BatchNormError(
            f"the eigen reduction computes variance {', '.join(VARIANCES)}; got {variance!r}. "
            "Use one of those with reduction='eigen'"
        )
    from .._kernels.compiled import BFLOAT16

    dtype = np.dtype(dtype)
    work = np.dtype(np.float64 if x3.dtype == np.float64 else np.float32)
    x = x3 if x3.flags.c_contiguous else np.ascontiguousarray(x3)
    if x.dtype not in (work, np.float16, BFLOAT16):
        x = x.astype(work)
    count = work.type(x.shape[0] * x.shape[2])
    second = SECOND[variance]
    options = (vector_bytes // work.itemsize, process_cpus() if threads is None else threads)
    with np.errstate(all="ignore"):
        if count == 1:  # nothing to reduce: TensorFlow copies
            mean = x.reshape(-1).astype(work)
            var = (mean - mean) ** 2 if second == 1 else mean * mean
        else:
            mean, var = _means(x, work, count, second, *options)
        if second == 2:  # Square is its own op: its output tensor is what Mean sums
            var = var - mean * mean
        if variance == "sum_of_squares_clamped":
            var = np.maximum(var, work.type(0))
    return mean.astype(dtype), var.astype(dtype)


def _means(x: np.ndarray, work: np.dtype, count, second: int, lanes: int, pool: int):
    """Per channel of x (outer, C, inner), C-contiguous: the mean sum / count and the second sum / count
    (``second``: 1 of (x - mean)^2, 2 of x^2, each term rounded in ``work``), through the Eigen reduction
    TensorFlow's shape simplification picks. float16 and bfloat16 values are widened as they are read."""
    from .._kernels.compiled import PARALLEL_MIN, _launch, _storage
    from . import _eigen_kernels as k

    outer, C, inner = x.shape
    flat = _storage(x)
    workers = _workers() if x.size >= PARALLEL_MIN else 1
    if C == 1:
        n = outer * inner
        shards = full_reduction_threads(n, work.itemsize, lanes, pool)
        mean = np.array([k.full_sum(flat, n, lanes, LEAF_SIZE, shards, count, k.IDENTITY) / count])
        term = (mean[0], k.SQUARED_DIFFERENCE) if second == 1 else (count, k.SQUARE)
        return mean, np.array([k.full_sum(flat, n, lanes, LEAF_SIZE, shards, *term)], work) / count
    if outer == 1:
        mode = k.SQUARED_DIFFERENCE if second == 1 else k.SQUARE
        _, mean, sums = k.inner_moments(flat.reshape(C, inner), lanes, LEAF_SIZE, count, mode)
        return mean, sums / count
    if work == np.float32:
        if inner == 1:
            bounds, packets = _row_tasks(C, lanes, workers)
            args = (flat, outer, C, bounds, packets, count, second, bounds.size - 1)
            _, mean, sums = _launch(k.rows_moments32, *args)
        else:
            groups = -(-C // k.LANES)
            chunks = max(1, min(workers, groups))
            cuts = np.array([groups * t // chunks for t in range(chunks + 1)], np.int64)
            _, mean, sums = _launch(k.planes_moments32, flat, outer, C, inner, cuts, count, second, chunks)
        return mean, sums / count
    # float64: the scalar kernels, sums of squares from the squares' own tensor
    source = x if second == 1 else np.square(x)
    if inner == 1:
        bounds, packets = _row_tasks(C, lanes, workers)
        result = k.rows_moments(source.reshape(outer, C), bounds, packets, count, second == 1)
    else:
        result = k.planes_moments(source.reshape(-1), outer, C, inner, _plane_tasks(C), count, second == 1)
    if second == 1:
        return result[1], result[2] / count
    if inner == 1:
        mean = k.rows_moments(x.reshape(outer, C), bounds, packets, count, False)[1]
    else:
        mean = k.planes_moments(x.reshape(-1), outer, C, inner, _plane_tasks(C), count, False)[1]
    return mean, result[1]


def _workers() -> int:
    import numba

    return max(1, numba.get_num_threads())


def _row_tasks(C: int, lanes: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Channel ranges for the rows kernels: the whole packets split in about one range per worker (each
    a multiple of ``lanes`` and at least ROW_TASK_CHANNELS wide), then the last C % lanes channels."""
    whole = C // lanes
    tasks = max(1, min(workers, whole * lanes // ROW_TASK_CHANNELS))
    cuts = [lanes * (whole * t // tasks) for t in range(tasks + 1)] if whole else [0]
    packets = [True] * (len(cuts) - 1)
    if C % lanes:
        cuts.append(C)
        packets.append(False)
    return np.array(cuts, np.int64), np.array(packets, np.bool_)


def _plane_tasks(C: int) -> np.ndarray:
    """Channel ranges for the planes kernel: groups of eight, as evenly as possible over the threads."""
    groups = -(-C // 8)
    tasks = max(1, min(_workers(), groups))
    cuts = [min(C, 8 * (groups * t // tasks)) for t in range(tasks + 1)]
    return np.array(cuts, np.int64)
