"""Elementwise ops: the shape rule, the forward rule and the reverse rule of each, together.

Shape rules: unary ops keep the shape; binary ops and ``where`` broadcast like NumPy, an
operand of another shape being expanded to the output's shape by EXPAND instructions first,
so every kernel reads and writes contiguous runs of ``n`` elements -- except add, sub, mul and
div of outputs of ``bcast.MIN_SIZE`` elements or more, recorded as one BCAST instruction that
reads its operands through broadcast strides (``tapegrad/ops/bcast.py``).

Kernel arguments: ``v`` / ``g`` the value and gradient arenas; ``x, y, c`` the inputs'
offsets and ``ans`` the output's offset in them (np.uint64: unsigned offsets let LLVM
vectorise the loops, and indexing the arenas directly, instead of through views, costs no
reference counting per instruction); ``n`` the number of elements; ``k`` the immediate.
A reverse rule accumulates into the inputs' gradients with ``+=``.
``add sub mul div`` have a second reverse kernel, ``<op>_bwd_one``, which the reverse sweep
runs when only one input has a gradient (its mask says which: ``tapegrad.sweep``): the other
input's -- a constant's, say -- is then neither computed nor written.
At kinks PyTorch's conventions hold: relu'(0) = abs'(0) = 0, maximum/minimum split the
gradient of a tie equally. NaN propagates as in PyTorch: relu(nan), maximum(nan, 1) and
minimum(1, nan) are nan; relu passes the gradient at nan, maximum/minimum give both
operands the whole gradient when either is nan; comparisons with nan are 0 (``!=``: 1).
"""
import math

import numpy as np

from .._jit import kernel
from ..opcodes import Op
from ..var import Var
from . import bcast as _bcast, immediate
from ._record import broadcast_shape, broadcast_to, vars_of
from ._vjp import vjp
from .fused import tanh_grad
from ._vmath import one_like, vexp, vlog, vsigmoid, vtanh


def _unary(op, x, name, k=0.0):
    if type(x) is Var:  # the common case: Tape._rec, the operators' short path
        return x.tape._rec(op, x._b, -1, float(k))
    tape, (x,) = vars_of([x], name)
    return Var(tape, tape._emit(op, (x._b,), tape._shape[x._b], imm=float(k)))


# opcodes as plain ints for the operators (an Op member costs an enum lookup each use)
ADD, SUB, MUL, DIV = int(Op.ADD), int(Op.SUB), int(Op.MUL), int(Op.DIV)
ADDC, RSUBC, MULC, DIVC, RDIVC = (int(Op.ADDC), int(Op.RSUBC), int(Op.MULC), int(Op.DIVC),
                                  int(Op.RDIVC))


def _binary(op, x, y, name, right=None, left=None, negate=False):
    """``op`` of two operands; a Python number on the right (left) is recorded as the
    immediate of the unary opcode ``right`` (``left``) instead (``tapegrad/ops/immediate.py``),
    negated first if ``negate`` (``x - c`` is ``x + (-c)``)."""
    tx, ty = type(x), type(y)
    if tx is Var:
        if ty is Var:
            tape = x.tape
            shape = tape._shape[x._b]
            if y.tape is tape and tape._shape[y._b] == shape:  # the common case: same shape
                return Var(tape, tape._emit(op, (x._b, y._b), shape))
        elif right is not None and ty in immediate.SCALARS:  # immediate.record, inlined
            tape = x.tape
            c = -float(y) if negate else float(y)
            if tape._f32:
                c = float(np.float32(c))
            return Var(tape, tape._emit(right, (x._b,), tape._shape[x._b], imm=c))
    elif left is not None and ty is Var and tx in immediate.SCALARS:
        return immediate.record(left, y, x)
    tape, (x, y) = vars_of([x, y], name)
    shape = broadcast_shape(name, x, y)
    if op in _bcast.OPS and math.prod(shape) >= _bcast.MIN_SIZE:  # one BCAST, no copies (bcast.py)
        out = _bcast.record(op, x, y, shape)
        if out is not None:
            return out
    x, y = broadcast_to(x, shape), broadcast_to(y, shape)
    return Var(tape, tape._emit(op, (x._b, y._b), shape))


# ---------------------------------------------------------------------------- unary
def neg(x):
    """-x.  ``tg.neg(v)``"""
    return _unary(Op.NEG, x, "neg")


@kernel
def neg_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = -v[x + i]


@kernel
def neg_bwd(v, g, x, ans, n, k):
    for i in range(n):
        g[x + i] -= g[ans + i]


@vjp(Op.NEG)
def neg_vjp(r, g):
    return (-g,)


def exp(x):
    """e**x.  ``tg.exp(v)``"""
    return _unary(Op.EXP, x, "exp")


@kernel
def exp_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = vexp(v[x + i])


@kernel
def exp_bwd(v, g, x, ans, n, k):
    for i in range(n):
        g[x + i] += g[ans + i] * v[ans + i]


@vjp(Op.EXP)
def exp_vjp(r, g):
    return (g * r.ans,)


def log(x):
    """Natural logarithm.  ``tg.log(v)``"""
    return _unary(Op.LOG, x, "log")


@kernel
def log_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = vlog(v[x + i])  # 0 -> -inf, negative -> nan


@kernel
def log_bwd(v, g, x, ans, n, k):
    for i in range(n):
        g[x + i] += g[ans + i] / v[x + i]


@vjp(Op.LOG)
def log_vjp(r, g):
    return (g / r.x,)


def sqrt(x):
    """Square root.  ``tg.sqrt(v)``"""
    return _unary(Op.SQRT, x, "sqrt")


@kernel
def sqrt_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = math.sqrt(v[x + i]) if v[x + i] >= 0 else math.nan


@kernel
def sqrt_bwd(v, g, x, ans, n, k):
    for i in range(n):
        g[x + i] += g[ans + i] * 0.5 / v[ans + i]


@vjp(Op.SQRT)
def sqrt_vjp(r, g):
    return (g / r.ans * 0.5,)


def sin(x):
    """Sine.  ``tg.sin(v)``"""
    return _unary(Op.SIN, x, "sin")


@kernel
def sin_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = math.sin(v[x + i])


@kernel
def sin_bwd(v, g, x, ans, n, k):
    for i in range(n):
        g[x + i] += g[ans + i] * math.cos(v[x + i])


@vjp(Op.SIN)
def sin_vjp(r, g):
    return (g * cos(r.x),)


def cos(x):
    """Cosine.  ``tg.cos(v)``"""
    return _unary(Op.COS, x, "cos")


@kernel
def cos_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = math.cos(v[x + i])


@kernel
def cos_bwd(v, g, x, ans, n, k):
    for i in range(n):
        g[x + i] -= g[ans + i] * math.sin(v[x + i])


@vjp(Op.COS)
def cos_vjp(r, g):
    return (-(g * sin(r.x)),)


def tanh(x):
    """Hyperbolic tangent.  ``tg.tanh(v)``"""
    return _unary(Op.TANH, x, "tanh")


@kernel
def tanh_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = vtanh(v[x + i])


@kernel
def tanh_bwd(v, g, x, ans, n, k):
    for i in range(n):  # 1 - a^2 as (1 - a)(1 + a): no cancellation as |a| -> 1
        a = v[ans + i]
        one = one_like(a)  # (in the arena's precision: a float32 loop stays float32)
        g[x + i] += g[ans + i] * ((one - a) * (one + a))


@vjp(Op.TANH)
def tanh_vjp(r, g):
    return (tanh_grad(g, r.ans),)  # g * (1 - ans^2), one instruction (ops/fused.py)


def sigmoid(x):
    """1 / (1 + e**-x), computed without overflow.  ``tg.sigmoid(v)``"""
    return _unary(Op.SIGMOID, x, "sigmoid")


@kernel
def sigmoid_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = vsigmoid(v[x + i])


@kernel
def sigmoid_bwd(v, g, x, ans, n, k):
    for i in range(n):
        a = v[ans + i]
        g[x + i] += g[ans + i] * (a * (one_like(a) - a))


@vjp(Op.SIGMOID)
def sigmoid_vjp(r, g):
    return (g * (r.ans * (1.0 - r.ans)),)


def relu(x):
    """max(x, 0); relu'(0) = 0.  ``tg.relu(v)``"""
    return _unary(Op.RELU, x, "relu")


@kernel
def relu_fwd(v, x, ans, n, k):
    for i in range(n):  # written so that nan is kept (as torch)
        v[ans + i] = 0 if v[x + i] <= 0 else v[x + i]


@kernel
def relu_bwd(v, g, x, ans, n, k):
    for i in range(n):
        if not v[x + i] <= 0:  # x > 0 or nan: torch passes the gradient at nan
            g[x + i] += g[ans + i]


@vjp(Op.RELU)
def relu_vjp(r, g):
    return (g * gt(r.x, 0.0),)


def leaky_relu(x, negative_slope=0.01):
    """x if x > 0 else negative_slope * x.  ``tg.leaky_relu(v, 0.1)``"""
    return _unary(Op.LEAKY_RELU, x, "leaky_relu", negative_slope)


@kernel
def leaky_relu_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = v[x + i] if v[x + i] > 0 else k * v[x + i]


@kernel
def leaky_relu_bwd(v, g, x, ans, n, k):
    for i in range(n):
        g[x + i] += g[ans + i] if v[x + i] > 0 else k * g[ans + i]


@vjp(Op.LEAKY_RELU)
def leaky_relu_vjp(r, g):
    return (g * (gt(r.x, 0.0) * (1.0 - r.k) + r.k),)


def abs(x):  # noqa: A001 - the public name is tg.abs
    """|x|; abs'(0) = 0.  ``tg.abs(v)``"""
    return _unary(Op.ABS, x, "abs")


@kernel
def abs_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = v[x + i] if v[x + i] >= 0 else -v[x + i]


@kernel
def abs_bwd(v, g, x, ans, n, k):
    for i in range(n):
        if v[x + i] > 0:
            g[x + i] += g[ans + i]
        elif v[x + i] < 0:
            g[x + i] -= g[ans + i]


@vjp(Op.ABS)
def abs_vjp(r, g):
    return (g * (gt(r.x, 0.0) - lt(r.x, 0.0)),)


def square(x):
    """x * x.  ``tg.square(v)``"""
    return _unary(Op.SQUARE, x, "square")


@kernel
def square_fwd(v, x, ans, n, k):
    for i in range(n):
        v[ans + i] = v[x + i] * v[x + i]


@kernel
def square_bwd(v, g, x, ans, n, k):
    for i in range(n):
        g[x + i] += 2 * g[ans + i] * v[x + i]


@vjp(Op.SQUARE)
def square_vjp(r, g):
    return (g * r.x * 2.0,)


# x ** 2 and x ** 3 as products (libm's pow is a scalar call; IEEE gives these the same
# special values: nan, +-inf, -0.0 ** 3 = -0.0)
@kernel
def powc_fwd(v, x, ans, n, k):
    if k == 2:
        for i in range(n):
            v[ans + i] = v[x + i] * v[x + i]
    elif k == 3:
        for i in range(n):  # in float64 (x^2 exact for float32 x): rounded once to float32
            a = 1.0 * v[x + i]
            v[ans + i] = a * a * a
    else:
        for i in range(n):
            v[ans + i] = v[x + i] ** k


@kernel
def powc_bwd(v, g, x, ans, n, k):
    if k == 2:
        for i in range(n):
            g[x + i] += g[ans + i] * (v[x + i] + v[x + i])
    elif k == 3:
        for i in range(n):
            a = 1.0 * v[x + i]
            g[x + i] += g[ans + i] * (3.0 * (a * a))
    elif k != 0:
        for i in range(n):
            g[x + i] += g[ans + i] * k * v[x + i] ** (k - 1)


@vjp(Op.POWC)
def powc_vjp(r, g):
    return (None if r.k == 0 else g * (r.x ** (r.k - 1.0) * r.k),)


# ---------------------------------------------------------------------------- binary
def add(x, y):
    """x + y with broadcasting.  ``tg.add(a, b)``"""
    return _binary(ADD, x, y, "add", ADDC, ADDC)


@kernel
def add_fwd(v, x, y, ans, n):
    for i in range(n):
        v[ans + i] = v[x + i] + v[y + i]


@kernel
def add_bwd(v, g, x, y, ans, n):
    for i in range(n):
        g[x + i] += g[ans + i]
        g[y + i] += g[ans + i]


@kernel
def add_bwd_one(v, g, x, y, ans, n, gx):
    """``add_bwd`` into one input's gradient: x's if ``gx`` else y's (the other has none)."""
    if gx:
        for i in range(n):
            g[x + i] += g[ans + i]
    else:
        for i in range(n):
            g[y + i] += g[ans + i]


@vjp(Op.ADD)
def add_vjp(r, g):
    return g, g


def sub(x, y):
    """x - y with broadcasting.  ``tg.sub(a, b)``"""
    return _binary(SUB, x, y, "sub", ADDC, RSUBC, negate=True)


@kernel
def sub_fwd(v, x, y, ans, n):
    for i in range(n):
        v[ans + i] = v[x + i] - v[y + i]


@kernel
def sub_bwd(v, g, x, y, ans, n):
    for i in range(n):
        g[x + i] += g[ans + i]
        g[y + i] -= g[ans + i]


@kernel
def sub_bwd_one(v, g, x, y, ans, n, gx):
    """``sub_bwd`` into x's gradient if ``gx``, else y's (the other has none)."""
    if gx:
        for i in range(n):
            g[x + i] += g[ans + i]
    else:
        for i in range(n):
            g[y + i] -= g[ans + i]


@vjp(Op.SUB)
def sub_vjp(r, g):
    return g, (-g if r.need[1] else None)


def mul(x, y):
    """x * y with broadcasting.  ``tg.mul(a, b)``"""
    return _binary(MUL, x, y, "mul", MULC, MULC)


@kernel
def mul_fwd(v, x, y, ans, n):
    for i in range(n):
        v[ans + i] = v[x + i] * v[y + i]


# x == y (``z * z``): the two-input loop's stores overlap, LLVM's runtime alias check fails
# and it runs scalar (1.6M float64: 1.16 ns per element, 0.83 this way; float32 1.09 -> 0.33).
# The branch is loop-invariant: LLVM unswitches it into two vector loops, and the body stays
# one loop for the scalar row (``lower.scalar_row``). Same bits: (g + t) + t is what the two
# ``+=`` compute in sequence.
@kernel
def mul_bwd(v, g, x, y, ans, n):
    for i in range(n):
        if x == y:
            t = g[ans + i] * v[x + i]
            g[x + i] = (g[x + i] + t) + t
        else:
            g[x + i] += g[ans + i] * v[y + i]
            g[y + i] += g[ans + i] * v[x + i]


@kernel
def mul_bwd_one(v, g, x, y, ans, n, gx):
    """``mul_bwd`` into x's gradient if ``gx``, else y's (the other has none)."""
    if gx:
        for i in range(n):
            g[x + i] += g[ans + i] * v[y + i]
    else:
        for i in range(n):
            g[y + i] += g[ans + i] * v[x + i]


@vjp(Op.MUL)
def mul_vjp(r, g):
    return (g * r.y if r.need[0] else None), (g * r.x if r.need[1] else None)


def div(x, y):
    """x / y with broadcasting (IEEE: 1/0 = inf).  ``tg.div(a, b)``"""
    return _binary(DIV, x, y, "div", DIVC, RDIVC)


@kernel
def div_fwd(v, x, y, ans, n):
    for i in range(n):
        v[ans + i] = v[x + i] / v[y + i]


@kernel
def div_bwd(v, g, x, y, ans, n):
    for i in range(n):
        g[x + i] += g[ans + i] / v[y + i]
        g[y + i] -= g[ans + i] * v[ans + i] / v[y + i]


@kernel
def div_bwd_one(v, g, x, y, ans, n, gx):
    """``div_bwd`` into x's gradient if ``gx``, else y's (the other has none)."""
    if gx:
        for i in range(n):
            g[x + i] += g[ans + i] / v[y + i]
    else:
        for i in range(n):
            g[y + i] -= g[ans + i] * v[ans + i] / v[y + i]


@vjp(Op.DIV)
def div_vjp(r, g):
    gx = g / r.y
    return gx, (-(gx * r.ans) if r.need[1] else None)


def pow(x, y):  # noqa: A001 - the public name is tg.pow
    """x ** y; a Python number as y records the exponent as an immediate.  ``tg.pow(v, 3)``"""
    if type(y) in immediate.SCALARS and type(y) is not bool:
        return _unary(Op.POWC, x, "pow", y)
    return _binary(Op.POW, x, y, "pow", None, Op.RPOWC)


@kernel
def pow_fwd(v, x, y, ans, n):
    for i in range(n):
        v[ans + i] = v[x + i] ** v[y + i]


# d/dy = ans * log(x), except 0 where x == 0 and y >= 0 (as torch): so 0 ** -1 gives
# inf * log(0) = -inf, a negative or nan base nan
@kernel
def pow_bwd(v, g, x, y, ans, n):
    for i in range(n):
        a, b = v[x + i], v[y + i]
        if b != 0:
            g[x + i] += g[ans + i] * b * a ** (b - 1)
        if a == 0 and b >= 0:
            continue
        log_a = math.log(a) if a > 0 else (-math.inf if a == 0 else math.nan)
        g[y + i] += g[ans + i] * v[ans + i] * log_a


@vjp(Op.POW)
def pow_vjp(r, g):
    x, y = r.x, r.y
    gx = g * (y * x ** (y - 1.0)) if r.need[0] else None
    gy = None
    if r.need[1]:  # log of a positive base; nan for a negative one or 0 ** negative, as the kernel
        pos = gt(x, 0.0)
        t = g * r.ans * log(where(pos, x, 1.0))
        # (the nan is a constant: a product g * nan would put 0 * nan into higher orders)
        gy = where(pos, t, where(lt(x, 0.0) + lt(y, 0.0), math.nan, 0.0))
    return gx, gy


def maximum(x, y):
    """Elementwise max; a tie splits the gradient equally.  ``tg.maximum(a, 0.0)``"""
    return _binary(Op.MAXIMUM, x, y, "maximum")


@kernel
def maximum_fwd(v, x, y, ans, n):
    for i in range(n):  # nan in either operand gives nan
        a, b = v[x + i], v[y + i]
        v[ans + i] = a if (a >= b or a != a) else b


# torch's rule: the whole gradient to each operand not strictly smaller (so to both when one
# is nan), half of it to each of a tie
@kernel
def maximum_bwd(v, g, x, y, ans, n):
    for i in range(n):
        a, b = v[x + i], v[y + i]
        share = 0.5 * g[ans + i] if a == b else g[ans + i]
        if not a < b:
            g[x + i] += share
        if not a > b:
            g[y + i] += share


@vjp(Op.MAXIMUM)
def maximum_vjp(r, g):
    s = (gt(r.x, r.y) - lt(r.x, r.y)) * 0.5  # +-1/2, 0 at a tie: the halves split a tie
    return (g * (0.5 + s) if r.need[0] else None), (g * (0.5 - s) if r.need[1] else None)


def minimum(x, y):
    """Elementwise min; a tie splits the gradient equally.  ``tg.minimum(a, b)``"""
    return _binary(Op.MINIMUM, x, y, "minimum")


@kernel
def minimum_fwd(v, x, y, ans, n):
    for i in range(n):  # nan in either operand gives nan
        a, b = v[x + i], v[y + i]
        v[ans + i] = a if (a <= b or a != a) else b


@kernel
def minimum_bwd(v, g, x, y, ans, n):
    for i in range(n):
        a, b = v[x + i], v[y + i]
        share = 0.5 * g[ans + i] if a == b else g[ans + i]
        if not a > b:
            g[x + i] += share
        if not a < b:
            g[y + i] += share


@vjp(Op.MINIMUM)
def minimum_vjp(r, g):
    s = (gt(r.x, r.y) - lt(r.x, r.y)) * 0.5
    return (g * (0.5 - s) if r.need[0] else None), (g * (0.5 + s) if r.need[1] else None)


# comparisons: 0/1 values, no gradient (their reverse rule is "nothing")
def gt(x, y):
    """1.0 where x > y else 0.0 (no gradient).  ``v > 0``"""
    return _binary(Op.GT, x, y, "gt")


def ge(x, y):
    """1.0 where x >= y else 0.0 (no gradient).  ``v >= 0``"""
    return _binary(Op.GE, x, y, "ge")


def lt(x, y):
    """1.0 where x < y else 0.0 (no gradient).  ``v < 0``"""
    return _binary(Op.LT, x, y, "lt")


def le(x, y):
    """1.0 where x <= y else 0.0 (no gradient).  ``v <= 0``"""
    return _binary(Op.LE, x, y, "le")


def eq(x, y):
    """1.0 where x == y else 0.0 (no gradient; nan == nan is 0).  ``v == 0``"""
    return _binary(Op.EQ, x, y, "eq")


def ne(x, y):
    """1.0 where x != y else 0.0 (no gradient; nan != nan is 1).  ``v != 0``"""
    return _binary(Op.NE, x, y, "ne")


@kernel
def compare_fwd(op, v, x, y, ans, n):
    for i in range(n):
        a, b = v[x + i], v[y + i]
        if op == Op.GT:
            v[ans + i] = 1.0 if a > b else 0.0
        elif op == Op.GE:
            v[ans + i] = 1.0 if a >= b else 0.0
        elif op == Op.LT:
            v[ans + i] = 1.0 if a < b else 0.0
        elif op == Op.LE:
            v[ans + i] = 1.0 if a <= b else 0.0
        elif op == Op.EQ:
            v[ans + i] = 1.0 if a == b else 0.0
        else:
            v[ans + i] = 1.0 if a != b else 0.0


# ---------------------------------------------------------------------------- where
def where(cond, x, y):
    """x where cond is non-zero, else y (broadcasting); no gradient flows to cond.

    ``tg.where(v > 0, v, 0.1 * v)`` replays correctly whichever way ``v`` goes."""
    tape, (cond, x, y) = vars_of([cond, x, y], "where")
    shape = broadcast_shape("where", cond, x, y)
    cond, x, y = (broadcast_to(a, shape) for a in (cond, x, y))
    return Var(tape, tape._emit(Op.WHERE, [cond._b, x._b, y._b], shape))


def clip(x, lo=None, hi=None):
    """``x`` limited to ``[lo, hi]`` (None: no limit on that side), as ``np.clip``; the
    gradient passes where ``lo <= x <= hi``, as ``torch.clamp``.  ``tg.clip(v, 0.0, 1.0)``"""
    tape, (x,) = vars_of([x], "clip")
    if lo is not None:
        x = where(lt(x, lo), lo, x)
    if hi is not None:
        x = where(gt(x, hi), hi, x)
    return x


def argmax(x, axis=None):
    """Indices of the maxima of ``x``'s current value (an integer ndarray; no gradient, not
    recorded).  ``tg.argmax(logits, axis=1)``"""
    tape, (x,) = vars_of([x], "argmax")
    return np.argmax(x.value, axis=axis)


@kernel
def where_fwd(v, c, x, y, ans, n):
    for i in range(n):
        v[ans + i] = v[x + i] if v[c + i] != 0 else v[y + i]


@kernel
def where_bwd(v, g, c, x, y, ans, n):
    for i in range(n):
        if v[c + i] != 0:
            g[x + i] += g[ans + i]
        else:
            g[y + i] += g[ans + i]


@vjp(Op.WHERE)
def where_vjp(r, g):
    return (None, where(r.x, g, 0.0) if r.need[1] else None,
            where(r.x, 0.0, g) if r.need[2] else None)
