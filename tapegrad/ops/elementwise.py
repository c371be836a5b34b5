"""Elementwise ops: the shape rule, the forward rule and the reverse rule of each, together.

Shape rules: unary ops keep the shape; binary ops and ``where`` broadcast like NumPy. In the
kernels an operand is read as ``x[i * sx]``: ``sx = 1`` for an operand of the output's size,
``sx = 0`` for a single number (other broadcasts are expanded by an EXPAND instruction first),
so ``gx[i * sx] += ...`` also sums the gradient of a broadcast number.

Kernel arguments: ``x, y, z`` input views, ``ans`` the output view, ``g`` the output's
gradient, ``gx, gy, gz`` the inputs' gradients (accumulated with ``+=``), ``c`` the immediate.
At kinks PyTorch's conventions hold: relu'(0) = abs'(0) = 0, maximum/minimum split the
gradient of a tie equally.
"""
import math

from .._jit import kernel
from ..opcodes import Op
from ..var import Var
from ._record import broadcast_shape, stride_operand, vars_of


def _unary(op, x, name, c=0.0):
    tape, (x,) = vars_of([x], name)
    return Var(tape, tape._emit(op, [x._b], x.shape, imm=float(c)))


def _binary(op, x, y, name):
    tape, (x, y) = vars_of([x, y], name)
    shape = broadcast_shape(name, x, y)
    x, sx = stride_operand(x, shape)
    y, sy = stride_operand(y, shape)
    return Var(tape, tape._emit(op, [x._b, y._b], shape, (sx, sy)))


# ---------------------------------------------------------------------------- unary
def neg(x):
    """-x.  ``tg.neg(v)``"""
    return _unary(Op.NEG, x, "neg")


@kernel
def neg_fwd(x, ans, c):
    for i in range(ans.size):
        ans[i] = -x[i]


@kernel
def neg_bwd(x, ans, g, gx, c):
    for i in range(g.size):
        gx[i] -= g[i]


def exp(x):
    """e**x.  ``tg.exp(v)``"""
    return _unary(Op.EXP, x, "exp")


@kernel
def exp_fwd(x, ans, c):
    for i in range(ans.size):
        ans[i] = math.exp(x[i])


@kernel
def exp_bwd(x, ans, g, gx, c):
    for i in range(g.size):
        gx[i] += g[i] * ans[i]


def log(x):
    """Natural logarithm.  ``tg.log(v)``"""
    return _unary(Op.LOG, x, "log")


@kernel
def log_fwd(x, ans, c):
    for i in range(ans.size):
        ans[i] = math.log(x[i]) if x[i] > 0 else (-math.inf if x[i] == 0 else math.nan)


@kernel
def log_bwd(x, ans, g, gx, c):
    for i in range(g.size):
        gx[i] += g[i] / x[i]


def sqrt(x):
    """Square root.  ``tg.sqrt(v)``"""
    return _unary(Op.SQRT, x, "sqrt")


@kernel
def sqrt_fwd(x, ans, c):
    for i in range(ans.size):
        ans[i] = math.sqrt(x[i]) if x[i] >= 0 else math.nan


@kernel
def sqrt_bwd(x, ans, g, gx, c):
    for i in range(g.size):
        gx[i] += g[i] * 0.5 / ans[i]


def sin(x):
    """Sine.  ``tg.sin(v)``"""
    return _unary(Op.SIN, x, "sin")


@kernel
def sin_fwd(x, ans, c):
    for i in range(ans.size):
        ans[i] = math.sin(x[i])


@kernel
def sin_bwd(x, ans, g, gx, c):
    for i in range(g.size):
        gx[i] += g[i] * math.cos(x[i])


def cos(x):
    """Cosine.  ``tg.cos(v)``"""
    return _unary(Op.COS, x, "cos")


@kernel
def cos_fwd(x, ans, c):
    for i in range(ans.size):
        ans[i] = math.cos(x[i])


@kernel
def cos_bwd(x, ans, g, gx, c):
    for i in range(g.size):
        gx[i] -= g[i] * math.sin(x[i])


def tanh(x):
    """Hyperbolic tangent.  ``tg.tanh(v)``"""
    return _unary(Op.TANH, x, "tanh")


@kernel
def tanh_fwd(x, ans, c):
    for i in range(ans.size):
        ans[i] = math.tanh(x[i])


@kernel
def tanh_bwd(x, ans, g, gx, c):
    for i in range(g.size):
        gx[i] += g[i] * (1 - ans[i] * ans[i])


def sigmoid(x):
    """1 / (1 + e**-x), computed without overflow.  ``tg.sigmoid(v)``"""
    return _unary(Op.SIGMOID, x, "sigmoid")


@kernel
def sigmoid_fwd(x, ans, c):
    for i in range(ans.size):
        if x[i] >= 0:
            ans[i] = 1 / (1 + math.exp(-x[i]))
        else:
            e = math.exp(x[i])
            ans[i] = e / (1 + e)


@kernel
def sigmoid_bwd(x, ans, g, gx, c):
    for i in range(g.size):
        gx[i] += g[i] * ans[i] * (1 - ans[i])


def relu(x):
    """max(x, 0); relu'(0) = 0.  ``tg.relu(v)``"""
    return _unary(Op.RELU, x, "relu")


@kernel
def relu_fwd(x, ans, c):
    for i in range(ans.size):
        ans[i] = x[i] if x[i] > 0 else 0


@kernel
def relu_bwd(x, ans, g, gx, c):
    for i in range(g.size):
        if x[i] > 0:
            gx[i] += g[i]


def leaky_relu(x, negative_slope=0.01):
    """x if x > 0 else negative_slope * x.  ``tg.leaky_relu(v, 0.1)``"""
    return _unary(Op.LEAKY_RELU, x, "leaky_relu", negative_slope)


@kernel
def leaky_relu_fwd(x, ans, c):
    for i in range(ans.size):
        ans[i] = x[i] if x[i] > 0 else c * x[i]


@kernel
def leaky_relu_bwd(x, ans, g, gx, c):
    for i in range(g.size):
        gx[i] += g[i] if x[i] > 0 else c * g[i]


def abs(x):  # noqa: A001 - the public name is tg.abs
    """|x|; abs'(0) = 0.  ``tg.abs(v)``"""
    return _unary(Op.ABS, x, "abs")


@kernel
def abs_fwd(x, ans, c):
    for i in range(ans.size):
        ans[i] = x[i] if x[i] >= 0 else -x[i]


@kernel
def abs_bwd(x, ans, g, gx, c):
    for i in range(g.size):
        if x[i] > 0:
            gx[i] += g[i]
        elif x[i] < 0:
            gx[i] -= g[i]


def square(x):
    """x * x.  ``tg.square(v)``"""
    return _unary(Op.SQUARE, x, "square")


@kernel
def square_fwd(x, ans, c):
    for i in range(ans.size):
        ans[i] = x[i] * x[i]


@kernel
def square_bwd(x, ans, g, gx, c):
    for i in range(g.size):
        gx[i] += 2 * g[i] * x[i]


@kernel
def powc_fwd(x, ans, c):
    for i in range(ans.size):
        ans[i] = x[i] ** c


@kernel
def powc_bwd(x, ans, g, gx, c):
    if c != 0:
        for i in range(g.size):
            gx[i] += g[i] * c * x[i] ** (c - 1)


# ---------------------------------------------------------------------------- binary
def add(x, y):
    """x + y with broadcasting.  ``tg.add(a, b)``"""
    return _binary(Op.ADD, x, y, "add")


@kernel
def add_fwd(x, sx, y, sy, ans):
    for i in range(ans.size):
        ans[i] = x[i * sx] + y[i * sy]


@kernel
def add_bwd(x, sx, y, sy, ans, g, gx, gy):
    for i in range(g.size):
        gx[i * sx] += g[i]
        gy[i * sy] += g[i]


def sub(x, y):
    """x - y with broadcasting.  ``tg.sub(a, b)``"""
    return _binary(Op.SUB, x, y, "sub")


@kernel
def sub_fwd(x, sx, y, sy, ans):
    for i in range(ans.size):
        ans[i] = x[i * sx] - y[i * sy]


@kernel
def sub_bwd(x, sx, y, sy, ans, g, gx, gy):
    for i in range(g.size):
        gx[i * sx] += g[i]
        gy[i * sy] -= g[i]


def mul(x, y):
    """x * y with broadcasting.  ``tg.mul(a, b)``"""
    return _binary(Op.MUL, x, y, "mul")


@kernel
def mul_fwd(x, sx, y, sy, ans):
    for i in range(ans.size):
        ans[i] = x[i * sx] * y[i * sy]


@kernel
def mul_bwd(x, sx, y, sy, ans, g, gx, gy):
    for i in range(g.size):
        gx[i * sx] += g[i] * y[i * sy]
        gy[i * sy] += g[i] * x[i * sx]


def div(x, y):
    """x / y with broadcasting (IEEE: 1/0 = inf).  ``tg.div(a, b)``"""
    return _binary(Op.DIV, x, y, "div")


@kernel
def div_fwd(x, sx, y, sy, ans):
    for i in range(ans.size):
        ans[i] = x[i * sx] / y[i * sy]


@kernel
def div_bwd(x, sx, y, sy, ans, g, gx, gy):
    for i in range(g.size):
        gx[i * sx] += g[i] / y[i * sy]
        gy[i * sy] -= g[i] * ans[i] / y[i * sy]


def pow(x, y):  # noqa: A001 - the public name is tg.pow
    """x ** y; a Python number as y records the exponent as an immediate.  ``tg.pow(v, 3)``"""
    if isinstance(y, (int, float)) and not isinstance(y, bool):
        return _unary(Op.POWC, x, "pow", y)
    return _binary(Op.POW, x, y, "pow")


@kernel
def pow_fwd(x, sx, y, sy, ans):
    for i in range(ans.size):
        ans[i] = x[i * sx] ** y[i * sy]


@kernel
def pow_bwd(x, sx, y, sy, ans, g, gx, gy):
    for i in range(g.size):
        a, b = x[i * sx], y[i * sy]
        if b != 0:
            gx[i * sx] += g[i] * b * a ** (b - 1)
        if a > 0:
            gy[i * sy] += g[i] * ans[i] * math.log(a)
        elif a < 0 or b < 0:  # log of a negative base, or 0 ** negative: as torch, nan/inf
            gy[i * sy] += g[i] * ans[i] * math.nan


def maximum(x, y):
    """Elementwise max; a tie splits the gradient equally.  ``tg.maximum(a, 0.0)``"""
    return _binary(Op.MAXIMUM, x, y, "maximum")


@kernel
def maximum_fwd(x, sx, y, sy, ans):
    for i in range(ans.size):
        ans[i] = x[i * sx] if x[i * sx] >= y[i * sy] else y[i * sy]


@kernel
def maximum_bwd(x, sx, y, sy, ans, g, gx, gy):
    for i in range(g.size):
        a, b = x[i * sx], y[i * sy]
        if a > b:
            gx[i * sx] += g[i]
        elif a < b:
            gy[i * sy] += g[i]
        else:
            gx[i * sx] += 0.5 * g[i]
            gy[i * sy] += 0.5 * g[i]


def minimum(x, y):
    """Elementwise min; a tie splits the gradient equally.  ``tg.minimum(a, b)``"""
    return _binary(Op.MINIMUM, x, y, "minimum")


@kernel
def minimum_fwd(x, sx, y, sy, ans):
    for i in range(ans.size):
        ans[i] = x[i * sx] if x[i * sx] <= y[i * sy] else y[i * sy]


@kernel
def minimum_bwd(x, sx, y, sy, ans, g, gx, gy):
    for i in range(g.size):
        a, b = x[i * sx], y[i * sy]
        if a < b:
            gx[i * sx] += g[i]
        elif a > b:
            gy[i * sy] += g[i]
        else:
            gx[i * sx] += 0.5 * g[i]
            gy[i * sy] += 0.5 * g[i]


# comparisons: 0/1 values, no gradient (their reverse rule is "nothing")
def gt(x, y):
    return _binary(Op.GT, x, y, "gt")


def ge(x, y):
    return _binary(Op.GE, x, y, "ge")


def lt(x, y):
    return _binary(Op.LT, x, y, "lt")


def le(x, y):
    return _binary(Op.LE, x, y, "le")


@kernel
def compare_fwd(op, x, sx, y, sy, ans):
    for i in range(ans.size):
        a, b = x[i * sx], y[i * sy]
        if op == Op.GT:
            ans[i] = 1.0 if a > b else 0.0
        elif op == Op.GE:
            ans[i] = 1.0 if a >= b else 0.0
        elif op == Op.LT:
            ans[i] = 1.0 if a < b else 0.0
        else:
            ans[i] = 1.0 if a <= b else 0.0


# ---------------------------------------------------------------------------- where
def where(cond, x, y):
    """x where cond is non-zero, else y (broadcasting); no gradient flows to cond.

    ``tg.where(v > 0, v, 0.1 * v)`` replays correctly whichever way ``v`` goes."""
    tape, (cond, x, y) = vars_of([cond, x, y], "where")
    shape = broadcast_shape("where", cond, x, y)
    cond, sc = stride_operand(cond, shape)
    x, sx = stride_operand(x, shape)
    y, sy = stride_operand(y, shape)
    return Var(tape, tape._emit(Op.WHERE, [cond._b, x._b, y._b], shape, (sc, sx, sy)))


@kernel
def where_fwd(c, sc, x, sx, y, sy, ans):
    for i in range(ans.size):
        ans[i] = x[i * sx] if c[i * sc] != 0 else y[i * sy]


@kernel
def where_bwd(c, sc, x, sx, y, sy, g, gx, gy):
    for i in range(g.size):
        if c[i * sc] != 0:
            gx[i * sx] += g[i]
        else:
            gy[i * sy] += g[i]
