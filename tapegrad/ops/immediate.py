"""Binary elementwise ops with a Python number as one operand: ``x * 0.5``, ``1 - x``,
``x / 3``, ``2 ** x``. The number is the instruction's immediate ``c`` (``imm``), so such an
op is one instruction with no constant buffer and no broadcast.

Shape rule: the Var operand's shape. On a float32 tape ``c`` is rounded to float32 when
recorded, and the kernels compute in float64 then round once: for + - * / that equals float32
arithmetic exactly (a float64 product or quotient of float32 numbers rounds correctly twice).
``x - c`` is recorded as ``x + (-c)``, which IEEE defines it to be.

Kernel arguments as in ``tapegrad.ops.elementwise`` (``k`` is ``c``).
"""
import math

import numpy as np

from .._jit import kernel
from ..opcodes import Op
from ..var import Var
from ._vjp import vjp

# number types taken as immediates (bool is an int: True * x == x); exact type match, so
# the test costs one set lookup while recording
SCALARS = frozenset((int, float, bool, np.float64, np.float32, np.float16, np.int64, np.int32,
                     np.int16, np.int8, np.uint8, np.uint16, np.uint32, np.uint64))


def record(op, x, c):
    """One instruction ``op`` of the Var ``x`` and the number ``c``."""
    tape = x.tape
    c = float(c)
    if tape._f32:
        c = float(np.float32(c))
    return Var(tape, tape._emit(op, (x._b,), tape._shape[x._b], imm=c))


# x + c ----------------------------------------------------------------------------------
@kernel
def addc_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = v[x + i] + k


@kernel
def addc_bwd(v, g, x, ans, n, k):
    for i in range(n):
        g[x + i] += g[ans + i]


@vjp(Op.ADDC)
def addc_vjp(r, g):
    return (g,)


# x * c ----------------------------------------------------------------------------------
@kernel
def mulc_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = v[x + i] * k


@kernel
def mulc_bwd(v, g, x, ans, n, k):
    for i in range(n):
        g[x + i] += g[ans + i] * k


@vjp(Op.MULC)
def mulc_vjp(r, g):
    return (g * r.k,)


# c - x ----------------------------------------------------------------------------------
@kernel
def rsubc_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = k - v[x + i]


@kernel
def rsubc_bwd(v, g, x, ans, n, k):
    for i in range(n):
        g[x + i] -= g[ans + i]


@vjp(Op.RSUBC)
def rsubc_vjp(r, g):
    return (-g,)


# x / c ----------------------------------------------------------------------------------
@kernel
def divc_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = v[x + i] / k


@kernel
def divc_bwd(v, g, x, ans, n, k):
    for i in range(n):
        g[x + i] += g[ans + i] / k


@vjp(Op.DIVC)
def divc_vjp(r, g):
    return (g / r.k,)


# c / x: d/dx = -c / x**2 = -ans / x ---------------------------------------------------------
@kernel
def rdivc_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = k / v[x + i]


@kernel
def rdivc_bwd(v, g, x, ans, n, k):
    for i in range(n):
        g[x + i] -= g[ans + i] * v[ans + i] / v[x + i]


@vjp(Op.RDIVC)
def rdivc_vjp(r, g):
    return (-(g * r.ans / r.x),)


# c ** x: d/dx = c**x * log(c) (c < 0: nan; c = 0: as torch) ----------------------------------
@kernel
def rpowc_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = k ** v[x + i]


@kernel
def rpowc_bwd(v, g, x, ans, n, k):
    if k > 0:
        lk = math.log(k)
        for i in range(n):
            g[x + i] += g[ans + i] * v[ans + i] * lk
    elif k < 0:
        for i in range(n):
            g[x + i] += g[ans + i] * math.nan
    else:
        for i in range(n):  # 0 ** x: gradient 0 where x >= 0 (torch), inf * log(0) where x < 0
            if v[x + i] < 0:
                g[x + i] += g[ans + i] * v[ans + i] * -math.inf


@vjp(Op.RPOWC)
def rpowc_vjp(r, g):
    from .elementwise import lt, where
    if r.k > 0:
        return (g * r.ans * math.log(r.k),)
    if r.k < 0:
        return (g * math.nan,)
    return (where(lt(r.x, 0.0), g * r.ans * -math.inf, 0.0),)
