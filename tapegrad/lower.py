"""The lowered instruction stream that the value sweeps run, and the scalar rows they use.

``low`` is int64 ``(n, LOW_WIDTH)``, one row per instruction of the tape, built when the tape
is sealed (``Tape._seal``, after the tape arrays are validated; ``Tape.load`` likewise) from
``instr``, ``boff`` and ``bsize`` only::

    low[k, CODE]   the opcode, or SCALAR + opcode for an instruction that runs its op's
                   scalar row (below): one of size 1, or a row op (SOFTMAX) over one
                   contiguous row
    low[k, ANS]    arena offset of the output (of its one element for a scalar PLACE)
    low[k, N]      number of output elements (1 for a scalar row)
    low[k, X:Z+1]  arena offsets of the inputs (0 for an unused slot; the element read by a
                   scalar SLICE)
    low[k, NX]     size of input x (0 when unused)
    low[k, CLEAR]  1: the reverse sweep zeroes the output's gradient once the rule has read
                   it (a slot shared by arena planning, ``tapegrad.plan``), else 0

The rows of a group of elementwise instructions that ``tape.optimize()`` fused are marked
``FUSED`` (the first), ``MEMBER`` and ``FUSED_TAIL`` (the last) after lowering, with the
group's length in the first's and the last's ``NX`` (``tapegrad.fuse``).

A scalar SLICE or PLACE whose element is the other buffer's own slot -- a copy onto itself,
as ``tape.optimize()`` makes them by moving a scalar into the vector element it is copied
to or from (``optimize._alias_copies``) -- is lowered to ``SKIP`` with ``N`` 0: neither
sweep runs it (its reverse rule would add the element's gradient to itself). Its ``LY``
(``RUN_AHEAD``) and ``LZ`` (``RUN_BACK``) hold how many rows from it on, and from it back,
are SKIP rows (itself included): the forward sweep steps over a run of them at once, the
reverse sweep likewise backwards (the stacked / sliced scalars of a softmax make runs of 4).

so the sweeps (``tapegrad.sweep``) read an instruction's offsets from one row instead of
going through the buffer table, and read ``instr`` only for the attributes of the branches
that use them. The forward and reverse sweeps of ``tg.fit``, ``tape.forward`` and
``backward`` take ``low``; the tangent and validation loops read the tape arrays as before.

**Scalar rows.** An elementwise kernel is a loop ``for i in range(n): body`` over offsets
``x + i``, ``ans + i``. For an instruction of one element the sweeps run ``body`` with
``i = 0`` pasted into the branch as plain expressions on ``val[...]`` / ``grad[...]`` --
``scalar_row`` derives that text from the kernel's own source, so it computes exactly what
the kernel computes (same expressions, same types, same rounding) -- instead of calling the
inlined kernel with the arenas, which makes numba count references on every call (the main
cost of a scalar replay: DESIGN.md's facts). Ops whose size-1 element is not at the buffers'
offsets (SLICE reads one element of its input, PLACE writes one element of its output) get
their element's offset resolved here (``IN_ELEMENT`` / ``OUT_ELEMENT``) and a hand-written
row in ``sweep.SCALAR_FORWARD`` / ``SCALAR_REVERSE``; so does a row op over a single
contiguous row (``ONE_ROW``: SOFTMAX of an ``(A, n, B) = (1, n, 1)`` view, as of a few stacked
scalars), whose kernel's generic index arithmetic and call dominate at such sizes.
"""
import ast
import builtins
import inspect
import os
import textwrap

import numpy as np

from ._jit import drop_stale_cache, jit
from .opcodes import A0, OP, OUT, WIDTH, X, Y, Z

CODE, ANS, N, LX, LY, LZ, NX, CLEAR = range(8)
LOW_WIDTH = 8
SCALAR = 1 << 16  # low[k, CODE] of an instruction that runs its scalar row
SKIP = 1 << 17    # low[k, CODE] of a copy onto itself: nothing to run
RUN_AHEAD, RUN_BACK = LY, LZ  # a SKIP row's: the run of SKIP rows from it on / back
# a fused group's rows (tapegrad.fuse): its first runs it all, its last its reverse rules
FUSED, MEMBER, FUSED_TAIL = 1 << 18, 1 << 19, 1 << 20

# how a size-1 instruction of an op with a scalar row finds its element (sweep.SCALAR_KIND)
NONE, ELEMENTWISE, IN_ELEMENT, OUT_ELEMENT, ONE_ROW = 0, 1, 2, 3, 4


@jit
def lower_into(instr, boff, bsize, kind, low):
    """Fill ``low`` (see the module docstring) for the rows ``instr``; ``kind[op]`` says how
    a size-1 instruction of ``op`` runs its scalar row (``NONE``: it has none)."""
    for k in range(instr.shape[0]):
        op = instr[k, OP]
        out = instr[k, OUT]
        ans, n = boff[out], bsize[out]
        xb, yb, zb = instr[k, X], instr[k, Y], instr[k, Z]
        x = boff[xb] if xb >= 0 else 0
        y = boff[yb] if yb >= 0 else 0
        z = boff[zb] if zb >= 0 else 0
        nx = bsize[xb] if xb >= 0 else 0
        code = np.int64(op)
        kd = kind[op] if 0 <= op < kind.shape[0] else NONE
        if kd == ELEMENTWISE and n == 1:
            code += SCALAR
        elif kd == IN_ELEMENT and n == 1:  # (A, count, B) = (1, 1, 1): row `start` of x
            code += SCALAR
            x += np.int64(instr[k, A0 + 3]) * np.int64(instr[k, A0 + 2])
            if x == ans:
                code, n = np.int64(SKIP), 0
        elif kd == OUT_ELEMENT and nx == 1:  # x is (1, 1, 1): written at row `start`
            code += SCALAR
            ans += np.int64(instr[k, A0 + 3]) * np.int64(instr[k, A0 + 2])
            n = 1
            if x == ans:
                code, n = np.int64(SKIP), 0
        elif kd == ONE_ROW and instr[k, A0] == 1 and instr[k, A0 + 2] == 1:  # (1, n, 1)
            code += SCALAR
        low[k, CODE], low[k, ANS], low[k, N] = code, ans, n
        low[k, LX], low[k, LY], low[k, LZ], low[k, NX] = x, y, z, nx
        low[k, CLEAR] = 0
    run = 0
    for k in range(instr.shape[0] - 1, -1, -1):
        run = run + 1 if low[k, CODE] == SKIP else 0
        if run:
            low[k, RUN_AHEAD] = run
    run = 0
    for k in range(instr.shape[0]):
        run = run + 1 if low[k, CODE] == SKIP else 0
        if run:
            low[k, RUN_BACK] = run
    return low


def lower(instr, boff, bsize, kind):
    """The lowered stream of ``instr`` (validated, or rows the recorder just made)."""
    low = np.empty((instr.shape[0], LOW_WIDTH), np.int64)
    if instr.shape[0]:
        lower_into(instr, boff, bsize, kind, low)
    return low


@jit
def ingest(ints, instr, src, boff, bsize, bsite, arena, kind, low):
    """A new tape's pending rows as its arrays, and their lowered stream, in one call
    (``Tape._ingest``): ``ints`` is int64, the ``m = instr.shape[0]`` instruction rows
    ``op out x y z site``, then the buffer rows ``offset size site``, then per instruction
    with attributes ``k count a0 .. a(count-1)``; fills ``instr``, ``src``, ``boff``, ``bsize``
    and ``bsite``. Nothing here is trusted: returns False, ``low`` unfilled, when a buffer
    lies outside ``[0, arena)`` or a row names an opcode or buffer out of range (or the
    attributes do not fit), else lowers the rows into ``low`` (``lower_into``, which reads
    no more than that) and returns True. The op-by-op rules (``validate``) still run when
    the tape is sealed, as for any arrays."""
    m, r, nb = instr.shape[0], A0 + 1, boff.shape[0]
    for k in range(m):
        for j in range(A0):
            instr[k, j] = ints[r * k + j]
        for j in range(A0, instr.shape[1]):
            instr[k, j] = 0
        src[k] = ints[r * k + A0]
    p = r * m
    ok = True
    for b in range(nb):
        o, s = ints[p + 3 * b], ints[p + 3 * b + 1]
        boff[b], bsize[b], bsite[b] = o, s, ints[p + 3 * b + 2]
        if o < 0 or s < 0 or o > arena or s > arena or o + s > arena:
            ok = False
    p += 3 * nb
    while p < ints.shape[0]:
        k, c = ints[p], ints[p + 1]
        if k < 0 or k >= m or c < 0 or c > instr.shape[1] - A0 or p + 2 + c > ints.shape[0]:
            return False
        for j in range(c):
            instr[k, A0 + j] = ints[p + 2 + j]
        p += 2 + c
    for k in range(m):
        if instr[k, OP] < 0 or instr[k, OP] >= kind.shape[0] or instr[k, OUT] < 0:
            return False
        for j in range(OUT, Z + 1):
            if instr[k, j] < -1 or instr[k, j] >= nb:
                return False
    if ok:
        lower_into(instr, boff, bsize, kind, low)
    return ok


_HERE = os.path.dirname(os.path.abspath(__file__))
for _f in (lower_into, ingest):
    drop_stale_cache(_f, [os.path.join(_HERE, f) for f in ("lower.py", "_jit.py", "opcodes.py")])


# ------------------------------------------------------------------ scalar rows
class _NotScalar(Exception):
    pass


class _Paste(ast.NodeTransformer):
    """The loop body with ``p + i`` -> the argument of ``p``, parameters -> their arguments,
    locals -> ``_s_<name>``; collects the free names (the kernel module's globals)."""

    def __init__(self, i, args, local, glob):
        self.i, self.args, self.local, self.glob = i, args, local, glob
        self.free = {}

    def visit_BinOp(self, node):
        if isinstance(node.op, ast.Add):
            for p, q in ((node.left, node.right), (node.right, node.left)):
                if (isinstance(p, ast.Name) and p.id in self.args and isinstance(q, ast.Name)
                        and q.id == self.i):
                    return self.visit(p)
        return self.generic_visit(node)

    def visit_Name(self, node):
        name = node.id
        if name == self.i:
            raise _NotScalar(f"the loop index is used as {ast.unparse(node)}")
        if name in self.args:
            return ast.copy_location(ast.parse(self.args[name], mode="eval").body, node)
        if name in self.local:
            return ast.copy_location(ast.Name("_s_" + name, node.ctx), node)
        if name in self.glob:
            self.free[name] = self.glob[name]
        elif not hasattr(builtins, name):
            raise _NotScalar(f"unknown name {name}")
        return node


_FORBIDDEN = (ast.Continue, ast.Break, ast.Return, ast.Yield, ast.YieldFrom, ast.FunctionDef,
              ast.Lambda, ast.Global, ast.Nonlocal, ast.For, ast.While)


def scalar_row(row, namespace):
    """``(text, names)``: the size-1 form of the branch ``row`` -- a call of one kernel whose
    whole body is ``for i in range(n): body`` with ``n`` the call's ``n`` -- as ``body`` with
    ``i = 0`` and the call's arguments pasted in, and the globals that text needs (name ->
    object). None when ``row`` is not of that form (``namespace`` resolves the kernel)."""
    try:
        call = ast.parse(textwrap.dedent(row).strip(), mode="eval").body
    except SyntaxError:
        return None
    if (not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.keywords
            or any(isinstance(a, ast.Starred) for a in call.args)):
        return None
    py = getattr(namespace.get(call.func.id), "py_func", None)
    if py is None:
        return None
    fn = ast.parse(textwrap.dedent(inspect.getsource(py))).body[0]
    params = [a.arg for a in fn.args.args]
    if (fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs or fn.args.defaults
            or len(params) != len(call.args)):
        return None
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    if len(body) != 1 or not isinstance(body[0], ast.For) or body[0].orelse:
        return None
    loop = body[0]
    it = loop.iter
    if not (isinstance(loop.target, ast.Name) and isinstance(it, ast.Call)
            and isinstance(it.func, ast.Name) and it.func.id == "range" and len(it.args) == 1
            and isinstance(it.args[0], ast.Name) and it.args[0].id in params):
        return None
    args = {p: ast.unparse(a) for p, a in zip(params, call.args)}
    if args[it.args[0].id] != "n":  # the loop must run over the output's n elements
        return None
    i = loop.target.id
    stored = {t.id for s in loop.body for t in ast.walk(s)
              if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}
    if stored & set(params) or i in stored:
        return None
    if any(isinstance(t, _FORBIDDEN) for s in loop.body for t in ast.walk(s)):
        return None
    paste = _Paste(i, args, stored, py.__globals__)
    try:
        stmts = [paste.visit(s) for s in loop.body]
    except _NotScalar:
        return None
    text = "\n".join(ast.unparse(ast.fix_missing_locations(s)) for s in stmts)
    return text, paste.free
