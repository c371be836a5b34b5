"""Validation of tape arrays before any compiled code reads them.

The interpreters index the arenas without bounds checks (nopython mode), so every buffer
index, offset, size and attribute is checked here: a bad one raises ``TapeFormatError``
naming the instruction and what is wrong, instead of reading or writing outside the arena.
The rule for each op family says which sizes its kernel reads and writes.

The per-instruction rules run compiled (``check_instructions``: one loop, a few ns per
instruction, so sealing a fresh tape of 30 instructions or of a million costs no Python loop);
it checks every index before it uses it and computes size products in a way that cannot
overflow. It returns the first bad instruction and a reason code; ``REASONS`` turns the code
into the message.
"""
import os

import numpy as np

from ._jit import drop_stale_cache, jit
from .errors import TapeFormatError
from .opcodes import A0, N_IN, OP, OPS, OUT, WIDTH, X, Op

REASONS = [
    None,
    "unknown opcode",
    "buffer index out of range",
    "unused input slot holds a buffer, expected -1",
    "input and output sizes differ",
    "operand and output sizes differ",
    "a guard reads one number and expects 0 or 1",
    "negative attribute",
    "sizes do not match (A, n, B)",
    "slice reads outside its axis",
    "placement does not fit its output",
    "sizes do not match (A, M, N, B)",
    "max over an empty axis",
    "stride flags must be 0 to 3 (stride | transposed << 1)",
    "sizes do not match (batch, M, K, N)",
    "sizes do not match (N, C)",
    "no validation rule",
    "a draw reads the 2-number counter (which tick writes in place)",
    "sizes do not match (A, n, B, m)",
    "sizes do not match (batch, n, k) or a flag is not 0 or 1",
    "bad convolution or pooling geometry",
    "sizes do not match the convolution or pooling geometry",
]
_BIG = 2.0 ** 62  # no buffer is this large: a product beyond it matches no size


@jit
def _prod(a, b, c, d):
    """a*b*c*d of non-negative ints, or -1 if it exceeds 2**62 (then it matches no size)."""
    if float(a) * float(b) * float(c) * float(d) >= _BIG:
        return np.int64(-1)
    return np.int64(a) * np.int64(b) * np.int64(c) * np.int64(d)


@jit
def check_buffers(boff, bsize, arena_size):
    """The first buffer whose ``[offset, offset + size)`` is not inside the arena, or -1.
    Each is compared with the arena's size before they are added: no int64 overflow."""
    for b in range(boff.shape[0]):
        o, s = boff[b], bsize[b]
        if o < 0 or s < 0 or o > arena_size or s > arena_size or o + s > arena_size:
            return b
    return -1


@jit
def check_instructions(instr, bsize, n_in):
    """``(k, reason)`` of the first bad instruction, ``(-1, 0)`` if all are good."""
    nb = bsize.shape[0]
    for k in range(instr.shape[0]):
        op = np.int64(instr[k, OP])
        if op < 0 or op >= Op.N_OPS:
            return k, 1
        m = n_in[op]
        for j in range(4):  # the output, then the three input slots
            b = np.int64(instr[k, OUT + j])
            if j <= m:
                if b < 0 or b >= nb:
                    return k, 2
            elif b != -1:
                return k, 3
        out = bsize[instr[k, OUT]]
        i0 = bsize[instr[k, X]] if m >= 1 else np.int64(0)
        i1 = bsize[instr[k, X + 1]] if m >= 2 else np.int64(0)
        i2 = bsize[instr[k, X + 2]] if m >= 3 else np.int64(0)
        a0, a1, a2 = np.int64(instr[k, A0]), np.int64(instr[k, A0 + 1]), np.int64(instr[k, A0 + 2])
        a3, a4, a5 = np.int64(instr[k, A0 + 3]), np.int64(instr[k, A0 + 4]), np.int64(instr[k, A0 + 5])
        if op <= Op.RPOWC:
            if i0 != out:
                return k, 4
            continue
        if op <= Op.NE:
            if i0 != out or i1 != out:
                return k, 5
            continue
        if op == Op.WHERE or op == Op.MUL3:
            if i0 != out or i1 != out or i2 != out:
                return k, 5
            continue
        if op == Op.TANH_GRAD:
            if i0 != out or i1 != out:
                return k, 5
            continue
        if op == Op.GUARD:
            if i0 != 1 or (a0 != 0 and a0 != 1):
                return k, 6
            continue
        if op == Op.TICK or op == Op.RAND or op == Op.RANDN:
            if i0 != 2 or (op == Op.TICK and instr[k, OUT] != instr[k, X]):
                return k, 17
            if op != Op.TICK and (a0 < 0 or a1 < 0 or a2 < 0):
                return k, 7
            continue
        if (a0 < 0 or a1 < 0 or a2 < 0 or a3 < 0 or a5 < 0
                or (a4 < 0 and op != Op.SLICE and op != Op.UNSLICE)):
            return k, 7  # only a slice's step may be negative
        AnB, AB = _prod(a0, a1, a2, 1), _prod(a0, a2, 1, 1)
        if op == Op.EXPAND:
            if i0 != AB or out != AnB:
                return k, 8
        elif op == Op.SLICE:
            if i0 != AnB or out != _prod(a0, a5, a2, 1):
                return k, 8
            last = a3 + (a5 - 1) * a4
            if not (a5 == 0 or AB == 0 or (a4 != 0 and 0 <= a3 < a1 and 0 <= last < a1)):
                return k, 9
        elif op == Op.UNSLICE:
            if i0 != _prod(a0, a5, a2, 1) or out != AnB:
                return k, 8
            last = a3 + (a5 - 1) * a4
            if not (a5 == 0 or AB == 0 or (a4 != 0 and 0 <= a3 < a1 and 0 <= last < a1)):
                return k, 9
        elif op == Op.PLACE:
            if i0 != _prod(a0, a4, a2, 1) or out != AnB or a3 + a4 > a1:
                return k, 10
        elif op == Op.TRANSPOSE:
            if i0 != out or out != _prod(a0, a1, a2, a3):
                return k, 11
        elif op == Op.SUM or op == Op.MAX or op == Op.LOGSUMEXP:
            if i0 != AnB or out != AB:
                return k, 8
            if op == Op.MAX and a1 < 1 and AB != 0:
                return k, 12
        elif op == Op.SOFTMAX or op == Op.LOG_SOFTMAX:
            if i0 != out or out != AnB:
                return k, 8
        elif op == Op.MATMUL:  # batch M K N sx sy (stride | transposed << 1)
            if a4 < 0 or a4 > 3 or a5 < 0 or a5 > 3:
                return k, 13
            if (i0 != _prod(a0 if a4 & 1 == 1 else 1, a1, a2, 1)
                    or i1 != _prod(a0 if a5 & 1 == 1 else 1, a2, a3, 1)
                    or out != _prod(a0, a1, a3, 1)):
                return k, 14
        elif op == Op.CROSS_ENTROPY:  # N C
            if i0 != _prod(a0, a1, 1, 1) or i1 != a0 or out != a0 or (a1 < 1 and a0 != 0):
                return k, 15
        elif op == Op.ONEHOT:  # N C
            if i0 != a0 or out != _prod(a0, a1, 1, 1) or (a1 < 1 and a0 != 0):
                return k, 15
        elif op == Op.GATHER:  # A n B m: (A, n, B), (m,) -> (A, m, B); the kernels check
            if i0 != AnB or i1 != a3 or out != _prod(a0, a3, a2, 1):  # each index's value
                return k, 18
        elif op == Op.SCATTER_ADD:  # A n B m: (A, m, B), (m,) -> (A, n, B)
            if i0 != _prod(a0, a3, a2, 1) or i1 != a3 or out != AnB:
                return k, 18
        elif op == Op.SOLVE or op == Op.TRISOLVE:  # batch n k trans | batch n k lower trans unit
            if (i0 != _prod(a0, a1, a1, 1) or i1 != _prod(a0, a1, a2, 1) or out != i1
                    or a3 > 1 or (op == Op.TRISOLVE and (a4 > 1 or a5 > 1))
                    or (op == Op.SOLVE and (a4 != 0 or a5 != 0))):
                return k, 19
        elif op == Op.CHOLESKY:  # batch n
            if i0 != _prod(a0, a1, a1, 1) or out != i0 or a2 != 0:
                return k, 19
        elif op == Op.SLOGDET:  # batch n mode: out (batch, 2) or (batch,)
            if i0 != _prod(a0, a1, a1, 1) or a2 > 1 or out != _prod(a0, 2 - a2, 1, 1):
                return k, 19
        elif (op == Op.CONV2D or op == Op.CONV2D_GRAD_X or op == Op.CONV2D_GRAD_W
              or op == Op.MAX_POOL2D or op == Op.MAX_UNPOOL2D):
            r = _check_conv(op, out, i0, i1, a0, a1, a2, a3, a4, a5)
            if r:
                return k, r
        else:
            return k, 16
    return -1, 0


@jit
def _check_conv(op, out, i0, i1, a0, a1, a2, a3, a4, a5):
    """0, or the reason an instruction of ``tapegrad.ops.conv`` is bad: its attributes (conv
    C O (H,W) (kh,kw) (sh,sw) (ph,pw); pool H W kh kw (sh,sw) (ph,pw), pairs h | w << 15)
    must give positive sizes, and its buffers the sizes they imply."""
    pool = op == Op.MAX_POOL2D or op == Op.MAX_UNPOOL2D
    if pool:
        C, O, H, W, kh, kw = 1, 1, a0, a1, a2, a3
        if H >= 32768 or W >= 32768 or kh >= 32768 or kw >= 32768:
            return 20
    else:
        if a2 >= 2 ** 30 or a3 >= 2 ** 30:
            return 20
        C, O, H, W, kh, kw = a0, a1, a2 & 32767, a2 >> 15, a3 & 32767, a3 >> 15
    if a4 >= 2 ** 30 or a5 >= 2 ** 30:
        return 20
    sh, sw, ph, pw = a4 & 32767, a4 >> 15, a5 & 32767, a5 >> 15
    if (C < 1 or O < 1 or H < 1 or W < 1 or kh < 1 or kw < 1 or sh < 1 or sw < 1
            or H + 2 * ph < kh or W + 2 * pw < kw
            or (pool and (2 * ph > kh or 2 * pw > kw))):  # a pool window holds some of x
        return 20
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    xsz = _prod(C, H, W, 1)
    gsz = _prod(O, Ho, Wo, 1)
    wsz = _prod(O, C, kh, kw)
    xs = out if op == Op.CONV2D_GRAD_X else i0  # the x-shaped buffer gives the batch
    if xsz < 1 or gsz < 1 or wsz < 1 or xs % xsz != 0:
        return 21
    N = xs // xsz
    gs = _prod(N, gsz, 1, 1)
    if op == Op.CONV2D:
        ok = i1 == wsz and out == gs
    elif op == Op.CONV2D_GRAD_X:
        ok = i0 == gs and i1 == wsz
    elif op == Op.CONV2D_GRAD_W:
        ok = i1 == gs and out == wsz
    elif op == Op.MAX_POOL2D:
        ok = i1 == i0 and out == gs
    else:
        ok = i1 == gs and out == i0
    return 0 if ok else 21


def validate_tape_arrays(instr, imm, boff, bsize, shapes, arena_size):
    """Raise TapeFormatError unless the arrays describe a tape the sweeps can run safely.

    ``shapes`` (a list of tuples) is checked against ``bsize`` when given; sealing passes
    None, as it computed the sizes from the shapes itself.
    """
    if not (isinstance(instr, np.ndarray) and instr.dtype == np.int32 and instr.ndim == 2
            and instr.shape[1] == WIDTH):
        raise TapeFormatError(f"instr must be an int32 array of shape (n, {WIDTH})")
    n = instr.shape[0]
    if not (isinstance(imm, np.ndarray) and imm.dtype == np.float64 and imm.shape == (n,)):
        raise TapeFormatError(f"imm must be a float64 array of shape ({n},)")
    nb = boff.shape[0] if isinstance(boff, np.ndarray) and boff.ndim == 1 else -1
    for name, a in (("boff", boff), ("bsize", bsize)):
        if not (isinstance(a, np.ndarray) and a.dtype == np.int64 and a.shape == (nb,)):
            raise TapeFormatError(f"{name} must be an int64 array of shape ({nb},)")
    if shapes is not None and len(shapes) != nb:
        raise TapeFormatError(f"{len(shapes)} shapes for {nb} buffers")
    boff, bsize = np.ascontiguousarray(boff), np.ascontiguousarray(bsize)
    b = check_buffers(boff, bsize, arena_size)
    if b >= 0:
        raise TapeFormatError(f"buffer {b}: offset {boff[b]} size {bsize[b]} lies outside "
                              f"the arena of {arena_size} elements")
    if shapes is not None:
        for b, sh in enumerate(shapes):
            p = 1
            for d in sh:
                p *= int(d)
            if any(int(d) < 0 for d in sh) or p != bsize[b]:
                raise TapeFormatError(f"buffer {b}: shape {tuple(sh)} does not match size "
                                      f"{bsize[b]}")
    if n == 0:
        return
    k, reason = check_instructions(np.ascontiguousarray(instr), bsize, N_IN)
    if k >= 0:
        row = [int(v) for v in instr[k]]
        op = row[OP]
        name = OPS[Op(op)].name if 0 <= op < Op.N_OPS else f"opcode {op}"
        if reason <= 3:
            raise TapeFormatError(f"instruction {k} ({name}): {REASONS[reason]} "
                                  f"(buffers {row[OUT:X + 3]}, {nb} buffers)")
        ins = [int(bsize[b]) for b in row[X:X + OPS[Op(op)].n_in]]
        raise TapeFormatError(f"instruction {k} ({name}): {REASONS[reason]} (output size "
                              f"{int(bsize[row[OUT]])}, input sizes {ins}, attrs "
                              f"{row[A0:]})")


_HERE = os.path.dirname(os.path.abspath(__file__))
for _f in (_prod, check_buffers, check_instructions, _check_conv):
    drop_stale_cache(_f, [os.path.join(_HERE, f) for f in ("validate.py", "opcodes.py",
                                                            "_jit.py")])
