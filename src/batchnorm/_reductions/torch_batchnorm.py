"""PyTorch's CPU batch-norm training statistics (reduction ``"torch-batchnorm"``), bit for bit.

torch.nn.BatchNorm*d in training calls batch_norm_cpu_update_stats_template
(aten/src/ATen/native/Normalization.cpp), which gets mean and var_sum = sum((x - mean)^2) per channel
from batch_norm_cpu_collect_stats_kernel (aten/src/ATen/native/cpu/batch_norm_kernel.cpp) and stores
var = fl(var_sum / n) in the statistics' dtype (a float32 division for float32 and half inputs, n as a
float32). Half inputs (float16 / bfloat16, float32 parameters) are upcast to float32 exactly and give
float32 statistics. The kernel follows the memory layout; in the (outer, C, inner) view x3 (see
:mod:`batchnorm._layout`):

- **contiguous** (``inner > 1``: NCHW, NCL), channels in parallel, each summed in memory order (o, then
  i). float32 and float64 inputs: ``sum`` a float64 sum of x from 0; ``mean = fl(sum / n)``; ``var_sum
  = fl(float64 sum of fl(fl(x - mean)^2))``. float64 inputs: torch's compiler vectorizes that loop two
  values at a time with the adds kept in order, and contracts the odd value left at the end of each row
  into ``fma(d, d, sum)`` (``fused``). Half inputs: float32 throughout, no FMA; per row, blocks of 16
  values into 8 lanes (lane l takes values l and l + 8 of a block) and the rest of the row into a
  scalar; ``sum = scalar + (((lane 0 + lane 1) + lane 2) + ... + lane 7)``; ``mean = fl32(sum / n)``;
  the same tree over fl32(fl32(x - mean)^2).
- **channels-last** (``inner == 1``: NHWC, NDHWC, (N, C), N C 1 1): at::parallel_for(0, rows, 1) over
  ``threads`` = at::get_num_threads() (aten/src/ATen/ParallelOpenMP.h: ``chunk = ceil(rows / min(threads,
  rows))`` rows per thread, thread t taking rows [t * chunk, (t + 1) * chunk)). Each thread adds its rows
  into its own zeroed row of a (threads, C) buffer in the input's float type (float32 for half inputs),
  one add per value in row order; the buffer rows are added in thread order from 0, in float64 for
  float32 / float64 inputs and in float32 for half inputs; ``mean = fl(sum / n)``. The second pass
  accumulates ``fma(x - mean, x - mean, acc)`` (vec::map3's ``acc + (x - m) * (x - m)``, contracted) and
  merges the same way. float32 / float64 inputs with rows <= threads take a serial loop instead, in the
  input's dtype: ``sum`` from 0, ``mean = fl(sum / n)``, ``acc = fma(d, d, acc)``.

Measured against torch 2.13 (CPU capability AVX512; AVX2 forced: the same) on NCHW, NHWC, NCDHW, NDHWC,
NCL and 2-D inputs up to 32x64x56x56, odd sizes, offsets 0 and 1e4 (100 for half), float32, float64,
float16 and bfloat16, 1 to 4 threads: every channel's mean and variance bit for bit. The machine enters
through ``threads`` only (None: :func:`default_threads`, what torch picks when nothing is set); torch's
DEFAULT capability (no AVX2, or ATEN_CPU_CAPABILITY=default) compiles other trees and is not emulated
(measured: variances 1 to 3 ulps off in float32, more in half). ``fused=False`` drops the two FMAs above.

Not emulated: inputs torch sees as non-contiguous (its serial at::mean path), and half parameters
(a ``.half()`` module, whose statistics torch stores in half); x3 is taken as torch's memory layout.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .._errors import BatchNormError

__all__ = ["HALF_LANES", "default_threads", "moments", "statistics"]

#: float32 lanes of torch's contiguous half-input kernel (its Vectorized<float> there: 8 lanes).
HALF_LANES = 8
_WIDE = (np.dtype(np.float32), np.dtype(np.float64))


def default_threads() -> int:
    """torch's default at::get_num_threads(): the physical cores this process may run on, or fewer if
    MKL_NUM_THREADS (else OMP_NUM_THREADS) asks for fewer (measured: a larger request is capped)."""
    cpus = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
    count = _physical_cores(cpus) or os.cpu_count() or 1
    for variable in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        try:
            requested = int(os.environ.get(variable, "").split(",")[0])
        except ValueError:
            continue
        if requested > 0:
            return min(requested, count)
    return count


@functools.lru_cache(maxsize=16)
def _physical_cores(cpus: tuple[int, ...]) -> int:
    """How many distinct (package, core) pairs the logical CPUs ``cpus`` sit on (sysfs topology, read
    once per CPU set: the affinity may change while the process runs, the machine does not)."""
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return len(cores)


def moments(
    x3: np.ndarray,
    variance: str,
    dtype: np.dtype,
    *,
    shape: tuple[int, ...] | None = None,
    threads: int | None = None,
    fused: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of x3 (outer, C, inner) as torch's CPU kernel computes them,
    in ``dtype`` (the tree follows x3 alone; ``shape`` is not needed). ``threads``: at::get_num_threads()
    (None: :func:`default_threads`); only channels-last inputs depend on it. ``fused``: torch's AVX2 /
    AVX512 builds' FMA contractions (see above)."""
    mean, var, _ = statistics(x3, variance, dtype, shape=shape, threads=threads, fused=fused)
    return mean, var


def statistics(
    x3: np.ndarray,
    variance: str,
    dtype: np.dtype,
    *,
    shape: tuple[int, ...] | None = None,
    threads: int | None = None,
    fused: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`moments` and torch's var_sum itself, in the kernel's float type (float32 for float32 and
    half inputs): the running update divides that sum by n - 1 (Normalization.cpp), which var, rounded
    from var_sum / n, cannot give back bit for bit."""
    if variance != "two_pass":
        raise BatchNormError(
            f"reduction 'torch-batchnorm' is PyTorch's two-pass kernel; got variance={variance!r}. "
            "Use variance='two_pass' with it, or another reduction"
        )
    threads = default_threads() if threads is None else int(threads)
    if threads < 1:
        raise BatchNormError(f"threads must be >= 1; got {threads}. Pass None for torch's default")
    from .._kernels import compiled
    from . import _torch_batchnorm_kernels as k
    from ._fused_kernels import LANES, group_moments

    half = x3.dtype not in _WIDE
    work = np.dtype(np.float32) if half else x3.dtype
    outer, C, inner = x3.shape
    x = x3 if inner > 1 and half else np.ascontiguousarray(x3, dtype=work)
    n = outer * inner
    with np.errstate(all="ignore"):
        if inner > 1 and half:  # the 16-bit storage as it is, upcast in the kernel
            mean, var_sum = np.empty(C, work), np.empty(C, work)
            storage = compiled._storage(np.ascontiguousarray(x3))
            compiled._launch(
                k.lane_moments, storage, outer, C, inner, mean, var_sum, compiled._chunks(C, n * C)
            )
        elif inner > 1:
            mean, var_sum = np.empty(C, work), np.empty(C, work)
            groups = -(-C // LANES)
            args = (
                x.reshape(-1),
                outer,
                C,
                inner,
                np.float64(n),
                mean,
                var_sum,
                fused and work == np.float64,
            )
            compiled._launch(group_moments, *args, compiled._chunks(groups, x.size))
        elif outer <= threads and not half:
            mean, var_sum = k.serial_moments(x.reshape(outer, C), fused)
        else:
            chunk = -(-outer // min(threads, outer))
            merge = np.dtype(np.float32) if half else np.dtype(np.float64)
            rows = x.reshape(outer, C)
            mean = (_in_order(k.partial_sums(rows, threads, chunk), merge) / n).astype(work)
            var_sum = _in_order(k.partial_squares(rows, mean, threads, chunk), merge).astype(work)
        var = var_sum / work.type(n)
    return mean.astype(dtype), var.astype(dtype), var_sum


def _in_order(buffer: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The rows of ``buffer`` added one after another from 0, in ``dtype``."""
    total = np.zeros(buffer.shape[1], dtype)
    for row in buffer:
        total += row.astype(dtype)
    return total
