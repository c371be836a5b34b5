"""Fused elementwise ops that the recorded reverse rules emit: one instruction (one pass over
memory, no intermediate buffers) where the rule used to record a chain.

* ``TANH_GRAD(x, y) = x * (1 - y*y)``: tanh's recorded reverse rule, ``x`` the cotangent and
  ``y`` tanh's output (was SQUARE, RSUBC, MUL). Its own reverse rule records TANH_GRAD again
  and MUL3, so a PINN's derivatives of derivatives of a tanh network stay two ops a layer.
* ``MUL3(x, y, z) = x * y * z * c`` (``c`` the immediate): trilinear, its own reverse rule
  records MUL3s (the second derivative of tanh, ``-2 y g G``, was MUL, NEG, MUL, MULC).
* ``ADD3(x, y, z) = (x + y) + z``: two ADDs, as ``tape.optimize()`` merges sums.
* ``SOFTPLUS(x) = log(exp(x) + c)`` (``c > 0`` the immediate): what ``tape.optimize()`` makes
  of EXP, ADDC c, LOG (``tapegrad/optimize.py``); its value is the chain's, bit for bit.

Each computes in the order of the chain it replaces (``(x*y)*z*c``; ``x*(1 - y*y)``), so the
values recorded before and after the fusion are the same numbers. Operands broadcast like
``mul``'s. Kernel arguments as in ``ops/elementwise.py``; the tangent rules (forward mode,
``tapegrad.tangent``) sit here too: ``t`` the tangent arena, ``D`` directions per element.
"""
import numpy as np

from .._jit import kernel
from ..opcodes import Op
from ..var import Var
from ._record import broadcast_shape, broadcast_to, vars_of
from ._vjp import vjp
from ._vmath import one_like, vexp, vlog


def _operands(name, *xs):
    tape, xs = vars_of(list(xs), name)
    shape = broadcast_shape(name, *xs)
    return tape, [broadcast_to(a, shape)._b for a in xs], shape


# ---------------------------------------------------------------------------- tanh_grad
def tanh_grad(x, y):
    """``x * (1 - y*y)``: the cotangent ``x`` of ``y = tanh(h)`` carried back to ``h``."""
    tape, bs, shape = _operands("tanh_grad", x, y)
    return Var(tape, tape._emit(Op.TANH_GRAD, bs, shape))


@kernel
def tanh_grad_fwd(v, x, y, ans, n):
    for i in range(n):
        a = v[y + i]
        v[ans + i] = v[x + i] * (one_like(a) - a * a)


@kernel
def tanh_grad_bwd(v, g, x, y, ans, n):
    for i in range(n):  # d/dx = 1 - y^2,  d/dy = -2 x y  (as MUL3's order: (G x) y (-2))
        a, G = v[y + i], g[ans + i]
        g[x + i] += G * (one_like(a) - a * a)
        g[y + i] += G * v[x + i] * a * -2.0


@vjp(Op.TANH_GRAD)
def tanh_grad_vjp(r, g):
    return (tanh_grad(g, r.y) if r.need[0] else None,
            mul3(g, r.x, r.y, -2.0) if r.need[1] else None)


@kernel
def tanh_grad_tan(v, t, x, y, tx, ty, tans, n, D, dx, dy):
    """d ans = (1 - y^2) dx - 2 x y dy; an input without a tangent is left out."""
    for i in range(n):
        a = 1.0 * v[y + i]
        sx = (1.0 - a * a) if dx else 0.0
        sy = -2.0 * v[x + i] * a if dy else 0.0
        o = i * D
        for d in range(D):
            t[tans + o + d] = sx * t[tx + o + d] + sy * t[ty + o + d]


# ---------------------------------------------------------------------------- softplus
def softplus(x, c=1.0):
    """``log(exp(x) + c)`` in one instruction (``c > 0`` the immediate; 1: softplus), as
    ``tape.optimize()`` fuses the chain EXP, ADDC c, LOG."""
    tape, (x,) = vars_of([x], "softplus")
    c = float(np.float32(c)) if tape._f32 else float(c)
    return Var(tape, tape._emit(Op.SOFTPLUS, [x._b], tape._shape[x._b], imm=c))


@kernel
def softplus_fwd(v, x, ans, n, k):
    for i in range(n):  # the chain's numbers: exp, + c and log each rounded to the arena type
        v[ans + i] = vexp(v[x + i]) + k
        v[ans + i] = vlog(v[ans + i])


@kernel
def softplus_bwd(v, g, x, ans, n, k):
    for i in range(n):  # d/dx = e^x / (e^x + c) = 1 / (1 + c e^-x): no inf / inf for large x
        g[x + i] += g[ans + i] / (1.0 + k * vexp(-v[x + i]))


@vjp(Op.SOFTPLUS)
def softplus_vjp(r, g):
    from .elementwise import exp  # (elementwise imports this module)
    return (g * exp(r.x - r.ans),)  # e^x / (e^x + c) = e^(x - ans)


@kernel
def softplus_tan(v, t, x, tx, tans, n, D, k):
    """d ans = dx / (1 + c e^-x)."""
    for i in range(n):
        s = 1.0 / (1.0 + k * vexp(-(1.0 * v[x + i])))
        o = i * D
        for d in range(D):
            t[tans + o + d] = s * t[tx + o + d]


# ---------------------------------------------------------------------------- add3
def add3(x, y, z):
    """``(x + y) + z`` in one instruction, as ``tape.optimize()`` merges two ADDs."""
    tape, bs, shape = _operands("add3", x, y, z)
    return Var(tape, tape._emit(Op.ADD3, bs, shape))


@kernel
def add3_fwd(v, x, y, z, ans, n):
    for i in range(n):  # the two ADDs' numbers: x + y rounded to the arena type, then + z
        v[ans + i] = v[x + i] + v[y + i]
        v[ans + i] += v[z + i]


@kernel
def add3_bwd(v, g, x, y, z, ans, n):
    for i in range(n):
        G = g[ans + i]
        g[x + i] += G
        g[y + i] += G
        g[z + i] += G


@vjp(Op.ADD3)
def add3_vjp(r, g):
    return g, g, g


# ---------------------------------------------------------------------------- mul3
def mul3(x, y, z, c=1.0):
    """``x * y * z * c`` (``c`` a number, held as the immediate)."""
    tape, bs, shape = _operands("mul3", x, y, z)
    c = float(np.float32(c)) if tape._f32 else float(c)
    return Var(tape, tape._emit(Op.MUL3, bs, shape, imm=c))


@kernel
def mul3_fwd(v, x, y, z, ans, n, k):
    for i in range(n):
        v[ans + i] = v[x + i] * v[y + i] * v[z + i] * k


@kernel
def mul3_bwd(v, g, x, y, z, ans, n, k):
    for i in range(n):
        G = g[ans + i]
        g[x + i] += G * v[y + i] * v[z + i] * k
        g[y + i] += v[x + i] * G * v[z + i] * k
        g[z + i] += v[x + i] * v[y + i] * G * k


@vjp(Op.MUL3)
def mul3_vjp(r, g):
    return (mul3(g, r.y, r.z, r.k) if r.need[0] else None,
            mul3(r.x, g, r.z, r.k) if r.need[1] else None,
            mul3(r.x, r.y, g, r.k) if r.need[2] else None)


@kernel
def mul3_tan(v, t, x, y, z, tx, ty, tz, tans, n, D, k, dx, dy, dz):
    """d ans = c (y z dx + x z dy + x y dz); an input without a tangent is left out."""
    for i in range(n):
        a, b, e = 1.0 * v[x + i], 1.0 * v[y + i], 1.0 * v[z + i]
        sx = b * e * k if dx else 0.0
        sy = a * e * k if dy else 0.0
        sz = a * b * k if dz else 0.0
        o = i * D
        for d in range(D):
            t[tans + o + d] = sx * t[tx + o + d] + sy * t[ty + o + d] + sz * t[tz + o + d]
