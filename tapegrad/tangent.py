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

``tangents(ys, seeds)`` runs it on a tape; ``tapegrad.forward`` builds ``tg.jvp`` and
``tg.jacfwd`` on it.
"""
import glob
import os

import numpy as np

from ._jit import drop_stale_cache, jit
from .errors import ShapeError, TapegradError, user_site
from .opcodes import A0, DIFFERENTIABLE, N_IN, OP, OUT, X, Y, Z, Op
from .ops.elementwise import add_fwd, neg_fwd, sub_fwd
from .ops.fused import mul3_tan, tanh_grad_tan
from .ops.immediate import divc_fwd, mulc_fwd
from .ops.reduce import sum_fwd
from .ops.shape import expand_fwd, place_fwd, slice_fwd, transpose_fwd, unslice_fwd
from .ops.gather import gather_fwd, scatter_add_fwd
from .ops.tangents import (binary_tan, cholesky_tan, conv_tan, cross_entropy_tan,
                           log_softmax_tan, logsumexp_tan, matmul_tan, max_tan, slogdet_tan,
                           softmax_tan, solve_tan, unary_tan, where_tan, zero_tan)
from .sweep import BAD_INDEX, BAD_LABEL, OK, _offset

MAX_TANGENT_ELEMENTS = 2 ** 23  # tangent arena elements per sweep (64 MB in float64)


@jit
def tangent(instr, imm, boff, bsize, val, tan, ndir, mask):
    """The tangent sweep: ``ndir`` directions per value in ``tan`` (``ndir * len(val)``
    elements, directions innermost: see ``tapegrad.ops.tangents``)."""
    D = np.uint64(ndir)
    Di = np.int64(ndir)
    acc = np.zeros(ndir, np.float64)  # scratch of the normalisations
    for k in range(instr.shape[0]):
        m = mask[k]
        if m & 1 == 0:
            continue
        dx, dy = m & 2 != 0, m & 4 != 0
        op = instr[k, OP]
        ans, n = np.uint64(boff[instr[k, OUT]]), np.uint64(bsize[instr[k, OUT]])
        x, y, z = _offset(boff, instr[k, X]), _offset(boff, instr[k, Y]), _offset(boff, instr[k, Z])
        tx, ty, tz, tans = x * D, y * D, z * D, ans * D
        a0, a1, a2 = np.int64(instr[k, A0]), np.int64(instr[k, A0 + 1]), np.int64(instr[k, A0 + 2])
        a3, a4, a5 = np.int64(instr[k, A0 + 3]), np.int64(instr[k, A0 + 4]), np.int64(instr[k, A0 + 5])
        # linear elementwise ops: their forward kernels on the tangents, n*D numbers
        if op == Op.NEG or op == Op.RSUBC:
            neg_fwd(tan, tx, tans, n * D, 0.0)
        elif op == Op.ADDC:
            mulc_fwd(tan, tx, tans, n * D, 1.0)
        elif op == Op.MULC:
            mulc_fwd(tan, tx, tans, n * D, imm[k])
        elif op == Op.DIVC:
            divc_fwd(tan, tx, tans, n * D, imm[k])
        elif op < Op.ADD:
            unary_tan(op, val, tan, x, ans, tx, tans, n, D, imm[k])
        elif op == Op.ADD:
            add_fwd(tan, tx, ty, tans, n * D)
        elif op == Op.SUB:
            sub_fwd(tan, tx, ty, tans, n * D)
        elif op < Op.GT:
            binary_tan(op, val, tan, x, y, ans, tx, ty, tans, n, D, dx, dy)
        elif op < Op.WHERE:  # comparisons
            zero_tan(tan, tans, n, D)
        elif op == Op.WHERE:
            where_tan(val, tan, x, ty, tz, tans, n, D)
        elif op == Op.TANH_GRAD:
            tanh_grad_tan(val, tan, x, y, tx, ty, tans, n, D, dx, dy)
        elif op == Op.MUL3:
            mul3_tan(val, tan, x, y, z, tx, ty, tz, tans, n, D, imm[k], dx, dy, m & 8 != 0)
        # linear ops: the forward kernel on the tangents, seen as (A, n, B*D)
        elif op == Op.EXPAND:
            expand_fwd(tan, tx, tans, a0, a1, a2 * Di)
        elif op == Op.SLICE:
            slice_fwd(tan, tx, tans, a0, a1, a2 * Di, a3, a4, a5)
        elif op == Op.PLACE:
            place_fwd(tan, tx, tans, a0, a1, a2 * Di, a3, a4)
        elif op == Op.UNSLICE:
            unslice_fwd(tan, tx, tans, a0, a1, a2 * Di, a3, a4, a5)
        elif op == Op.TRANSPOSE:
            transpose_fwd(tan, tx, tans, a0, a1, a2, a3 * Di)
        elif op == Op.SUM:
            sum_fwd(tan, tx, tans, a0, a1, a2 * Di)
        elif op == Op.MAX:
            max_tan(val, tan, x, ans, tx, tans, a0, a1, a2, D)
        elif op == Op.LOGSUMEXP:
            logsumexp_tan(val, tan, x, ans, tx, tans, a0, a1, a2, D)
        elif op == Op.SOFTMAX:
            softmax_tan(val, tan, ans, tx, tans, a0, a1, a2, D, acc)
        elif op == Op.LOG_SOFTMAX:
            log_softmax_tan(val, tan, ans, tx, tans, a0, a1, a2, D, acc)
        elif op == Op.MATMUL:
            matmul_tan(val, tan, np.int64(x), np.int64(y), np.int64(ans), D, a0, a1, a2, a3,
                       a4, a5, dx, dy)
        elif op == Op.CROSS_ENTROPY:
            if not cross_entropy_tan(val, tan, x, y, ans, tx, tans, a0, a1, D):
                return BAD_LABEL, k
        elif op == Op.ONEHOT:
            zero_tan(tan, tans, n, D)
        elif op == Op.GATHER:  # linear in x: the kernel on the tangents, indices from val
            if not gather_fwd(tan, val, tx, y, tans, a0, a1, a2 * Di, a3):
                return BAD_INDEX, k
        elif op == Op.SCATTER_ADD:
            if not scatter_add_fwd(tan, val, tx, y, tans, a0, a1, a2 * Di, a3):
                return BAD_INDEX, k
        elif op == Op.SOLVE or op == Op.TRISOLVE:
            solve_tan(val, tan, np.int64(x), np.int64(y), np.int64(ans), Di, a0, a1, a2,
                      (a3, a4, a5), op == Op.TRISOLVE, dx, dy)
        elif op == Op.CHOLESKY:
            cholesky_tan(val, tan, np.int64(x), np.int64(ans), Di, a0, a1)
        elif op == Op.SLOGDET:
            slogdet_tan(val, tan, np.int64(x), np.int64(ans), Di, a0, a1, a2)
        elif (op == Op.CONV2D or op == Op.CONV2D_GRAD_X or op == Op.CONV2D_GRAD_W
              or op == Op.MAX_POOL2D or op == Op.MAX_UNPOOL2D):
            conv_tan(op, val, tan, x, y, ans, D, np.int64(bsize[instr[k, X]]),
                     np.int64(bsize[instr[k, Y]]), np.int64(n), a0, a1, a2, a3, a4, a5, dx, dy)
        # GUARD: no value, no tangent
    return OK, 0


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
SOURCES = sorted(glob.glob(os.path.join(_HERE, "ops", "*.py"))) + [
    os.path.join(_HERE, f) for f in ("tangent.py", "sweep.py", "_jit.py", "opcodes.py")]
drop_stale_cache(tangent, SOURCES)
drop_stale_cache(tangent_mask, SOURCES)


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
    tape._seal()
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
