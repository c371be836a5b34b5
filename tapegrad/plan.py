"""Arena memory planning: buffers whose values and gradients are never needed at the same
time share arena memory (issue 17 item 3).

Without planning every buffer has its own slot ``[boff[b], boff[b] + bsize[b])`` in the value
arena and the same slot in the gradient arena ("dense" layout, ``Tape._relayout``). A planned
tape gives several buffers one slot. The reverse kernels read a buffer's value and its
gradient at **one** offset (``mul_bwd(val, grad, x, y, ans, n)`` reads ``val[y + i]`` and
writes ``grad[x + i]``), so a buffer has one offset for both arenas, and two buffers may share
a slot only when neither their values nor their gradients are ever live at once:

* a root buffer ``r`` is **exclusive** (its own slot, as today) when it is a leaf (param,
  input, const), a Var the user holds at the time of planning (found by the garbage collector
  scan ``tape.optimize()`` also uses), named, written by PLACE (several instructions write
  parts of it; the sweeps' ``clear`` leaves it) or by more than one instruction, read
  but never written, read at or before the instruction writing it (the random draws'
  counter), when it is read or written by a group that ``tape.optimize()`` fused
  (``tapegrad.fuse``: the fused reverse reads every input's value), or when the reverse
  rule of some instruction reads its value (``REVERSE_READS``, derived from each op's reverse
  kernel: which of ``x y z ans`` it indexes ``val`` with; every operand when the kernel
  passes the arena on or indexes it otherwise -- conservative for ops added later);
* every other root (a **shared** candidate) is live over instructions ``[def(r), last(r)]``:
  from the instruction writing it to the last one reading it. Its value is read only there
  (no reverse rule reads it), and its gradient is accumulated by its readers' reverse rules
  and read by its writer's, so it is live inside that interval as well. Two candidates whose
  intervals do not overlap (strictly: an instruction never reads and writes one slot) share
  a slot of their common size. Slots are handed out in order of ``def`` from per-size free
  lists (``_assign``): slots of different sizes never share, nor do roots with a gradient
  and roots without one (no parameter reaches them: their writer never runs in reverse, so
  never clears the writes that rules such as ``add_bwd`` make into every input's gradient). A root that no instruction
  reads or writes (left by ``tape.optimize()``'s dead code) and no Var holds takes no memory
  of its own (offset 0).

Gradients of a shared slot must start at zero for each buffer using it: the reverse sweep
zeroes the output gradient of every instruction whose output is shared once its rule has read
it (``low[k, lower.CLEAR]``, the per-instruction form of ``tg.fit``'s ``clear``), so the slot is
zero again before the previous user's adjoint accumulates. It does the same for every
exclusive root that is exclusive only because a reverse rule reads its value (``clear_flags``:
no Var refers to it, so no ``.grad`` can be asked of it): ``backward()`` then zeroes neither
kind before its sweep (``Tape._zero_grads``), and a tape looked at here keeps these flags even
when it stays dense. A partial forward
(``outputs=...``) or a reverse mask that skips instructions runs a subset of each buffer's
interval, never another buffer's (the writer of a buffer that is read always runs).

Layout: exclusive roots first, in their dense order (so the parameters keep the prefix
``[0, P)`` that optimizers and ``tg.dist`` use), then the shared slots. The gradient arena has
the same length.

**When.** ``Tape._seal`` plans when ``tape.planning`` (default ``MODE``, from the environment
variable ``TAPEGRAD_PLAN``) is ``"auto"`` and the dense value arena holds at least
``MIN_BYTES`` -- below that the heap scan would cost more than the memory is worth -- and
planning saves at least ``MIN_SAVING`` of it; ``"always"`` plans every seal that saves
anything (the test suite runs under it once, to exercise every path); ``"off"`` never.

**Recording more** onto a planned tape (``tg.gradients``, a gradient penalty, ...) reads any
buffer's value, so the first record un-plans it (``unplan``, from ``Tape._dirty``): the dense
layout comes back, exclusive values and gradients are copied over, and the values of the
shared buffers are recomputed from them by one forward over their instructions (not TICK or
GUARD: the draws read the counter of the last replay and repeat its numbers). The next seal
plans again. ``tape.optimize()`` un-plans before rewriting (a fused op may read a value no
rule read before). The tangent sweep (forward mode) reads values of every instruction after
the value sweep, so ``tangents`` and ``tg.jvp``'s tapes are never planned. ``tape.save``
writes the dense layout (shared buffers' values as zeros: a forward recomputes them); a
loaded tape is planned when it is next re-sealed. ``tape.replica()`` shares the plan.
"""
import ast
import gc
import inspect
import os
import re
import textwrap

import numpy as np

from . import fuse as _fuse
from ._jit import jit
from .opcodes import A0, N_IN, OP, OUT, X, Op

MODES = ("auto", "off", "always")
MODE = os.environ.get("TAPEGRAD_PLAN", "auto").strip().lower() or "auto"
if MODE not in MODES:
    MODE = "auto"
MIN_BYTES = 8 << 20   # "auto": the dense value arena must be at least this large
MIN_SAVING = 0.1      # "auto": and planning must save at least this fraction of it

ROLES = ("x", "y", "z", "ans")
_COL = {"x": X, "y": X + 1, "z": X + 2, "ans": OUT}


class Plan:
    """What ``unplan`` needs to restore the dense layout: ``dense_off`` (per buffer, at
    planning), ``dense_used``, ``used`` (planned arena length) and ``shared`` (uint8 per root
    buffer: 1 where the buffer shares a slot)."""

    def __init__(self, dense_off, dense_used, used, shared, nb):
        self.dense_off, self.dense_used, self.used = dense_off, dense_used, used
        self.shared, self.nb = shared, nb


# ------------------------------------------------------------------ what reverse rules read
def _kernel_reads(row, namespace):
    """The operands (of ``ROLES``) whose values the reverse row ``row`` reads, or None when
    that cannot be read off its kernel's source (then: every operand)."""
    text = textwrap.dedent(row).strip()
    if text == "pass":
        return frozenset()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and any(isinstance(a, ast.Name) and a.id == "val" for a in n.args)]
    if not calls:  # the row never hands the value arena to anything
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        return frozenset() if "val" not in names else None
    reads = set()
    for call in calls:
        if not isinstance(call.func, ast.Name):
            return None
        py = getattr(namespace.get(call.func.id), "py_func", None)
        if py is None:
            return None
        try:
            fn = ast.parse(textwrap.dedent(inspect.getsource(py))).body[0]
        except (OSError, TypeError, SyntaxError):
            return None
        params = [a.arg for a in fn.args.args]
        if len(params) != len(call.args):
            return None
        role_of = {}
        arena = set()
        for p, a in zip(params, call.args):
            src = ast.unparse(a)
            if src == "val":
                arena.add(p)
            for role in ROLES:
                if re.fullmatch(rf"(np\.(u?int64)\()?{role}\)?", src):
                    role_of[p] = role
        for node in ast.walk(fn):
            if isinstance(node, ast.Name) and node.id in arena:
                parent = _parents(fn).get(node)
                if not (isinstance(parent, ast.Subscript) and parent.value is node):
                    return None  # the arena passed on or sliced as a whole
                idx = {n.id for n in ast.walk(parent.slice) if isinstance(n, ast.Name)}
                hit = {role_of[n] for n in idx if n in role_of}
                if len(hit) != 1 or isinstance(parent.slice, ast.Slice):
                    return None
                reads |= hit
    return frozenset(reads)


def _parents(tree):
    cache = getattr(tree, "_tg_parents", None)
    if cache is None:
        cache = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        tree._tg_parents = cache
    return cache


_READS = None


def reverse_reads():
    """``{opcode: frozenset of ROLES}``: the operands whose values the op's reverse rule reads
    (every operand where the kernel's source does not show it)."""
    global _READS
    if _READS is None:
        from . import sweep
        out = {}
        for op, row in sweep.REVERSE.items():
            rows = [row] + ([sweep.PLAIN[op][1]] if op in sweep.PLAIN else [])
            got = set()
            for r in rows:
                reads = _kernel_reads(r, vars(sweep))
                if reads is None:
                    got = set(ROLES)
                    break
                got |= reads
            out[int(op)] = frozenset(got)
        _READS = out
    return _READS


# ------------------------------------------------------------------ the plan
def live_roots(tape):
    """uint8 per buffer: 1 for the roots of the Vars of ``tape`` alive now (a heap scan)."""
    from .var import Var
    live = np.zeros(max(tape._nbuf, 1), np.uint8)
    bufs = [v._b for v in gc.get_objects() if type(v) is Var and v.tape is tape]
    if bufs:
        live[tape._base[np.array(bufs, np.int64)]] = 1
    return live


def exclusive_roots(tape, instr, base, pinned):
    """``(exclusive, def, last, kept)``: uint8 per buffer (1: keeps its own slot; see the
    module docstring), each root's first writing and last reading or writing instruction,
    and uint8 per buffer: 1 where the gradient must outlive the reverse sweep (every reason
    for ``exclusive`` but a reverse rule reading the value)."""
    nb = max(tape._nbuf, 1)
    n = instr.shape[0]
    ops = instr[:, OP].astype(np.int64)
    k = np.arange(n, dtype=np.int64)
    outs = base[instr[:, OUT]]
    first_w = np.full(nb, n, np.int64)
    np.minimum.at(first_w, outs, k)
    writers = np.bincount(outs, minlength=nb)
    last = first_w.copy()
    last[first_w == n] = -1
    np.maximum.at(last, outs, k)
    first_r = np.full(nb, n, np.int64)
    excl = np.zeros(nb, np.uint8)
    for j in range(3):
        has = np.flatnonzero(N_IN[ops] > j)
        r = base[instr[has, X + j]]
        np.minimum.at(first_r, r, has)
        np.maximum.at(last, r, has)
    kind = np.frombuffer(bytes(tape._kind), np.int8)[:nb]
    excl[kind != 3] = 1                          # leaves (TEMP == 3)
    excl[writers > 1] = 1
    excl[(writers == 0) & (first_r < n)] = 1     # read, never written
    excl[(first_r <= first_w) & (first_r < n)] = 1  # read before (or as) it is written
    excl[outs[ops == Op.PLACE]] = 1
    excl |= pinned[:nb]
    names = list(tape._names.values()) + list(tape._params) + list(tape._inputs.values())
    if tape._rng is not None:
        names.append(tape._rng)
    if names:
        excl[base[np.array(names, np.int64)]] = 1
    kept = excl.copy()
    if tape._fused_now is not None:  # a fused group's reverse reads all its inputs, and
        # its output is written while its inputs are read (tapegrad.fuse)
        excl[_fuse.buffers(tape, tape._fused_now)] = 1
    reads = reverse_reads()
    groups = []  # (op, roles, rows)
    for op, roles in reads.items():
        rows = np.flatnonzero(ops == op)
        if op == Op.BCAST:  # reads what its attribute op's reverse reads (ops/bcast.py's
            subs = instr[rows, A0]  # _grad_row / _grad_sum: mul x y, div y ans, add sub none)
            groups += [(op, reads.get(int(o), frozenset(ROLES)), rows[subs == o])
                       for o in np.unique(subs)]
        else:
            groups.append((op, roles, rows))
    for op, roles, rows in groups:
        if not roles or not rows.size:
            continue
        for role in roles:
            if role == "ans":
                excl[outs[rows]] = 1
            else:
                j = ROLES.index(role)
                has = rows[N_IN[op] > j]
                excl[base[instr[has, X + j]]] = 1
    return excl, first_w, last, kept


@jit
def _assign(order, first, last, size, cls, n_cls, slot_off):
    """Slots for the shared roots ``order`` (sorted by ``first``): a root takes a free slot
    of its size class ``cls`` released by a root whose ``last`` is before its ``first``, or a
    new one. Writes each root's offset (relative to the shared region) into ``slot_off``;
    returns the region's length."""
    m = order.shape[0]
    by_last = order[np.argsort(last[order], kind="mergesort")]
    head = np.full(n_cls, -1, np.int64)     # free slots per class: a linked list of roots
    nxt = np.full(slot_off.shape[0], -1, np.int64)
    p = 0
    end = np.int64(0)
    for i in range(m):
        r = order[i]
        t = first[r]
        while p < m and last[by_last[p]] < t:
            q = by_last[p]
            c = cls[q]
            nxt[q] = head[c]
            head[c] = q
            p += 1
        c = cls[r]
        h = head[c]
        if h >= 0:
            slot_off[r] = slot_off[h]
            head[c] = nxt[h]
        else:
            slot_off[r] = end
            end += size[r]
    return end


def _varied(tape, instr, base):
    """uint8 per buffer: 1 for the roots with a gradient (depending on a parameter or an
    input with ``requires_grad``), as ``Tape._reverse_mask`` finds them."""
    from . import activity
    from .opcodes import DIFFERENTIABLE
    varied = np.zeros(max(tape._nbuf, 1), np.uint8)
    leaves = list(tape._params) + sorted(tape._requires_grad)
    if leaves:
        varied[np.array(leaves, np.int64)] = 1
    activity.reverse_mask(instr, N_IN, DIFFERENTIABLE, base, varied, int(instr[0, OUT]))
    return varied


def enabled(tape):
    mode = tape.planning if tape.planning is not None else MODE
    return mode if mode in ("auto", "always") else None


def stays_dense(tape):
    """True when ``plan`` returns None for this tape before looking at its buffers (planning
    off, or "auto" with a small arena): what ``Tape._seal`` asks before reusing a layout."""
    mode = enabled(tape)
    return (mode is None or tape._n == 0
            or (mode == "auto" and tape._used * tape.dtype.itemsize < MIN_BYTES))


def plan(tape, base, src=None):
    """Plan the sealed-to-be tape's arenas (called by ``Tape._seal`` after the dense layout
    is made, before the gradient arena is allocated and the stream lowered): new offsets,
    the value arena moved into them from offsets ``src`` (per buffer; default: the dense
    ones -- ``Tape._relayout`` leaves the values where they were until one is chosen).
    Returns the clear flags per instruction (uint8: ``clear_flags``), or None when the tape
    was not looked at (planning off, a small arena); a tape that stays dense gets them too."""
    mode = enabled(tape)
    if mode is None or tape._n == 0 or tape._copy_alias[0].size:  # (aliased: optimize.py)
        return None
    dense_bytes = tape._used * tape.dtype.itemsize
    if mode == "auto" and dense_bytes < MIN_BYTES:
        return None
    instr, nb = tape._instr, tape._nbuf
    excl, first, last, kept = exclusive_roots(tape, instr, base, live_roots(tape))
    flags = clear_flags(instr, base, kept)
    roots = np.flatnonzero(base[:nb] == np.arange(nb))
    cand = roots[excl[roots] == 0]
    size = tape._bsize
    if not cand.size:
        return flags
    # a gradient slot of a root no parameter reaches still receives writes (add_bwd adds into
    # both inputs whatever the mask) but is never cleared (its writer never runs in reverse):
    # such roots share slots only among themselves
    varied = _varied(tape, instr, base)
    sizes, cls = np.unique(size[cand] * 2 + (varied[cand] != 0), return_inverse=True)
    cls_all = np.zeros(nb, np.int64)
    cls_all[cand] = cls
    unused = cand[last[cand] < 0]                # no instruction reads or writes them
    cand = cand[last[cand] >= 0]
    order = cand[np.argsort(first[cand], kind="stable")]
    slot_off = np.zeros(nb, np.int64)
    shared_len = int(_assign(order, first, last, size, cls_all, sizes.shape[0], slot_off))
    keep = roots[excl[roots] != 0]
    keep = keep[np.argsort(tape._boff[keep], kind="stable")]
    ends = np.cumsum(size[keep])
    excl_len = int(ends[-1]) if keep.size else 0
    total = excl_len + shared_len
    if unused.size:  # anywhere: nothing reads or writes them (a live Var would pin them)
        total = max(total, int(size[unused].max()))
    saving = 1.0 - total / max(tape._used, 1)
    if saving <= 0 or (mode == "auto" and saving < MIN_SAVING):
        return flags
    new_root = np.zeros(nb, np.int64)
    new_root[keep] = ends - size[keep]
    new_root[cand] = excl_len + slot_off[cand]
    new_root[unused] = 0
    dense_off = tape._boff[:nb].copy()
    move_values(tape, (dense_off if src is None else src)[keep], new_root[keep], size[keep],
                total)  # the exclusive values; the shared region holds anything
    shared = np.zeros(nb, np.uint8)
    shared[cand] = 1
    shared[unused] = 1
    tape._plan = Plan(dense_off, int(tape._used), total, shared, nb)
    tape._boff = new_root[base[:nb]]
    tape._used = total
    return flags


def clear_flags(instr, base, kept):
    """uint8 per instruction (``lower.CLEAR``): 1 where the reverse sweep zeroes the output's
    gradient once its rule has read it -- every output whose gradient need not outlive the
    sweep (``kept`` 0: a temporary no Var held at planning refers to, written once, not by
    PLACE), which includes every shared slot. ``backward()`` then need not zero them
    (``Tape._zero_grads``)."""
    flags = (kept[base[instr[:, OUT]]] == 0).astype(np.uint8)
    flags[instr[:, OP] == Op.PLACE] = 0
    return flags


def unplan(tape):
    """Back to the dense layout (see the module docstring); from ``Tape._dirty``, so the tape
    is sealed with ``tape._plan`` set. Buffers appended since the seal (pending, at the end of
    the planned arena) move to the end of the dense one."""
    p = tape._plan
    tape._plan = None
    tape._flush_buffers()
    nb = tape._nbf
    old_off = tape._boff[:nb].copy()
    old_val, old_grad = tape._val, tape._grad
    base = tape._base
    new_off = np.empty(nb, np.int64)
    new_off[:p.nb] = p.dense_off
    tail = tape._used - p.used
    total = p.dense_used + tail
    for b in range(p.nb, nb):  # recorded since the seal (a buffer or two)
        r = tape._base_of(b)
        new_off[b] = (new_off[r] if r != b else old_off[b] - p.used + p.dense_used)
    excl = np.flatnonzero((base[:p.nb] == np.arange(p.nb)) & (p.shared[:p.nb] == 0))
    size = tape._bsize
    val = np.zeros(max(total, 1), tape.dtype)
    grad = np.zeros(max(total, 1), tape.dtype)
    if excl.size:
        copy_runs(old_val, old_off[excl], val, p.dense_off[excl], size[excl])
        if old_grad.shape[0] >= p.used:
            copy_runs(old_grad, old_off[excl], grad, p.dense_off[excl], size[excl])
    if tail:
        val[p.dense_used:total] = old_val[p.used:p.used + tail]
    tape._boff[:nb] = new_off
    tape._val, tape._cap, tape._used, tape._grad = val, val.shape[0], total, grad
    tape._grad_stale = False
    tape._slots = None
    tape._layout += 1
    k1 = min(tape._done, tape._nf, tape._instr.shape[0])
    if k1:  # the shared buffers' values, from the exclusive ones
        from . import sweep
        instr = tape._instr[:k1]
        ops = instr[:, OP]
        mask = p.shared[base[instr[:, OUT]]].astype(np.uint8)
        mask[(ops == Op.TICK) | (ops == Op.GUARD)] = 0
        if mask.any():
            low = sweep.lower(instr, tape._boff[:p.nb], size[:p.nb])
            status, k = tape._interpreters().forward(instr, tape._imm[:k1], low, val, mask, 0)
            if status:
                err = tape._status_error(status, k)
                tape._broken["values"] = f"{type(err).__name__}: {err}"


@jit
def copy_runs(src, src_off, dst, dst_off, sizes):
    """``dst[dst_off[i]:+sizes[i]] = src[src_off[i]:+sizes[i]]`` for each i in order, element
    by element from the first (so within one array a run may move down over itself); no
    index arrays as long as the arena, which would double the peak memory of a seal."""
    for i in range(sizes.shape[0]):
        a, b = src_off[i], dst_off[i]
        for j in range(sizes[i]):
            dst[b + j] = src[a + j]


def move_values(tape, src, dst, sizes, total):
    """Rearrange the value arena: run i (``sizes[i]`` elements) from ``src[i]`` to
    ``dst[i]`` (the ``dst`` runs disjoint), the arena then ``total`` long. In place when no
    view of the arena is held elsewhere (numpy's ``refcheck``): the runs moving down slide
    in order of destination, the few moving up wait in copies, and the arena shrinks by
    ``resize`` -- a seal then never holds two arenas (the peak memory of a large tape).
    Otherwise into a new arena (a view handed out keeps the old one)."""
    try:
        tape._val.resize(tape._val.shape[0], refcheck=True)  # (only the reference check)
        alone = tape._val.shape[0] >= total
    except ValueError:
        alone = False
    if not alone:
        val = np.zeros(max(total, 1), tape.dtype)
        copy_runs(tape._val, src, val, dst, sizes)
        tape._val = val
    else:
        up = dst > src
        waits = [(int(d), tape._val[int(a):int(a) + int(m)].copy())
                 for a, d, m in zip(src[up], dst[up], sizes[up])]
        o = np.flatnonzero(~up)
        o = o[np.argsort(dst[o], kind="stable")]
        copy_runs(tape._val, src[o], tape._val, dst[o], sizes[o])
        for d, run in waits:
            tape._val[d:d + run.shape[0]] = run
        try:
            tape._val.resize(max(total, 1), refcheck=True)
        except ValueError:  # (a reference appeared: never expected) a copy then
            tape._val = tape._val[:max(total, 1)].copy()
    tape._cap = tape._val.shape[0]
    tape._slots = None


def seal_dense(tape):
    """Seal ``tape`` without planning, now and later (forward mode reads every value after
    the value sweep): un-plans it if it is planned."""
    tape.planning = "off"
    if tape._plan is not None:
        tape._dirty()
    tape._seal()


def dense_arrays(tape):
    """``(boff, val)`` of ``tape``'s buffers in the dense layout (``tape.save``): the current
    arrays when it is not planned, else the dense offsets and a value arena holding the
    exclusive buffers' values (zeros where shared buffers go)."""
    nb = tape._nbuf
    p = tape._plan
    if p is None:
        moved, dense = tape._copy_alias  # scalars optimize() moved into vector elements
        if not moved.size:
            return tape._boff[:nb], tape._val[:max(tape._used, 1)]
        boff, val = tape._boff[:nb].copy(), tape._val[:max(tape._used, 1)].copy()
        val[dense] = val[boff[moved]]
        boff[moved] = dense
        return boff, val
    val = np.zeros(max(p.dense_used, 1), tape.dtype)
    excl = np.flatnonzero((tape._base[:nb] == np.arange(nb)) & (p.shared[:nb] == 0))
    copy_runs(tape._val, tape._boff[excl], val, p.dense_off[excl], tape._bsize[excl])
    return p.dense_off, val


def arena_bytes(tape):
    """``(planned, dense)``: bytes of both arenas as laid out now, and without planning."""
    item = tape.dtype.itemsize
    used = int(tape._used)
    p = tape._plan
    dense = used if p is None else p.dense_used + (used - p.used)
    return 2 * used * item, 2 * dense * item


def check(tape):
    """Raise AssertionError unless the planned layout is sound: every buffer inside the
    arena, the exclusive roots disjoint from every other root, and shared roots overlapping
    only roots whose intervals are disjoint from theirs (used by the tests)."""
    nb = tape._nbuf
    base, off, size = tape._base, tape._boff[:nb], tape._bsize[:nb]
    assert np.all(off >= 0) and np.all(off + size <= max(tape._used, 1)), "outside the arena"
    assert np.all(off == off[base[:nb]]), "an alias away from its root"
    p = tape._plan
    if p is None:
        return
    excl, first, last, _ = exclusive_roots(tape, tape._instr, base, np.zeros(nb, np.uint8))
    roots = np.flatnonzero(base[:nb] == np.arange(nb))
    o = roots[np.argsort(off[roots], kind="stable")]
    for i, a in enumerate(o):
        for b in o[i + 1:]:
            if off[b] >= off[a] + size[a]:
                break
            if last[a] < 0 or last[b] < 0:  # never read nor written
                assert p.shared[a] or p.shared[b], f"buffers {a} and {b} overlap"
                continue
            assert p.shared[a] and p.shared[b], f"buffers {a} and {b} overlap"
            assert last[a] < first[b] or last[b] < first[a], \
                f"buffers {a} and {b} share memory while both are live"
