"""Forward mode: the compiled tangent sweep over the tape's instructions (ADOL-C's forward
sweeps: fos_forward for one direction, fov_forward for several, as ``tg.jacfwd`` uses).

The tangent arena holds ``D`` directions for every element of the value arena, directions
innermost (``D * len(val)`` elements): the tangents of the value at offset ``p`` are
``tan[p*D : p*D + D]``, so buffer ``b``'s tangents are ``tan[boff[b]*D :][: bsize[b]*D]``, of
shape ``shape[b] + (D,)`` -- the value layout with one more axis. After a value replay,
``tangent`` runs the instructions in order and writes each output's tangents from its inputs'
tangents and the values, by the op's rule in ``tapegrad.ops.tangents``. Leaves' tangents are
seeded by the caller; every other element starts at zero.

``mask[k]`` (``tangent_mask``): bit 1 runs instruction ``k`` (it is needed by an output and
some input carries a tangent), bit ``2 << j`` says input ``j`` carries one. Instructions
without a tangent path (comparisons, guards, ONEHOT, anything that depends only on
constants) never run, so their outputs keep the zero tangent. Like the other sweeps it
trusts the tape arrays, which ``Tape._seal`` has validated.

The sweep is generated per opcode set with the value sweeps (``tapegrad.sweep``) from the
table ``TANGENT`` below: one row per opcode, the source of its branch.

``tangents(ys, seeds)`` runs it on a tape; ``tapegrad.forward`` builds ``tg.jvp`` and
``tg.jacfwd`` on it.
"""
import os

import numpy as np

from ._jit import announce_compile, drop_stale_cache, jit
from .errors import ShapeError, TapegradError, user_site
from .opcodes import A0, DIFFERENTIABLE, N_IN, OP, OUT, X, Y, Z, Op
# the kernels and rules the rows of TANGENT call (in the generated sweep)
from .ops.bcast import bcast_tan
from .ops.elementwise import add_fwd, neg_fwd, sub_fwd
from .ops.immediate import divc_fwd, mulc_fwd
from .ops.reduce import sum_fwd
from .ops.shape import expand_fwd, place_fwd, slice_fwd, transpose_fwd, unslice_fwd
from .ops.gather import gather_fwd, scatter_add_fwd
from .ops.fused import add3_fwd, mul3_tan, softplus_tan, tanh_grad_tan
from .ops.tangents import (binary_tan, cholesky_tan, conv_tan, cross_entropy_tan,
                           log_softmax_tan, logsumexp_tan, matmul_tan, max_tan, slogdet_tan,
                           softmax_tan, solve_tan, unary_tan, where_tan, zero_tan)

MAX_TANGENT_ELEMENTS = 2 ** 23  # tangent arena elements per sweep (64 MB in float64)


# One row per opcode: the source of its branch in the tangent sweep (``tapegrad.sweep``
# generates the sweep with the rows of a tape's opcodes, beside the value sweeps). A row may
# use the arenas ``val`` and ``tan``, the value offsets ``x y z ans`` and the tangent offsets
# ``tx ty tz tans`` (np.uint64), the output size ``n``, the directions ``D`` (np.uint64) and
# ``Di`` (int64), ``dx`` / ``dy`` (input x / y carries a tangent), the attributes ``a0 ..
# a5``, ``imm[k]``, the scratch ``acc`` and every rule imported above.
_UNARY = "unary_tan(op, val, tan, x, ans, tx, tans, n, D, imm[k])"
_BINARY = "binary_tan(op, val, tan, x, y, ans, tx, ty, tans, n, D, dx, dy)"
_CONV = """
        conv_tan(op, val, tan, x, y, ans, D, np.int64(bsize[instr[k, X]]),
                 np.int64(bsize[instr[k, Y]]), np.int64(n), a0, a1, a2, a3, a4, a5, dx, dy)"""
_SOLVE = """
        solve_tan(val, tan, np.int64(x), np.int64(y), np.int64(ans), Di, a0, a1, a2,
                  (a3, a4, a5), op == Op.TRISOLVE, dx, dy)"""
TANGENT = {
    # linear elementwise ops: their forward kernels on the tangents, n*D numbers
    Op.NEG: "neg_fwd(tan, tx, tans, n * D, 0.0)",
    Op.RSUBC: "neg_fwd(tan, tx, tans, n * D, 0.0)",
    Op.ADDC: "mulc_fwd(tan, tx, tans, n * D, 1.0)",
    Op.MULC: "mulc_fwd(tan, tx, tans, n * D, imm[k])",
    Op.DIVC: "divc_fwd(tan, tx, tans, n * D, imm[k])",
    **{op: _UNARY for op in (Op.EXP, Op.LOG, Op.SQRT, Op.SIN, Op.COS, Op.TANH, Op.SIGMOID,
                             Op.RELU, Op.LEAKY_RELU, Op.ABS, Op.SQUARE, Op.POWC, Op.RDIVC,
                             Op.RPOWC)},
    Op.ADD: "add_fwd(tan, tx, ty, tans, n * D)",
    Op.SUB: "sub_fwd(tan, tx, ty, tans, n * D)",
    **{op: _BINARY for op in (Op.MUL, Op.DIV, Op.POW, Op.MAXIMUM, Op.MINIMUM)},
    **{op: "zero_tan(tan, tans, n, D)" for op in (Op.GT, Op.GE, Op.LT, Op.LE, Op.EQ, Op.NE,
                                                  Op.ONEHOT)},
    Op.WHERE: "where_tan(val, tan, x, ty, tz, tans, n, D)",
    # linear ops: the forward kernel on the tangents, seen as (A, n, B*D)
    Op.EXPAND: "expand_fwd(tan, tx, tans, a0, a1, a2 * Di)",
    Op.SLICE: "slice_fwd(tan, tx, tans, a0, a1, a2 * Di, a3, a4, a5)",
    Op.PLACE: "place_fwd(tan, tx, tans, a0, a1, a2 * Di, a3, a4)",
    Op.UNSLICE: "unslice_fwd(tan, tx, tans, a0, a1, a2 * Di, a3, a4, a5)",
    Op.TRANSPOSE: "transpose_fwd(tan, tx, tans, a0, a1, a2, a3 * Di)",
    Op.SUM: "sum_fwd(tan, tx, tans, a0, a1, a2 * Di)",
    Op.MAX: "max_tan(val, tan, x, ans, tx, tans, a0, a1, a2, D)",
    Op.LOGSUMEXP: "logsumexp_tan(val, tan, x, ans, tx, tans, a0, a1, a2, D)",
    Op.SOFTMAX: "softmax_tan(val, tan, ans, tx, tans, a0, a1, a2, D, acc)",
    Op.LOG_SOFTMAX: "log_softmax_tan(val, tan, ans, tx, tans, a0, a1, a2, D, acc)",
    Op.MATMUL: """
        matmul_tan(val, tan, np.int64(x), np.int64(y), np.int64(ans), D, a0, a1, a2, a3,
                   a4, a5, dx, dy)""",
    Op.CROSS_ENTROPY: """
        if not cross_entropy_tan(val, tan, x, y, ans, tx, tans, a0, a1, D):
            return BAD_LABEL, k""",
    Op.GATHER: """
        if not gather_fwd(tan, val, tx, y, tans, a0, a1, a2 * Di, a3):  # linear in x
            return BAD_INDEX, k""",
    Op.SCATTER_ADD: """
        if not scatter_add_fwd(tan, val, tx, y, tans, a0, a1, a2 * Di, a3):
            return BAD_INDEX, k""",
    Op.SOLVE: _SOLVE,
    Op.TRISOLVE: _SOLVE,
    Op.CHOLESKY: "cholesky_tan(val, tan, np.int64(x), np.int64(ans), Di, a0, a1)",
    Op.SLOGDET: "slogdet_tan(val, tan, np.int64(x), np.int64(ans), Di, a0, a1, a2)",
    Op.TANH_GRAD: "tanh_grad_tan(val, tan, x, y, tx, ty, tans, n, D, dx, dy)",
    Op.MUL3: "mul3_tan(val, tan, x, y, z, tx, ty, tz, tans, n, D, imm[k], dx, dy, m & 8 != 0)",
    Op.SOFTPLUS: "softplus_tan(val, tan, x, tx, tans, n, D, imm[k])",
    Op.ADD3: "add3_fwd(tan, tx, ty, tz, tans, n * D)",  # linear: its forward kernel
    Op.BCAST: "bcast_tan(val, tan, x, y, ans, tx, ty, tans, a0, a1, a2, a3, a4, a5, D, dx, dy)",
    **{op: _CONV for op in (Op.CONV2D, Op.CONV2D_GRAD_X, Op.CONV2D_GRAD_W, Op.MAX_POOL2D,
                            Op.MAX_UNPOOL2D)},
    # no tangent path (the mask never runs them): the draws, the counter, guards
    **{op: "pass" for op in (Op.TICK, Op.RAND, Op.RANDN, Op.GUARD)},
}

LOOP = """
@jit
def tangent(instr, imm, boff, bsize, val, tan, ndir, mask):
    D = np.uint64(ndir)
    Di = np.int64(ndir)
    acc = np.zeros(ndir, np.float64)  # scratch of the normalisations
    for k in range(instr.shape[0]):
        m = mask[k]
        if m & 1 == 0:
            continue
        dx, dy = m & 2 != 0, m & 4 != 0{preamble}
        tx, ty, tz, tans = x * D, y * D, z * D, ans * D
{branches}
        else:
            return UNKNOWN_OP, k
    return OK, 0
"""


@jit
def tangent_mask(instr, n_in, differentiable, base, varied, needed):
    """Which instructions the tangent sweep runs (see the module docstring). ``varied[b]``: 1
    for the root buffers seeded with a tangent (updated in place); ``needed``: the forward
    mask of the wanted outputs (``Tape._forward_mask``)."""
    n = instr.shape[0]
    mask = np.zeros(n, np.uint8)
    for k in range(n):
        op = instr[k, OP]
        if needed[k] == 0 or differentiable[op] == 0:
            continue
        m = 0
        for j in range(n_in[op]):
            if varied[base[instr[k, X + j]]] != 0:
                m |= 2 << j
        if m != 0:
            mask[k] = m | 1
            varied[base[instr[k, OUT]]] = 1
    return mask


_HERE = os.path.dirname(os.path.abspath(__file__))
drop_stale_cache(tangent_mask, [os.path.join(_HERE, f) for f in ("tangent.py", "_jit.py",
                                                                 "opcodes.py")])


# -------------------------------------------------------------------------------- on a tape
def _mask(tape, outs, seeded):
    """The tangent mask for output buffers ``outs`` and seeded leaf buffers ``seeded``."""
    varied = np.zeros(max(tape._nbuf, 1), np.uint8)
    if seeded:
        varied[tape._base[list(seeded)]] = 1
    return tangent_mask(tape._instr, N_IN, DIFFERENTIABLE, tape._base, varied,
                        tape._forward_mask(outs))


def _run(tape, tan, ndir, mask):
    """The tangent sweep over ``tape``'s current values; ``tan`` (flat, ``ndir * len(val)``
    elements) holds the seeds and zeros elsewhere."""
    if tape._plan is not None:  # (callers seal it with plan.seal_dense first)
        raise TapegradError("internal: the tangent sweep of a tape whose arena is planned")
    from . import fuse
    fuse.refresh(tape)  # (the fused groups' intermediates: the tangent rules read them)
    tangent = tape._interpreters().tangent
    announce_compile(tangent)
    status, k = tangent(tape._instr, tape._imm, tape._boff, tape._bsize, tape._val,
                        tan[: ndir * tape._val.shape[0]], np.int64(ndir), mask)
    if status:
        raise tape._status_error(status, k)


def directions_per_sweep(tape, wanted, limit=32):
    """How many directions one sweep carries: ``wanted``, at most ``limit``, and few enough
    that the tangent arena stays below ``MAX_TANGENT_ELEMENTS`` (at least one)."""
    return int(max(1, min(wanted, limit, MAX_TANGENT_ELEMENTS // max(tape._val.shape[0], 1))))


def tangents(ys, seeds, ndir=None):
    """Forward mode on a tape: the tangents of ``ys`` (a Var or a list of Vars) given the
    tangents ``seeds`` (dict leaf Var -> array) of params or inputs, at the values of the last
    replay (or as recorded). Leaves not in ``seeds`` have zero tangent.

    One direction: each seed has its leaf's shape and each result its y's shape. ``ndir=D``
    directions in one sweep: each seed has shape ``(D,) + leaf.shape`` and each result
    ``(D,) + y.shape``.

    >>> t = tangents(loss, {W: dW})    # d loss along dW   # doctest: +SKIP
    """
    single = not isinstance(ys, (list, tuple))
    ys = [ys] if single else list(ys)
    if not ys:
        raise TapegradError(f"tangents(): no outputs given ({user_site()})")
    tape = _tape_of(ys[0], "tangents(): ys[0]")
    for i, yv in enumerate(ys):
        if _tape_of(yv, f"tangents(): ys[{i}]") is not tape:
            raise TapegradError(f"tangents(): ys[{i}] is a Var of another tape ({user_site()})")
    if not isinstance(seeds, dict):
        raise TapegradError(f"tangents(): seeds must be a dict leaf Var -> array, got "
                            f"{type(seeds).__name__} ({user_site()})")
    D = 1 if ndir is None else int(ndir)
    if D < 1:
        raise TapegradError(f"tangents(): ndir must be >= 1, got {ndir!r} ({user_site()})")
    from .plan import seal_dense
    seal_dense(tape)  # the tangent sweep reads values of every instruction (tapegrad.plan)
    checked, roots = [], set()
    for leaf, s in seeds.items():
        if _tape_of(leaf, "tangents(): a seed's key") is not tape:
            raise TapegradError(f"tangents(): a seed's key is a Var of another tape "
                                f"({user_site()})")
        root = int(tape._base[leaf._b])
        if tape._kind[root] not in (0, 1):  # PARAM, INPUT
            raise TapegradError(f"tangents(): {leaf._describe()} is not a param or an input: "
                                f"only leaves take a tangent ({user_site()})")
        if root in roots:
            raise TapegradError(f"tangents(): {leaf._describe()} shares its memory with "
                                f"another seeded Var ({user_site()})")
        roots.add(root)
        want = leaf.shape if ndir is None else (D,) + leaf.shape
        try:
            a = np.asarray(s, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TapegradError(f"tangents(): the seed of {leaf._describe()} is not an array of "
                                f"numbers ({e}) ({user_site()})") from None
        if a.shape != want:
            raise ShapeError(f"tangents(): the seed of {leaf._describe()} has shape {a.shape}, "
                             f"expected {want} ({user_site()})")
        checked.append((leaf._b, a.reshape(D, -1)))
    L = tape._val.shape[0]
    tan = np.zeros(L * D, tape.dtype)
    t2 = tan.reshape(L, D)  # row p: the D tangents of value p
    for b, a in checked:
        o = int(tape._boff[b])
        t2[o:o + a.shape[1]] = a.T
    _run(tape, tan, D, _mask(tape, [yv._b for yv in ys], [b for b, _ in checked]))
    out = []
    for yv in ys:
        o = int(tape._boff[yv._b])
        r = t2[o:o + yv.size].T.reshape((D,) + yv.shape).copy()
        out.append(r[0] if ndir is None else r)
    return out[0] if single else out


def _tape_of(v, what):
    from .var import Var
    if not isinstance(v, Var):
        raise TapegradError(f"{what} must be a Var, got {type(v).__name__} ({user_site()})")
    return v.tape
