"""Elementwise fusion in the replay (issue 17 item 2): a run of elementwise instructions over
one shape replayed as one compiled loop that keeps every intermediate in registers.

Op by op, a chain ``t = tanh(x * 2 + 1) * x ...`` of ten instructions over 10^6 elements
makes ten passes over memory, each reading its inputs and writing its output (80 MB of
traffic for 8 MB of data); XLA compiles such a chain into one loop. Here ``tape.optimize()``
marks **groups**: runs of consecutive instructions (at most ``MAX_MEMBERS``) whose opcodes
are elementwise (``fusable()``: each kernel is one loop ``for i in range(n)`` over ``x + i``,
``ans + i`` whose body ``lower.scalar_row`` derives as a scalar row reading only element
``i``), all of one size ``n`` of at least ``MIN_BYTES``, where every output but the last member's is a
temporary read only inside the group and held by no live Var (the same test as the
optimizer's other fusions). Each group becomes a **program**, generated as Python text and
compiled by numba as a C callback (``program_source``, one module per wiring and dtype, in
the disk cache beside the interpreters; its loops 512 bits wide where the CPU has AVX-512, as
the transcendental kernels' are: ``ops/_vmath.wide``):

* **forward**: one loop over the elements; per element the group's inputs from outside (its
  **externals**) are loaded into registers, every member's *scalar row* -- the kernel's own
  loop body, the text the sweeps run for a one-element instruction -- runs on registers
  (``val[x]`` -> ``r3``), and the last member's register is stored. Inputs are read once, the
  output written once, nothing else touches memory; each register is rounded to the arena's
  type where the arena would round it (``_T``), so the values are the op-by-op sweep's bit for
  bit.
* **reverse**: per element the members' values are recomputed in registers (nothing of the
  group but its externals is kept for the reverse sweep), the output's gradient is loaded,
  the members' reverse scalar rows run last to first on gradient registers (each only when
  its reverse mask bit is set), and the gradient of each external that needs one (``mask`` bit
  ``2 << j`` of a member reading it) is added to the arena once. Gradients may differ from
  the op-by-op sweep's in the last bits: an external's contributions are summed in a
  register before they meet the arena's value.

**Segments.** A group whose members call two or more transcendental functions (or libm's
sin or cos, which keep a loop scalar) runs in ``segments``: a loop over strips of ``STRIP``
elements, holding one inner loop per segment. A register that a later segment reads is
stored in a strip of its member's slot in the value arena and loaded there again (an
intermediate's slot, which nothing outside the group reads); the externals are loaded in
each segment that reads them. The values are the same numbers (the same rows, the same
rounding); the strips stay in the L1 cache.

The sweeps call a program through its address (``call``, an intrinsic: one indirect call per
group, no Python), which the group's first lowered row holds.

**What the tape keeps.** The group's instructions and buffers stay as recorded: listings,
``save``, recorded derivatives (``tg.gradients`` on a fused tape records the members' own
rules) and forward mode see the unfused tape. Only ``tape._fused`` (rows ``(k0, m)``) says
which runs are groups; each seal checks them again (``effective``): a group whose
intermediate has since gained a reader outside it (an instruction recorded after
``optimize()`` that reads it) runs op by op. The intermediates' slots do not hold their
values after a fused replay (left as they were, or holding a segment's strips), so whatever
reads values there first recomputes them op by op (``refresh``):
recording onto the tape (``Tape._dirty``) and the tangent sweep. Arena planning gives the
buffers of a group slots of their own (``plan.exclusive_roots``): the fused reverse reads
every external's value, and the output is written while the inputs are read.

**Lowered rows** (``lower.FUSED`` / ``MEMBER`` / ``FUSED_TAIL``): the first member's row runs
the forward program and steps past the group; the last member's runs the reverse program and
steps back before it. The first row's ``ANS`` and ``N`` hold the programs' addresses, its
``NX`` and the last row's the group's length; every other offset stays, and a program reads
its externals' offsets, the output's and ``n`` from the rows (``wiring`` says which). The
Python tier (``tapegrad.tier``) never runs a fused row: it waits for the compiled sweep.
``tape.forward(check_finite=True)`` runs the stream without groups (``Tape._unfused_low``), so
every member's values are checked and a NaN is named by the op that made it; ``tg.fit``'s
fused optimizer updates a parameter only after the reverse of every group reading it
(``fit._fused_plan``: a group's reverse recomputes all its members from their inputs).
"""
import ast
import functools
import re
import textwrap

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .opcodes import N_IN, OP, OUT, X, Op

MIN_BYTES = 1 << 19  # a group's size at least (65,536 float64 or 131,072 float32 elements):
#                      smaller arrays stay in the caches, where the reverse's recomputing
#                      measured slower than reading stored values (BENCHMARKS.md, session 16)
MAX_MEMBERS = 32     # instructions in a group
FUSE = -2            # in an opcode set (tapegrad.sweep): the tape has groups
IMPORT = "from tapegrad.fuse import call as fuse_call"  # (the interpreters' branches call it)


@functools.cache  # (on first use: tapegrad.sweep, which it reads, imports this module)
def fusable():
    """The opcodes a group may hold: those whose forward and reverse kernels are single
    elementwise loops (their scalar rows derive from them, and read only their own
    elements), or that have no reverse rule."""
    from . import sweep
    out = set()
    for op in sweep.SCALAR_FORWARD:
        if op in (Op.SLICE, Op.PLACE, Op.SOFTMAX):  # (hand-written scalar rows)
            continue
        rev = sweep.SCALAR_REVERSE.get(op)
        if rev is None and sweep.REVERSE[op] != "pass":
            continue
        try:
            for row in (sweep.SCALAR_FORWARD[op], rev or "pass"):
                _member(row, 0, int(op), (1, 2, 3), 0)
        except _NotFusable:
            continue
        out.add(int(op))
    return frozenset(out)


# ------------------------------------------------------------------ finding groups
def min_size(tape):
    """The fewest elements of a group on ``tape`` (``MIN_BYTES`` of its dtype)."""
    return max(2, MIN_BYTES // tape.dtype.itemsize)


def find_groups(tape, instr, live):
    """Groups of the sealed rows ``instr`` (see the module docstring), as int64 rows
    ``(k0, m)``; ``live``: per root buffer, held by a Var, named, a parameter or an input."""
    n = instr.shape[0]
    if n < 2:
        return np.zeros((0, 2), np.int64)
    base, bsize = tape._base, tape._bsize
    ops = instr[:, OP].astype(np.int64)
    outs = base[instr[:, OUT]]
    size = bsize[instr[:, OUT]]
    ok = np.isin(ops, np.fromiter(fusable(), np.int64)) & (size >= min_size(tape))
    for j in range(3):  # operands of the output's size (no broadcast, no views of others)
        has = N_IN[ops] > j
        b = np.where(has, instr[:, X + j], 0)
        ok &= ~has | (bsize[b] == size)
    # the last row reading each root (n: held, read after the tape ends)
    last = np.full(max(tape._nbuf, 1), -1, np.int64)
    k = np.arange(n, dtype=np.int64)
    for j in range(3):
        has = np.flatnonzero(N_IN[ops] > j)
        np.maximum.at(last, base[instr[has, X + j]], has)
    last[live[:last.shape[0]]] = n
    writers = np.bincount(outs, minlength=last.shape[0])
    reach = np.where(writers[outs] == 1, last[outs], n)  # a row's output read up to here
    groups = []
    k = 0
    while k < n:
        if not ok[k]:
            k += 1
            continue
        s, best, far = k, -1, k
        e = k
        while e < n and ok[e] and size[e] == size[s] and e - s < MAX_MEMBERS:
            if e > s and far <= e:
                best = e  # [s, e]: every earlier member's output read only inside
            far = max(far, reach[e])
            e += 1
        if best > s:
            groups.append((s, best - s + 1))
            k = best + 1
        else:
            k = s + 1
    return np.array(groups, np.int64).reshape(-1, 2)


def effective(tape, groups):
    """The rows of ``groups`` that still hold on the tape as it is now (its rows in range,
    opcodes fusable, one size, no intermediate read outside the group): int64 ``(g, 2)``."""
    instr = tape._instr[:tape._n]
    n = instr.shape[0]
    if groups is None or not groups.shape[0] or n == 0 or numba.config.DISABLE_JIT:
        return None  # (without numba the programs cannot be compiled: op by op)
    base, bsize = tape._base, tape._bsize
    ops = instr[:, OP].astype(np.int64)
    fus = np.zeros(max(int(Op.N_OPS), 1), bool)
    fus[list(fusable())] = True
    k0, m = groups[:, 0], groups[:, 1]
    good = (k0 >= 0) & (m >= 2) & (m <= MAX_MEMBERS) & (k0 + m <= n)
    gid = np.full(n, -1, np.int64)  # the group of each row
    inter = np.full(max(tape._nbuf, 1), -1, np.int64)  # the group of each intermediate
    for g in np.flatnonzero(good):
        rows = np.arange(k0[g], k0[g] + m[g])
        o = ops[rows]
        sz = bsize[instr[rows, OUT]]
        if (not fus[np.clip(o, 0, fus.shape[0] - 1)].all() or (o < 0).any()
                or (sz != sz[0]).any() or sz[0] < min_size(tape) or (gid[rows] >= 0).any()):
            good[g] = False
            continue
        for j in range(3):
            has = rows[N_IN[o] > j]
            if (bsize[instr[has, X + j]] != sz[0]).any():
                good[g] = False
        if good[g]:
            gid[rows] = g
            inter[base[instr[rows[:-1], OUT]]] = g
    for j in range(3):  # an intermediate read outside its group: that group runs op by op
        has = np.flatnonzero(N_IN[ops] > j)
        gr = inter[base[instr[has, X + j]]]
        bad = (gr >= 0) & (gr != gid[has])
        good[gr[bad]] = False
    inter_out = inter[base[instr[:, OUT]]]  # written outside its group (twice written)
    bad = (inter_out >= 0) & (inter_out != gid)
    good[inter_out[bad]] = False
    out = groups[good]
    return out if out.shape[0] else None


def buffers(tape, groups):
    """Root buffers that the rows of ``groups`` read or write (for ``tapegrad.plan``)."""
    rows = np.concatenate([np.arange(a, a + m) for a, m in groups])
    instr = tape._instr[rows]
    bufs = [instr[:, OUT]] + [instr[N_IN[instr[:, OP]] > j, X + j] for j in range(3)]
    return tape._base[np.concatenate(bufs)]


# ------------------------------------------------------------------ the lowered rows
def lower(tape, low, groups):
    """Mark the rows of ``groups`` in the lowered stream ``low`` (module docstring): the
    first row's ``ANS`` and ``N`` hold the addresses of the group's compiled forward and
    reverse programs (``program``), its ``NX`` and the last row's the group's length."""
    from . import lower as L
    for k0, m in groups:
        fwd, rev = program(tape, int(k0), int(m))
        low[k0 + 1:k0 + m - 1, L.CODE] = L.MEMBER
        low[k0, L.CODE], low[k0, L.ANS], low[k0, L.N] = L.FUSED, fwd, rev
        low[k0, L.NX], low[k0, L.CLEAR] = m, 0
        low[k0 + m - 1, L.CODE], low[k0 + m - 1, L.NX] = L.FUSED_TAIL, m
    return low


def wiring(tape, k0, m):
    """The group at row ``k0`` as a program: per member its opcode and the registers of its
    inputs (member ``j``'s result is register ``j``; the externals, inputs from outside the
    group, are registers ``m, m + 1, ...`` in the order they are first read), and per
    external the ``(member, input slot)`` pairs reading it, the first of which the program
    reads its arena offset from."""
    instr, base, boff = tape._instr, tape._base, tape._boff
    ops, src, readers = [], [], []
    made, ext = {}, {}  # root -> member making it (the latest); arena offset -> external
    for j in range(m):
        k = k0 + j
        op = int(instr[k, OP])
        regs = []
        for q in range(int(N_IN[op])):
            b = int(instr[k, X + q])
            r = made.get(int(base[b]))
            if r is None:
                e = ext.setdefault(int(boff[b]), len(ext))
                if e == len(readers):
                    readers.append([])
                readers[e].append((j, q))
                r = m + e
            regs.append(r)
        ops.append(op)
        src.append(tuple(regs))
        made[int(base[instr[k, OUT]])] = j
    return tuple(ops), tuple(src), tuple(tuple(r) for r in readers)


class _NotFusable(Exception):
    pass


class _Registers(ast.NodeTransformer):
    """A scalar row of member ``j`` (``sweep.SCALAR_FORWARD`` / ``SCALAR_REVERSE``: the
    kernel's loop body with ``i = 0``) over registers: ``val[ans]`` -> ``r<j>``,
    ``val[x]`` -> the register of input x, ``grad[...]`` likewise ``g<...>``, ``imm[k]`` ->
    ``c<j>``, ``op`` -> the opcode, the row's locals renamed per member; a store rounds to the
    arena's type as the arena would (``_T``)."""

    def __init__(self, j, op, regs, imm="c"):
        self.j, self.op, self.imm = j, op, imm
        self.regs = {"ans": j, **dict(zip("xyz", regs))}

    def visit_Subscript(self, node):
        v, s = node.value, node.slice
        if isinstance(v, ast.Name) and v.id in ("val", "grad", "imm"):
            if v.id == "imm" and isinstance(s, ast.Name) and s.id == "k":
                return ast.copy_location(ast.Name(f"{self.imm}{self.j}", node.ctx), node)
            if v.id != "imm" and isinstance(s, ast.Name) and s.id in self.regs:
                prefix = "r" if v.id == "val" else "g"
                return ast.copy_location(ast.Name(f"{prefix}{self.regs[s.id]}", node.ctx),
                                         node)
            raise _NotFusable(ast.unparse(node))
        return self.generic_visit(node)

    def visit_Compare(self, node):  # x == y (one buffer read twice): whether one register
        names = [node.left] + node.comparators
        if (len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.NotEq))
                and all(isinstance(v, ast.Name) and v.id in self.regs for v in names)):
            same = self.regs[names[0].id] == self.regs[names[1].id]
            return ast.copy_location(ast.Constant(same == isinstance(node.ops[0], ast.Eq)),
                                     node)
        return self.generic_visit(node)

    def visit_Name(self, node):
        if node.id == "op":
            return ast.copy_location(ast.Constant(self.op), node)
        if node.id.startswith("_s_"):
            return ast.copy_location(ast.Name(f"_s{self.j}_{node.id[3:]}", node.ctx), node)
        if node.id.startswith("scalar_v"):  # the inline kernel, not its called twin
            return ast.copy_location(ast.Name(node.id[7:], node.ctx), node)
        if node.id in ("val", "grad", "imm", "k", "ans", "x", "y", "z", "n", "i"):
            raise _NotFusable(node.id)
        return node

    def visit_Assign(self, node):
        node = self.generic_visit(node)
        t = node.targets
        if len(t) == 1 and isinstance(t[0], ast.Name) and t[0].id[0] in "rg":
            node.value = ast.Call(ast.Name("_T", ast.Load()), [node.value], [])
        return node

    def visit_AugAssign(self, node):  # grad[x] += e: the arena adds, then rounds
        node = self.generic_visit(node)
        if not (isinstance(node.target, ast.Name) and node.target.id[0] in "rg"):
            raise _NotFusable(ast.unparse(node))
        total = ast.BinOp(ast.Name(node.target.id, ast.Load()), node.op, node.value)
        return ast.copy_location(ast.Assign([ast.Name(node.target.id, ast.Store())],
                                            ast.Call(ast.Name("_T", ast.Load()), [total], [])),
                                 node)


def _member(row, j, op, regs, indent, imm="c"):
    tree = ast.parse(textwrap.dedent(row))
    tree = ast.fix_missing_locations(_Registers(j, op, regs, imm).visit(tree))
    return textwrap.indent(ast.unparse(tree), " " * indent)


# members whose rows call a transcendental function: two of them in one loop body measured
# slower than each in a loop of its own (float64 sigmoid(tanh(x)): 2.63 ns per element in
# one loop, 0.87 + 1.05 in two; BENCHMARKS.md session 17), and a libm call (sin, cos)
# keeps its whole loop scalar
HEAVY = re.compile(r"v(exp|log|tanh|sigmoid)\(|math\.(sin|cos)\(")
SCALAR_CALL = re.compile(r"math\.(sin|cos)\(")
STRIP = 512  # elements per strip of a program in segments (its registers' strips: 4 KiB)


def segments(ops):
    """Per member the segment of the group's program it runs in (module docstring): a new
    segment starts at a member calling a transcendental function when the segment already
    holds one, and around a member calling libm (whose loop stays scalar)."""
    from . import sweep
    out, seg, heavy, alone = [], 0, False, False
    for j, op in enumerate(ops):
        row = sweep.SCALAR_FORWARD[Op(op)]
        h, scalar = bool(HEAVY.search(row)), bool(SCALAR_CALL.search(row))
        if j and ((h and heavy) or alone or scalar):
            seg, heavy = seg + 1, False
        heavy, alone = heavy or h, scalar
        out.append(seg)
    return out


def program_source(ops, src, readers, dtype, single=()):
    """The text of a module holding the group's programs ``forward`` and ``reverse`` for
    ``dtype`` arenas (numba C callbacks with ``SIGNATURE``): one loop over the elements, every
    member's scalar row on registers (module docstring). ``single[j]``: member ``j``'s
    immediate is a float32 number and its op one of ``SINGLE_OPS``, so its value is computed
    in float32 (the same number: see ``SINGLE_OPS``); its reverse row keeps the float64
    immediate (``d<j>``). A group of several ``segments`` runs them as loops in turn over
    strips of ``STRIP`` elements, each register another segment reads kept in a strip of
    its member's slot in the value arena (an intermediate's: nothing else reads it)."""
    from . import sweep
    from .lower import LOW_WIDTH as WIDTH
    m, ne = len(ops), len(readers)
    uses_imm = [j for j, op in enumerate(ops) if "imm[k]" in
                sweep.SCALAR_FORWARD[Op(op)] + str(sweep.SCALAR_REVERSE.get(Op(op)))]
    seg = segments(ops)
    head = [f"    t = (k0 + {m - 1}) * {WIDTH}",
            "    n = np.uint64(low[t + 2])",
            "    out = np.uint64(low[t + 1])"]
    head += [f"    e{e} = np.uint64(low[(k0 + {j}) * {WIDTH} + {3 + q}])"
             for e, ((j, q), *_) in enumerate(readers)]
    head += [f"    c{j} = np.float32(imm[k0 + {j}])" if j < len(single) and single[j]
             else f"    c{j} = imm[k0 + {j}]" for j in uses_imm]
    head += [f"    d{j} = imm[k0 + {j}]" for j in uses_imm]
    values = [_member(sweep.SCALAR_FORWARD[Op(op)], j, op, src[j], 8)
              for j, op in enumerate(ops)]
    act = [f"    a{j} = mask[k0 + {j}] & 1 != 0" for j in range(m)]
    need = [f"    need{e} = " + " or ".join(f"mask[k0 + {j}] & {1 | 2 << q} == {1 | 2 << q}"
                                           for j, q in rd) for e, rd in enumerate(readers)]
    grads = [f"        g{r} = _T(0)" for r in range(m + ne) if r != m - 1]
    back = []
    for j in range(m - 1, -1, -1):
        row = sweep.SCALAR_REVERSE.get(Op(ops[j]))
        if row is not None:  # (none: no gradient, as comparisons)
            back += [f"        if a{j}:", _member(row, j, ops[j], src[j], 12, "d")]
    adds = [f"        if need{e}:\n            grad[e{e} + i] = _T(grad[e{e} + i] + g{m + e})"
            for e in range(ne)]
    # a member's slot: its row's output offset (the first row's holds the programs'
    # addresses: member 0's is read off a row reading it)
    slot = {j: (j, 1) for j in range(1, m)}
    slot.update({0: (j, 3 + q) for j in range(m - 1, 0, -1)
                 for q, r in enumerate(src[j]) if r == 0})
    for parts in ([[values[j] for j in range(m) if seg[j] == s] for s in range(seg[-1] + 1)],
                  [values]):  # (in one loop if a register to keep has no slot to read)
        fwd = _loops(parts[:-1] + [parts[-1] + [f"        val[out + i] = r{m - 1}"]], m)
        rev = _loops(parts[:-1] + [parts[-1] + grads + [f"        g{m - 1} = grad[out + i]"]
                                   + back + adds], m)
        spilled = sorted(set(fwd[1]) | set(rev[1]))
        if all(j in slot for j in spilled):
            break
    head += [f"    p{j} = np.uint64(low[(k0 + {slot[j][0]}) * {WIDTH} + {slot[j][1]}])"
             for j in spilled]
    name = np.dtype(dtype).name
    return "\n".join([
        f'"""A fused group\'s programs ({name}): {" ".join(Op(o).name for o in ops)}.',
        f"Generated by tapegrad.fuse from the sources with digest {sweep._digest()}: do not "
        'edit."""',
        "import importlib",
        "globals().update({k: v for k, v in vars(importlib.import_module('tapegrad.sweep'))"
        ".items() if not k.startswith('__')})",
        "from numba import cfunc",
        "from tapegrad.fuse import signature",
        "from tapegrad.ops._vmath import wide",
        f"_T = np.{name}",
        "",
        f"@cfunc(signature(np.{name}), cache=True, error_model='numpy')",
        "def fuse_program_forward(val, grad, imm, low, mask, k0):", "    wide()", *head,
        *fwd[0], "",
        f"@cfunc(signature(np.{name}), cache=True, error_model='numpy')",
        "def fuse_program_reverse(val, grad, imm, low, mask, k0):", "    wide()", *head,
        *act, *need, *rev[0], ""])


_REG = re.compile(r"\br(\d+)\b")


def _loops(parts, m):
    """``(lines, spilled)``: the loops of a program whose body is the segments ``parts``
    (lists of lines at the loop body's indent, 8): one loop over ``i < n`` for one segment;
    for several, a loop over strips of ``STRIP`` elements holding one loop per segment,
    where a segment loads the externals it reads (registers ``m, ...``) and the registers of
    earlier segments' members it reads (from ``p<j>``: ``spilled``), and stores those a later
    segment reads."""
    if len(parts) == 1:
        loads = sorted({int(r) for r in _REG.findall("\n".join(parts[0])) if int(r) >= m})
        return (["    for i in range(n):",
                 *[f"        r{r} = val[e{r - m} + i]" for r in loads], *parts[0]], ())
    read = [{int(r) for r in _REG.findall("\n".join(body))} for body in parts]
    made = [{int(r) for r in re.findall(r"^\s*r(\d+) = ", "\n".join(body), re.M)}
            for body in parts]  # (registers < m: the members')
    lines = ["    s = np.uint64(0)",
             "    while s < n:",
             f"        w = n - s if n - s < np.uint64({STRIP}) else np.uint64({STRIP})"]
    spilled = set()
    for s, body in enumerate(parts):
        before = set().union(*made[:s]) if s else set()
        later = set().union(*read[s + 1:]) if s + 1 < len(parts) else set()
        ext = sorted(r for r in read[s] if r >= m)
        inner = sorted((read[s] & before) - made[s])
        keep = sorted(made[s] & later)
        spilled |= set(inner) | set(keep)
        lines += ["        for i in range(w):",
                  *[f"            r{r} = val[e{r - m} + s + i]" for r in ext],
                  *[f"            r{r} = val[p{r} + i]" for r in inner],
                  *[textwrap.indent(line, "    ") for line in body],
                  *[f"            val[p{r} + i] = r{r}" for r in keep]]
    lines.append("        s += w")
    # the arena's own elements are at the strip's start plus i
    text = "\n".join(lines).replace("[out + i]", "[out + s + i]")
    text = re.sub(r"(grad\[e\d+) \+ i\]", r"\1 + s + i]", text)
    return text.split("\n"), sorted(spilled)


def signature(dtype):
    """The programs' C signature: ``void(val *, grad *, double *imm, int64 *low,
    uint8 *mask, int64 k0)``, the arenas of ``dtype``."""
    from numba import types
    t = types.float32 if np.dtype(dtype) == np.float32 else types.float64
    return types.void(types.CPointer(t), types.CPointer(t), types.CPointer(types.float64),
                      types.CPointer(types.int64), types.CPointer(types.uint8), types.int64)


_programs = {}  # (wiring, dtype, single) -> the module (which keeps its callbacks alive)

# x + c, x * c, c - x, x / c, c / x with a float32 x and a float64 c: the kernels compute in
# float64 and round to float32. Where c is itself a float32 number, that is the float32
# operation's result exactly (double rounding is innocuous for + - * / when the wider format
# has at least 2p + 2 bits: 53 >= 2 * 24 + 2), so a float32 program computes these values in
# float32, without the conversions to float64 and back (3x faster on a chain of them)
SINGLE_OPS = frozenset(int(o) for o in (Op.ADDC, Op.MULC, Op.RSUBC, Op.DIVC, Op.RDIVC,
                                        Op.LEAKY_RELU))


def program(tape, k0, m):
    """``(forward, reverse)``: the addresses of the compiled programs of the group at row
    ``k0`` (generated once per wiring, dtype and float32 immediates, compiled or loaded from
    the disk cache)."""
    from . import sweep
    ops = tape._instr[k0:k0 + m, OP]
    imm = tape._imm[k0:k0 + m]
    single = tuple(bool(tape.dtype == np.float32 and int(o) in SINGLE_OPS
                        and np.float32(c) == c) for o, c in zip(ops, imm))
    key = wiring(tape, k0, m) + (tape.dtype.char, single)
    mod = _programs.get(key)
    if mod is None:
        mod = _programs[key] = sweep._load(program_source(*key[:3], tape.dtype, single))
    return mod.fuse_program_forward.address, mod.fuse_program_reverse.address


@intrinsic
def call(typingctx, address, val, grad, imm, low, mask, k0):
    """``address(val, grad, imm, low, mask, k0)``: a program (``signature``) called through
    its address, the arrays passed as their data pointers."""
    sig = types.void(address, val, grad, imm, low, mask, k0)

    def codegen(context, builder, signature, args):
        ptrs = [context.make_array(t)(context, builder, a).data
                for t, a in zip(signature.args[1:6], args[1:6])]
        fnty = ir.FunctionType(ir.VoidType(), [p.type for p in ptrs] + [ir.IntType(64)])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, ptrs + [args[6]])
        return context.get_dummy_value()
    return sig, codegen


# the sweeps' branches for a group's rows (tapegrad.sweep adds them)
FORWARD_BRANCHES = """
        elif code == {fused}:  # a fused group (tapegrad.fuse): all of it, then past it
            m = low[k, 6]
            fuse_call(low[k, 1], val, val, imm, low, mask, np.int64(k))
            k += m - 1  # (the output's check below names the last member)
            ans, n = np.uint64(low[k, 1]), np.uint64(low[k, 2])
        elif code == {member} or code == {tail}:  # only a partial mask reaches these
            return UNKNOWN_OP, k"""
REVERSE_BRANCHES = """
        elif code == {tail}:  # a fused group's reverse rules, then back before it
            m = low[k, 6]
            fuse_call(low[k - m + 1, 2], val, grad, imm, low, mask, np.int64(k - m + 1))
            if clear or low[k, 7] != 0:
                for i in range(n):
                    grad[ans + i] = 0
            n = np.uint64(0)
            k -= m - 1
        elif code == {member} or code == {fused}:  # only a partial mask reaches these
            return UNKNOWN_OP, k"""


def branches(forward):
    """The sweep's branches for a group's rows (``forward``: the forward sweep's)."""
    from . import lower as L
    text = FORWARD_BRANCHES if forward else REVERSE_BRANCHES
    return text.format(fused=L.FUSED, member=L.MEMBER, tail=L.FUSED_TAIL)


# ------------------------------------------------------------------ values op by op
def refresh(tape):
    """Recompute the values of the groups' members op by op (the intermediates, which a
    fused replay does not leave in their slots): before anything reads them (module
    docstring)."""
    groups = tape._fused_now
    if groups is None or tape._low is None:
        return
    from . import sweep
    n = tape._instr.shape[0]
    mask = np.zeros(n, np.uint8)
    for k0, m in groups:
        mask[k0:k0 + m - 1] = 1
    low = sweep.lower(tape._instr, tape._boff, tape._bsize)
    tape._interpreters().forward(tape._instr, tape._imm, low, tape._val, mask, 0)
