"""Explicit SIMD vectors of float64 for numba kernels.

numba leaves vectorisation to LLVM's loop vectoriser, which gives up on the
kernels of this package: their loop bodies touch more addresses than it is
willing to check for aliasing at run time, and numba's negative-index
handling hides the address arithmetic from it. The HMM kernel therefore
spells its vectors out. A value of type :data:`float64xN` is an LLVM vector
of :data:`LANES` doubles held in one register; the functions below load,
store and combine such values and are compiled inline.

=============  ==========================================================
name           operation, element-wise over the lanes
=============  ==========================================================
``vload``      ``a[i : i + LANES]`` of a contiguous float64 array
``vstore``     ``a[i : i + LANES] = v``
``vsplat``     one scalar in every lane
``vadd`` …     ``+``, ``-``, ``*``, ``/`` (IEEE, no fast-math reordering)
``vfma``       ``a * b + c`` with one rounding
``vmax``       larger of two
``vexp``       ``exp`` to about one ulp; 0 below ``exp(-708)``
``vlog``       natural log of positive normal numbers, about one ulp
``vlane``      one lane as a scalar
=============  ==========================================================

Indices are element offsets and are not checked: callers keep
``0 <= i <= a.size - LANES``. Loads and stores are fastest when
``a.ctypes.data + 8 * i`` is a multiple of 64 (:func:`aligned_empty`).
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

# eight doubles fill one AVX-512 register; on narrower machines LLVM splits
# each vector into two or four registers, which stays correct
LANES = 8
ALIGN_BYTES = 64

_DOUBLE = ir.DoubleType()
_VEC = ir.VectorType(_DOUBLE, LANES)
_INT_VEC = ir.VectorType(ir.IntType(64), LANES)


class Float64Lanes(types.Type):
    """numba type of a vector of ``LANES`` doubles."""

    def __init__(self) -> None:
        super().__init__(name=f"float64x{LANES}")


float64xN = Float64Lanes()


@register_model(Float64Lanes)
class _Float64LanesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def aligned_empty(shape: int | tuple[int, ...]) -> np.ndarray:
    """An uninitialised C-contiguous float64 array starting on a 64-byte boundary."""
    n = int(np.prod(shape))
    pad = ALIGN_BYTES // 8
    buf = np.empty(n + pad)
    start = (-buf.ctypes.data % ALIGN_BYTES) // 8
    return buf[start : start + n].reshape(shape)


def _vector_pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), _VEC.as_pointer())


def _call(builder, name: str, *args):
    fnty = ir.FunctionType(_VEC, [arg.type for arg in args])
    fn = cgutils.get_or_insert_function(
        builder.module, fnty, f"llvm.{name}.v{LANES}f64"
    )
    return builder.call(fn, args)


def _splat(value: float):
    return ir.Constant(_VEC, [value] * LANES)


def _check_array(array) -> None:
    if not (
        isinstance(array, types.Array)
        and array.dtype == types.float64
        and array.ndim == 1
        and array.layout == "C"
    ):
        raise TypeError(f"expected a contiguous 1-D float64 array, got {array}")


@intrinsic
def vload(typingctx, array, index):
    """``array[index : index + LANES]`` as a vector."""
    _check_array(array)

    def codegen(context, builder, sig, args):
        index = context.cast(builder, args[1], sig.args[1], types.intp)
        pointer = _vector_pointer(context, builder, sig.args[0], args[0], index)
        return builder.load(pointer, align=8)

    return float64xN(array, index), codegen


@intrinsic
def vstore(typingctx, array, index, value):
    """``array[index : index + LANES] = value``."""
    _check_array(array)

    def codegen(context, builder, sig, args):
        index = context.cast(builder, args[1], sig.args[1], types.intp)
        pointer = _vector_pointer(context, builder, sig.args[0], args[0], index)
        builder.store(args[2], pointer, align=8)
        return context.get_dummy_value()

    return types.none(array, index, float64xN), codegen


@intrinsic
def vsplat(typingctx, x):
    """The scalar ``x`` in every lane."""

    def codegen(context, builder, sig, args):
        x = context.cast(builder, args[0], sig.args[0], types.float64)
        zero = ir.Constant(ir.IntType(32), 0)
        v = builder.insert_element(ir.Constant(_VEC, ir.Undefined), x, zero)
        mask = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        return builder.shuffle_vector(v, ir.Constant(_VEC, ir.Undefined), mask)

    return float64xN(x), codegen


def _binary(instruction: str, doc: str):
    @intrinsic
    def operation(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return getattr(builder, instruction)(*args)

        return float64xN(float64xN, float64xN), codegen

    operation.__doc__ = doc
    return operation


vadd = _binary("fadd", "``a + b``.")
vsub = _binary("fsub", "``a - b``.")
vmul = _binary("fmul", "``a * b``.")
vdiv = _binary("fdiv", "``a / b``.")


@intrinsic
def vmax(typingctx, a, b):
    """Element-wise maximum."""

    def codegen(context, builder, sig, args):
        return _call(builder, "maxnum", *args)

    return float64xN(float64xN, float64xN), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c`` rounded once."""

    def codegen(context, builder, sig, args):
        return _call(builder, "fma", *args)

    return float64xN(float64xN, float64xN, float64xN), codegen


@intrinsic
def vlane(typingctx, v, lane):
    """Lane ``lane`` of ``v`` as a float64."""

    def codegen(context, builder, sig, args):
        lane = context.cast(builder, args[1], sig.args[1], types.intp)
        return builder.extract_element(args[0], lane)

    return types.float64(float64xN, lane), codegen


# exp(y) = 2^k exp(r) with k = rint(y / ln 2) and |r| <= ln(2) / 2; ln 2 is
# split in two so that r is exact to a few ulp, and exp(r) is its Taylor
# polynomial of degree 13 (truncation below 5e-18)
_LN2_HI = 0.6931471805599453
_LN2_LO = 2.3190468138462996e-17
_LOG2_E = 1.4426950408889634
_EXP_LOWEST = -708.0
_EXP_HIGHEST = 709.0
_EXP_DEGREE = 13


def _taylor_coefficients(degree: int) -> list[float]:
    coefficients = [1.0]
    for n in range(1, degree + 1):
        coefficients.append(coefficients[-1] / n)
    return coefficients


@intrinsic
def vexp(typingctx, y):
    """``exp(y)``, about one ulp; exactly 0 below ``-708`` (no subnormals)."""

    def codegen(context, builder, sig, args):
        y = args[0]
        underflow = builder.fcmp_ordered("<", y, _splat(_EXP_LOWEST))
        y = _call(builder, "maxnum", y, _splat(_EXP_LOWEST))
        y = _call(builder, "minnum", y, _splat(_EXP_HIGHEST))
        k = _call(builder, "rint", builder.fmul(y, _splat(_LOG2_E)))
        r = _call(builder, "fma", k, _splat(-_LN2_HI), y)
        r = _call(builder, "fma", k, _splat(-_LN2_LO), r)
        coefficients = _taylor_coefficients(_EXP_DEGREE)
        p = _splat(coefficients[-1])
        for c in reversed(coefficients[:-1]):
            p = _call(builder, "fma", p, r, _splat(c))
        # 2^k assembled in the exponent bits
        bits = builder.add(
            builder.fptosi(k, _INT_VEC), ir.Constant(_INT_VEC, [1023] * LANES)
        )
        bits = builder.shl(bits, ir.Constant(_INT_VEC, [52] * LANES))
        result = builder.fmul(p, builder.bitcast(bits, _VEC))
        return builder.select(underflow, _splat(0.0), result)

    return float64xN(float64xN), codegen


# ln(x) = e ln 2 + ln(m) with x = m 2^e, m in [sqrt(1/2), sqrt(2)); ln(m) =
# 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.1716, by its odd series to s^23
_LOG_TERMS = 11
_SQRT2 = 1.4142135623730951
_MANTISSA = (1 << 52) - 1
_EXPONENT_ONE = 1023 << 52


@intrinsic
def vlog(typingctx, x):
    """``log(x)`` for positive normal ``x``, about one ulp (no NaN handling)."""

    def codegen(context, builder, sig, args):
        bits = builder.bitcast(args[0], _INT_VEC)
        exponent = builder.sub(
            builder.lshr(bits, ir.Constant(_INT_VEC, [52] * LANES)),
            ir.Constant(_INT_VEC, [1023] * LANES),
        )
        mantissa = builder.or_(
            builder.and_(bits, ir.Constant(_INT_VEC, [_MANTISSA] * LANES)),
            ir.Constant(_INT_VEC, [_EXPONENT_ONE] * LANES),
        )
        m = builder.bitcast(mantissa, _VEC)
        e = builder.sitofp(exponent, _VEC)
        # fold m into [sqrt(1/2), sqrt(2))
        high = builder.fcmp_ordered(">", m, _splat(_SQRT2))
        m = builder.select(high, builder.fmul(m, _splat(0.5)), m)
        e = builder.select(high, builder.fadd(e, _splat(1.0)), e)
        s = builder.fdiv(builder.fsub(m, _splat(1.0)), builder.fadd(m, _splat(1.0)))
        s2 = builder.fmul(s, s)
        series = _splat(1.0 / (2 * _LOG_TERMS + 1))
        for n in range(_LOG_TERMS - 1, -1, -1):
            series = _call(builder, "fma", series, s2, _splat(1.0 / (2 * n + 1)))
        log_m = builder.fmul(builder.fmul(s, _splat(2.0)), series)
        log_m = _call(builder, "fma", e, _splat(_LN2_LO), log_m)
        return _call(builder, "fma", e, _splat(_LN2_HI), log_m)

    return float64xN(float64xN), codegen


# -- flush-to-zero ----------------------------------------------------------
#
# Products of tiny probabilities (an impossible state times an unused
# transition) fall below 2.2e-308, and every arithmetic instruction that
# makes or reads such a subnormal number costs a hundred cycles or more on
# x86. Kernels switch the FTZ and DAZ bits of the MXCSR register on for
# their own duration (the register belongs to the calling thread, and the
# previous value is restored); a subnormal then reads and writes as zero, an
# absolute change below 2.2e-308. Elsewhere these two functions do nothing.

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
_FTZ_DAZ = 0x8040


def _mxcsr_call(builder, name: str, slot) -> None:
    fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.x86.sse.{name}")
    builder.call(fn, [builder.bitcast(slot, ir.IntType(8).as_pointer())])


@intrinsic
def flush_subnormals(typingctx):
    """Turn flush-to-zero on for this thread; returns the state to restore."""

    def codegen(context, builder, sig, args):
        if not _X86:
            return ir.Constant(ir.IntType(32), 0)
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        _mxcsr_call(builder, "stmxcsr", slot)
        previous = builder.load(slot)
        builder.store(
            builder.or_(previous, ir.Constant(ir.IntType(32), _FTZ_DAZ)), slot
        )
        _mxcsr_call(builder, "ldmxcsr", slot)
        return previous

    return types.int32(), codegen


@intrinsic
def restore_subnormals(typingctx, previous):
    """Restore the state saved by :func:`flush_subnormals`."""

    def codegen(context, builder, sig, args):
        if _X86:
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(args[0], slot)
            _mxcsr_call(builder, "ldmxcsr", slot)
        return context.get_dummy_value()

    return types.none(types.int32), codegen
