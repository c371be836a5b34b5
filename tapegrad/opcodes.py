"""Opcodes and the instruction layout of the tape.

The tape's instruction array ``instr`` is int32 with shape ``(n, WIDTH)``; row ``k`` is::

    instr[k, OP]        opcode (an ``Op`` value)
    instr[k, OUT]       output buffer index
    instr[k, X:Z+1]     up to three input buffer indices, -1 when unused
    instr[k, A0:A0+6]   small integer attributes (sizes of an (A, n, B) view, flags, ...)

and ``imm[k]`` (float64) is the instruction's one float immediate (a slope, an exponent).
Buffer ``b`` lives at ``val[boff[b] : boff[b] + bsize[b]]`` in the value arena and at the same
place in the gradient arena.

``OPS`` is the one table of opcodes: name, number of buffer inputs and what the attributes
mean. ``tests/test_opcodes.py`` checks it against ``Op`` and against the gradient-test table,
so an opcode without a spec or without a gradient test fails CI.
"""
from enum import IntEnum
from typing import NamedTuple

import numpy as np

OP, OUT, X, Y, Z, A0 = 0, 1, 2, 3, 4, 5
N_ATTRS = 6
WIDTH = A0 + N_ATTRS


class Op(IntEnum):
    # unary elementwise: ans[i] = f(x[i])
    NEG = 0
    EXP = 1
    LOG = 2
    SQRT = 3
    SIN = 4
    COS = 5
    TANH = 6
    SIGMOID = 7
    RELU = 8
    LEAKY_RELU = 9   # imm = negative slope
    ABS = 10
    SQUARE = 11
    POWC = 12        # imm = constant exponent
    # a Python number as one operand, held as the immediate c = imm (no buffer, no
    # broadcast; tapegrad/ops/immediate.py); still unary: ans[i] = f(x[i], c)
    ADDC = 13        # x + c   (x - c records ADDC with -c: IEEE subtraction is exactly that)
    MULC = 14        # x * c
    RSUBC = 15       # c - x
    DIVC = 16        # x / c
    RDIVC = 17       # c / x
    RPOWC = 18       # c ** x
    # binary elementwise: ans[i] = f(x[i], y[i]) (operands expanded to the output's shape)
    ADD = 19
    SUB = 20
    MUL = 21
    DIV = 22
    POW = 23
    MAXIMUM = 24
    MINIMUM = 25
    GT = 26
    GE = 27
    LT = 28
    LE = 29
    EQ = 30
    NE = 31
    # ternary: ans[i] = x[i] != 0 ? y[i] : z[i]
    WHERE = 32
    # data movement on an (A, n, B) view of the output or input
    EXPAND = 33      # (A, B) -> (A, n, B)
    SLICE = 34       # (A, n, B) -> (A, count, B): rows start, start+step, ...
    PLACE = 35       # writes x (A, count, B) into out (A, n, B) at rows start.. (concatenate)
    UNSLICE = 36     # (A, count, B) -> (A, n, B): SLICE's transpose, zero elsewhere
    TRANSPOSE = 37   # (A, M, N, B) -> (A, N, M, B)
    # reductions over the middle axis of an (A, n, B) view
    SUM = 38         # -> (A, B)
    MAX = 39         # -> (A, B); ties share the gradient; a nan maximum: nan gradient
    LOGSUMEXP = 40   # -> (A, B)
    SOFTMAX = 41     # -> (A, n, B)
    LOG_SOFTMAX = 42 # -> (A, n, B)
    # linear algebra
    MATMUL = 43      # batch of (M, K) @ (K, N); A0..A5 = batch, M, K, N, sx, sy; sx, sy =
                     # stride (0: shared by the batch) | transposed << 1 (stored (K, M) / (N, K))
    # losses
    CROSS_ENTROPY = 44  # x (N, C) logits, y (N,) labels stored as floats -> (N,) losses
    ONEHOT = 45      # y (N,) labels (floats) -> (N, C) one-hot rows; no gradient
    # random draws (tapegrad/ops/random.py): counter-based, fresh on every replay
    TICK = 46        # x = out = the tape's 2-number draw counter: advances it by one
    RAND = 47        # x: the counter -> out: U[0, 1); A0 stream, A1 A2 the seed's halves
    RANDN = 48       # x: the counter -> out: N(0, 1); attributes as RAND
    # control
    GUARD = 49       # checks (x[0] != 0) == A0 on replay; no value, no gradient
    # gathers (tapegrad/ops/gather.py): y = indices stored as floats, checked on replay
    GATHER = 50      # x (A, n, B), y (m,) -> (A, m, B): out[a, j, b] = x[a, y[j], b]
    SCATTER_ADD = 51 # x (A, m, B), y (m,) -> (A, n, B): GATHER's transpose (duplicates add)
    # factorizations (tapegrad/ops/factor.py), over a batch of n x n matrices
    SOLVE = 52       # x A, y B (batch, n, k) -> op(A)^-1 B; A0..A3 = batch, n, k, trans
    CHOLESKY = 53    # x A -> lower L with L L^T = A (lower triangle read); A0 A1 = batch, n
    TRISOLVE = 54    # x A triangular, y B -> op(A)^-1 B; batch, n, k, lower, trans, unit
    SLOGDET = 55     # x A -> (batch, 2) [sign, log|det|] (A2 = 0) or (batch,) logdet (A2 = 1)
    # convolution and pooling (tapegrad/ops/conv.py); attributes C O (H,W) (kh,kw) (sh,sw)
    # (ph,pw), pairs packed as h | w << 15; the batch N is the x-shaped buffer's size / CHW
    CONV2D = 56      # x (N, C, H, W), w (O, C, kh, kw) -> (N, O, Ho, Wo), cross-correlation
    CONV2D_GRAD_X = 57   # g (N, O, Ho, Wo), w -> (N, C, H, W): CONV2D's transpose in x
    CONV2D_GRAD_W = 58   # x, g (N, O, Ho, Wo) -> (O, C, kh, kw): CONV2D's transpose in w
    # max pooling of (P, H, W) planes; attributes H W kh kw (sh,sw) (ph,pw)
    MAX_POOL2D = 59      # x, h (P, H, W) -> (P, Ho, Wo): h at the argmax of each window of x
    MAX_UNPOOL2D = 60    # x, g (P, Ho, Wo) -> (P, H, W): g added at those argmaxes
    # fused elementwise ops of the recorded reverse rules (tapegrad/ops/fused.py)
    TANH_GRAD = 61   # x * (1 - y*y): tanh's reverse rule (x the cotangent, y tanh's output)
    MUL3 = 62        # x * y * z * c, imm = c
    # fused by tape.optimize() (tapegrad/optimize.py; kernels in tapegrad/ops/fused.py)
    SOFTPLUS = 63    # log(exp(x) + c), imm = c > 0: EXP, ADDC c, LOG as one instruction
    ADD3 = 64        # (x + y) + z: two ADDs as one instruction
    # broadcasting binary elementwise (tapegrad/ops/bcast.py): A0 = ADD, SUB, MUL or DIV,
    # A1..A3 the output as (d0, d1, d2), A4 A5 the axes x / y lack (bit j: axis j)
    BCAST = 65
    N_OPS = 66       # sentinel: the number of opcodes


class OpSpec(NamedTuple):
    name: str
    n_in: int         # buffer inputs
    attrs: str        # what A0.. mean
    differentiable: bool = True


OPS = {
    Op.NEG: OpSpec("neg", 1, ""),
    Op.EXP: OpSpec("exp", 1, ""),
    Op.LOG: OpSpec("log", 1, ""),
    Op.SQRT: OpSpec("sqrt", 1, ""),
    Op.SIN: OpSpec("sin", 1, ""),
    Op.COS: OpSpec("cos", 1, ""),
    Op.TANH: OpSpec("tanh", 1, ""),
    Op.SIGMOID: OpSpec("sigmoid", 1, ""),
    Op.RELU: OpSpec("relu", 1, ""),
    Op.LEAKY_RELU: OpSpec("leaky_relu", 1, "imm=slope"),
    Op.ABS: OpSpec("abs", 1, ""),
    Op.SQUARE: OpSpec("square", 1, ""),
    Op.POWC: OpSpec("powc", 1, "imm=exponent"),
    Op.ADDC: OpSpec("addc", 1, "imm=c"),
    Op.MULC: OpSpec("mulc", 1, "imm=c"),
    Op.RSUBC: OpSpec("rsubc", 1, "imm=c"),
    Op.DIVC: OpSpec("divc", 1, "imm=c"),
    Op.RDIVC: OpSpec("rdivc", 1, "imm=c"),
    Op.RPOWC: OpSpec("rpowc", 1, "imm=c"),
    Op.ADD: OpSpec("add", 2, ""),
    Op.SUB: OpSpec("sub", 2, ""),
    Op.MUL: OpSpec("mul", 2, ""),
    Op.DIV: OpSpec("div", 2, ""),
    Op.POW: OpSpec("pow", 2, ""),
    Op.MAXIMUM: OpSpec("maximum", 2, ""),
    Op.MINIMUM: OpSpec("minimum", 2, ""),
    Op.GT: OpSpec("gt", 2, "", False),
    Op.GE: OpSpec("ge", 2, "", False),
    Op.LT: OpSpec("lt", 2, "", False),
    Op.LE: OpSpec("le", 2, "", False),
    Op.EQ: OpSpec("eq", 2, "", False),
    Op.NE: OpSpec("ne", 2, "", False),
    Op.WHERE: OpSpec("where", 3, ""),
    Op.EXPAND: OpSpec("expand", 1, "A n B"),
    Op.SLICE: OpSpec("slice", 1, "A n B start step count"),
    Op.PLACE: OpSpec("place", 1, "A n B start count"),
    Op.UNSLICE: OpSpec("unslice", 1, "A n B start step count"),
    Op.TRANSPOSE: OpSpec("transpose", 1, "A M N B"),
    Op.SUM: OpSpec("sum", 1, "A n B"),
    Op.MAX: OpSpec("max", 1, "A n B"),
    Op.LOGSUMEXP: OpSpec("logsumexp", 1, "A n B"),
    Op.SOFTMAX: OpSpec("softmax", 1, "A n B"),
    Op.LOG_SOFTMAX: OpSpec("log_softmax", 1, "A n B"),
    Op.MATMUL: OpSpec("matmul", 2, "batch M K N sx sy"),
    Op.CROSS_ENTROPY: OpSpec("cross_entropy", 2, "N C"),
    Op.ONEHOT: OpSpec("onehot", 1, "N C", False),
    Op.TICK: OpSpec("tick", 1, "", False),
    Op.RAND: OpSpec("rand", 1, "stream seed_lo seed_hi", False),
    Op.RANDN: OpSpec("randn", 1, "stream seed_lo seed_hi", False),
    Op.GUARD: OpSpec("guard", 1, "expected", False),
    Op.GATHER: OpSpec("gather", 2, "A n B m"),
    Op.SCATTER_ADD: OpSpec("scatter_add", 2, "A n B m"),
    Op.SOLVE: OpSpec("solve", 2, "batch n k trans"),
    Op.CHOLESKY: OpSpec("cholesky", 1, "batch n"),
    Op.TRISOLVE: OpSpec("trisolve", 2, "batch n k lower trans unit"),
    Op.SLOGDET: OpSpec("slogdet", 1, "batch n mode"),
    Op.CONV2D: OpSpec("conv2d", 2, "C O HW2 k2 stride2 pad2"),
    Op.CONV2D_GRAD_X: OpSpec("conv2d_grad_x", 2, "C O HW2 k2 stride2 pad2"),
    Op.CONV2D_GRAD_W: OpSpec("conv2d_grad_w", 2, "C O HW2 k2 stride2 pad2"),
    Op.MAX_POOL2D: OpSpec("max_pool2d", 2, "H W kh kw stride2 pad2"),
    Op.MAX_UNPOOL2D: OpSpec("max_unpool2d", 2, "H W kh kw stride2 pad2"),
    Op.TANH_GRAD: OpSpec("tanh_grad", 2, ""),
    Op.MUL3: OpSpec("mul3", 3, "imm=c"),
    Op.SOFTPLUS: OpSpec("softplus", 1, ""),
    Op.ADD3: OpSpec("add3", 3, ""),
    Op.BCAST: OpSpec("bcast", 2, "op d0 d1 d2 bx by"),
}

# the table as arrays, for the compiled passes over a tape (activity analysis, validation)
N_IN = np.array([OPS[Op(i)].n_in for i in range(Op.N_OPS)], np.int64)
DIFFERENTIABLE = np.array([OPS[Op(i)].differentiable for i in range(Op.N_OPS)], np.uint8)
