"""The registry of recorded reverse rules (vector-Jacobian products that record tape ops).

Each op module keeps, next to an op's compiled ``*_bwd`` kernel, a rule written with tapegrad
ops and registered with ``@vjp(Op.X)``: ``rule(r, g) -> tuple`` of one cotangent Var (or None
for "no gradient") per buffer input, where ``g`` is the cotangent of the output and ``r``
describes the instruction:

* ``r.x, r.y, r.z`` -- the inputs as Vars (None when unused), ``r.ans`` the output;
* ``r.a`` -- the six integer attributes, ``r.k`` -- the float immediate;
* ``r.need`` -- per input, whether its cotangent is wanted (rules may skip work).

``tapegrad.higher.gradients`` walks the tape backwards calling these rules, so the reverse
pass becomes ordinary instructions: it replays with the tape and can be differentiated
again. The compiled kernel and the recorded rule of every op are tested against each other
and against finite differences to third order (``tests/test_higher.py``).
"""
from ..var import Var
from ._record import broadcast_to, reshape_var

VJP = {}


def vjp(*ops):
    """Register ``rule`` as the recorded reverse rule of ``ops``."""
    def register(rule):
        for op in ops:
            VJP[int(op)] = rule
        return rule
    return register


class Rule:
    """What a recorded reverse rule sees of its instruction (see the module docstring)."""

    __slots__ = ("x", "y", "z", "ans", "a", "k", "need", "op")

    def __init__(self, tape, row, imm, n_in, need):
        ins = [Var(tape, int(row[2 + j])) if j < n_in else None for j in range(3)]
        self.x, self.y, self.z = ins
        self.ans = Var(tape, int(row[1]))
        self.a = tuple(int(v) for v in row[5:11])
        self.k = float(imm)
        self.need = need
        self.op = int(row[0])


def view3(v, A, n, B):
    """``v`` as an ``(A, n, B)`` Var (a reshape, no instruction)."""
    return reshape_var(v, (A, n, B))


def expand_mid(v, A, n, B):
    """``v`` of ``A * B`` elements expanded to ``(A, n, B)`` (one EXPAND)."""
    return broadcast_to(reshape_var(v, (A, 1, B)), (A, n, B))
