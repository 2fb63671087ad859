"""Three LLVM operations numba does not spell, for the compiled kernels.

- :func:`fma`: ``a * b + c`` rounded once (``llvm.fma``), for float32 or float64 operands of one type.
- :func:`multiply_add`: ``a * b + c``, fused where the CPU fuses (``llvm.fmuladd``), and free to be
  reassociated as a sum's term: for the statistics, which agree with the reference to rounding only.
- :func:`opaque`: its argument, passed through an empty inline-assembly statement, so that the optimizer
  cannot know its value.

``fma(a, opaque(1.0), b)`` is ``a + b``: one rounding of the same sum, the same signed zeros and
infinities. With a visible 1 LLVM folds it back into an add; kept opaque, it runs on the multiply-add
units. On Zen 4 the float64 adds of the exact dialect's elementwise chain share two pipes with the
conversions from and to float32, while the multiply-add pipes hold only the multiply: moving the adds
over measured 1.1-1.6x on kernels whose data is in the caches. Kernels call :func:`opaque` once, outside
their loops, and the value reaches the loops as a variable.
"""

from __future__ import annotations

import platform

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["HIDES_VALUES", "fma", "multiply_add", "opaque"]


def _hides_values() -> bool:
    """Whether to take adds to the multiply-add units: on x86-64 with FMA, compiling for this CPU.
    Elsewhere :func:`opaque` returns its argument as it is and the kernels add as usual: no call to the
    C library's ``fma`` where the CPU has no FMA, and no gain to expect where (as on arm64) the adders
    and the multiply-add units are the same pipes."""
    if platform.machine().lower() not in ("x86_64", "amd64") or getattr(numba.config, "CPU_NAME", None):
        return False
    try:
        import llvmlite.binding as llvm

        return bool(llvm.get_host_cpu_features().get("fma"))
    except Exception:  # pragma: no cover - an llvmlite without the query
        return False


HIDES_VALUES = _hides_values()


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c with one rounding (``llvm.fma``), for float32 or float64 operands of one type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


@intrinsic
def multiply_add(typingctx, a, b, c):
    """a * b + c, one rounding or two as the target fuses (``llvm.fmuladd``); marked reassociable, so
    that a loop summing such terms vectorizes as a reduction."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        function = builder.module.declare_intrinsic("llvm.fmuladd", [ty], ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(function, args, fastmath=("reassoc", "contract"))

    return a(a, b, c), codegen


@intrinsic
def opaque(typingctx, v):
    """v, a value the optimizer cannot see through (float32 or float64)."""
    if not isinstance(v, types.Float):
        return None

    def codegen(context, builder, signature, args):
        if not HIDES_VALUES:
            return args[0]
        ty = args[0].type
        asm = ir.InlineAsm(ir.FunctionType(ty, [ty]), "", "=x,0")  # x: an SSE/AVX register
        return builder.call(asm, args)

    return v(v), codegen
