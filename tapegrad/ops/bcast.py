"""BCAST: a binary elementwise op (add, sub, mul, div) whose operands are read through
broadcast views, one instruction where ``_binary`` would otherwise record an EXPAND of each
operand of another shape, then the same-shape op. Its rules side by side: the shape rule
(``plan3``), the forward and reverse kernels, the recorded reverse rule and the tangent rule.

The output is seen as 3-D ``(d0, d1, d2)``: adjacent axes that broadcast alike merged (an
axis of size 1 in the output dropped), leading 1s to fill. An operand's broadcast bits say
which of the three it lacks (bit ``j``: axis ``j`` has extent 1 in it); its elements are
contiguous in its own ``(e0, e1, e2)`` shape. Attributes ``A0..A5 = op d0 d1 d2 bx by``.
``gmm``'s ``x.reshape(n, 1, d) - mu.reshape(1, K, d)`` is ``(n, K, d)`` with ``bx = 2`` and
``by = 1``: no (n, K, d) copy of either operand is written, forward or reverse.

The forward kernel runs a contiguous loop over ``d2`` per ``(i0, i1)`` (vectorised; an
operand lacking axis 2 is one value per row). The reverse kernel accumulates each input's
gradient -- only of the inputs that need one -- by summing the output's gradient terms over
the axes that input lacks: into the arena directly when it lacks none, else into a float64
scratch of its size added once at the end (a float32 tape's sums stay accurate, as EXPAND's
reverse sums in float64). Same values as the EXPAND path up to the order of those sums.

``_binary`` records BCAST for outputs of at least ``MIN_SIZE`` elements whose broadcast the
3-D merge expresses (more than three runs of axes: the EXPAND path). Smaller ones keep the
EXPAND path: there the copies cost less than the per-row loop set-up, and scalar replay
(size-1 rows of ``tapegrad.lower``), whose tapes are made of such ops, stays unchanged.
"""
import os

import numpy as np

from .._jit import drop_stale_cache, jit, kernel
from ..opcodes import Op
from ..var import Var
from ._record import reshape_var
from ._vjp import view3, vjp

ADD, SUB, MUL, DIV = int(Op.ADD), int(Op.SUB), int(Op.MUL), int(Op.DIV)
OPS = (ADD, SUB, MUL, DIV)
MIN_SIZE = 1024  # output elements from which _binary records BCAST (module docstring)


# ---------------------------------------------------------------------------- shape rule
def plan3(xs, ys, out):
    """``(d0, d1, d2, bx, by)`` of operands of shapes ``xs``, ``ys`` broadcast to ``out``,
    or None when more than three runs of axes are needed or neither operand is broadcast."""
    nd = len(out)
    xs = (1,) * (nd - len(xs)) + tuple(xs)
    ys = (1,) * (nd - len(ys)) + tuple(ys)
    runs = []  # [size, x has it, y has it]
    for a, b, o in zip(xs, ys, out):
        if o == 1:
            continue
        hx, hy = a == o, b == o
        if runs and runs[-1][1] == hx and runs[-1][2] == hy:
            runs[-1][0] *= o
        else:
            runs.append([o, hx, hy])
    if len(runs) > 3 or all(r[1] and r[2] for r in runs):
        return None
    runs = [[1, True, True]] * (3 - len(runs)) + runs
    bx = sum(1 << j for j, r in enumerate(runs) if not r[1])
    by = sum(1 << j for j, r in enumerate(runs) if not r[2])
    return runs[0][0], runs[1][0], runs[2][0], bx, by


def extents(d0, d1, d2, b):
    """An operand's ``(e0, e1, e2)``: the output's dims, 1 where bits ``b`` say it lacks one."""
    return tuple(1 if b >> j & 1 else d for j, d in enumerate((d0, d1, d2)))


def record(op, x, y, shape):
    """``x op y`` (Vars of one tape, broadcasting to ``shape``) as one BCAST, or None when
    ``plan3`` cannot express it."""
    p = plan3(x.shape, y.shape, shape)
    if p is None:
        return None
    tape = x.tape
    return Var(tape, tape._emit(Op.BCAST, (x._b, y._b), tuple(shape), (int(op),) + p))


def bcast(op, x, y):
    """``x op y`` recorded as BCAST whatever its size (``_binary`` does so from ``MIN_SIZE``
    elements); the EXPAND path when the merge cannot express it.  ``bcast(Op.MUL, a, b)``"""
    from ._record import broadcast_shape, vars_of
    from .elementwise import _binary
    name = {ADD: "add", SUB: "sub", MUL: "mul", DIV: "div"}[int(op)]
    tape, (x, y) = vars_of([x, y], name)
    out = record(op, x, y, broadcast_shape(name, x, y))
    return out if out is not None else _binary(int(op), x, y, name)


# ---------------------------------------------------------------------------- forward
@kernel
def _strides(d1, d2, b):
    """An operand's strides (elements) along the output's three axes: 0 where it lacks one."""
    e2 = 1 if b & 4 else d2
    e1 = 1 if b & 2 else d1
    return (0 if b & 1 else e1 * e2), (0 if b & 2 else e2), (0 if b & 4 else 1)


@kernel
def _row(v, op, o, p, q, n):
    """v[o:o+n] = v[p:p+n] op v[q:q+n]."""
    if op == ADD:
        for i in range(n):
            v[o + i] = v[p + i] + v[q + i]
    elif op == SUB:
        for i in range(n):
            v[o + i] = v[p + i] - v[q + i]
    elif op == MUL:
        for i in range(n):
            v[o + i] = v[p + i] * v[q + i]
    else:
        for i in range(n):
            v[o + i] = v[p + i] / v[q + i]


@kernel
def _row_a(v, op, o, a, q, n):
    """v[o:o+n] = a op v[q:q+n] (x lacks axis 2: one value per row)."""
    if op == ADD:
        for i in range(n):
            v[o + i] = a + v[q + i]
    elif op == SUB:
        for i in range(n):
            v[o + i] = a - v[q + i]
    elif op == MUL:
        for i in range(n):
            v[o + i] = a * v[q + i]
    else:
        for i in range(n):
            v[o + i] = a / v[q + i]


@kernel
def _row_b(v, op, o, p, b, n):
    """v[o:o+n] = v[p:p+n] op b (y lacks axis 2)."""
    if op == ADD:
        for i in range(n):
            v[o + i] = v[p + i] + b
    elif op == SUB:
        for i in range(n):
            v[o + i] = v[p + i] - b
    elif op == MUL:
        for i in range(n):
            v[o + i] = v[p + i] * b
    else:
        for i in range(n):
            v[o + i] = v[p + i] / b


@kernel
def bcast_fwd(v, x, y, ans, op, d0, d1, d2, bx, by):
    sx0, sx1, sx2 = _strides(d1, d2, bx)
    sy0, sy1, sy2 = _strides(d1, d2, by)
    n = np.uint64(d2)
    for i0 in range(d0):
        for i1 in range(d1):
            o = ans + np.uint64((i0 * d1 + i1) * d2)
            p = x + np.uint64(i0 * sx0 + i1 * sx1)
            q = y + np.uint64(i0 * sy0 + i1 * sy1)
            if sx2 == 1 and sy2 == 1:
                _row(v, op, o, p, q, n)
            elif sy2 == 1:
                _row_a(v, op, o, v[p], q, n)
            elif sx2 == 1:
                _row_b(v, op, o, p, v[q], n)
            else:  # neither has axis 2 (a merge never records it; a loaded tape may)
                _row_a(v, op, o, v[p], q, np.uint64(1))
                for i in range(np.uint64(1), n):
                    v[o + i] = v[o]


# ---------------------------------------------------------------------------- reverse
# Input p's gradient terms per output element (q the other input): add g; sub g (x), -g (y);
# mul g * q; div g / q (x), -g * ans / p (y).  ``side`` 0: p is x, 1: p is y.
@kernel
def _grad_row(dst, d, v, g, o, pv, qv, sq2, op, side, n):
    """dst[d:d+n] += the terms of the output row at o (p has axis 2)."""
    if op == ADD or (op == SUB and side == 0):
        for i in range(n):
            dst[d + i] += g[o + i]
    elif op == SUB:
        for i in range(n):
            dst[d + i] -= g[o + i]
    elif op == DIV and side == 1:
        for i in range(n):
            dst[d + i] -= g[o + i] * v[o + i] / v[pv + i]
    elif sq2 == 1:
        if op == MUL:
            for i in range(n):
                dst[d + i] += g[o + i] * v[qv + i]
        else:
            for i in range(n):
                dst[d + i] += g[o + i] / v[qv + i]
    else:
        c = v[qv]
        if op == MUL:
            for i in range(n):
                dst[d + i] += g[o + i] * c
        else:
            for i in range(n):
                dst[d + i] += g[o + i] / c


@kernel
def _grad_sum(v, g, o, pv, qv, sq2, op, side, n):
    """The sum of the terms of the output row at o (p lacks axis 2: one element takes all)."""
    s = 0.0
    if op == ADD or op == SUB:
        for i in range(n):
            s += g[o + i]
        return -s if (op == SUB and side == 1) else s
    if op == DIV and side == 1:
        c = v[pv]
        for i in range(n):
            s += g[o + i] * v[o + i] / c
        return -s
    if sq2 == 1:
        if op == MUL:
            for i in range(n):
                s += g[o + i] * v[qv + i]
        else:
            for i in range(n):
                s += g[o + i] / v[qv + i]
        return s
    c = v[qv]
    if op == MUL:
        for i in range(n):
            s += g[o + i] * c
    else:
        for i in range(n):
            s += g[o + i] / c
    return s


@jit
def _grad_rows(dst, d, v, g, p, q, ans, op, side, d0, d1, d2, bp, bq):
    """Input p's gradient terms summed over the axes it lacks, added to dst at d onwards.
    Called, not inlined: inlined into each of ``bcast_bwd``'s four call sites, its 16 loops
    took numba ~14 s of CPU to compile (a reverse sweep with BCAST 24 s instead of 9)."""
    sp0, sp1, sp2 = _strides(d1, d2, bp)
    sq0, sq1, sq2 = _strides(d1, d2, bq)
    n = np.uint64(d2)
    for i0 in range(d0):
        for i1 in range(d1):
            o = ans + np.uint64((i0 * d1 + i1) * d2)
            r = np.uint64(i0 * sp0 + i1 * sp1)
            qv = q + np.uint64(i0 * sq0 + i1 * sq1)
            if sp2 == 1:
                _grad_row(dst, d + r, v, g, o, p + r, qv, sq2, op, side, n)
            else:
                dst[d + r] += _grad_sum(v, g, o, p + r, qv, sq2, op, side, n)


@kernel
def _grad_into(v, g, p, q, ans, op, side, d0, d1, d2, bp, bq):
    if bp == 0:  # p has the output's shape: each of its elements gets one term
        _grad_rows(g, p, v, g, p, q, ans, op, side, d0, d1, d2, bp, bq)
        return
    m = _size(d0, d1, d2, bp)
    acc = np.zeros(m, np.float64)
    _grad_rows(acc, np.uint64(0), v, g, p, q, ans, op, side, d0, d1, d2, bp, bq)
    for i in range(m):
        g[p + i] += acc[i]


@jit
def _grad_both(dx, ex, dy, ey, v, g, x, y, ans, op, d0, d1, d2, bx, by):
    """Both inputs' gradient terms in one pass over the output's gradient, when both have
    axis 2 (``diff * exp(-logs)`` of gmm): x's added to dx at ex onwards, y's to dy at ey,
    each summed over the axes its input lacks, the same terms in the same order as two
    ``_grad_rows`` passes (same bits), reading g and the operands once instead of twice."""
    sx0, sx1, _ = _strides(d1, d2, bx)
    sy0, sy1, _ = _strides(d1, d2, by)
    n = np.uint64(d2)
    for i0 in range(d0):
        for i1 in range(d1):
            o = ans + np.uint64((i0 * d1 + i1) * d2)
            rx = np.uint64(i0 * sx0 + i1 * sx1)
            ry = np.uint64(i0 * sy0 + i1 * sy1)
            a, b, p, q = ex + rx, ey + ry, x + rx, y + ry
            if op == ADD:
                for i in range(n):
                    dx[a + i] += g[o + i]
                    dy[b + i] += g[o + i]
            elif op == SUB:
                for i in range(n):
                    dx[a + i] += g[o + i]
                    dy[b + i] -= g[o + i]
            elif op == MUL:
                for i in range(n):
                    dx[a + i] += g[o + i] * v[q + i]
                    dy[b + i] += g[o + i] * v[p + i]
            else:
                for i in range(n):
                    dx[a + i] += g[o + i] / v[q + i]
                    dy[b + i] -= g[o + i] * v[o + i] / v[q + i]


@kernel
def _size(d0, d1, d2, b):
    """Elements of an operand lacking the axes bits ``b`` mark."""
    return np.uint64((1 if b & 1 else d0) * (1 if b & 2 else d1) * (1 if b & 4 else d2))


@kernel
def bcast_bwd(v, g, x, y, ans, op, d0, d1, d2, bx, by, gx, gy):
    if gx and gy and (bx | by) & 4 == 0:  # one pass for both (scratch for a summed side)
        acx = np.zeros(_size(d0, d1, d2, bx) if bx else np.uint64(0), np.float64)
        acy = np.zeros(_size(d0, d1, d2, by) if by else np.uint64(0), np.float64)
        if bx == 0:
            _grad_both(g, x, acy, np.uint64(0), v, g, x, y, ans, op, d0, d1, d2, bx, by)
        elif by == 0:
            _grad_both(acx, np.uint64(0), g, y, v, g, x, y, ans, op, d0, d1, d2, bx, by)
        else:
            _grad_both(acx, np.uint64(0), acy, np.uint64(0), v, g, x, y, ans, op, d0, d1, d2,
                       bx, by)
        for i in range(np.uint64(acx.size)):
            g[x + i] += acx[i]
        for i in range(np.uint64(acy.size)):
            g[y + i] += acy[i]
        return
    if gx:  # (sides as int64, not literals: one compile of _grad_rows for both)
        _grad_into(v, g, x, y, ans, op, np.int64(0), d0, d1, d2, bx, by)
    if gy:
        _grad_into(v, g, y, x, ans, op, np.int64(1), d0, d1, d2, by, bx)


# ---------------------------------------------------------------------------- recorded VJP
def _unbroadcast(t, b, like):
    """``t`` of the (d0, d1, d2) output summed over the axes bits ``b`` mark, as ``like``."""
    from .reduce import sum as sum_
    axes = tuple(j for j in range(3) if b >> j & 1)
    if axes:
        t = sum_(t, axis=axes, keepdims=True)
    return reshape_var(t, like.shape)


@vjp(Op.BCAST)
def bcast_vjp(r, g):
    op, d0, d1, d2, bx, by = r.a
    g3 = view3(g, d0, d1, d2)
    x3 = reshape_var(r.x, extents(d0, d1, d2, bx))
    y3 = reshape_var(r.y, extents(d0, d1, d2, by))
    if op == ADD or op == SUB:
        gx = g3
        gy = (-g3 if op == SUB else g3) if r.need[1] else None
    elif op == MUL:
        gx = g3 * y3 if r.need[0] else None
        gy = g3 * x3 if r.need[1] else None
    else:  # as div_vjp
        gx = g3 / y3
        gy = -(gx * view3(r.ans, d0, d1, d2)) if r.need[1] else None
    return ((_unbroadcast(gx, bx, r.x) if r.need[0] else None),
            (_unbroadcast(gy, by, r.y) if gy is not None else None))


# ---------------------------------------------------------------------------- tangent
@kernel
def bcast_tan(v, t, x, y, ans, tx, ty, tans, op, d0, d1, d2, bx, by, D, dx, dy):
    """d ans = sx d x + sy d y per output element and direction, the inputs' tangents read
    through their broadcast strides (an input without a tangent: its slope dropped)."""
    sx0, sx1, sx2 = _strides(d1, d2, bx)
    sy0, sy1, sy2 = _strides(d1, d2, by)
    for i0 in range(d0):
        for i1 in range(d1):
            for i2 in range(d2):
                o = np.uint64((i0 * d1 + i1) * d2 + i2)
                px = np.uint64(i0 * sx0 + i1 * sx1 + i2 * sx2)
                py = np.uint64(i0 * sy0 + i1 * sy1 + i2 * sy2)
                a, b = 1.0 * v[x + px], 1.0 * v[y + py]
                if op == ADD:
                    sx, sy = 1.0, 1.0
                elif op == SUB:
                    sx, sy = 1.0, -1.0
                elif op == MUL:
                    sx, sy = b, a
                else:
                    sx, sy = 1.0 / b, -v[ans + o] / b
                sx, sy = sx if dx else 0.0, sy if dy else 0.0
                for d in range(D):
                    t[tans + o * D + d] = sx * t[tx + px * D + d] + sy * t[ty + py * D + d]


# the called function inlines this file's kernels: its cache entry holds for them too
_HERE = os.path.dirname(os.path.abspath(__file__))
for _f in (_grad_rows, _grad_both):
    drop_stale_cache(_f, [os.path.join(_HERE, "bcast.py"),
                      os.path.join(_HERE, "..", "_jit.py"),
                      os.path.join(_HERE, "..", "opcodes.py")])
