"""``tape.optimize()``: rewrites a sealed tape into fewer instructions that compute the same
values for every Var still held (in the spirit of CppAD's ``f.optimize()``).

Passes, over the flat arrays (``instr``, ``imm``, ``src``), in this order:

* **fusion of EXP, ADDC c, LOG** (c > 0) into one SOFTPLUS instruction (``ops/fused.py``),
  when the two intermediate buffers are read by nothing else and no live Var holds them;
  SOFTPLUS computes the chain's numbers bit for bit;
* **dead code**: an instruction is dropped when nothing reads its output -- no later kept
  instruction, no live Var, no name, no parameter or input -- unless it has an effect of its
  own (a guard, the random draws and their counter).

"Live" Vars are the ``Var`` objects of this tape that exist when ``optimize`` runs (found
through the garbage collector, so recording pays nothing for it); a Var dropped before
``optimize`` may read a stale value afterwards, and so may a Var of a buffer the optimizer
removed if it is rebuilt (``tape.replica()[v]`` excepted: replicas keep their own copy of the
instructions). Buffers keep their offsets: the arenas are unchanged.

The tape is re-sealed afterwards (validated and lowered again). Not on by default: whether a
Var is still held is only known by scanning the heap, which ``optimize()`` does once.
"""
import gc

import numpy as np

from .opcodes import N_IN, OP, OUT, X, Op
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


def optimize(tape):
    """See the module docstring; returns ``{"before": n, "after": m, "fused": f, "dead": d}``
    (instruction counts)."""
    with tape.lock:
        tape._seal()
        instr, imm, src = tape._instr, tape._imm, tape._src
        n = instr.shape[0]
        base = tape._base
        live = _live_roots(tape)
        keep = np.ones(n, bool)
        ops = instr[:, OP]
        n_in = N_IN[ops]
        reads = np.zeros(max(tape._nbuf, 1), np.int64)      # per root: instructions reading it
        writers = np.zeros(max(tape._nbuf, 1), np.int64)    # per root: instructions writing it
        writer = np.full(max(tape._nbuf, 1), -1, np.int64)  # per root: the last writer
        for j in range(3):
            has = n_in > j
            np.add.at(reads, base[instr[has, X + j]], 1)
        outs = base[instr[:, OUT]]
        np.add.at(writers, outs, 1)
        writer[outs] = np.arange(n)
        instr = instr.copy()
        imm = imm.copy()

        def single(b, op):
            """The instruction writing root ``b`` when it is the only writer, an ``op``, read
            once and held by no live Var; else -1."""
            r = base[b]
            k = writer[r]
            if k < 0 or writers[r] != 1 or reads[r] != 1 or live[r] or ops[k] != op:
                return -1
            return k

        fused = 0
        for k3 in np.flatnonzero(ops == Op.LOG):
            k2 = single(instr[k3, X], Op.ADDC)
            if k2 < 0 or not imm[k2] > 0:
                continue
            k1 = single(instr[k2, X], Op.EXP)
            if k1 < 0:
                continue
            instr[k3, OP], instr[k3, X], imm[k3] = Op.SOFTPLUS, instr[k1, X], imm[k2]
            keep[k1] = keep[k2] = False
            fused += 1

        # dead code, last instruction first: kept ones make their inputs needed
        needed = live.copy()
        dead = 0
        ops = instr[:, OP]
        for k in range(n - 1, -1, -1):
            if not keep[k]:
                continue
            op = int(ops[k])
            if op not in _EFFECTS and not needed[base[instr[k, OUT]]]:
                keep[k] = False
                dead += 1
                continue
            for j in range(int(N_IN[op])):
                needed[base[instr[k, X + j]]] = True

        m = int(keep.sum())
        if m != n:
            tape._instr = np.ascontiguousarray(instr[keep])
            tape._imm = np.ascontiguousarray(imm[keep])
            tape._src = np.ascontiguousarray(src[keep])
            tape._n = tape._nf = tape._done = m
            tape._opset, tape._opset_n, tape._interp = frozenset(), 0, None
            tape._dirty()
            tape._seal()
        info = {"before": int(n), "after": m, "fused": fused, "dead": dead}
        prior = getattr(tape, "_optimized", None)
        tape._optimized = {**info, "before": prior["before"] if prior else int(n)}
        return info
