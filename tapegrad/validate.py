"""Validation of tape arrays before any compiled code reads them.

The interpreters index the arenas without bounds checks (nopython mode), so every buffer
index, offset, size and attribute is checked here: a bad one raises ``TapeFormatError``
naming the instruction and what is wrong, instead of reading or writing outside the arena.
The rule for each op family says which sizes its kernel reads and writes.
"""
import numpy as np

from .errors import TapeFormatError
from .opcodes import A0, N_ATTRS, OP, OPS, OUT, WIDTH, X, Op

_UNARY = set(range(Op.NEG, Op.POWC + 1))
_BINARY = set(range(Op.ADD, Op.NE + 1))
_REDUCE = {Op.SUM, Op.MAX, Op.LOGSUMEXP}
_NORMALISE = {Op.SOFTMAX, Op.LOG_SOFTMAX}


def _fail(k, op, msg):
    name = OPS[op].name if op in OPS else f"opcode {op}"
    raise TapeFormatError(f"instruction {k} ({name}): {msg}")


def validate_tape_arrays(instr, imm, boff, bsize, shapes, arena_size):
    """Raise TapeFormatError unless the arrays describe a tape the sweeps can run safely."""
    if not (isinstance(instr, np.ndarray) and instr.dtype == np.int32 and instr.ndim == 2
            and instr.shape[1] == WIDTH):
        raise TapeFormatError(f"instr must be an int32 array of shape (n, {WIDTH})")
    n = instr.shape[0]
    if not (isinstance(imm, np.ndarray) and imm.dtype == np.float64 and imm.shape == (n,)):
        raise TapeFormatError(f"imm must be a float64 array of shape ({n},)")
    nb = len(shapes)
    for name, a in (("boff", boff), ("bsize", bsize)):
        if not (isinstance(a, np.ndarray) and a.dtype == np.int64 and a.shape == (nb,)):
            raise TapeFormatError(f"{name} must be an int64 array of shape ({nb},)")
    for b, (o, s) in enumerate(zip(boff.tolist(), bsize.tolist())):  # Python ints: no overflow
        if o < 0 or s < 0 or o + s > arena_size:
            raise TapeFormatError(f"buffer {b}: offset {o} size {s} lies outside the arena of "
                                  f"{arena_size} elements")
    for b, s in enumerate(shapes):
        p = 1
        for d in s:
            p *= int(d)
        if any(int(d) < 0 for d in s) or p != bsize[b]:
            raise TapeFormatError(f"buffer {b}: shape {tuple(s)} does not match size {bsize[b]}")
    size = [int(s) for s in bsize]
    for k in range(n):
        row = [int(v) for v in instr[k]]
        op = row[OP]
        if not 0 <= op < Op.N_OPS:
            raise TapeFormatError(f"instruction {k}: unknown opcode {op}")
        op = Op(op)
        n_in = OPS[op].n_in
        for j, b in enumerate(row[OUT:X + 3]):
            used = j <= n_in
            if used and not 0 <= b < nb:
                _fail(k, op, f"buffer index {b} out of range [0, {nb})")
            if not used and b != -1:
                _fail(k, op, f"unused input slot {j - 1} holds {b}, expected -1")
        out = size[row[OUT]]
        ins = [size[b] for b in row[X:X + n_in]]
        a = row[A0:A0 + N_ATTRS]
        _check_op(k, op, out, ins, a)


def _check_op(k, op, out, ins, a):
    def need(cond, what):
        if not cond:
            _fail(k, op, f"{what} (output size {out}, input sizes {ins}, attrs {a})")

    if op in _UNARY:
        need(ins[0] == out, "input and output sizes differ")
    elif op in _BINARY or op == Op.WHERE:
        need(all(s == out for s in ins), "operand and output sizes differ")
    elif op == Op.GUARD:
        need(ins[0] == 1 and a[0] in (0, 1), "a guard reads one number and expects 0 or 1")
    else:
        signed = (4,) if op == Op.SLICE else ()  # only a slice's step may be negative
        need(all(v >= 0 for i, v in enumerate(a) if i not in signed), "negative attribute")
        A, n, B = a[0], a[1], a[2]
        if op == Op.EXPAND:
            need(ins[0] == A * B and out == A * n * B, "sizes do not match (A, n, B)")
        elif op == Op.SLICE:
            start, step, count = a[3], a[4], a[5]
            need(ins[0] == A * n * B and out == A * count * B, "sizes do not match (A, n, B)")
            last = start + (count - 1) * step
            need(count == 0 or A * B == 0 or (step != 0 and 0 <= start < n and 0 <= last < n),
                 "slice reads outside its axis")
        elif op == Op.PLACE:
            start, count = a[3], a[4]
            need(ins[0] == A * count * B and out == A * n * B and start + count <= n,
                 "placement does not fit its output")
        elif op == Op.TRANSPOSE:
            need(ins[0] == out == A * n * B * a[3], "sizes do not match (A, M, N, B)")
        elif op in _REDUCE:
            need(ins[0] == A * n * B and out == A * B, "sizes do not match (A, n, B)")
            need(op != Op.MAX or n >= 1 or A * B == 0, "max over an empty axis")
        elif op in _NORMALISE:
            need(ins[0] == out == A * n * B, "sizes do not match (A, n, B)")
        elif op == Op.MATMUL:
            batch, M, K, N, sx, sy = a
            need(sx in (0, 1) and sy in (0, 1), "stride flags must be 0 or 1")
            need(ins[0] == (batch if sx else 1) * M * K and ins[1] == (batch if sy else 1) * K * N
                 and out == batch * M * N, "sizes do not match (batch, M, K, N)")
        elif op == Op.CROSS_ENTROPY:
            N, C = a[0], a[1]
            need(ins[0] == N * C and ins[1] == N and out == N and (C >= 1 or N == 0),
                 "sizes do not match (N, C)")
        else:  # pragma: no cover - every opcode has a rule above
            _fail(k, op, "no validation rule")
