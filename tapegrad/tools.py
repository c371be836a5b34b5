"""Seeing a tape: the printed listing, Graphviz DOT, rendering, statistics.

Nothing here changes the tape (no sealing, no replay): the functions only read the buffer
table, the instructions and the arenas.

>>> import numpy as np, tapegrad as tg
>>> tape = tg.Tape()
>>> w = tape.param(np.array([2.0]), name="w")
>>> loss = (w * w).sum()
>>> print(tg.tools.listing(tape))                     # doctest: +SKIP
params:
  %0 w  f64[1]  <stdin>:3
%2 = mul %0, %0   (f64[1])  <stdin>:4
%3 = sum %2 {A=1 n=1 B=1}   (f64[])  <stdin>:4
"""
import os
import shutil
import subprocess
import tempfile
from collections import Counter

import numpy as np

from .opcodes import A0, N_ATTRS, OP, OPS, OUT, X, Op
from .plan import arena_bytes

PARAM, INPUT, CONST, TEMP = 0, 1, 2, 3
_SMALL = 4  # buffers with at most this many elements show their numbers in DOT labels


def _dt(tape):
    return "f64" if tape.dtype == np.float64 else "f32"


def _ty(tape, b):
    return f"{_dt(tape)}[{','.join(str(d) for d in tape._shape[b])}]"


def _value(tape, arena, b):
    o, s = int(tape._boff[b]), int(tape._bsize[b])
    if o + s > arena.shape[0]:  # the gradient arena is made when the tape is first sealed
        return np.zeros(s, arena.dtype)
    return np.asarray(arena[o:o + s])


def _nums(a):
    return "[" + ", ".join(f"{float(v):.4g}" for v in a) + "]"


def _attrs(row, imm):
    """``{A=1 n=3 B=1}`` / ``{slope=0.1}`` for ops whose attributes say something."""
    op = Op(int(row[OP]))
    spec = OPS[op].attrs
    if spec.startswith("imm="):
        return f" {{{spec[4:]}={imm:g}}}"
    if op == Op.GUARD:
        return f" {{expected={int(row[A0])}}}"
    if op == Op.BCAST:  # {sub d=1000x50x32 bx=2 by=1}: the operation by name
        a = [int(v) for v in row[A0:A0 + 6]]
        name = OPS[Op(a[0])].name if 0 <= a[0] < Op.N_OPS else f"op={a[0]}"
        return f" {{{name} d={a[1]}x{a[2]}x{a[3]} bx={a[4]} by={a[5]}}}"
    if not spec or spec.startswith("sx"):
        return ""
    names = spec.split()
    return " {" + " ".join(_attr(n, int(row[A0 + j])) for j, n in enumerate(names[:N_ATTRS])) + "}"


def _attr(name, v):
    """``n=3``; a name ending in 2 is a pair packed as h | w << 15 (ops/conv.py): ``k=3x3``."""
    return f"{name[:-1]}={v & 32767}x{v >> 15}" if name.endswith("2") else f"{name}={v}"


def listing(tape):
    """The tape as text: a header of params, inputs and consts, then one line per instruction
    ``%7 = matmul %3, %5   (f64[32,64])  model.py:12``. A reshape (a view of its base's
    memory, no instruction) prints as ``%5 = view %3`` where it was made."""
    tape._flush()
    lines = []
    groups = {PARAM: [], INPUT: [], CONST: []}
    for b in range(tape._nbuf):
        if tape._base_of(b) == b and tape._kind[b] in groups:
            groups[tape._kind[b]].append(b)
    for kind, title in ((PARAM, "params"), (INPUT, "inputs"), (CONST, "consts")):
        if not groups[kind]:
            continue
        lines.append(f"{title}:")
        for b in groups[kind]:
            name = tape._name_of(b) or ""
            extra = ""
            if kind == CONST and tape._bsize[b] <= _SMALL:
                extra = " = " + _nums(_value(tape, tape._val, b))
            if b in tape._requires_grad:
                extra += "  requires_grad"
            lines.append(f"  %{b} {name}  {_ty(tape, b)}{extra}  {tape._bsrc(b)}")
    body = []
    shown = set()
    aliases = [b for b in range(tape._nbuf) if tape._base_of(b) != b]
    ai = 0

    def show_alias(b):
        if tape._base_of(b) != b and b not in shown:
            shown.add(b)
            body.append((f"%{b} = view %{tape._base_of(b)}", b, tape._bsrc(b)))

    for k in range(tape._n):
        row = tape._instr[k]
        op = Op(int(row[OP]))
        ins = [int(row[X + j]) for j in range(OPS[op].n_in)]
        while ai < len(aliases) and aliases[ai] < int(row[OUT]):
            show_alias(aliases[ai])
            ai += 1
        for b in ins:
            show_alias(b)
        out = int(row[OUT])
        text = f"{OPS[op].name} " + ", ".join(f"%{b}" for b in ins) + _attrs(row, tape._imm[k])
        body.append((text if op == Op.GUARD else f"%{out} = {text}", out, tape._site(k)))
        shown.add(out)
    for b in aliases:
        show_alias(b)
    width = max([len(t) for t, _, _ in body] + [0])
    for text, b, src in body:
        name = f"  # {tape._name_of(b)}" if tape._name_of(b) and (
            tape._kind[b] == TEMP or tape._base_of(b) != b) else ""
        lines.append(f"{text:<{width}}   ({_ty(tape, b)})  {src}{name}")
    if not tape._n:
        lines.append("(no instructions)")
    return "\n".join(lines)


def _esc(s):
    return str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_dot(tape, values=True, grads=True):
    """Graphviz DOT source: a box per buffer (name, shape and, for buffers of at most four
    elements, value and gradient), an ellipse per instruction, dashed edges for views.

    >>> src = tape.to_dot()               # doctest: +SKIP
    >>> open("tape.dot", "w").write(src)  # doctest: +SKIP
    """
    tape._flush()
    colors = {PARAM: "lightblue", INPUT: "palegreen", CONST: "lightgrey", TEMP: "white"}
    out = ["digraph tape {", "  rankdir=LR;", '  node [fontname="monospace", fontsize=10];']
    for b in range(tape._nbuf):
        label = [f"%{b}" + (f" {tape._name_of(b)}" if tape._name_of(b) else ""), _ty(tape, b)]
        shared = tape._plan is not None and tape._plan.shared[tape._base[b]]
        if shared:  # its slot is shared (tapegrad.plan): no value or gradient to show
            label.append("(memory shared by planning)")
        elif tape._bsize[b] <= _SMALL:
            if values:
                label.append("data " + _nums(_value(tape, tape._val, b)))
            if grads and (tape._varied is None or tape._varied[tape._base[b]]):
                label.append("grad " + _nums(_value(tape, tape._grad, b)))  # (a buffer
                # with no gradient: its slot holds what rules wrote, never zeroed)
        style = "dashed" if tape._base_of(b) != b else "filled"
        out.append(f'  b{b} [shape=box, style="{style}", fillcolor={colors[tape._kind[b]]}, '
                   f'label="{_esc(chr(10).join(label))}"];')
        if tape._base_of(b) != b:
            out.append(f'  b{tape._base_of(b)} -> b{b} [style=dashed, label="view"];')
    for k in range(tape._n):
        row = tape._instr[k]
        op = Op(int(row[OP]))
        label = OPS[op].name + _attrs(row, tape._imm[k])
        shape = "diamond" if op == Op.GUARD else "ellipse"
        out.append(f'  op{k} [shape={shape}, label="{_esc(label)}", '
                   f'tooltip="{_esc(tape._site(k))}"];')
        for j in range(OPS[op].n_in):
            out.append(f"  b{int(row[X + j])} -> op{k};")
        if op != Op.GUARD:
            out.append(f"  op{k} -> b{int(row[OUT])};")
    out.append("}")
    return "\n".join(out) + "\n"


def render(tape, path):
    """Write the DOT graph to ``path``: SVG or PNG (by extension) when the Graphviz ``dot``
    program exists, else the DOT source next to it as ``.dot`` (and says so). Returns the
    path written.

    >>> tape.render("tape.svg")   # doctest: +SKIP
    'tape.svg'
    """
    path = os.fspath(path)
    src = to_dot(tape)
    root, ext = os.path.splitext(path)
    fmt = ext.lower().lstrip(".")
    dot = shutil.which("dot")
    if fmt in ("svg", "png", "pdf") and dot:
        with tempfile.NamedTemporaryFile("w", suffix=".dot", delete=False) as f:
            f.write(src)
        try:
            subprocess.run([dot, f"-T{fmt}", "-o", path, f.name], check=True,
                           capture_output=True)
        finally:
            os.unlink(f.name)
        return path
    dot_path = path if fmt == "dot" else root + ".dot"
    with open(dot_path, "w") as f:
        f.write(src)
    if fmt != "dot":
        print(f"tapegrad: Graphviz `dot` not found; wrote DOT source to {dot_path}")
    return dot_path


class TapeStats(dict):
    """``tape.stats()``: a dict (``instructions``, ``by_opcode``, ``buffers``, ``views``,
    ``arena_bytes``, ``arena_bytes_unplanned`` (the same without arena planning,
    ``tapegrad.plan``), ``params``, ``param_tensors``, ``dtype``) that prints as a table."""

    def __str__(self):
        rows = [("instructions", self["instructions"])]
        if "instructions_before_optimize" in self:
            rows += [("  before optimize()", self["instructions_before_optimize"])]
        rows += [(f"  {name}", c) for name, c in self["by_opcode"].items()]
        rows += [("buffers", self["buffers"]), ("  views (reshapes)", self["views"]),
                 ("arena bytes (values+grads)", self["arena_bytes"]),
                 ("  without planning", self.get("arena_bytes_unplanned",
                                                 self["arena_bytes"])),
                 ("parameters", self["params"]), ("  parameter tensors", self["param_tensors"])]
        w = max(len(r[0]) for r in rows)
        head = f"{'tape (' + self['dtype'] + ')':<{w}}  {'count':>10}"
        return "\n".join([head, "-" * len(head)] + [f"{k:<{w}}  {v:>10,}" for k, v in rows])


def stats(tape):
    """Counts of a tape; ``print(tape.stats())`` shows them as a table.

    >>> tape.stats()["by_opcode"]        # doctest: +SKIP
    {'matmul': 3, 'add': 3, 'leaky_relu': 2, 'sub': 1, 'square': 1, 'sum': 1}
    """
    tape._flush()
    counts = np.bincount(tape._instr[:tape._n, OP], minlength=Op.N_OPS)
    ops = Counter({OPS[Op(i)].name: int(c) for i, c in enumerate(counts) if c})
    before = getattr(tape, "_optimized", None)
    extra = {"instructions_before_optimize": before["before"]} if before else {}
    return TapeStats(**extra,
        instructions=int(tape._n),
        by_opcode=dict(ops.most_common()),
        buffers=int(tape._nbuf),
        views=len(tape._alias),
        arena_bytes=arena_bytes(tape)[0],
        arena_bytes_unplanned=arena_bytes(tape)[1],
        params=int(tape._bsize[tape._params].sum()) if tape._params else 0,
        param_tensors=len(tape._params),
        dtype=tape.dtype.name,
    )
