"""``tape.optimize()``: rewrites a sealed tape into fewer instructions that compute the same
values for every Var still held (in the spirit of CppAD's ``f.optimize()``).

Passes, over the flat arrays (``instr``, ``imm``, ``src``), in this order:

* **common subexpressions**: an instruction repeating an earlier one (same opcode, input
  buffers, attributes and immediate; no effect of its own) is dropped when no live Var holds
  its output, and later instructions read the earlier output instead; views of one buffer
  with one shape count as one input buffer;
* **dead code**: an instruction is dropped when nothing reads its output -- no later kept
  instruction, no live Var, no name, no parameter or input -- unless it has an effect of
  its own (a guard, the random draws and their counter);
* **fusion of EXP, ADDC c, LOG** (c > 0) into one SOFTPLUS instruction (``ops/fused.py``),
  when the two intermediate buffers are read by nothing else and no live Var holds them;
  SOFTPLUS computes the chain's numbers bit for bit;
* **sums**: ``(a + b) + c`` -- an ADD of an ADD whose output is read only there and held by no
  live Var -- becomes one ADD3 (same numbers), so a chain of n ADDs takes about n / 2
  instructions;
* **elementwise groups** (``tapegrad.fuse``): runs of consecutive elementwise instructions
  over one shape whose intermediates only the run reads and no live Var holds are replayed
  as one compiled loop, their intermediates in registers, never written to the arena (the
  instructions stay on the tape; ``tape._fused`` lists the runs);
* **scalar copies in place** (``_alias_copies``): a one-element PLACE (``tg.stack`` of
  scalars) or SLICE (``s[i]`` of such a vector) copies one element between two slots of the
  arena. Where nothing can tell the two slots apart, the scalar buffer is moved *into* the
  element (its offset becomes the element's): its writer writes the element directly, its
  readers read it, and the copy becomes a copy onto itself, which the lowered stream skips
  (``lower.SKIP``) in both sweeps. ``softmax(stack([a, b, c, d]))[i]``: 9 instructions
  replayed -> 1. Conditions (so that every value and gradient is the same, bit for bit): the
  scalar is a temporary root without views, written once, held by no live Var; a PLACE's
  vector is written only by one-element PLACEs of distinct elements and read by exactly one
  later instruction, with no reader of the scalar between the PLACE and it; a SLICE's vector
  is written once (not by PLACE) and read only by one-element SLICEs of distinct elements.
  Not on a planned tape (``tapegrad.plan`` shares slots by live interval; an aliased tape is
  not planned). ``tape.save`` writes the dense layout; recording a new parameter, input or
  constant lays the tape out densely again.

"Live" Vars are the ``Var`` objects of this tape that exist when ``optimize`` runs (found
through the garbage collector, so recording pays nothing for it); a Var dropped before
``optimize`` may read a stale value afterwards, and so may a Var of a buffer the optimizer
removed if it is rebuilt (``tape.replica()[v]`` excepted: replicas keep their own copy of the
instructions). Buffers keep their offsets: the arenas are unchanged.

The tape is re-sealed afterwards (validated and lowered again). Not on by default for a
user's tape: whether a Var is still held is only known by scanning the heap, which
``optimize()`` does once. ``tg.grad`` / ``tg.value_and_grad`` run it on their own cached tapes
(``tapegrad.functional``), where nothing but the inputs and the output is held.
"""
import gc

import numpy as np

from . import fuse as _fuse
from . import plan as _plan
from .opcodes import A0, N_IN, OP, OUT, X, Op
from .var import Var

# instructions with an effect besides their output (never dropped as dead)
_EFFECTS = frozenset(int(o) for o in (Op.GUARD, Op.TICK, Op.RAND, Op.RANDN))


def _live_roots(tape):
    """Root buffers that must keep their values: those of the live Vars of ``tape``, named
    buffers, parameters and inputs."""
    bufs = [v._b for v in gc.get_objects() if type(v) is Var and v.tape is tape]
    bufs += list(tape._names.values()) + list(tape._params) + list(tape._inputs.values())
    live = np.zeros(max(tape._nbuf, 1), bool)
    if bufs:
        live[tape._base[np.array(bufs, np.int64)]] = True
    return live


def _cse(tape, instr, imm, live):
    """Common subexpressions: an instruction with the opcode, inputs, attributes and
    immediate of an earlier one, whose output no live Var holds, is read from the earlier
    one's output instead (later instructions renamed; the duplicate becomes dead code)."""
    base, n = tape._base, instr.shape[0]
    nb = max(tape._nbuf, 1)
    writers = np.bincount(base[instr[:, OUT]], minlength=nb)
    views = np.bincount(base, minlength=nb)
    rename, seen, merged = _same_views(tape), {}, 0
    for k in range(n):
        op = int(instr[k, OP])
        for j in range(int(N_IN[op])):
            b = int(instr[k, X + j])
            if b in rename:
                instr[k, X + j] = rename[b]
        out = int(instr[k, OUT])
        if op in _EFFECTS or base[out] != out or writers[out] != 1 or views[out] != 1:
            continue
        key = (op, instr[k, X:].tobytes(), imm[k:k + 1].tobytes())
        first = seen.get(key)
        if first is None:
            seen[key] = out
        elif (not live[out] and tape._bsize[first] == tape._bsize[out]
              and tape._shape[first] == tape._shape[out]):
            rename[out] = first
            merged += 1
    return merged


def _same_views(tape):
    """Views (reshapes) of one buffer with one shape are the same operand: each -> the first
    of them, so their readers count as repeats (``x.reshape(1)`` taken again in every step of
    a loop, broadcast again each time, becomes one broadcast)."""
    first, rename = {}, {}
    for b, r in tape._alias.items():
        key = (tape._base[r], tape._shape[b])
        c = first.setdefault(key, b)
        if c != b:
            rename[b] = c
    return rename


def _dead(tape, instr, keep, live):
    """Drops (``keep[k] = False``) the instructions whose outputs nothing needs, last first:
    a kept instruction makes its inputs needed. Returns how many it dropped."""
    base, needed, dead = tape._base, live.copy(), 0
    for k in range(instr.shape[0] - 1, -1, -1):
        if not keep[k]:
            continue
        op = int(instr[k, OP])
        if op not in _EFFECTS and not needed[base[instr[k, OUT]]]:
            keep[k] = False
            dead += 1
            continue
        for j in range(int(N_IN[op])):
            needed[base[instr[k, X + j]]] = True
    return dead


def _uses(tape, instr, keep):
    """Of the kept instructions: their rows, the opcode column, and per root buffer how many
    read it, how many write it and the (last) row writing it (-1: none)."""
    base, nb = tape._base, max(tape._nbuf, 1)
    rows = np.flatnonzero(keep)
    ops = instr[:, OP]
    reads = np.zeros(nb, np.int64)
    for j in range(3):
        has = rows[N_IN[ops[rows]] > j]
        np.add.at(reads, base[instr[has, X + j]], 1)
    outs = base[instr[rows, OUT]]
    writers = np.bincount(outs, minlength=nb)
    writer = np.full(nb, -1, np.int64)
    writer[outs] = rows
    return rows, ops, reads, writers, writer


def _fuse_softplus(tape, instr, imm, keep, live):
    """EXP -> ADDC c (c > 0) -> LOG, each intermediate read once, by the next, and held by no
    live Var: the LOG row becomes SOFTPLUS(x, c), the other two are dropped."""
    base = tape._base
    rows, ops, reads, writers, writer = _uses(tape, instr, keep)

    def single(b, op):
        r = base[b]
        k = writer[r]
        if k < 0 or writers[r] != 1 or reads[r] != 1 or live[r] or ops[k] != op:
            return -1
        return k

    fused = 0
    for k3 in rows[ops[rows] == Op.LOG]:
        k2 = single(instr[k3, X], Op.ADDC)
        if k2 < 0 or not imm[k2] > 0:
            continue
        k1 = single(instr[k2, X], Op.EXP)
        if k1 < 0:
            continue
        instr[k3, OP], instr[k3, X], imm[k3] = Op.SOFTPLUS, instr[k1, X], imm[k2]
        keep[k1] = keep[k2] = False
        fused += 1
    return fused


def _fuse_sums(tape, instr, keep, live):
    """ADD(t, c) or ADD(c, t) with t = ADD(a, b) read only there and held by no live Var:
    the outer row becomes ADD3(a, b, c) ((a + b) + c: the same numbers, IEEE addition being
    commutative), the inner one is dropped. A chain of n ADDs becomes about n / 2."""
    base = tape._base
    rows, ops, reads, writers, writer = _uses(tape, instr, keep)
    fused = 0
    for k in rows[ops[rows] == Op.ADD]:
        for j in (0, 1):
            t = base[instr[k, X + j]]
            k0 = writer[t]
            if (k0 < 0 or ops[k0] != Op.ADD or writers[t] != 1 or reads[t] != 1 or live[t]
                    or not keep[k0] or tape._bsize[t] != tape._bsize[instr[k, OUT]]):
                continue
            c = instr[k, X + 1 - j]
            instr[k, OP] = Op.ADD3
            instr[k, X], instr[k, X + 1], instr[k, X + 2] = instr[k0, X], instr[k0, X + 1], c
            keep[k0] = False
            fused += 1
            break
    return fused


def _readers(tape, instr, nb):
    """Per root buffer the rows reading it, one entry per input slot: ``(rows, start)`` with
    the readers of root r in ``rows[start[r]:start[r + 1]]``, ascending."""
    base, ops = tape._base, instr[:, OP]
    bufs, rows = [], []
    for j in range(3):
        has = np.flatnonzero(N_IN[ops] > j)
        bufs.append(base[instr[has, X + j]])
        rows.append(has)
    bufs, rows = np.concatenate(bufs), np.concatenate(rows)
    order = np.lexsort((rows, bufs))
    start = np.searchsorted(bufs[order], np.arange(nb + 1))
    return rows[order], start


def _alias_copies(tape, live):
    """Moves scalar buffers into the vector elements that one-element PLACEs and SLICEs copy
    them to or from (module docstring); returns how many. The tape is sealed, dense, not
    planned; ``live``: ``_live_roots``."""
    from .tape import TEMP
    instr, nb = tape._instr, tape._nbuf
    if not instr.shape[0] or nb == 0:
        return 0
    base, boff, bsize = tape._base[:nb], tape._boff, tape._bsize
    kind = np.frombuffer(bytes(tape._kind), np.int8)[:nb]
    ops, outs = instr[:, OP], base[instr[:, OUT]]
    ident = base == np.arange(nb)
    views = np.bincount(base, minlength=nb)
    writers = np.bincount(outs, minlength=nb)
    writer = np.full(nb, -1, np.int64)
    writer[outs] = np.arange(instr.shape[0])
    rows, start = _readers(tape, instr, nb)

    def movable(b):  # a scalar temporary nothing else can observe
        return (ident[b] and views[b] == 1 and bsize[b] == 1 and kind[b] == TEMP
                and not live[b] and writers[b] == 1 and not moved[b])

    def element(k):  # arena offset of the element a scalar PLACE / SLICE copies
        return np.int64(instr[k, A0 + 3]) * np.int64(instr[k, A0 + 2])

    moved = np.zeros(nb, bool)
    new_off = {}
    # SLICE: s[i] of a vector written once and read only by scalar SLICEs, one per element
    slices = np.flatnonzero((ops == Op.SLICE) & (bsize[instr[:, OUT]] == 1))
    for v in np.unique(base[instr[slices, X]]):
        rd = rows[start[v]:start[v + 1]]
        if (live[v] or not ident[v] or writers[v] != 1 or ops[writer[v]] == Op.PLACE
                or not np.all(ops[rd] == Op.SLICE) or not np.all(bsize[instr[rd, OUT]] == 1)):
            continue
        el = [element(k) for k in rd]
        if len(set(el)) != len(el) or not all(movable(outs[k]) for k in rd):
            continue
        for k, e in zip(rd, el):
            c = outs[k]
            moved[c] = True
            new_off[c] = boff[instr[k, X]] + e
    # PLACE: stack([a, b, ...]) of scalars into a vector read once, after its last PLACE
    places = np.flatnonzero((ops == Op.PLACE) & (bsize[instr[:, X]] == 1))
    for v in np.unique(outs[places]):
        wr = np.flatnonzero(outs == v)
        rd = rows[start[v]:start[v + 1]]
        if (live[v] or not ident[v] or rd.size != 1 or rd[0] < wr[-1]
                or not np.all(ops[wr] == Op.PLACE) or not np.all(bsize[instr[wr, X]] == 1)):
            continue
        el = [element(k) for k in wr]
        if len(set(el)) != len(el):
            continue
        r = rd[0]
        for k, e in zip(wr, el):
            b = instr[k, X]
            if not movable(b) or writer[b] > k:
                continue
            between = rows[start[b]:start[b + 1]]
            if np.any((between > k) & (between < r)):
                continue
            moved[b] = True
            new_off[b] = boff[v] + e
    if not new_off:
        return 0
    bufs = np.fromiter(new_off, np.int64, len(new_off))
    old = tape._copy_alias
    tape._copy_alias = np.concatenate([old[0], bufs]), np.concatenate([old[1], boff[bufs]])
    tape._boff = boff.copy()
    tape._boff[bufs] = np.fromiter(new_off.values(), np.int64, len(new_off))
    return len(new_off)


def optimize(tape):
    """See the module docstring; returns ``{"before": n, "after": m, "merged": c,
    "fused": f, "dead": d, "aliased": a, "groups": g, "grouped": r}`` (instruction counts:
    common subexpressions merged, chains fused, dead instructions dropped, scalars aliased;
    elementwise groups and the rows in them)."""
    with tape.lock:
        hold, tape.planning = tape.planning, "off"  # (planned only after the rewrite)
        try:
            tape._seal()
        finally:
            tape.planning = hold
        if tape._fused_now is not None:  # groups found again below, on the new rows
            _fuse.refresh(tape)
        tape._fused = None
        planned = tape._plan is not None
        if planned:  # a fused op may read a value no rule read before: every value back
            _plan.unplan(tape)
        n = tape._instr.shape[0]
        instr, imm, src = tape._instr.copy(), tape._imm.copy(), tape._src
        live = _live_roots(tape)
        keep = np.ones(n, bool)
        merged = _cse(tape, instr, imm, live)
        dead = _dead(tape, instr, keep, live)
        fused = _fuse_softplus(tape, instr, imm, keep, live)
        fused += _fuse_sums(tape, instr, keep, live)
        m = int(keep.sum())
        if m != n:
            tape._instr = np.ascontiguousarray(instr[keep])
            tape._imm = np.ascontiguousarray(imm[keep])
            tape._src = np.ascontiguousarray(src[keep])
            tape._n = tape._nf = tape._done = m
            tape._opset, tape._opset_n, tape._interp = frozenset(), 0, None
            tape._dirty()
            tape._seal()
        elif planned or _plan.enabled(tape):  # lowered again (and planned) in the layout
            tape._dirty()
            tape._seal()
        aliased = 0
        if tape._plan is None:
            aliased = _alias_copies(tape, live)
            if aliased:
                tape._dirty()
                tape._seal()
        groups = _fuse.find_groups(tape, tape._instr, live)
        if groups.shape[0]:
            tape._fused = groups
            tape._dirty()
            tape._seal()
        info = {"before": int(n), "after": m, "merged": merged, "fused": fused, "dead": dead,
                "aliased": aliased, "groups": int(groups.shape[0]),
                "grouped": int(groups[:, 1].sum())}
        prior = getattr(tape, "_optimized", None)
        tape._optimized = {**info, "before": prior["before"] if prior else int(n)}
        return info
