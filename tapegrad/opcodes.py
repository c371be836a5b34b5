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
    # binary elementwise: ans[i] = f(x[i], y[i]) (operands expanded to the output's shape)
    ADD = 13
    SUB = 14
    MUL = 15
    DIV = 16
    POW = 17
    MAXIMUM = 18
    MINIMUM = 19
    GT = 20
    GE = 21
    LT = 22
    LE = 23
    EQ = 24
    NE = 25
    # ternary: ans[i] = x[i] != 0 ? y[i] : z[i]
    WHERE = 26
    # data movement on an (A, n, B) view of the output or input
    EXPAND = 27      # (A, B) -> (A, n, B)
    SLICE = 28       # (A, n, B) -> (A, count, B): rows start, start+step, ...
    PLACE = 29       # writes x (A, count, B) into out (A, n, B) at rows start.. (concatenate)
    TRANSPOSE = 30   # (A, M, N, B) -> (A, N, M, B)
    # reductions over the middle axis of an (A, n, B) view
    SUM = 31         # -> (A, B)
    MAX = 32         # -> (A, B); ties share the gradient; a nan maximum: nan gradient
    LOGSUMEXP = 33   # -> (A, B)
    SOFTMAX = 34     # -> (A, n, B)
    LOG_SOFTMAX = 35 # -> (A, n, B)
    # linear algebra
    MATMUL = 36      # batch of (M, K) @ (K, N); A0..A5 = batch, M, K, N, sx, sy
    # losses
    CROSS_ENTROPY = 37  # x (N, C) logits, y (N,) labels stored as floats -> (N,) losses
    # control
    GUARD = 38       # checks (x[0] != 0) == A0 on replay; no value, no gradient
    N_OPS = 39       # sentinel: the number of opcodes


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
    Op.TRANSPOSE: OpSpec("transpose", 1, "A M N B"),
    Op.SUM: OpSpec("sum", 1, "A n B"),
    Op.MAX: OpSpec("max", 1, "A n B"),
    Op.LOGSUMEXP: OpSpec("logsumexp", 1, "A n B"),
    Op.SOFTMAX: OpSpec("softmax", 1, "A n B"),
    Op.LOG_SOFTMAX: OpSpec("log_softmax", 1, "A n B"),
    Op.MATMUL: OpSpec("matmul", 2, "batch M K N sx sy"),
    Op.CROSS_ENTROPY: OpSpec("cross_entropy", 2, "N C"),
    Op.GUARD: OpSpec("guard", 1, "expected", False),
}
