"""Transcendental functions of one float that LLVM vectorises: ``vexp``, ``vlog``, ``vtanh``,
``vsigmoid`` -- for float64 and float32 alike, each in its own precision.

numba's ``math.exp`` / ``math.tanh`` / ``math.log`` call scalar libm (pip's llvmlite has no
SVML), which keeps every loop that uses them scalar: 5-20x slower than NumPy's SIMD ufuncs
(DESIGN.md). These are written as plain arithmetic with no calls and no branches -- range
reduction, a polynomial in Horner form with explicit fused multiply-adds, the power of two
made from integer bits, edge cases picked with selects -- so a loop over an array becomes
vector code. Called from the elementwise kernels (``tapegrad.ops.elementwise``), which are
inlined into the interpreters.

Accuracy (``tests/test_transcendental.py`` measures it against long-double references over
the whole range, subnormals, +-inf and NaN): exp and log within 1 ulp, tanh and sigmoid
within 2.6, and NaN in gives NaN out.

* ``exp(x) = 2**k * p(r)``, ``k = round(x / ln 2)``, ``r = x - k ln 2`` (ln 2 in two parts,
  the high one with trailing zero bits so ``k * hi`` is exact), ``|r| <= ln2 / 2``, ``p(r) = 1
  + r + r**2 Q(r)``, ``Q(r) = 1/2 + r P(r)``, ``P`` of degree 8 (float64) / 3 (float32) fitted
  to the relative error of ``expm1(r) = r + r**2 Q(r)`` (nearly minimax: ``python -m
  tapegrad.bench.fit_exp``, mpmath): exp's relative error 1.0e-17 / 5.4e-9 (0.09 / 0.09 of
  half an ulp), expm1's 2.4e-17 / 1.5e-8 -- Taylor's polynomials needed degree 13 / 7 for
  that, two / one more FMA per element. ``2**k`` is applied as two factors ``2**(k + c) *
  2**-c``, ``c = 54`` (float32: 24) for ``x < 0`` and ``-1`` above, both normal over the
  clamped range, so gradual underflow into subnormals (one rounding, in the second product)
  and overflow to inf come out of the arithmetic with no special case; ``_exp_neg64`` (for
  ``x <= 0``: sigmoid's) needs no choice.
* ``tanh(|x|) = e / (e + 2)`` with ``e = expm1(2|x|) = 2**k (expm1(r) + 1) - 1``, relative
  accuracy near 0 (where ``exp(2x) - 1`` would cancel), the sign copied back from ``x``.
* ``sigmoid(x) = 1 / (1 + e)`` for ``x >= 0`` and ``e / (1 + e)`` below, ``e = exp(-|x|)``:
  one division either way (a product ``e * (1 / (1 + e))`` would round once more).
* ``log(x) = k ln 2 + log(m)``, ``x = 2**k m``, ``m`` in ``[sqrt(1/2), sqrt(2))`` read off the
  bits (subnormals scaled up first), ``f = m - 1`` exact. float64: ``log(1 + f) = f - s (f - z
  Q(z))`` with ``s = f / (2 + f)``, ``z = s**2``, so the big term ``f`` is exact; float32: ``log(1
  + f) = f - f**2 / 2 + f**3 Q(f)``, no division, and ``k ln 2`` added with one fma of ``ln 2``
  rounded to float32 (its relative error 3e-9, 0.05 ulp). ``Q`` of degree 6 in ``z`` / 7 in
  ``f``, nearly minimax for the relative error of the log: ``python -m tapegrad.bench.fit_log``
  fits them (mpmath). The float32 integer arithmetic stays in int32 (``I32``): mixed with
  numba's int64 it became 64-bit lanes, half as many per instruction, and conversions.
  Measured over every positive float32 against float64's log: at most 0.94 ulp.

Under ``NUMBA_DISABLE_JIT`` each name runs NumPy's function instead (same special values).
"""
import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .._jit import WIDE_VECTORS, kernel

F64, F32 = np.float64, np.float32


# ------------------------------------------------------------------ bit casts and fma
@intrinsic
def _bits(typingctx, x):
    """The IEEE bits of a float as the integer of the same width (no conversion)."""
    rt = {types.float64: types.int64, types.float32: types.int32}.get(x)
    if rt is None:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(rt.bitwidth))
    return rt(x), codegen


@intrinsic
def _float(typingctx, i):
    """The float whose IEEE bits are the integer ``i`` (int64 -> float64, int32 -> float32)."""
    rt = {types.int64: types.float64, types.int32: types.float32}.get(i)
    if rt is None:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(rt))
    return rt(i), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma: one vector instruction on x86-64 with FMA)."""
    if not (a == b == c and a in (types.float64, types.float32)):
        return None

    def codegen(context, builder, sig, args):
        return builder.fma(*args)
    return a(a, b, c), codegen


def wide():
    """Asks LLVM to vectorise the loops of the compiled function that calls this 512 bits
    wide where the CPU has AVX-512 (``_wide``); nothing in plain Python."""


@overload(wide, inline="always")
def _wide_impl():
    return lambda: _wide()


@intrinsic
def _wide(typingctx):
    """Asks LLVM to vectorise the loops of the compiled function this is lowered into 512
    bits wide (8 doubles, 16 floats) where ``_jit.WIDE_VECTORS`` (AVX-512, not turned off by
    ``TAPEGRAD_AVX512=0``); no code. Only functions of ``tapegrad.ops`` modules (the
    kernels' called twins, the ``@jit`` helpers) and the fused groups' programs
    (``tapegrad.fuse``: ``fuse_program_*``) are marked, not the interpreters the scalar rows
    inline these kernels into: their other loops keep LLVM's width."""
    def codegen(context, builder, sig, args):
        fn = builder.function
        if WIDE_VECTORS and ("8tapegrad3ops" in fn.name or "fuse_program_" in fn.name):
            try:  # a string attribute: llvmlite's add() knows only the keyword ones
                set.add(fn.attributes, '"prefer-vector-width"="512"')
            except Exception:  # llvmlite changed: keep LLVM's width
                pass
        return context.get_dummy_value()
    return types.none(), codegen


def _taylor(n, first=0, dtype=F64):
    """1/i! for i = first..n, as ``dtype`` numbers."""
    return [dtype(1.0 / math.factorial(i)) for i in range(first, n + 1)]


# ------------------------------------------------------------------ float64 constants
LOG2E = 1.4426950408889634
LN2_HI = 6.93147180369123816490e-01   # 0x3fe62e42fee00000: 32 trailing zero bits
LN2_LO = 1.90821492927058770002e-10   # ln 2 - LN2_HI
ROUND = 6755399441055744.0            # 1.5 * 2**52: adding it rounds to an integer, which
#                                       the low bits of the sum then hold
EXP_HI, EXP_LO = 709.8, -745.2        # beyond: inf / 0 (and k stays within int range)
E2, E3, E4, E5, E6, E7, E8, E9 = _taylor(9, 2)   # _exp64_short's
EXP_P64 = (0.16666666666666602, 0.04166666666662003, 0.008333333333388357, 0.0013888888920483584,
           0.00019841269709386887, 2.4801516385735636e-05, 2.7557425060968493e-06,
           2.7622209878604854e-07, 2.5045894946387448e-08)                    # fit_exp f64
P0, P1, P2, P3, P4, P5, P6, P7, P8 = EXP_P64
TANH_CLAMP = 22.0                     # tanh(x) rounds to 1 for x >= 22 (2 e**-44 < 2**-54)
SQRT_HALF = 0.7071067811865476
TINY = 2.2250738585072014e-308        # smallest normal float64
TWO52 = 4503599627370496.0
TWO_M54 = 2.0 ** -54
LOG_Q64 = (0.6666666666666734, 0.39999999999414665, 0.285714287423898, 0.22222198572989393,
           0.18183564335223226, 0.15314050339256544, 0.14795951672659163)  # fit_log f64
LQ0, LQ1, LQ2, LQ3, LQ4, LQ5, LQ6 = LOG_Q64

# ------------------------------------------------------------------ float32 constants
LOG2E_F = F32(LOG2E)
LN2_HI_F = F32(0.693359375)           # 9 significant bits: k * LN2_HI_F is exact
LN2_LO_F = F32(math.log(2) - 0.693359375)
ROUND_F = F32(12582912.0)             # 1.5 * 2**23
EXP_HI_F, EXP_LO_F = F32(89.0), F32(-104.0)
EXP_P32 = (0.16666549444198608, 0.04166685417294502, 0.008366035297513008,
           0.0013898226898163557)                                             # fit_exp f32
P0_F, P1_F, P2_F, P3_F = (F32(c) for c in EXP_P32)
TANH_CLAMP_F = F32(10.0)              # 2 e**-20 < 2**-25
SQRT_HALF_F = F32(SQRT_HALF)
TINY_F = F32(1.1754943508222875e-38)
TWO23_F = F32(8388608.0)
TWO_M24_F = F32(2.0 ** -24)
LOG_Q32 = (0.3333333134651184, -0.250008225440979, 0.20001226663589478, -0.16623355448246002,
           0.1420176476240158, -0.13160200417041779, 0.12761537730693817,
           -0.07634399831295013)                                          # fit_log f32
LQ0_F, LQ1_F, LQ2_F, LQ3_F, LQ4_F, LQ5_F, LQ6_F, LQ7_F = (F32(c) for c in LOG_Q32)
LN2_F = F32(math.log(2))
I32 = np.int32
SQRT_HALF_BITS_F = I32(SQRT_HALF_F.view(np.int32))
MANTISSA_F = I32(0x007fffff)
ZERO_F, HALF_F, ONE_F, TWO_F = F32(0.0), F32(0.5), F32(1.0), F32(2.0)
MHALF_F, SUB_SHIFT_F = F32(-0.5), F32(23.0)
INF_F, NAN_F = F32(math.inf), F32(math.nan)


# ------------------------------------------------------------------ float64 kernels
@kernel
def _exp_reduce64(x):
    """(k, r) with x = k ln 2 + r, |r| <= ln2/2 (x already clamped, NaN passing through)."""
    wide()
    kd = _fma(x, LOG2E, ROUND)
    kf = kd - ROUND
    r = _fma(kf, -LN2_LO, _fma(kf, -LN2_HI, x))
    return _bits(kd) - _bits(ROUND), r


@kernel
def _exp_q64(r):
    """Q(r) = (expm1(r) - r) / r**2 = 1/2 + r P(r) on |r| <= ln2/2, P fitted (module
    docstring)."""
    q = _fma(P8, r, P7)
    q = _fma(q, r, P6)
    q = _fma(q, r, P5)
    q = _fma(q, r, P4)
    q = _fma(q, r, P3)
    q = _fma(q, r, P2)
    q = _fma(q, r, P1)
    q = _fma(q, r, P0)
    return _fma(q, r, 0.5)


@kernel
def _exp64(x):
    x = EXP_HI if x > EXP_HI else x   # written so that NaN passes
    x = EXP_LO if x < EXP_LO else x
    k, r = _exp_reduce64(x)
    p = _fma(_fma(_exp_q64(r), r, 1.0), r, 1.0)   # 1 + r + r**2 Q(r)
    neg = x < 0.0                  # 2**k as 2**(k + c) 2**-c (module docstring)
    c = 54 if neg else -1
    return p * _float((k + c + 1023) << 52) * (TWO_M54 if neg else 2.0)


@kernel
def _exp_neg64(x):
    """exp(x) for x <= 0 (or NaN): k <= 0, so ``c = 54`` always."""
    x = EXP_LO if x < EXP_LO else x
    k, r = _exp_reduce64(x)
    p = _fma(_fma(_exp_q64(r), r, 1.0), r, 1.0)
    return p * _float((k + (54 + 1023)) << 52) * TWO_M54


@kernel
def _exp64_short(x):
    """exp(x) of a float64 to ~1e-11 relative (a degree-9 polynomial, Estrin's scheme): for
    a result that is rounded to float32 next (a float32 softmax's exps), whose half ulp is
    3e-8 -- about one result in 10^4 rounds to the neighbouring float32. Its dependency chain
    is about half of ``_exp64``'s 11 chained FMAs, which is what a scalar softmax waits for."""
    x = EXP_HI if x > EXP_HI else x   # written so that NaN passes
    x = EXP_LO if x < EXP_LO else x
    k, r = _exp_reduce64(x)
    r2 = r * r
    r4 = r2 * r2
    lo = _fma(_fma(E3, r, E2), r2, r + 1.0)                     # 1 + r + r^2/2 + r^3/6
    mid = _fma(_fma(E7, r, E6), r2, _fma(E5, r, E4))            # r^4/4! .. r^7/7!, over r^4
    p = _fma(_fma(_fma(E9, r, E8), r4, mid), r4, lo)
    k1 = k >> 1
    return p * _float((k1 + 1023) << 52) * _float((k - k1 + 1023) << 52)


@kernel
def _expm1_pos64(y):
    """exp(y) - 1 for 0 <= y <= 2 * TANH_CLAMP (or NaN), to relative accuracy."""
    k, r = _exp_reduce64(y)
    q = _fma(_exp_q64(r) * r, r, r)                # expm1(r) = r + r**2 Q(r)
    s = _float((k + 1023) << 52)
    return _fma(s, q, s - 1.0)


@kernel
def _tanh64(x):
    a = abs(x)
    a = TANH_CLAMP if a > TANH_CLAMP else a
    e = _expm1_pos64(a + a)
    return math.copysign(e / (e + 2.0), x)


@kernel
def _sigmoid64(x):
    e = _exp_neg64(-abs(x))
    return (1.0 if x >= 0.0 else e) / (1.0 + e)


@kernel
def _log64(x):
    wide()
    sub = x < TINY
    y = x * TWO52 if sub else x
    ib = _bits(y) - _bits(SQRT_HALF)
    k = ib >> 52                                   # exponent of y / sqrt(1/2)
    m = _float(_bits(y) - (k << 52))               # in [sqrt(1/2), sqrt(2))
    kf = float(k) - (52.0 if sub else 0.0)
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    q = _fma(LQ6, z, LQ5)
    q = _fma(q, z, LQ4)
    q = _fma(q, z, LQ3)
    q = _fma(q, z, LQ2)
    q = _fma(q, z, LQ1)
    q = _fma(q, z, LQ0)
    lm = f - s * _fma(-z, q, f)                    # log(m) = f - s (f - z Q(z))
    ans = _fma(kf, LN2_HI, _fma(kf, LN2_LO, lm))
    ans = ans if x < math.inf else x               # +inf, NaN
    ans = math.nan if x < 0.0 else ans
    return -math.inf if x == 0.0 else ans


# ------------------------------------------------------------------ float32 kernels
@kernel
def _exp_reduce32(x):
    wide()
    kd = _fma(x, LOG2E_F, ROUND_F)
    kf = kd - ROUND_F
    r = _fma(kf, -LN2_LO_F, _fma(kf, -LN2_HI_F, x))
    return _bits(kd) - _bits(ROUND_F), r


@kernel
def _exp_q32(r):
    """Q(r) = 1/2 + r P(r), float32's P (module docstring)."""
    q = _fma(P3_F, r, P2_F)
    q = _fma(q, r, P1_F)
    q = _fma(q, r, P0_F)
    return _fma(q, r, HALF_F)


@kernel
def _exp32(x):
    x = EXP_HI_F if x > EXP_HI_F else x
    x = EXP_LO_F if x < EXP_LO_F else x
    k, r = _exp_reduce32(x)
    p = _fma(_fma(_exp_q32(r), r, ONE_F), r, ONE_F)
    neg = x < ZERO_F
    c = I32(24) if neg else I32(-1)
    return p * _float(I32(I32(I32(k + c) + I32(127)) << I32(23))) * (TWO_M24_F if neg else TWO_F)


@kernel
def _exp_neg32(x):
    x = EXP_LO_F if x < EXP_LO_F else x
    k, r = _exp_reduce32(x)
    p = _fma(_fma(_exp_q32(r), r, ONE_F), r, ONE_F)
    return p * _float(I32(I32(k + I32(24 + 127)) << I32(23))) * TWO_M24_F


@kernel
def _expm1_pos32(y):
    k, r = _exp_reduce32(y)
    q = _fma(_exp_q32(r) * r, r, r)
    s = _float(np.int32((k + 127) << 23))
    return _fma(s, q, s - ONE_F)


@kernel
def _tanh32(x):
    a = abs(x)
    a = TANH_CLAMP_F if a > TANH_CLAMP_F else a
    e = _expm1_pos32(a + a)
    return math.copysign(e / (e + TWO_F), x)


@kernel
def _sigmoid32(x):
    e = _exp_neg32(-abs(x))
    return (ONE_F if x >= ZERO_F else e) / (ONE_F + e)


@kernel
def _log32(x):
    wide()
    sub = x < TINY_F
    y = x * TWO23_F if sub else x
    ib = I32(_bits(y) - SQRT_HALF_BITS_F)          # every step I32: see the docstring
    k = I32(ib >> I32(23))
    m = _float(I32(I32(ib & MANTISSA_F) + SQRT_HALF_BITS_F))
    kf = F32(k) - (SUB_SHIFT_F if sub else ZERO_F)
    f = m - ONE_F
    f2 = f * f
    f4 = f2 * f2                                   # Q(f) by Estrin's scheme
    q = _fma(_fma(_fma(LQ7_F, f, LQ6_F), f2, _fma(LQ5_F, f, LQ4_F)), f4,
             _fma(_fma(LQ3_F, f, LQ2_F), f2, _fma(LQ1_F, f, LQ0_F)))
    lm = _fma(f2, _fma(q, f, MHALF_F), f)          # f + f**2 (-1/2 + f Q(f))
    ans = _fma(kf, LN2_F, lm)
    ans = ans if x < INF_F else x
    ans = NAN_F if x < ZERO_F else ans
    return -INF_F if x == ZERO_F else ans


# ------------------------------------------------------------------ the public names
def _numpy(fn):
    def fallback(x):
        with np.errstate(all="ignore"):
            return fn(x)
    return fallback


vexp = _numpy(np.exp)
vlog = _numpy(np.log)
vtanh = _numpy(np.tanh)
vsigmoid = _numpy(lambda x: 1 / (1 + np.exp(-x)))
vexp.__doc__ = "e**x of a float64 or float32, vectorisable (module docstring)."
vlog.__doc__ = "Natural logarithm (0 -> -inf, negative -> NaN), vectorisable."
vtanh.__doc__ = "Hyperbolic tangent, vectorisable."
vsigmoid.__doc__ = "1 / (1 + e**-x) without overflow, vectorisable."


def one_like(x):
    """1 of ``x``'s float type (so arithmetic with it stays in float32 on float32 arenas)."""
    return type(x)(1)


@overload(one_like, inline="always")
def _one_like(x):
    if x == types.float32:
        return lambda x: ONE_F
    if isinstance(x, types.Float):
        return lambda x: 1.0
    return None


def _register(public, f64, f32):
    @overload(public, inline="always")
    def _impl(x):
        if x == types.float64:
            return lambda x: f64(x)
        if x == types.float32:
            return lambda x: f32(x)
        return None


for _pub, _f64, _f32 in ((vexp, _exp64, _exp32), (vlog, _log64, _log32),
                         (vtanh, _tanh64, _tanh32), (vsigmoid, _sigmoid64, _sigmoid32)):
    _register(_pub, _f64, _f32)
