"""Compiled kernels (numba): the same four functions as :mod:`.reference`, at memory bandwidth.

Every kernel is one ``prange`` over ``numba.get_num_threads()`` chunks (arrays under PARALLEL_MIN
values run on the calling thread alone), ``nogil``, cached on disk (``cache=True``: beside this file, or
under the user's cache directory when the package directory is read-only, or in ``NUMBA_CACHE_DIR``).
No full-size temporaries: extra memory is O(channels x threads) (O(channels x inner) for inner < 16).

Arithmetic contract, checked by ``tests/test_kernels.py``:

- ``apply_affine`` and ``grad_input`` are bit-identical to the reference: the same operations in the
  same order and dtype (numba contracts no multiply-add into an FMA and reassociates nothing here; the
  ``fma`` forms are float64 ``a * b + c`` rounded once to float32, as :func:`batchnorm._arithmetic.fma`;
  the adds after a product run as ``fma(a, 1, b)``, which rounds as ``a + b``: see :mod:`.intrinsics`),
  then one rounding to the output dtype as NumPy and ml_dtypes round (float64 -> bfloat16 and float16
  in one correct rounding, as :mod:`batchnorm._rounding`). float16 and bfloat16 travel as 16-bit
  integers and are converted here: float16 <-> float32 by F16C where the CPU has it, and float64 ->
  float16 there as float64 -> float32 rounded to odd, then F16C (one correct rounding, a third faster
  than the integer rounding; for bfloat16 the integer rounding stays the faster). Division by zero
  gives inf/NaN as in NumPy (``error_model="numpy"``).
- ``moments`` and ``grad_sums`` accumulate in float64, in blocks that stay in cache: per block the mean
  and then the sum of squared deviations about it (a true two-pass), blocks and threads combined with
  Chan's update, so large offsets cost no accuracy and a constant channel has variance exactly 0. The
  ``sum_of_squares`` variants accumulate sum(x) and sum(x*x) (the square in the statistics dtype) and
  finish with the reference's formula in that dtype. float32 statistics are the float64 ones rounded
  once. Results agree with the reference to float64 rounding (about 1e-13 relative), not bit for bit.
  Reductions use ``fastmath={"reassoc"}`` only (SIMD sums; NaN and inf semantics kept); the squared
  deviations and the backward's products add as multiply-adds (:func:`.intrinsics.multiply_add`,
  fused on FMA machines), which keeps the adders free for the conversions (1.2-2x on data in cache).

Layouts: ``(outer, C, inner)`` with ``inner >= ROW_MIN`` runs along rows of ``inner`` values (NCHW),
segment by segment; smaller ``inner`` (channels-last has ``inner == 1``) runs along rows of
``C * inner`` values with a coefficient or accumulator per column, merged per channel at the end; rows
of NARROW_COLUMNS read a float64 shift and offset whose values are float32 values (a mean and beta given
in float32) as float32 arrays, widened back exactly in the kernel.
"""

from __future__ import annotations

import functools
import platform
import threading
from typing import NamedTuple

import ml_dtypes
import numba
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .._arithmetic import Coefficients
from .intrinsics import HIDES_VALUES, fma, multiply_add, opaque

__all__ = ["apply_affine", "grad_input", "grad_sums", "moments"]

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FORMS = {"centered": 0, "affine": 1, "fma": 2, "ratio": 3, "normalized_fma": 4}
VARIANCES = {"two_pass": 0, "sum_of_squares": 1, "sum_of_squares_clamped": 1}

#: inner extents below this run channels-last style (columns), at or above it along rows
#: (statistics; ELEMENT_ROW_MIN for the elementwise kernels).
ROW_MIN = 16
ELEMENT_ROW_MIN = 16
#: values per segment of a two-pass statistics row (its second pass reads it from cache).
STAT_BLOCK = 8192
#: two-pass statistics rows shorter than this are software-pipelined (see _two_pass_rows); longer
#: rows, which come from memory row by row, measured slower that way.
SHORT_ROW = 256
#: values per block of rows in the channels-last statistics kernels: 256 kB of float32 for the second
#: pass to find in L2, and few enough blocks that the per-column merges stay cheap.
COLUMN_BLOCK = 1 << 16
#: values per work item of the elementwise kernels along long rows.
ELEMENT_SEGMENT = 1 << 16
#: channels-last rows narrower than this are taken several at a time (fewer, longer inner loops):
#: the statistics kernels' accumulators gain from wide rows, the elementwise kernels' per-column
#: coefficients (three float64 arrays) from narrow ones (measured: 10-25% either way).
MIN_COLUMNS = 256
ELEMENT_MIN_COLUMNS = 64
#: channels-last elementwise rows of this many columns (inclusive) take their shift and offset as float32
#: where those are float32 values (a channel's mean and beta in inference): 16 bytes of coefficients per
#: column instead of 24, which keeps them in L1 beside the streams (x in cache, 4096x1024 float32:
#: 1.31-1.36x; 512 columns 1.05-1.28x; 256 columns 1.04-1.14x, 128 columns 0.91x, 4096 columns 1.0x;
#: rows coming from memory 0.98-1.05x).
NARROW_COLUMNS = (512, 2048)
#: values per work item of a channels-last elementwise kernel (whole rows).
ROW_BLOCK = 1 << 14
#: arrays smaller than this run on the calling thread alone (waking the pool costs more).
PARALLEL_MIN = 1 << 16

_parallel = njit(parallel=True, nogil=True, cache=True, error_model="numpy")
_reduction = njit(parallel=True, nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
_scalar = njit(nogil=True, cache=True, error_model="numpy")
#: helpers called once per row or segment, inlined into the kernel (a call costs as much as a short row)
_inline = njit(nogil=True, cache=True, error_model="numpy", inline="always")


# -- scalar conversions (NumPy's and ml_dtypes' semantics, NaNs included) ------------------------
#
# Written as LLVM IR with 32-bit integers and selects only: numba would widen every integer operation to
# 64 bits and branch, and the loops around these would vectorize at half width or not at all.

_I16, _I32, _I64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
_F32, _F64 = ir.FloatType(), ir.DoubleType()


def _c(ty: ir.Type, value: int | float) -> ir.Constant:
    return ir.Constant(ty, value)


def _ir_half_to_f32(b: ir.IRBuilder, h: ir.Value) -> ir.Value:
    """float16 bits (i16) -> float: exact, NaN payloads kept (NumPy)."""
    h = b.zext(h, _I32)
    sign = b.shl(b.and_(h, _c(_I32, 0x8000)), _c(_I32, 16))
    em = b.and_(h, _c(_I32, 0x7FFF))
    special = b.or_(_c(_I32, 0x7F800000), b.shl(b.and_(em, _c(_I32, 0x3FF)), _c(_I32, 13)))
    normal = b.add(b.shl(em, _c(_I32, 13)), _c(_I32, 0x38000000))
    tiny = b.bitcast(b.fmul(b.uitofp(em, _F32), _c(_F32, 2.0**-24)), _I32)  # subnormal: em * 2**-24
    bits = b.select(
        b.icmp_unsigned(">=", em, _c(_I32, 0x7C00)),
        special,
        b.select(b.icmp_unsigned(">=", em, _c(_I32, 0x400)), normal, tiny),
    )
    return b.bitcast(b.or_(bits, sign), _F32)


def _ir_f32_to_half(b: ir.IRBuilder, f: ir.Value) -> ir.Value:
    """float -> float16 bits (i16), round to nearest even; NaN: 0x7c00 + (significand >> 13), kept a
    NaN (NumPy); |f| >= 65536: inf."""
    u = b.bitcast(f, _I32)
    sign = b.and_(b.lshr(u, _c(_I32, 16)), _c(_I32, 0x8000))
    a = b.and_(u, _c(_I32, 0x7FFFFFFF))
    nan = b.add(_c(_I32, 0x7C00), b.lshr(b.and_(a, _c(_I32, 0x7FFFFF)), _c(_I32, 13)))
    nan = b.select(b.icmp_unsigned("==", nan, _c(_I32, 0x7C00)), _c(_I32, 0x7C01), nan)
    big = b.select(b.icmp_unsigned(">", a, _c(_I32, 0x7F800000)), nan, _c(_I32, 0x7C00))
    # subnormal or zero result: adding 0.5 aligns the 10 bits at the bottom, rounding to nearest even
    tiny = b.sub(b.bitcast(b.fadd(b.bitcast(a, _F32), _c(_F32, 0.5)), _I32), _c(_I32, 0x3F000000))
    # normal: rebias the exponent, round to nearest even on the 13 dropped bits
    odd = b.and_(b.lshr(a, _c(_I32, 13)), _c(_I32, 1))
    normal = b.lshr(b.add(b.add(a, _c(_I32, 0xC8000FFF)), odd), _c(_I32, 13))
    out = b.select(
        b.icmp_unsigned(">=", a, _c(_I32, 0x47800000)),
        big,
        b.select(b.icmp_unsigned("<", a, _c(_I32, 0x38800000)), tiny, normal),
    )
    return b.trunc(b.or_(out, sign), _I16)


def _ir_f32_to_bf16(b: ir.IRBuilder, f: ir.Value) -> ir.Value:
    """float -> bfloat16 bits (i16), round to nearest even; NaN -> sign | 0x7fc0 (ml_dtypes)."""
    u = b.bitcast(f, _I32)
    high = b.lshr(u, _c(_I32, 16))
    rounded = b.lshr(b.add(b.add(u, _c(_I32, 0x7FFF)), b.and_(high, _c(_I32, 1))), _c(_I32, 16))
    nan = b.or_(b.and_(high, _c(_I32, 0x8000)), _c(_I32, 0x7FC0))
    return b.trunc(b.select(b.fcmp_unordered("uno", f, f), nan, rounded), _I16)


def _ir_f64_round(b: ir.IRBuilder, d: ir.Value, bits: int, bias: int, big: int, magic: int) -> ir.Value:
    """|double| -> the bits of a binary format with ``bits`` significand bits, exponent bias ``bias``
    (relative to float64's), round to nearest even, directly from the float64 bits (one rounding):
    normal results shift the significand, subnormal ones add ``magic`` (a power of two whose float64
    ulp is the format's subnormal unit), |d| >= ``big`` overflows (the caller sets inf and NaN)."""
    drop = 52 - bits
    a = b.and_(b.bitcast(d, _I64), _c(_I64, 0x7FFFFFFFFFFFFFFF))
    odd = b.and_(b.lshr(a, _c(_I64, drop)), _c(_I64, 1))
    rebased = b.add(b.sub(a, _c(_I64, bias << 52)), _c(_I64, (1 << (drop - 1)) - 1))
    normal = b.lshr(b.add(rebased, odd), _c(_I64, drop))
    m = ir.Constant(_F64, 2.0 ** (((magic >> 52) & 0x7FF) - 1023))
    tiny = b.sub(b.bitcast(b.fadd(b.bitcast(a, _F64), m), _I64), _c(_I64, magic))
    min_normal = (bias + 1) << 52
    out = b.select(b.icmp_unsigned("<", a, _c(_I64, min_normal)), tiny, normal)
    return b.trunc(out, _I32), b.icmp_unsigned(">=", a, _c(_I64, big))


def _ir_f64_to_half(b: ir.IRBuilder, d: ir.Value) -> ir.Value:
    """double -> float16 bits, rounded once; |d| >= 65536: inf; NaN: 0x7c00 + (significand >> 42),
    kept a NaN (NumPy)."""
    u = b.bitcast(d, _I64)
    sign = b.trunc(b.and_(b.lshr(u, _c(_I64, 48)), _c(_I64, 0x8000)), _I32)
    nan = b.trunc(b.lshr(b.and_(u, _c(_I64, 0xFFFFFFFFFFFFF)), _c(_I64, 42)), _I32)
    nan = b.add(nan, _c(_I32, 0x7C00))
    nan = b.select(b.icmp_unsigned("==", nan, _c(_I32, 0x7C00)), _c(_I32, 0x7C01), nan)
    value, over = _ir_f64_round(b, d, 10, 1023 - 15, 0x40F0000000000000, 0x41B0000000000000)
    value = b.select(over, _c(_I32, 0x7C00), value)
    value = b.select(b.fcmp_unordered("uno", d, d), nan, value)
    return b.trunc(b.or_(value, sign), _I16)


def _ir_f64_to_bf16(b: ir.IRBuilder, d: ir.Value) -> ir.Value:
    """double -> bfloat16 bits, rounded once (what round-to-odd float32 then ml_dtypes gives);
    |d| >= 2**128: inf; NaN: sign | 0x7fc0 (ml_dtypes)."""
    u = b.bitcast(d, _I64)
    sign = b.trunc(b.and_(b.lshr(u, _c(_I64, 48)), _c(_I64, 0x8000)), _I32)
    value, over = _ir_f64_round(b, d, 7, 1023 - 127, 0x47F0000000000000, 0x3AE0000000000000)
    value = b.select(over, _c(_I32, 0x7F80), value)
    value = b.select(b.fcmp_unordered("uno", d, d), _c(_I32, 0x7FC0), value)
    return b.trunc(b.or_(value, sign), _I16)


def _ir_f64_to_f32_odd(b: ir.IRBuilder, d: ir.Value) -> ir.Value:
    """double -> float rounded to odd: toward zero, with the last bit set when inexact. Rounding that
    float once more, to nearest even, to a format of at most 22 significand bits (float16, bfloat16)
    gives the correctly rounded double (Boldo and Melquiond's rule). Built from the hardware's
    round-to-nearest: where it was inexact and landed on an even significand, step one ulp toward d.
    Overflow gives FLT_MAX (odd, so it still rounds to inf); NaN stays NaN."""
    r = b.fptrunc(d, _F32)
    back = b.fpext(r, _F64)
    bits = b.bitcast(r, _I32)
    even = b.icmp_unsigned("==", b.and_(bits, _c(_I32, 1)), _c(_I32, 0))
    step = b.and_(b.fcmp_ordered("!=", back, d), even)  # false for NaN
    fabs = b.module.declare_intrinsic("llvm.fabs", [_F64])
    toward = b.select(b.fcmp_ordered(">", b.call(fabs, [d]), b.call(fabs, [back])), _c(_I32, 1), _c(_I32, -1))
    return b.bitcast(b.select(step, b.add(bits, toward), bits), _F32)


def _converter(src: types.Type, dst: types.Type, build):
    """An intrinsic ``dst(src)`` whose body ``build(builder, value)`` emits; integer arguments of
    another width (numba's promotions) are truncated or extended to the width ``src`` names."""

    def impl(typingctx, v):
        if isinstance(src, types.Integer) != isinstance(v, types.Integer) or v not in (
            src,
            *(
                (types.int16, types.uint16, types.int32, types.uint32, types.int64, types.uint64)
                if isinstance(src, types.Integer)
                else ()
            ),
        ):
            return None

        def codegen(context, builder, signature, args):
            value = args[0]
            if isinstance(src, types.Integer) and v.bitwidth != src.bitwidth:
                width = ir.IntType(src.bitwidth)
                value = (
                    builder.trunc(value, width) if v.bitwidth > src.bitwidth else builder.zext(value, width)
                )
            return build(builder, value)

        return dst(v), codegen

    return intrinsic(impl)


def _hardware_half() -> bool:
    """Whether LLVM converts float <-> half in hardware here (x86 F16C, every aarch64): the software
    routines above give the same results except that hardware quiets a signaling NaN on the way in, which
    the kernels' arithmetic does anyway."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    if machine not in ("x86_64", "amd64"):
        return False
    try:
        import llvmlite.binding as llvm

        return bool(llvm.get_host_cpu_features().get("f16c"))
    except Exception:  # pragma: no cover - an llvmlite without the query: software
        return False


HARDWARE_HALF = _hardware_half()
_HALF = ir.HalfType()

if HARDWARE_HALF:  # float64 -> float16 through float rounded to odd, then the hardware's rounding
    _half_to_f32 = _converter(types.uint16, types.float32, lambda b, h: b.fpext(b.bitcast(h, _HALF), _F32))
    _f32_to_half = _converter(types.float32, types.uint16, lambda b, f: b.bitcast(b.fptrunc(f, _HALF), _I16))
    _f64_to_half = _converter(
        types.float64, types.uint16, lambda b, d: b.bitcast(b.fptrunc(_ir_f64_to_f32_odd(b, d), _HALF), _I16)
    )
else:
    _half_to_f32 = _converter(types.uint16, types.float32, _ir_half_to_f32)
    _f32_to_half = _converter(types.float32, types.uint16, _ir_f32_to_half)
    _f64_to_half = _converter(types.float64, types.uint16, _ir_f64_to_half)
_bf16_to_f32 = _converter(
    types.int16, types.float32, lambda b, h: b.bitcast(b.shl(b.zext(h, _I32), _c(_I32, 16)), _F32)
)
_f32_to_bf16 = _converter(types.float32, types.int16, _ir_f32_to_bf16)
_f64_to_bf16 = _converter(types.float64, types.int16, _ir_f64_to_bf16)


# -- type-dispatched load / store: float16 travels as uint16, bfloat16 as int16 -------------------


def _load(v, like):
    """v (a stored value) in the float type of ``like``."""


def _store(y, out):
    """y (float32 or float64) as a value of ``out``'s storage dtype, rounded once."""


def _as(v, like):
    """v converted to the float type of ``like``."""


@overload(_load)
def _ov_load(v, like):
    wide = like == types.float64
    if v == types.uint16:
        if wide:
            return lambda v, like: np.float64(_half_to_f32(v))
        return lambda v, like: _half_to_f32(v)
    if v == types.int16:
        if wide:
            return lambda v, like: np.float64(_bf16_to_f32(v))
        return lambda v, like: _bf16_to_f32(v)
    if wide:
        return lambda v, like: np.float64(v)
    return lambda v, like: np.float32(v)


@overload(_store)
def _ov_store(y, out):
    dt = out.dtype
    wide = y == types.float64
    if dt == types.uint16:
        if wide:
            return lambda y, out: _f64_to_half(y)
        return lambda y, out: _f32_to_half(y)
    if dt == types.int16:
        if wide:
            return lambda y, out: _f64_to_bf16(y)
        return lambda y, out: _f32_to_bf16(y)
    if dt == types.float64:
        return lambda y, out: np.float64(y)
    return lambda y, out: np.float32(y)


@overload(_as)
def _ov_as(v, like):
    if like == types.float64:
        return lambda v, like: np.float64(v)
    return lambda v, like: np.float32(v)


# -- elementwise forms (each operation rounded in the compute type, left to right) ----------------


def _add(a, b, one):
    """a + b in the wider type of the two: on the multiply-add units as fma(a, one, b) where
    :data:`.intrinsics.HIDES_VALUES` (``one`` is 1.0 from :func:`.intrinsics.opaque`), else an add."""


@overload(_add)
def _ov_add(a, b, one):
    if not HIDES_VALUES:
        return lambda a, b, one: a + b
    if a == types.float64 or b == types.float64:
        return lambda a, b, one: fma(np.float64(a), one, np.float64(b))
    return lambda a, b, one: fma(a, np.float32(one), b)


@_scalar
def _form(form, x, sh, sc, dv, of, gn, one):
    if form == 0:
        return _add((x - sh) * sc, of, one)
    if form == 1:
        return _add(x * sc, of, one)
    if form == 2:  # a * b + c in float64, rounded once to the compute type (see _arithmetic.fma)
        return _as(_add(np.float64(x) * np.float64(sc), np.float64(of), one), x)
    if form == 3:
        return _add((x - sh) * sc / dv, of, one)
    return _as(_add(np.float64((x - sh) * sc) * np.float64(gn), np.float64(of), one), x)


# Inner loops run over zero-based ranges of slices, ``for i in range(n): ys[i] = ...``: LLVM vectorizes
# those, but not ``for i in range(lo, hi)`` nor ``out[lo + i]`` inside a parfor (ten times slower).


@_inline
def _position(it, nseg, C):
    """Work item ``it`` of a row layout: (row, segment j of that row, channel c)."""
    row = it // nseg
    return row, it - row * nseg, row % C


@_inline
def _segment(row, j, inner, nseg):
    """The flat bounds [lo, hi) of segment j of row ``row`` (rows of ``inner`` values, nseg segments)."""
    if nseg == 1:
        return row * inner, row * inner + inner
    return row * inner + j * inner // nseg, row * inner + (j + 1) * inner // nseg


@_inline
def _advance(j, row, c, nseg, C):
    """The work item after segment j of row `row` (channel c): no divisions on the way."""
    j += 1
    if j == nseg:
        j = 0
        row += 1
        c += 1
        if c == C:
            c = 0
    return j, row, c


@_inline
def _affine_run(form, xs, ys, s, k, d, o, g, one):
    """ys = form(xs) with one channel's coefficients (a run of values of one channel)."""
    if form == 0:
        for i in range(len(xs)):
            ys[i] = _store(_form(0, _load(xs[i], k), s, k, d, o, g, one), ys)
    elif form == 1:
        for i in range(len(xs)):
            ys[i] = _store(_form(1, _load(xs[i], k), s, k, d, o, g, one), ys)
    elif form == 2:
        for i in range(len(xs)):
            ys[i] = _store(_form(2, _load(xs[i], k), s, k, d, o, g, one), ys)
    elif form == 3:
        for i in range(len(xs)):
            ys[i] = _store(_form(3, _load(xs[i], k), s, k, d, o, g, one), ys)
    else:
        for i in range(len(xs)):
            ys[i] = _store(_form(4, _load(xs[i], k), s, k, d, o, g, one), ys)


@_inline
def _affine_columns(form, xs, ys, sh, sc, dv, of, gn, one):
    """ys = form(xs) along a row of columns, a coefficient per column (channels-last)."""
    if form == 0:
        for w in range(len(xs)):
            ys[w] = _store(_form(0, _load(xs[w], sc[w]), sh[w], sc[w], dv[w], of[w], gn[w], one), ys)
    elif form == 1:
        for w in range(len(xs)):
            ys[w] = _store(_form(1, _load(xs[w], sc[w]), sh[w], sc[w], dv[w], of[w], gn[w], one), ys)
    elif form == 2:
        for w in range(len(xs)):
            ys[w] = _store(_form(2, _load(xs[w], sc[w]), sh[w], sc[w], dv[w], of[w], gn[w], one), ys)
    elif form == 3:
        for w in range(len(xs)):
            ys[w] = _store(_form(3, _load(xs[w], sc[w]), sh[w], sc[w], dv[w], of[w], gn[w], one), ys)
    else:
        for w in range(len(xs)):
            ys[w] = _store(_form(4, _load(xs[w], sc[w]), sh[w], sc[w], dv[w], of[w], gn[w], one), ys)


@_parallel
def _apply(x, sh, sc, dv, of, gn, form, out, outer, C, inner, nseg, nchunks):
    """out = form(x) over (outer, C, inner). ``inner == 1``: rows of C values, a coefficient per column
    (channels-last); else rows of ``inner`` values, each split into ``nseg`` segments (the work items)."""
    cols = inner == 1
    items = -(-outer // nseg) if cols else outer * C * nseg
    one = opaque(1.0)
    for t in prange(nchunks):
        it0 = items * t // nchunks
        it1 = items * (t + 1) // nchunks
        if cols:  # items of nseg rows of C columns
            for r in range(it0 * nseg, min(it1 * nseg, outer)):
                xs, ys = x[r * C : (r + 1) * C], out[r * C : (r + 1) * C]
                _affine_columns(form, xs, ys, sh, sc, dv, of, gn, one)
        else:
            row, j, c = _position(it0, nseg, C)
            for _ in range(it0, it1):
                lo, hi = _segment(row, j, inner, nseg)
                _affine_run(form, x[lo:hi], out[lo:hi], sh[c], sc[c], dv[c], of[c], gn[c], one)
                j, row, c = _advance(j, row, c, nseg, C)


@_inline
def _grad_run(gs, xs, ys, mc, ac, kc, cc, one):
    """ys = ac * gs + kc * (xs - mc) + cc in float64 for a run of one channel's values."""
    for i in range(len(xs)):
        ys[i] = _store(_grad_value(_load(gs[i], 0.0), _load(xs[i], 0.0), mc, ac, kc, cc, one), ys)


@_inline
def _grad_value(g, v, m, a, k, c, one):
    """a * g + k * (v - m) + c, each operation rounded in float64, left to right."""
    return _add(_add(a * g, k * (v - m), one), c, one)


@_parallel
def _grad_input(dy, x, m, a, k, c0, out, outer, C, inner, nseg, nchunks):
    """out = a * dy + k * (x - m) + c0 per channel in float64 (layouts as in :func:`_apply`)."""
    cols = inner == 1
    items = -(-outer // nseg) if cols else outer * C * nseg
    one = opaque(1.0)
    for t in prange(nchunks):
        it0 = items * t // nchunks
        it1 = items * (t + 1) // nchunks
        if cols:  # as in _apply
            for r in range(it0 * nseg, min(it1 * nseg, outer)):
                gs, xs, ys = dy[r * C : (r + 1) * C], x[r * C : (r + 1) * C], out[r * C : (r + 1) * C]
                for w in range(C):
                    value = _grad_value(_load(gs[w], 0.0), _load(xs[w], 0.0), m[w], a[w], k[w], c0[w], one)
                    ys[w] = _store(value, ys)
        else:
            row, j, c = _position(it0, nseg, C)
            for _ in range(it0, it1):
                lo, hi = _segment(row, j, inner, nseg)
                _grad_run(dy[lo:hi], x[lo:hi], out[lo:hi], m[c], a[c], k[c], c0[c], one)
                j, row, c = _advance(j, row, c, nseg, C)


# -- statistics: per-block two-pass, Chan-merged in float64 ----------------------------------------


@_inline
def _chan_mean(m, mb, delta, fa, fb):
    """The merged mean m + delta * fb (exact when the two means agree, so a constant channel keeps
    variance 0); with an infinite mean the weighted sum m * fa + mb * fb, as sum / n would give."""
    return m + delta * fb if np.isfinite(delta) else m * fa + mb * fb


@_inline
def _chan(cnt, m1, m2, t, w, nb, mb, qb):
    """Merge a block (nb values, mean mb, M2 qb) into the partial statistics at [t, w] (Chan et al.)."""
    na = cnt[t, w]
    n = na + nb
    inv = 1.0 / n
    delta = mb - m1[t, w]
    m1[t, w] = _chan_mean(m1[t, w], mb, delta, na * inv, nb * inv)
    m2[t, w] += qb + delta * delta * (na * nb * inv)
    cnt[t, w] = n


@_inline
def _run_statistics(xs, squares, sq32):
    """A run of one channel's values: (sum x, sum x^2) when ``squares`` (x^2 rounded to float32 first
    when ``sq32``), else (mean, sum of squared deviations about it), two-pass."""
    if squares:
        s1 = 0.0
        s2 = 0.0
        if sq32:
            for i in range(len(xs)):
                v = _load(xs[i], np.float32(0))
                s1 += np.float64(v)
                s2 += np.float64(v * v)
        else:
            for i in range(len(xs)):
                v = _load(xs[i], 0.0)
                s1 += v
                s2 += v * v
        return s1, s2
    mb = _row_sum(xs) / len(xs)
    return mb, _squared_deviations(xs, mb)


@_inline
def _row_sum(xs):
    """sum(xs) in float64."""
    s = 0.0
    for i in range(len(xs)):
        s += _load(xs[i], 0.0)
    return s


@_inline
def _squared_deviations(xs, mb):
    """sum((xs - mb)^2) in float64."""
    q = 0.0
    for i in range(len(xs)):
        d = _load(xs[i], 0.0) - mb
        q = multiply_add(d, d, q)
    return q


@_inline
def _two_pass_rows(x, cnt, acc1, acc2, t, r0, r1, C, inner):
    """Rows r0..r1 (whole rows of ``inner`` values, row r of channel r % C), two-pass each, merged at
    [t, c]. Software-pipelined: row r + 1's sum is taken beside row r's squared deviations, so that the
    chain sum -> mean -> deviations of one row overlaps the next (1.1-1.5x on rows of 16 to 255)."""
    if r0 >= r1:
        return
    n = np.float64(inner)
    mb = _row_sum(x[r0 * inner : (r0 + 1) * inner]) / n
    c = r0 % C
    for r in range(r0, r1):
        s = _row_sum(x[(r + 1) * inner : (r + 2) * inner]) if r + 1 < r1 else 0.0
        _chan(cnt, acc1, acc2, t, c, n, mb, _squared_deviations(x[r * inner : (r + 1) * inner], mb))
        mb = s / n
        c += 1
        if c == C:
            c = 0


@_inline
def _add_run(cnt, acc1, acc2, t, c, nb, a, b, squares):
    """Add a run's statistics (as :func:`_run_statistics` gives them, nb values) to [t, c]."""
    if squares:
        cnt[t, c] += nb
        acc1[t, c] += a
        acc2[t, c] += b
    else:
        _chan(cnt, acc1, acc2, t, c, nb, a, b)


@_reduction
def _moments(x, squares, sq32, outer, C, inner, nseg, block, nchunks):
    """Partial per-column statistics (nchunks, C): count and (mean, M2), or (sum x, sum x^2) when
    ``squares`` (x^2 rounded to float32 first when ``sq32``). Layouts as in :func:`_apply`; with
    ``inner == 1`` blocks of ``block`` rows make the two passes."""
    cnt = np.zeros((nchunks, C))
    acc1 = np.zeros((nchunks, C))
    acc2 = np.zeros((nchunks, C))
    if inner == 1:
        b1 = np.empty((nchunks, C))
        b2 = np.empty((nchunks, C))
        for t in prange(nchunks):
            s1, s2, a1, a2 = b1[t], b2[t], acc1[t], acc2[t]
            r_end = outer * (t + 1) // nchunks
            na = 0.0
            for r0 in range(outer * t // nchunks, r_end, block):
                r1 = min(r0 + block, r_end)
                nb = np.float64(r1 - r0)
                for w in range(C):
                    s1[w] = 0.0
                    s2[w] = 0.0
                if squares:
                    for r in range(r0, r1):
                        xs = x[r * C : (r + 1) * C]
                        if sq32:
                            for w in range(C):
                                v = _load(xs[w], np.float32(0))
                                s1[w] += np.float64(v)
                                s2[w] += np.float64(v * v)
                        else:
                            for w in range(C):
                                v = _load(xs[w], 0.0)
                                s1[w] += v
                                s2[w] += v * v
                    for w in range(C):
                        a1[w] += s1[w]
                        a2[w] += s2[w]
                    na += nb
                    continue
                for r in range(r0, r1):
                    xs = x[r * C : (r + 1) * C]
                    for w in range(C):
                        s1[w] += _load(xs[w], 0.0)
                inv = 1.0 / nb
                for w in range(C):
                    s1[w] *= inv
                for r in range(r0, r1):
                    xs = x[r * C : (r + 1) * C]
                    for w in range(C):
                        d = _load(xs[w], 0.0) - s1[w]
                        s2[w] = multiply_add(d, d, s2[w])
                n = na + nb
                inv = 1.0 / n
                fa, fb, g = na * inv, nb * inv, na * nb * inv
                for w in range(C):
                    delta = s1[w] - a1[w]
                    a1[w] = _chan_mean(a1[w], s1[w], delta, fa, fb)
                    a2[w] += s2[w] + delta * delta * g
                na = n
            for w in range(C):
                cnt[t, w] = na
        return cnt, acc1, acc2
    items = outer * C * nseg
    for t in prange(nchunks):
        it0 = items * t // nchunks
        it1 = items * (t + 1) // nchunks
        if nseg == 1 and inner < SHORT_ROW and not squares:
            _two_pass_rows(x, cnt, acc1, acc2, t, it0, it1, C, inner)
            continue
        row, j, c = _position(it0, nseg, C)
        for _ in range(it0, it1):
            lo, hi = _segment(row, j, inner, nseg)
            a, b = _run_statistics(x[lo:hi], squares, sq32)
            _add_run(cnt, acc1, acc2, t, c, np.float64(hi - lo), a, b, squares)
            j, row, c = _advance(j, row, c, nseg, C)
    return cnt, acc1, acc2


@_scalar
def _merge(cnt, acc1, acc2, squares, C, inner):
    """Merge partial statistics (nchunks, C * inner) into per-channel (n, m1, m2), float64."""
    nchunks = cnt.shape[0]
    n_out = np.zeros((1, C))
    m1 = np.zeros((1, C))
    m2 = np.zeros((1, C))
    for c in range(C):
        for t in range(nchunks):
            for i in range(inner):
                w = c * inner + i
                nb = cnt[t, w]
                if nb == 0.0:
                    continue
                if squares:
                    n_out[0, c] += nb
                    m1[0, c] += acc1[t, w]
                    m2[0, c] += acc2[t, w]
                else:
                    _chan(n_out, m1, m2, 0, c, nb, acc1[t, w], acc2[t, w])
    return n_out[0], m1[0], m2[0]


@_reduction
def _grad_sums(dy, x, m, outer, C, inner, nseg, block, nchunks):
    """Partial (nchunks, C) sums of dy and dy * (x - m) in float64 (layouts as in :func:`_moments`)."""
    acc1 = np.zeros((nchunks, C))
    acc2 = np.zeros((nchunks, C))
    if inner == 1:
        b1 = np.empty((nchunks, C))
        b2 = np.empty((nchunks, C))
        for t in prange(nchunks):
            s1, s2, a1, a2 = b1[t], b2[t], acc1[t], acc2[t]
            r_end = outer * (t + 1) // nchunks
            for r0 in range(outer * t // nchunks, r_end, block):
                for w in range(C):
                    s1[w] = 0.0
                    s2[w] = 0.0
                for r in range(r0, min(r0 + block, r_end)):
                    gs = dy[r * C : (r + 1) * C]
                    xs = x[r * C : (r + 1) * C]
                    for w in range(C):
                        g = _load(gs[w], 0.0)
                        s1[w] += g
                        s2[w] = multiply_add(g, _load(xs[w], 0.0) - m[w], s2[w])
                for w in range(C):
                    a1[w] += s1[w]
                    a2[w] += s2[w]
        return acc1, acc2
    items = outer * C * nseg
    for t in prange(nchunks):
        it0 = items * t // nchunks
        row, j, c = _position(it0, nseg, C)
        for _ in range(it0, items * (t + 1) // nchunks):
            lo, hi = _segment(row, j, inner, nseg)
            gs = dy[lo:hi]
            xs = x[lo:hi]
            mc = m[c]
            s1 = 0.0
            s2 = 0.0
            for i in range(hi - lo):
                g = _load(gs[i], 0.0)
                s1 += g
                s2 = multiply_add(g, _load(xs[i], 0.0) - mc, s2)
            acc1[t, c] += s1
            acc2[t, c] += s2
            j, row, c = _advance(j, row, c, nseg, C)
    return acc1, acc2


# -- Python wrappers -----------------------------------------------------------------------------

_launch_lock = threading.Lock()
_serialize: bool | None = None  # True when the threading layer cannot take concurrent launches


def _call(kernel, args):
    if args[-1] != 1:
        return kernel(*args)
    threads = numba.get_num_threads()  # one chunk: waking the pool costs more than a small array
    numba.set_num_threads(1)  # (per Python thread)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(threads)


def _launch(kernel, *args):
    """Call a kernel over ``args[-1]`` chunks (a parallel kernel, or a serial one that launches parallel
    kernels); one chunk runs on the calling thread alone.

    The workqueue threading layer aborts on concurrent launches, so under it launches from several
    Python threads are serialized (the OpenMP and TBB layers run them concurrently)."""
    global _serialize
    if _serialize is False:
        return _call(kernel, args)
    with _launch_lock:
        result = _call(kernel, args)
        if _serialize is None:
            try:
                _serialize = numba.threading_layer() == "workqueue"
            except ValueError:  # no pool started yet (a single chunk): decide at the next launch
                pass
        return result


def _storage(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array as flat storage numba can read: float16 as uint16, bfloat16 as int16."""
    flat = a.reshape(-1)
    if a.dtype == np.float16:
        return flat.view(np.uint16)
    if a.dtype == BFLOAT16:
        return flat.view(np.int16)
    return flat


def _contiguous(a: np.ndarray) -> np.ndarray:
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _chunks(work: int, size: int) -> int:
    """Chunks of work items, one per thread; a single one below PARALLEL_MIN values."""
    if size < PARALLEL_MIN:
        return 1
    return max(1, min(numba.get_num_threads(), work))


def _segments(inner: int, size: int) -> int:
    return max(1, -(-inner // size))


class _Plan(NamedTuple):
    """How a kernel sees (outer, C, inner): rows of ``inner`` values in ``nseg`` segments, or (with
    ``inner == 1``) rows of ``C`` columns whose coefficients are the channel's, each repeated ``repeat``
    times (small inner extents) and the whole tiled ``tile`` times (that many rows at once)."""

    outer: int
    C: int
    inner: int
    nseg: int
    nchunks: int
    repeat: int
    tile: int

    @property
    def args(self) -> tuple[int, int, int, int]:
        return self.outer, self.C, self.inner, self.nseg

    def columns(self, *ps: np.ndarray, dtype: npt.DTypeLike) -> list[np.ndarray]:
        """Per-channel arrays as the kernel's contiguous per-column arrays of ``dtype``."""
        if self.inner != 1 or (self.repeat == 1 and self.tile == 1):
            return [np.ascontiguousarray(p, dtype=dtype) for p in ps]
        stacked = np.array(ps, dtype=dtype)
        return list(np.tile(np.repeat(stacked, self.repeat, axis=1), (1, self.tile)))


def _plan(outer: int, C: int, inner: int, segment: int, elementwise: bool = False) -> _Plan:
    """How the kernels take (outer, C, inner): the layout of :func:`_layout` (cached per shape), in
    as many chunks as numba's current thread count and PARALLEL_MIN give."""
    layout, work = _layout(outer, C, inner, segment, elementwise)
    return layout._replace(nchunks=_chunks(work, outer * C * inner))


@functools.lru_cache(maxsize=256)
def _layout(outer: int, C: int, inner: int, segment: int, elementwise: bool) -> tuple[_Plan, int]:
    """Rows mode for inner >= ROW_MIN (elementwise: ELEMENT_ROW_MIN), segments of at most ``segment``
    values; else columns, several rows at once below MIN_COLUMNS (elementwise: ELEMENT_MIN_COLUMNS),
    and for the elementwise kernels work items of ROW_BLOCK values (the ``nseg`` of the kernels then
    counts rows per item). Returns the plan (chunks left at 0) and its number of work items."""
    if inner >= (ELEMENT_ROW_MIN if elementwise else ROW_MIN):
        nseg = _segments(inner, segment)
        return _Plan(outer, C, inner, nseg, 0, 1, 1), outer * C * nseg
    width = C * inner
    k = 1
    least = ELEMENT_MIN_COLUMNS if elementwise else MIN_COLUMNS
    if width < least and outer > 1:
        k = next(d for d in range(min(least // width, outer), 0, -1) if outer % d == 0)
    rows, cols = outer // k, width * k
    per_item = max(1, ROW_BLOCK // cols) if elementwise else 1
    return _Plan(rows, cols, 1, per_item, 0, inner, k), -(-rows // per_item)


def _narrowed(a: np.ndarray) -> np.ndarray:
    """A float64 coefficient array as float32 where every value is a float32 (NaNs included): the
    kernel widens it back exactly, so the arithmetic is unchanged; else ``a`` itself."""
    if a.dtype != np.float64:
        return a
    with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf: not narrowed
        narrow = a.astype(np.float32)
    return narrow if np.array_equal(narrow.astype(np.float64), a, equal_nan=True) else a


def apply_affine(x3: np.ndarray, co: Coefficients, out3: np.ndarray) -> None:
    """out3 = the elementwise form of ``co`` applied to x3 (see :func:`.reference.apply_affine`)."""
    outer, C, inner = x3.shape
    form = FORMS[co.form]
    if x3.size == 0:
        return
    dt = co.dtype
    gain = co.scale if co.gain is None else co.gain
    plan = _plan(outer, C, inner, ELEMENT_SEGMENT, elementwise=True)
    coeffs = plan.columns(co.shift, co.scale, co.divisor, co.offset, gain, dtype=dt)
    if plan.inner == 1 and NARROW_COLUMNS[0] <= plan.C <= NARROW_COLUMNS[1] and x3.dtype == np.float32:
        coeffs[0], coeffs[3] = _narrowed(coeffs[0]), _narrowed(coeffs[3])
    target = out3 if out3.flags.c_contiguous else np.empty(out3.shape, out3.dtype)
    _launch(_apply, _storage(_contiguous(x3)), *coeffs, form, _storage(target), *plan.args, plan.nchunks)
    if target is not out3:
        out3[...] = target


def _finish_moments(n: np.ndarray, m1: np.ndarray, m2: np.ndarray, squares: bool, variance: str, dtype):
    if not squares:
        return m1.astype(dtype), (m2 / n).astype(dtype)
    # the reference's formula, in the statistics dtype, from the float64 sums rounded to it
    count = dtype.type(n[0])
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = m1.astype(dtype) / count
        var = m2.astype(dtype) / count - mean * mean
    if variance == "sum_of_squares_clamped":
        var = np.maximum(var, dtype.type(0))
    return mean, var


def moments(x3: np.ndarray, variance: str, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance in ``dtype`` (see :func:`.reference.moments`)."""
    dtype = np.dtype(dtype)
    outer, C, inner = x3.shape
    if x3.size == 0 or variance not in VARIANCES:
        from . import reference

        return reference.moments(x3, variance, dtype)
    squares = VARIANCES[variance] == 1
    sq32 = dtype != np.float64
    plan = _plan(outer, C, inner, STAT_BLOCK)
    block = max(1, COLUMN_BLOCK // plan.C)
    cnt, a1, a2 = _launch(_moments, _storage(_contiguous(x3)), squares, sq32, *plan.args, block, plan.nchunks)
    per = 1
    if plan.inner == 1:  # columns: one row of partial statistics per tiled row, channels by `repeat`
        cnt, a1, a2 = (a.reshape(-1, C * inner) for a in (cnt, a1, a2))
        per = plan.repeat
    n, m1, m2 = _merge(cnt, a1, a2, squares, C, per)
    return _finish_moments(n, m1, m2, squares, variance, dtype)


def grad_sums(dy3: np.ndarray, x3: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, in float64: sum(dy) and sum(dy * (x - mean))."""
    outer, C, inner = x3.shape
    if x3.size == 0:
        return np.zeros(C), np.zeros(C)
    plan = _plan(outer, C, inner, STAT_BLOCK)
    (m,) = plan.columns(mean, dtype=np.float64)
    block = max(1, COLUMN_BLOCK // plan.C)
    dy, x = _storage(_contiguous(dy3)), _storage(_contiguous(x3))
    s1, s2 = _launch(_grad_sums, dy, x, m, *plan.args, block, plan.nchunks)
    if plan.inner != 1:
        return s1.sum(axis=0), s2.sum(axis=0)
    return s1.reshape(-1, C, inner).sum(axis=(0, 2)), s2.reshape(-1, C, inner).sum(axis=(0, 2))


def grad_input(
    dy3: np.ndarray,
    x3: np.ndarray,
    mean: np.ndarray,
    a: np.ndarray,
    k: np.ndarray,
    c: np.ndarray,
    out3: np.ndarray,
) -> None:
    """out3 = a * dy + k * (x - mean) + c per channel, in float64, rounded once."""
    outer, C, inner = x3.shape
    if x3.size == 0:
        return
    plan = _plan(outer, C, inner, ELEMENT_SEGMENT, elementwise=True)
    coeffs = plan.columns(mean, a, k, c, dtype=np.float64)
    dy, x = _storage(_contiguous(dy3)), _storage(_contiguous(x3))
    target = out3 if out3.flags.c_contiguous else np.empty(out3.shape, out3.dtype)
    _launch(_grad_input, dy, x, *coeffs, _storage(target), *plan.args, plan.nchunks)
    if target is not out3:
        out3[...] = target
