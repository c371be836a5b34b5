"""The compiled interpreters: one forward sweep (instructions 0..n) and one reverse sweep
(n..0), each a loop with one branch per opcode family that calls the op's inlined kernel
(``tapegrad.ops.*``: ``<op>_fwd`` / ``<op>_bwd``) with the arenas and the buffers' offsets.
Offsets go to the kernels as np.uint64 (vectorisable loops) and attributes as int64; no
array views are made per instruction (each would cost reference counting), except for
matrix products.

Both trust the tape arrays: ``Tape._seal`` and ``Tape.load`` validate every index first.

``mask[k]`` says which instructions to run: forward runs ``mask[k] != 0``; reverse runs
``mask[k] & 1`` and reads bit ``2 << j`` as "input j needs a gradient" (used where skipping
an input's gradient saves real work, as in matmul).
With ``clear`` (``tg.fit``'s steps) the reverse sweep zeroes each instruction's output
gradient once its rule has read it -- no later rule reads it -- so the next step needs only
the leaves' gradients zeroed, not the whole arena (PLACE excepted: several instructions write
parts of one output; ``Tape._grad_ranges(cleared=True)`` keeps those).
Both return ``(status, k)``: ``OK`` or the failure found at instruction ``k``.
"""
import glob
import math
import os

import numpy as np

from ._jit import drop_stale_cache, jit, kernel
from .opcodes import A0, OP, OUT, X, Y, Z, Op
from .ops.conv import conv_bwd, conv_fwd
from .ops.elementwise import (abs_bwd, abs_fwd, add_bwd, add_fwd, compare_fwd, cos_bwd,
                              cos_fwd, div_bwd, div_fwd, exp_bwd, exp_fwd, leaky_relu_bwd,
                              leaky_relu_fwd, log_bwd, log_fwd, maximum_bwd, maximum_fwd,
                              minimum_bwd, minimum_fwd, mul_bwd, mul_fwd, neg_bwd, neg_fwd,
                              pow_bwd, pow_fwd, powc_bwd, powc_fwd, relu_bwd, relu_fwd,
                              sigmoid_bwd, sigmoid_fwd, sin_bwd, sin_fwd, sqrt_bwd, sqrt_fwd,
                              square_bwd, square_fwd, sub_bwd, sub_fwd, tanh_bwd, tanh_fwd,
                              where_bwd, where_fwd)
from .ops.fused import mul3_bwd, mul3_fwd, tanh_grad_bwd, tanh_grad_fwd
from .ops.immediate import (addc_bwd, addc_fwd, divc_bwd, divc_fwd, mulc_bwd, mulc_fwd,
                            rdivc_bwd, rdivc_fwd, rpowc_bwd, rpowc_fwd, rsubc_bwd, rsubc_fwd)
from .ops.factor import (cholesky_bwd, cholesky_fwd, slogdet_bwd, slogdet_fwd, solve_bwd,
                         solve_fwd, trisolve_bwd, trisolve_fwd)
from .ops.linalg import matmul_bwd, matmul_fwd
from .ops.gather import gather_bwd, gather_fwd, scatter_add_bwd, scatter_add_fwd
from .ops.loss import cross_entropy_bwd, cross_entropy_fwd, onehot_fwd
from .ops.random import rand_fwd, tick_fwd
from .ops.reduce import (log_softmax_bwd, log_softmax_fwd, logsumexp_bwd, logsumexp_fwd,
                         max_bwd, max_fwd, softmax_bwd, softmax_fwd, sum_bwd, sum_fwd)
from .ops.shape import (expand_bwd, expand_fwd, place_bwd, place_fwd, slice_bwd, slice_fwd,
                        transpose_bwd, transpose_fwd, unslice_bwd, unslice_fwd)

OK, GUARD_FLIPPED, NON_FINITE, BAD_LABEL = 0, 1, 2, 3
BAD_INDEX = 4  # a gather's index is not an integer in [-n, n)
LINALG = 5     # a singular matrix (solve, trisolve) or one not positive definite (cholesky)


@kernel
def _offset(boff, b):
    """Offset of buffer ``b`` (0 for an unused input slot, -1, which no kernel then reads)."""
    return np.uint64(boff[b]) if b >= 0 else np.uint64(0)


@kernel
def unary_fwd(op, v, x, ans, n, k):
    if op == Op.NEG:
        neg_fwd(v, x, ans, n, k)
    elif op == Op.EXP:
        exp_fwd(v, x, ans, n, k)
    elif op == Op.LOG:
        log_fwd(v, x, ans, n, k)
    elif op == Op.SQRT:
        sqrt_fwd(v, x, ans, n, k)
    elif op == Op.SIN:
        sin_fwd(v, x, ans, n, k)
    elif op == Op.COS:
        cos_fwd(v, x, ans, n, k)
    elif op == Op.TANH:
        tanh_fwd(v, x, ans, n, k)
    elif op == Op.SIGMOID:
        sigmoid_fwd(v, x, ans, n, k)
    elif op == Op.RELU:
        relu_fwd(v, x, ans, n, k)
    elif op == Op.LEAKY_RELU:
        leaky_relu_fwd(v, x, ans, n, k)
    elif op == Op.ABS:
        abs_fwd(v, x, ans, n, k)
    elif op == Op.SQUARE:
        square_fwd(v, x, ans, n, k)
    elif op == Op.POWC:
        powc_fwd(v, x, ans, n, k)
    elif op == Op.ADDC:
        addc_fwd(v, x, ans, n, k)
    elif op == Op.MULC:
        mulc_fwd(v, x, ans, n, k)
    elif op == Op.RSUBC:
        rsubc_fwd(v, x, ans, n, k)
    elif op == Op.DIVC:
        divc_fwd(v, x, ans, n, k)
    elif op == Op.RDIVC:
        rdivc_fwd(v, x, ans, n, k)
    else:
        rpowc_fwd(v, x, ans, n, k)


@kernel
def unary_bwd(op, v, g, x, ans, n, k):
    if op == Op.NEG:
        neg_bwd(v, g, x, ans, n, k)
    elif op == Op.EXP:
        exp_bwd(v, g, x, ans, n, k)
    elif op == Op.LOG:
        log_bwd(v, g, x, ans, n, k)
    elif op == Op.SQRT:
        sqrt_bwd(v, g, x, ans, n, k)
    elif op == Op.SIN:
        sin_bwd(v, g, x, ans, n, k)
    elif op == Op.COS:
        cos_bwd(v, g, x, ans, n, k)
    elif op == Op.TANH:
        tanh_bwd(v, g, x, ans, n, k)
    elif op == Op.SIGMOID:
        sigmoid_bwd(v, g, x, ans, n, k)
    elif op == Op.RELU:
        relu_bwd(v, g, x, ans, n, k)
    elif op == Op.LEAKY_RELU:
        leaky_relu_bwd(v, g, x, ans, n, k)
    elif op == Op.ABS:
        abs_bwd(v, g, x, ans, n, k)
    elif op == Op.SQUARE:
        square_bwd(v, g, x, ans, n, k)
    elif op == Op.POWC:
        powc_bwd(v, g, x, ans, n, k)
    elif op == Op.ADDC:
        addc_bwd(v, g, x, ans, n, k)
    elif op == Op.MULC:
        mulc_bwd(v, g, x, ans, n, k)
    elif op == Op.RSUBC:
        rsubc_bwd(v, g, x, ans, n, k)
    elif op == Op.DIVC:
        divc_bwd(v, g, x, ans, n, k)
    elif op == Op.RDIVC:
        rdivc_bwd(v, g, x, ans, n, k)
    else:
        rpowc_bwd(v, g, x, ans, n, k)


@kernel
def binary_fwd(op, v, x, y, ans, n):
    if op == Op.ADD:
        add_fwd(v, x, y, ans, n)
    elif op == Op.SUB:
        sub_fwd(v, x, y, ans, n)
    elif op == Op.MUL:
        mul_fwd(v, x, y, ans, n)
    elif op == Op.DIV:
        div_fwd(v, x, y, ans, n)
    elif op == Op.POW:
        pow_fwd(v, x, y, ans, n)
    elif op == Op.MAXIMUM:
        maximum_fwd(v, x, y, ans, n)
    elif op == Op.MINIMUM:
        minimum_fwd(v, x, y, ans, n)
    else:
        compare_fwd(op, v, x, y, ans, n)


@kernel
def binary_bwd(op, v, g, x, y, ans, n):
    if op == Op.ADD:
        add_bwd(v, g, x, y, ans, n)
    elif op == Op.SUB:
        sub_bwd(v, g, x, y, ans, n)
    elif op == Op.MUL:
        mul_bwd(v, g, x, y, ans, n)
    elif op == Op.DIV:
        div_bwd(v, g, x, y, ans, n)
    elif op == Op.POW:
        pow_bwd(v, g, x, y, ans, n)
    elif op == Op.MAXIMUM:
        maximum_bwd(v, g, x, y, ans, n)
    elif op == Op.MINIMUM:
        minimum_bwd(v, g, x, y, ans, n)
    # comparisons have no gradient


@jit
def forward(instr, imm, boff, bsize, val, mask, check_finite):
    for k in range(instr.shape[0]):
        if mask[k] == 0:
            continue
        op = instr[k, OP]
        ans, n = np.uint64(boff[instr[k, OUT]]), np.uint64(bsize[instr[k, OUT]])
        x, y, z = _offset(boff, instr[k, X]), _offset(boff, instr[k, Y]), _offset(boff, instr[k, Z])
        a0, a1, a2 = np.int64(instr[k, A0]), np.int64(instr[k, A0 + 1]), np.int64(instr[k, A0 + 2])
        a3, a4, a5 = np.int64(instr[k, A0 + 3]), np.int64(instr[k, A0 + 4]), np.int64(instr[k, A0 + 5])
        if op < Op.ADD:
            unary_fwd(op, val, x, ans, n, imm[k])
        elif op < Op.WHERE:
            binary_fwd(op, val, x, y, ans, n)
        elif op == Op.WHERE:
            where_fwd(val, x, y, z, ans, n)
        elif op == Op.TANH_GRAD:
            tanh_grad_fwd(val, x, y, ans, n)
        elif op == Op.MUL3:
            mul3_fwd(val, x, y, z, ans, n, imm[k])
        elif op == Op.EXPAND:
            expand_fwd(val, x, ans, a0, a1, a2)
        elif op == Op.SLICE:
            slice_fwd(val, x, ans, a0, a1, a2, a3, a4, a5)
        elif op == Op.PLACE:
            place_fwd(val, x, ans, a0, a1, a2, a3, a4)
        elif op == Op.UNSLICE:
            unslice_fwd(val, x, ans, a0, a1, a2, a3, a4, a5)
        elif op == Op.TRANSPOSE:
            transpose_fwd(val, x, ans, a0, a1, a2, a3)
        elif op == Op.SUM:
            sum_fwd(val, x, ans, a0, a1, a2)
        elif op == Op.MAX:
            max_fwd(val, x, ans, a0, a1, a2)
        elif op == Op.LOGSUMEXP:
            logsumexp_fwd(val, x, ans, a0, a1, a2)
        elif op == Op.SOFTMAX:
            softmax_fwd(val, x, ans, a0, a1, a2)
        elif op == Op.LOG_SOFTMAX:
            log_softmax_fwd(val, x, ans, a0, a1, a2)
        elif op == Op.MATMUL:
            matmul_fwd(val, np.int64(x), np.int64(y), np.int64(ans), a0, a1, a2, a3, a4, a5)
        elif op == Op.CROSS_ENTROPY:
            if not cross_entropy_fwd(val, x, y, ans, a0, a1):
                return BAD_LABEL, k
        elif op == Op.ONEHOT:
            if not onehot_fwd(val, x, ans, a0, a1):
                return BAD_LABEL, k
        elif op == Op.TICK:
            tick_fwd(val, x)
        elif op == Op.RAND:
            rand_fwd(val, x, ans, n, a0, a1, a2, False)
        elif op == Op.RANDN:
            rand_fwd(val, x, ans, n, a0, a1, a2, True)
        elif op == Op.GATHER:
            if not gather_fwd(val, val, x, y, ans, a0, a1, a2, a3):
                return BAD_INDEX, k
        elif op == Op.SCATTER_ADD:
            if not scatter_add_fwd(val, val, x, y, ans, a0, a1, a2, a3):
                return BAD_INDEX, k
        elif (op == Op.CONV2D or op == Op.CONV2D_GRAD_X or op == Op.CONV2D_GRAD_W
              or op == Op.MAX_POOL2D or op == Op.MAX_UNPOOL2D):
            conv_fwd(op, val, x, y, ans, np.int64(bsize[instr[k, X]]), a0, a1, a2, a3, a4, a5)
        elif op == Op.GUARD:
            if (val[x] != 0) != (a0 != 0):
                return GUARD_FLIPPED, k
            continue
        elif op == Op.SOLVE:
            if not solve_fwd(val, np.int64(x), np.int64(y), np.int64(ans), a0, a1, a2, a3):
                return LINALG, k
        elif op == Op.CHOLESKY:
            if not cholesky_fwd(val, np.int64(x), np.int64(ans), a0, a1):
                return LINALG, k
        elif op == Op.TRISOLVE:
            if not trisolve_fwd(val, np.int64(x), np.int64(y), np.int64(ans), a0, a1, a2, a3, a4,
                                a5):
                return LINALG, k
        elif op == Op.SLOGDET:
            slogdet_fwd(val, np.int64(x), np.int64(ans), a0, a1, a2)
        if check_finite:
            for i in range(n):
                if not math.isfinite(val[ans + i]):
                    return NON_FINITE, k
    return OK, 0


@jit
def reverse(instr, imm, boff, bsize, val, grad, mask, clear):
    for k in range(instr.shape[0] - 1, -1, -1):
        if mask[k] & 1 == 0:
            continue
        op = instr[k, OP]
        ans, n = np.uint64(boff[instr[k, OUT]]), np.uint64(bsize[instr[k, OUT]])
        x, y, z = _offset(boff, instr[k, X]), _offset(boff, instr[k, Y]), _offset(boff, instr[k, Z])
        a0, a1, a2 = np.int64(instr[k, A0]), np.int64(instr[k, A0 + 1]), np.int64(instr[k, A0 + 2])
        a3, a4, a5 = np.int64(instr[k, A0 + 3]), np.int64(instr[k, A0 + 4]), np.int64(instr[k, A0 + 5])
        if op < Op.ADD:
            unary_bwd(op, val, grad, x, ans, n, imm[k])
        elif op < Op.WHERE:
            binary_bwd(op, val, grad, x, y, ans, n)
        elif op == Op.WHERE:
            where_bwd(val, grad, x, y, z, ans, n)
        elif op == Op.TANH_GRAD:
            tanh_grad_bwd(val, grad, x, y, ans, n)
        elif op == Op.MUL3:
            mul3_bwd(val, grad, x, y, z, ans, n, imm[k])
        elif op == Op.EXPAND:
            expand_bwd(grad, x, ans, a0, a1, a2)
        elif op == Op.SLICE:
            slice_bwd(grad, x, ans, a0, a1, a2, a3, a4, a5)
        elif op == Op.PLACE:
            place_bwd(grad, x, ans, a0, a1, a2, a3, a4)
        elif op == Op.UNSLICE:
            unslice_bwd(grad, x, ans, a0, a1, a2, a3, a4, a5)
        elif op == Op.TRANSPOSE:
            transpose_bwd(grad, x, ans, a0, a1, a2, a3)
        elif op == Op.SUM:
            sum_bwd(val, grad, x, ans, a0, a1, a2)
        elif op == Op.MAX:
            max_bwd(val, grad, x, ans, a0, a1, a2)
        elif op == Op.LOGSUMEXP:
            logsumexp_bwd(val, grad, x, ans, a0, a1, a2)
        elif op == Op.SOFTMAX:
            softmax_bwd(val, grad, x, ans, a0, a1, a2)
        elif op == Op.LOG_SOFTMAX:
            log_softmax_bwd(val, grad, x, ans, a0, a1, a2)
        elif op == Op.MATMUL:
            matmul_bwd(val, grad, np.int64(x), np.int64(y), np.int64(ans), a0, a1, a2, a3, a4,
                       a5, mask[k] & 2 != 0, mask[k] & 4 != 0)
        elif op == Op.CROSS_ENTROPY:
            if not cross_entropy_bwd(val, grad, x, y, ans, a0, a1):
                return BAD_LABEL, k
        elif op == Op.GATHER:
            if mask[k] & 2 != 0 and not gather_bwd(grad, val, x, y, ans, a0, a1, a2, a3):
                return BAD_INDEX, k
        elif op == Op.SCATTER_ADD:
            if mask[k] & 2 != 0 and not scatter_add_bwd(grad, val, x, y, ans, a0, a1, a2, a3):
                return BAD_INDEX, k
        elif op == Op.SOLVE:
            solve_bwd(val, grad, np.int64(x), np.int64(y), np.int64(ans), a0, a1, a2, a3,
                      mask[k] & 2 != 0, mask[k] & 4 != 0)
        elif op == Op.CHOLESKY:
            cholesky_bwd(val, grad, np.int64(x), np.int64(ans), a0, a1)
        elif op == Op.TRISOLVE:
            trisolve_bwd(val, grad, np.int64(x), np.int64(y), np.int64(ans), a0, a1, a2, a3, a4,
                         a5, mask[k] & 2 != 0, mask[k] & 4 != 0)
        elif op == Op.SLOGDET:
            slogdet_bwd(val, grad, np.int64(x), np.int64(ans), a0, a1, a2)
        elif (op == Op.CONV2D or op == Op.CONV2D_GRAD_X or op == Op.CONV2D_GRAD_W
              or op == Op.MAX_POOL2D or op == Op.MAX_UNPOOL2D):
            conv_bwd(op, val, grad, x, y, ans, np.int64(bsize[instr[k, X]]), a0, a1, a2, a3, a4,
                     a5, mask[k] & 2 != 0, mask[k] & 4 != 0)
        if clear and op != Op.PLACE:  # consumed: zero again for the next step (tg.fit)
            for i in range(n):
                grad[ans + i] = 0
    return OK, 0


_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = sorted(glob.glob(os.path.join(_HERE, "ops", "*.py"))) + [
    os.path.join(_HERE, f) for f in ("sweep.py", "_jit.py", "opcodes.py")]
drop_stale_cache(forward, SOURCES)
drop_stale_cache(reverse, SOURCES)
