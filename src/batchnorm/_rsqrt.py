"""TensorFlow's and XLA's CPU reciprocal square roots, reproduced bit for bit on x86-64.

Neither library computes ``rsqrt(x)`` on the CPU as the correctly rounded ``1 / sqrtf(x)``: both start
from the processor's approximation instruction (about 12 correct bits, its table differing between
Intel and AMD parts) and refine it with Newton-Raphson steps in float32, which leaves the result up
to 3 ulps from ``1 / sqrtf(x)`` (measured, for normal inputs). The per-channel scale
``s = rsqrt(v + e) * g`` of the dialects ``rsqrt="tensorflow"`` and ``rsqrt="xla"`` is formed once per
channel, so emulating these two functions exactly is what makes those dialects bit-exact. The
approximation instruction can only be reproduced by executing it, which is done here from numba
through the LLVM intrinsic of the same instruction, on the running CPU.

TensorFlow, ``tf.math.rsqrt`` (CPU kernel ``Rsqrt``; used by ``tf.nn.batch_normalization``)
    The kernel evaluates Eigen's ``scalar_rsqrt_op`` over the flattened tensor with Eigen's tensor
    executor. The pip wheel (x86-64) is compiled for AVX without FMA (TensorFlow's start-up message
    asks to "rebuild TensorFlow ... to enable AVX2 AVX512F FMA"), with ``EIGEN_FAST_MATH`` at its
    default 1, so:

    * every whole packet of 8 floats, i.e. flat indices ``i < n - n % 8``, takes Eigen's ``prsqrt``
      for ``Packet8f``: ``y = vrsqrtps(x)`` (``_mm256_rsqrt_ps``) and one Newton step
      (``generic_rsqrt_newton_step``), each operation rounded to float32 and no FMA (``pmadd`` is
      ``pmul`` then ``padd`` without ``EIGEN_VECTORIZE_FMA``)::

          r2 = x * y;  half = y * -0.5;  h = r2 * y + -1;  z = half * h + y
          result = y if z is NaN else z        (0 -> inf, inf -> 0, NaN -> NaN)

    * the last ``n % 8`` values take the scalar ``numext::rsqrt``, ``1 / sqrtf(x)``, each correctly
      rounded. TensorFlow runs its kernels with denormals flushed (FTZ and DAZ set), so a subnormal
      input reads as zero there and gives ``inf`` (the packet path gives ``inf`` too).

    The result therefore depends on the length of the tensor and the position of each value:
    :func:`rsqrt_tensorflow` must be given the whole tensor TensorFlow was given (one value per
    channel), in its C order.

XLA, ``jax.lax.rsqrt`` on the CPU (Keras 3 on JAX, Flax; eager and ``jax.jit`` alike)
    XLA's CPU backend lowers the HLO ``rsqrt`` of f32 to its ``xla.rsqrt`` intrinsic
    (``xla/codegen/intrinsic/rsqrt.cc``), emitted for each value on its own (scalar): on a target
    with AVX, the scalar ``rsqrtss`` (``llvm.x86.sse.rsqrt.ss``) and Eigen's Newton step, whose
    multiply-adds LLVM contracts into FMAs where the host has FMA (XLA compiles for the host)::

          repeat steps times:  r2 = x * y;  half = y * -0.5;  h = fma(r2, y, -1);  y = fma(half, h, y)
          result = the raw rsqrtss(x) if x < FLT_MIN or x == inf, else y

    with ``steps`` 1 on AMD processors (XLA's rule: the host's features include ``+sse4a``; their
    SSE/AVX approximation is more accurate) and 2 on others (Intel). So ``0 -> inf``, subnormal ->
    ``inf``, ``inf -> 0``, NaN -> NaN. Without AVX (and for f64, and under
    ``--xla_cpu_disable_platform_dependent_math``) XLA computes ``1 / sqrtf(x)`` instead; its CPU runtime
    flushes denormals (``xla_cpu_ftz``), so subnormal inputs give ``inf`` there too. Both forms are
    position-independent. (The intrinsic also has vector forms, ``rsqrtps``/``vrsqrtps`` and, for 16
    lanes, ``vrsqrt14ps`` with two steps; XLA emitted none of them in any measured program, including
    under ``--xla_cpu_prefer_vector_width=512``. ``rsqrtss``, ``rsqrtps`` and ``vrsqrtps`` give the same
    bits for all 2**32 inputs on this host.)

Measured on this development host (AMD Zen 4, AVX-512, FMA; TensorFlow 2.21 CPU wheel, jax/jaxlib
0.10.2): every one of the 2**32 float32 bit patterns (negatives, NaN payloads and infinities included)
gives the same bits as ``tf.math.rsqrt`` in whole packets and as ``jax.lax.rsqrt`` (under ``jax.jit``,
which gives the same bits as eager dispatch); tails of every length, graph mode (``tf.function``), and
XLA fusions such as ``rsqrt(v + e) * g`` agree too, as do XLA's no-FMA and no-AVX forms (forced with
``--xla_cpu_max_isa=AVX`` and ``=SSE4_2``). XLA's two-step Intel form follows the source and is not
measured here.

Availability. The approximations are executed, not modelled: the emulation needs numba on an x86-64
CPU, with AVX for TensorFlow's (its wheel needs AVX to run at all). Elsewhere (ARM, where both
libraries use other approximations or none, or without numba) the functions raise
:class:`RsqrtUnavailable`; a caller then falls back to :func:`rsqrt_correct`, which is within 3 ulps
of both for normal inputs. :func:`tensorflow_available` and :func:`xla_available` say beforehand.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "TENSORFLOW_PACKET",
    "RsqrtUnavailable",
    "reproduced",
    "rsqrt_correct",
    "rsqrt_tensorflow",
    "rsqrt_xla",
    "tensorflow_available",
    "xla_available",
    "xla_form",
]

#: floats per Eigen packet in TensorFlow's x86-64 wheel (AVX, ``Packet8f``): the vectorized prefix.
TENSORFLOW_PACKET = 8


class RsqrtUnavailable(RuntimeError):
    """The running CPU (or the absence of numba) cannot execute the framework's approximation.

    Internal: callers catch it and use :func:`rsqrt_correct`, ``1 / sqrtf(v)``, instead.
    """


def rsqrt_correct(v: np.ndarray) -> np.ndarray:
    """``1 / sqrtf(v)`` in float32, each operation correctly rounded (Eigen's scalar path)."""
    x = _as_float32(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.float32(1) / np.sqrt(x)


def rsqrt_tensorflow(v: np.ndarray) -> np.ndarray:
    """``tf.math.rsqrt(v)`` of TensorFlow's x86-64 CPU wheel, bit for bit, for float32 ``v``.

    ``v`` is the whole tensor TensorFlow was given (the result depends on each value's flat index:
    packets of 8 approximate, the last ``v.size % 8`` are correctly rounded). Returns a new float32
    array of ``v``'s shape. Raises :class:`RsqrtUnavailable` where the CPU lacks AVX or numba is absent.
    """
    x = _as_float32(v)
    kernel = _kernels().get("tensorflow")
    if kernel is None:
        raise RsqrtUnavailable(_why_unavailable("tensorflow"))
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    kernel(flat, out, flat.size - flat.size % TENSORFLOW_PACKET)
    return out.reshape(x.shape)


def rsqrt_xla(v: np.ndarray) -> np.ndarray:
    """``jax.lax.rsqrt(v)`` on XLA's x86-64 CPU backend, bit for bit, for float32 ``v``.

    Elementwise (position-independent); the same eagerly and under ``jax.jit``. Returns a new float32
    array of ``v``'s shape. Raises :class:`RsqrtUnavailable` off x86-64 or where numba is absent.
    """
    x = _as_float32(v)
    kernel = _kernels().get("xla")
    if kernel is None:
        raise RsqrtUnavailable(_why_unavailable("xla"))
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    approximate, steps, contract = xla_form()
    kernel(flat, out, approximate, steps, contract)
    return out.reshape(x.shape)


def xla_form() -> tuple[bool, int, bool]:
    """How XLA forms f32 rsqrt on this host: (hardware approximation?, Newton steps, FMA-contracted?).

    From the host's features as XLA reads them: the approximation needs ``+avx`` (else ``1 / sqrtf``),
    one step on AMD (``+sse4a``), two elsewhere, FMAs where ``+fma``. ``(False, 0, False)`` off x86-64.
    """
    features = _host_features()
    if features is None or not features.get("avx"):
        return (False, 0, False)
    return (True, 1 if features.get("sse4a") else 2, bool(features.get("fma")))


def tensorflow_available() -> bool:
    """Whether :func:`rsqrt_tensorflow` can run here (x86-64 with AVX, numba importable)."""
    return "tensorflow" in _kernels()


def xla_available() -> bool:
    """Whether :func:`rsqrt_xla` can run here (x86-64, numba importable)."""
    return "xla" in _kernels()


def reproduced(kind: str) -> bool:
    """Whether the rsqrt of a dialect's ``rsqrt`` field ("correct", "tensorflow", "xla") is computed
    bit for bit here; where it is not, :func:`rsqrt_correct` stands in, within 3 ulps."""
    return kind == "correct" or kind in _kernels()


# -- internals ------------------------------------------------------------------------------------


def _as_float32(v: Any) -> np.ndarray:
    x = np.asarray(v)
    if x.dtype != np.float32:
        raise TypeError(f"rsqrt emulation takes float32 values, got {x.dtype}; cast before calling")
    return x


@functools.cache
def _host_features() -> dict[str, bool] | None:
    """llvmlite's view of the running CPU, or None where numba/llvmlite is missing or not x86-64."""
    try:
        from llvmlite import binding as llvm
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    if not llvm.get_process_triple().startswith(("x86_64", "i686", "i386")):
        return None
    try:
        import numba  # noqa: F401  (the kernels need it)
    except ImportError:  # pragma: no cover
        return None
    return dict(llvm.get_host_cpu_features())


def _why_unavailable(which: str) -> str:
    features = _host_features()
    if features is None:
        return f"{which} rsqrt emulation needs numba on an x86-64 CPU; use rsqrt_correct instead"
    return f"{which} rsqrt emulation needs the CPU feature 'avx', absent here; use rsqrt_correct instead"


@functools.cache
def _kernels() -> dict[str, Callable[..., None]]:
    """The compiled kernels the running CPU supports, by name ("tensorflow", "xla")."""
    features = _host_features()
    if features is None:
        return {}
    # The kernels are compiled for numba's target, which is the host unless NUMBA_CPU_NAME says
    # otherwise; the AVX instruction can only be emitted for a target that has AVX.
    from numba.core import config

    cpu_name = getattr(config, "CPU_NAME", None)
    if cpu_name in (None, "host"):
        target_avx = bool(features.get("avx"))
    else:
        target_avx = "+avx" in (getattr(config, "CPU_FEATURES", None) or "").split(",")
    return _build(avx=bool(features.get("avx")) and target_avx)


def _build(*, avx: bool) -> dict[str, Callable[..., None]]:
    """Compile the kernels (numba imported here: the module itself must import without it)."""
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    from ._kernels import intrinsics

    fma: Any = intrinsics.fma  # an intrinsic: its call signature is numba's, not the Python one

    f32 = ir.FloatType()
    lane0 = ir.Constant(ir.IntType(32), 0)

    def hardware_rsqrt(name: str, lanes: int) -> Any:
        """An intrinsic running the x86 approximation ``name`` on ``lanes`` copies of one float32."""

        def impl(typingctx: Any, x: Any) -> Any:
            if x != types.float32:
                return None

            def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
                vec = ir.VectorType(f32, lanes)
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec]), name)
                packed = ir.Constant(vec, ir.Undefined)
                for k in range(lanes):
                    packed = builder.insert_element(packed, args[0], ir.Constant(ir.IntType(32), k))
                return builder.extract_element(builder.call(fn, [packed]), lane0)

            return types.float32(types.float32), codegen

        return intrinsic(impl)

    kernels: dict[str, Callable[..., None]] = {}
    one = np.float32(1.0)
    minus_one = np.float32(-1.0)
    minus_half = np.float32(-0.5)
    tiny = np.float32(np.finfo(np.float32).tiny)

    if avx:
        vrsqrtps = hardware_rsqrt("llvm.x86.avx.rsqrt.ps.256", 8)

        @njit(nogil=True, error_model="numpy")
        def tensorflow(x: Any, out: Any, packed: int) -> None:  # pragma: no cover - compiled
            for i in range(packed):
                a = x[i]
                y = vrsqrtps(a)
                r2 = a * y
                half = y * minus_half
                h = r2 * y + minus_one
                z = half * h + y
                out[i] = y if z != z else z
            for i in range(packed, x.size):
                a = x[i]
                if abs(a) < tiny:  # denormals are zero in TensorFlow's kernels
                    a = a * np.float32(0.0)
                out[i] = one / np.sqrt(a)

        kernels["tensorflow"] = tensorflow

    rsqrtss = hardware_rsqrt("llvm.x86.sse.rsqrt.ss", 4)  # SSE: every x86-64 CPU

    @njit(nogil=True, error_model="numpy")
    def xla(x: Any, out: Any, approximate: bool, steps: int, contract: bool) -> None:  # pragma: no cover
        for i in range(x.size):
            a = x[i]
            if not approximate:  # no AVX: 1 / sqrtf, denormals flushed
                if abs(a) < tiny:
                    a = a * np.float32(0.0)
                out[i] = one / np.sqrt(a)
                continue
            y = rsqrtss(a)
            z = y
            for _ in range(steps):
                r2 = a * z
                half = z * minus_half
                if contract:  # XLA compiles for the host: LLVM forms FMAs where the host has FMA
                    h = fma(r2, z, minus_one)
                    z = fma(half, h, z)
                else:
                    h = r2 * z + minus_one
                    z = half * h + z
            # the raw approximation below FLT_MIN (zeros, subnormals, negatives) and at +inf
            out[i] = y if a < tiny or a == np.inf else z

    kernels["xla"] = xla

    return kernels
