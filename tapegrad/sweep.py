"""The compiled interpreters: one forward sweep (instructions 0..n) and one reverse sweep
(n..0), each a loop with one branch per opcode family that calls the op's inlined kernel
(``tapegrad.ops.*``: ``<op>_fwd`` / ``<op>_bwd``) on 1-D views of the arenas.

Both trust the tape arrays: ``Tape._seal`` and ``Tape.load`` validate every index first.

``mask[k]`` says which instructions to run: forward runs ``mask[k] != 0``; reverse runs
``mask[k] & 1`` and reads bit ``2 << j`` as "input j needs a gradient" (used where skipping
an input's gradient saves real work, as in matmul).
Both return ``(status, k)``: ``OK`` or the failure found at instruction ``k``.
"""
import glob
import math
import os

from ._jit import jit, kernel, refresh_cache_stamp

_HERE = os.path.dirname(os.path.abspath(__file__))
refresh_cache_stamp(__file__, *glob.glob(os.path.join(_HERE, "ops", "*.py")),
                    os.path.join(_HERE, "_jit.py"), os.path.join(_HERE, "opcodes.py"))
from .opcodes import A0, OP, OUT, X, Y, Z, Op
from .ops.elementwise import (abs_bwd, abs_fwd, add_bwd, add_fwd, compare_fwd, cos_bwd,
                              cos_fwd, div_bwd, div_fwd, exp_bwd, exp_fwd, leaky_relu_bwd,
                              leaky_relu_fwd, log_bwd, log_fwd, maximum_bwd, maximum_fwd,
                              minimum_bwd, minimum_fwd, mul_bwd, mul_fwd, neg_bwd, neg_fwd,
                              pow_bwd, pow_fwd, powc_bwd, powc_fwd, relu_bwd, relu_fwd,
                              sigmoid_bwd, sigmoid_fwd, sin_bwd, sin_fwd, sqrt_bwd, sqrt_fwd,
                              square_bwd, square_fwd, sub_bwd, sub_fwd, tanh_bwd, tanh_fwd,
                              where_bwd, where_fwd)
from .ops.linalg import matmul_bwd, matmul_fwd
from .ops.loss import cross_entropy_bwd, cross_entropy_fwd
from .ops.reduce import (log_softmax_bwd, log_softmax_fwd, logsumexp_bwd, logsumexp_fwd,
                         max_bwd, max_fwd, softmax_bwd, softmax_fwd, sum_bwd, sum_fwd)
from .ops.shape import (expand_bwd, expand_fwd, place_bwd, place_fwd, slice_bwd, slice_fwd,
                        transpose_bwd, transpose_fwd)

OK, GUARD_FLIPPED, NON_FINITE, BAD_LABEL = 0, 1, 2, 3


@kernel
def unary_fwd(op, x, ans, c):
    if op == Op.NEG:
        neg_fwd(x, ans, c)
    elif op == Op.EXP:
        exp_fwd(x, ans, c)
    elif op == Op.LOG:
        log_fwd(x, ans, c)
    elif op == Op.SQRT:
        sqrt_fwd(x, ans, c)
    elif op == Op.SIN:
        sin_fwd(x, ans, c)
    elif op == Op.COS:
        cos_fwd(x, ans, c)
    elif op == Op.TANH:
        tanh_fwd(x, ans, c)
    elif op == Op.SIGMOID:
        sigmoid_fwd(x, ans, c)
    elif op == Op.RELU:
        relu_fwd(x, ans, c)
    elif op == Op.LEAKY_RELU:
        leaky_relu_fwd(x, ans, c)
    elif op == Op.ABS:
        abs_fwd(x, ans, c)
    elif op == Op.SQUARE:
        square_fwd(x, ans, c)
    else:
        powc_fwd(x, ans, c)


@kernel
def unary_bwd(op, x, ans, g, gx, c):
    if op == Op.NEG:
        neg_bwd(x, ans, g, gx, c)
    elif op == Op.EXP:
        exp_bwd(x, ans, g, gx, c)
    elif op == Op.LOG:
        log_bwd(x, ans, g, gx, c)
    elif op == Op.SQRT:
        sqrt_bwd(x, ans, g, gx, c)
    elif op == Op.SIN:
        sin_bwd(x, ans, g, gx, c)
    elif op == Op.COS:
        cos_bwd(x, ans, g, gx, c)
    elif op == Op.TANH:
        tanh_bwd(x, ans, g, gx, c)
    elif op == Op.SIGMOID:
        sigmoid_bwd(x, ans, g, gx, c)
    elif op == Op.RELU:
        relu_bwd(x, ans, g, gx, c)
    elif op == Op.LEAKY_RELU:
        leaky_relu_bwd(x, ans, g, gx, c)
    elif op == Op.ABS:
        abs_bwd(x, ans, g, gx, c)
    elif op == Op.SQUARE:
        square_bwd(x, ans, g, gx, c)
    else:
        powc_bwd(x, ans, g, gx, c)


@kernel
def binary_fwd(op, x, sx, y, sy, ans):
    if op == Op.ADD:
        add_fwd(x, sx, y, sy, ans)
    elif op == Op.SUB:
        sub_fwd(x, sx, y, sy, ans)
    elif op == Op.MUL:
        mul_fwd(x, sx, y, sy, ans)
    elif op == Op.DIV:
        div_fwd(x, sx, y, sy, ans)
    elif op == Op.POW:
        pow_fwd(x, sx, y, sy, ans)
    elif op == Op.MAXIMUM:
        maximum_fwd(x, sx, y, sy, ans)
    elif op == Op.MINIMUM:
        minimum_fwd(x, sx, y, sy, ans)
    else:
        compare_fwd(op, x, sx, y, sy, ans)


@kernel
def binary_bwd(op, x, sx, y, sy, ans, g, gx, gy):
    if op == Op.ADD:
        add_bwd(x, sx, y, sy, ans, g, gx, gy)
    elif op == Op.SUB:
        sub_bwd(x, sx, y, sy, ans, g, gx, gy)
    elif op == Op.MUL:
        mul_bwd(x, sx, y, sy, ans, g, gx, gy)
    elif op == Op.DIV:
        div_bwd(x, sx, y, sy, ans, g, gx, gy)
    elif op == Op.POW:
        pow_bwd(x, sx, y, sy, ans, g, gx, gy)
    elif op == Op.MAXIMUM:
        maximum_bwd(x, sx, y, sy, ans, g, gx, gy)
    elif op == Op.MINIMUM:
        minimum_bwd(x, sx, y, sy, ans, g, gx, gy)
    # comparisons have no gradient


@kernel
def _buf(arena, boff, bsize, b):
    return arena[boff[b]: boff[b] + bsize[b]]


@jit
def forward(instr, imm, boff, bsize, val, mask, check_finite):
    for k in range(instr.shape[0]):
        if mask[k] == 0:
            continue
        op = instr[k, OP]
        ans = _buf(val, boff, bsize, instr[k, OUT])
        x = _buf(val, boff, bsize, instr[k, X])
        a0, a1, a2 = instr[k, A0], instr[k, A0 + 1], instr[k, A0 + 2]
        a3, a4, a5 = instr[k, A0 + 3], instr[k, A0 + 4], instr[k, A0 + 5]
        if op < Op.ADD:
            unary_fwd(op, x, ans, imm[k])
        elif op < Op.WHERE:
            binary_fwd(op, x, a0, _buf(val, boff, bsize, instr[k, Y]), a1, ans)
        elif op == Op.WHERE:
            where_fwd(x, a0, _buf(val, boff, bsize, instr[k, Y]), a1,
                      _buf(val, boff, bsize, instr[k, Z]), a2, ans)
        elif op == Op.EXPAND:
            expand_fwd(x, ans, a0, a1, a2)
        elif op == Op.SLICE:
            slice_fwd(x, ans, a0, a1, a2, a3, a4, a5)
        elif op == Op.PLACE:
            place_fwd(x, ans, a0, a1, a2, a3, a4)
        elif op == Op.TRANSPOSE:
            transpose_fwd(x, ans, a0, a1, a2, a3)
        elif op == Op.SUM:
            sum_fwd(x, ans, a0, a1, a2)
        elif op == Op.MAX:
            max_fwd(x, ans, a0, a1, a2)
        elif op == Op.LOGSUMEXP:
            logsumexp_fwd(x, ans, a0, a1, a2)
        elif op == Op.SOFTMAX:
            softmax_fwd(x, ans, a0, a1, a2)
        elif op == Op.LOG_SOFTMAX:
            log_softmax_fwd(x, ans, a0, a1, a2)
        elif op == Op.MATMUL:
            matmul_fwd(x, _buf(val, boff, bsize, instr[k, Y]), ans, a0, a1, a2, a3, a4, a5)
        elif op == Op.CROSS_ENTROPY:
            if not cross_entropy_fwd(x, _buf(val, boff, bsize, instr[k, Y]), ans, a0, a1):
                return BAD_LABEL, k
        elif op == Op.GUARD:
            if (x[0] != 0) != (a0 != 0):
                return GUARD_FLIPPED, k
            continue
        if check_finite:
            for i in range(ans.size):
                if not math.isfinite(ans[i]):
                    return NON_FINITE, k
    return OK, 0


@jit
def reverse(instr, imm, boff, bsize, val, grad, mask):
    for k in range(instr.shape[0] - 1, -1, -1):
        if mask[k] & 1 == 0:
            continue
        op = instr[k, OP]
        o, i = instr[k, OUT], instr[k, X]
        ans, g = _buf(val, boff, bsize, o), _buf(grad, boff, bsize, o)
        x, gx = _buf(val, boff, bsize, i), _buf(grad, boff, bsize, i)
        a0, a1, a2 = instr[k, A0], instr[k, A0 + 1], instr[k, A0 + 2]
        a3, a4, a5 = instr[k, A0 + 3], instr[k, A0 + 4], instr[k, A0 + 5]
        if op < Op.ADD:
            unary_bwd(op, x, ans, g, gx, imm[k])
        elif op < Op.WHERE:
            j = instr[k, Y]
            binary_bwd(op, x, a0, _buf(val, boff, bsize, j), a1, ans, g, gx,
                       _buf(grad, boff, bsize, j))
        elif op == Op.WHERE:
            j, m = instr[k, Y], instr[k, Z]
            where_bwd(x, a0, _buf(val, boff, bsize, j), a1, _buf(val, boff, bsize, m), a2, g,
                      _buf(grad, boff, bsize, j), _buf(grad, boff, bsize, m))
        elif op == Op.EXPAND:
            expand_bwd(g, gx, a0, a1, a2)
        elif op == Op.SLICE:
            slice_bwd(g, gx, a0, a1, a2, a3, a4, a5)
        elif op == Op.PLACE:
            place_bwd(g, gx, a0, a1, a2, a3, a4)
        elif op == Op.TRANSPOSE:
            transpose_bwd(g, gx, a0, a1, a2, a3)
        elif op == Op.SUM:
            sum_bwd(x, ans, g, gx, a0, a1, a2)
        elif op == Op.MAX:
            max_bwd(x, ans, g, gx, a0, a1, a2)
        elif op == Op.LOGSUMEXP:
            logsumexp_bwd(x, ans, g, gx, a0, a1, a2)
        elif op == Op.SOFTMAX:
            softmax_bwd(x, ans, g, gx, a0, a1, a2)
        elif op == Op.LOG_SOFTMAX:
            log_softmax_bwd(x, ans, g, gx, a0, a1, a2)
        elif op == Op.MATMUL:
            j = instr[k, Y]
            matmul_bwd(x, _buf(val, boff, bsize, j), g, gx, _buf(grad, boff, bsize, j),
                       a0, a1, a2, a3, a4, a5, mask[k] & 2 != 0, mask[k] & 4 != 0)
        elif op == Op.CROSS_ENTROPY:
            if not cross_entropy_bwd(x, _buf(val, boff, bsize, instr[k, Y]), ans, g, gx, a0, a1):
                return BAD_LABEL, k
    return OK, 0
