"""tf_keras' fused training statistics on x86: oneDNN's ``batch_normalization_forward``, as TF 2.21 runs it.

TensorFlow rewrites FusedBatchNormV3 of rank 4 to ``_MklNativeFusedBatchNormV3``
(tensorflow/core/kernels/mkl/mkl_fused_batch_norm_op.cc) and hands the tensor to oneDNN 3.7 in its own
layout (NCHW as ``abcd``, NHWC as ``acdb``; no transpose, no reorder), on TF's threadpool runtime with
``nthr`` = TF's intra-op threads (the schedulable CPUs; ``ONEDNN_VERBOSE=1`` prints ``nthr``).
oneDNN picks one of three implementations, and each sums every channel in float32, two-pass::

    mean = fl(S / fl(n)),   S = the float32 sum of x in the order below
    var  = fl(Q / fl(n)),   Q = the float32 sum of d * d, d = fl(x - mean)

- ``ncsp_bnorm:any`` (src/cpu/ncsp_batch_normalization.cpp): NCHW, and channels-last memory with
  H = W = 1 and C % 4 != 0. Threadpool runtime is not "syncable", so threads split channels only: each
  channel is one sequential sum over (n, h, w) (the ``omp simd`` pragma is not honoured: measured).
  Q adds ``fl(d * d)`` (no FMA).
- ``bnorm_tbb_jit:<isa>`` (src/cpu/x64/jit_uni_tbb_batch_normalization.cpp, ``driver_t``): channels-last
  with C % 4 == 0 (C % 16 AVX-512, C % 8 AVX2, C % 4 SSE4.1; H = W = 1 NCHW counts as channels-last).
  ``thread_distribution_nspc`` splits (N, spatial) into ``nN x nS`` chunks (N first, balance211); each
  chunk sums sequentially over its (n, s) from +0, and the partials are added in chunk order. Q
  accumulates with ``vfmadd231ps``: ``Q = fma(d, d, Q)`` (emitted on every FMA machine, SSE4.1 kernel
  included).
- ``nspc_bnorm:any`` (src/cpu/nspc_batch_normalization.cpp): channels-last with C % 4 != 0 and spatial
  size > 1. ``balance211(N, nthr)`` images per thread, each a sequential sum from +0; the partials of
  all ``nthr`` threads (empty ones +0) are added to 0 in thread order. Q adds ``fl(d * d)``.

balance211(n, team, i): the first ``n - (ceil(n / team) - 1) * team`` parts get ``ceil(n / team)`` items,
the others one less (src/common/utils.hpp). Half inputs: tf_keras hands the op float32 (its layers cast
to their float32 compute dtype), so half ``x3`` is summed as float32; float64 follows the same tree in
float64 (TensorFlow's fused op has no float64 kernel).

Verified bit for bit (mean and biased variance, every channel) against TF 2.21 on this AMD Zen 4 (AVX-512,
2 intra-op threads; NHWC also with 1, 3, 4, 6 and 8): NCHW up to (32, 64, 56, 56), NHWC up to
(32, 28, 28, 64) and C = 3 to 256, N = 1 and odd N, H = W = 1, offsets 0 and 1e4, every parity case.
The thread count (``threads``) and the machine's vector width (``lanes``) matter for channels-last
inputs only; on a machine without FMA the JIT kernel would not fuse (not emulated).
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from .._errors import BatchNormError
from . import process_cpus

__all__ = ["moments"]

#: NHWC channel counts divisible by this run oneDNN's JIT kernel (the narrowest vector, SSE4.1).
JIT_CHANNEL_MULTIPLE = 4
#: storage the NCHW tiles read as it is (float16 and bfloat16 upcast to float32 in registers).
_TILED = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32), np.dtype(np.float64))


def balance211(n: int, team: int, member: int) -> tuple[int, int]:
    """oneDNN's split of ``n`` items over ``team`` members: member's [start, end)."""
    if team <= 1 or n == 0:
        return 0, n
    big = -(-n // team)
    small = big - 1
    with_big = n - small * team
    start = member * big if member <= with_big else with_big * big + (member - with_big) * small
    return start, start + (big if member < with_big else small)


def jit_split(images: int, spatial: int, channels: int, threads: int, lanes: int = 16) -> tuple[int, int]:
    """(nN, nS): how ``driver_t::thread_distribution_nspc`` of the JIT kernel splits images and space.

    ``lanes`` is the machine's widest float32 vector (16 with AVX-512, 8 with AVX2): the kernel's
    vector is the widest that divides ``channels``, and its channel blocks decide the channel split.
    """
    simd = next(w for w in (lanes, 8, 4) if w <= lanes and channels % w == 0)
    blocks = channels // simd
    if threads == 1 or blocks <= 8:
        split_c = 1
    elif threads >= 8 and blocks <= 32:
        split_c = 8
    else:
        split_c = math.gcd(threads, blocks)
        if split_c in (blocks, threads):
            split_c = 1
    split_n = max(1, min(images, threads // split_c))
    split_s = max(1, min(spatial, threads // (split_c * split_n)))
    return split_n, split_s


def chunks(
    images: int, spatial: int, channels: int, threads: int, lanes: int = 16
) -> tuple[np.ndarray, bool]:
    """The per-thread chunks of a channels-last input, rows ``n * spatial + s``, and whether the
    squares accumulate with FMA: an int64 array of (n0, n1, s0, s1) in the order the partials add."""
    if channels % JIT_CHANNEL_MULTIPLE == 0:
        split_n, split_s = jit_split(images, spatial, channels, threads, lanes)
        parts = [
            (*balance211(images, split_n, i), *balance211(spatial, split_s, j))
            for i in range(split_n)
            for j in range(split_s)
        ]
        return np.array(parts, dtype=np.int64).reshape(-1, 4), True
    if spatial == 1:  # plain NCHW memory: one sequential chain per channel
        return np.array([(0, images, 0, 1)], dtype=np.int64), False
    parts = [(*balance211(images, threads, i), 0, spatial) for i in range(threads)]
    return np.array(parts, dtype=np.int64).reshape(-1, 4), False


def moments(
    x3: np.ndarray,
    variance: str,
    dtype: np.dtype,
    *,
    shape: tuple[int, ...] | None = None,
    images: int | None = None,
    threads: int | None = None,
    lanes: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of ``x3`` (outer, C, inner) as oneDNN sums them in TF.

    ``images`` is N of a channels-last input (``x3`` of N*H*W rows, inner 1): the threads split images;
    left out, it is the first dimension of ``shape`` (the input's shape in memory order). With neither,
    every row counts as an image: right for H = W = 1 (and NCHW, which ignores it), and for NHWC only
    where the split happens to agree (2 threads: N = 1, or C % 4 == 0 and N even).
    ``threads`` is TF's intra-op thread count (None: :func:`batchnorm._reductions.process_cpus`),
    ``lanes`` the widest float32 vector of the machine; both matter for channels-last inputs only.
    """
    if variance != "two_pass":
        raise BatchNormError(
            f"the onednn reduction computes the two-pass variance only (oneDNN's kernels); got "
            f"variance={variance!r}. Use variance='two_pass' with reduction='onednn'"
        )
    if images is None and shape is not None:
        images = shape[0]
    from .._kernels import compiled
    from . import _fused_kernels as k

    acc = np.dtype(np.float64) if x3.dtype == np.float64 else np.dtype(np.float32)
    outer, channels, inner = x3.shape
    count = acc.type(outer * inner)
    if inner > 1:  # ncsp: one chain per channel, eight channels per vector; half inputs upcast in the tiles
        x = np.ascontiguousarray(x3, dtype=x3.dtype if x3.dtype in _TILED else acc)
        mean, squares = np.empty(channels, acc), np.empty(channels, acc)
        args = (compiled._storage(x), outer, channels, inner, count, mean, squares, False)
        compiled._launch(k.group_moments, *args, compiled._chunks(-(-channels // k.LANES), x.size))
        return mean.astype(dtype), (squares / count).astype(dtype)
    x = np.ascontiguousarray(x3, dtype=acc)
    images = outer if images is None else images
    if images <= 0 or outer % images:
        raise ValueError(f"images={images} does not divide the {outer} rows of a channels-last input")
    spatial = outer // images
    parts, fused = chunks(images, spatial, channels, threads or process_cpus(), lanes)
    rows = x.reshape(outer, channels)

    def chunk_totals(mean: np.ndarray, mode: int) -> np.ndarray:
        args = (rows, spatial, parts, mean, mode)
        return _combine(compiled._launch(k.chunk_partials, *args, compiled._chunks(len(parts), x.size)))

    mean = chunk_totals(np.zeros(channels, acc), k.SUM) / count
    var = chunk_totals(mean, k.FMA_SQUARES if fused else k.SQUARES) / count
    return mean.astype(dtype), var.astype(dtype)


def _combine(partials: np.ndarray) -> np.ndarray:
    """The partial sums added in chunk order (each addition rounded)."""
    total = partials[0].copy()
    for part in partials[1:]:
        total += part
    return total
