"""Higher order: the reverse pass recorded as instructions (``tg.gradients``).

``gradients(y, xs)`` walks the tape backwards from ``y`` (the instructions with a gradient
path from some ``x`` to ``y``, found by the same compiled activity analysis as a replay's
reverse sweep) and calls each instruction's recorded reverse rule (``tapegrad.ops._vjp``):
the cotangents are new Vars on the same tape. They replay with it (``tape.forward`` computes
them), are read like any Var, and can be differentiated again -- by ``backward()``,
``tg.fit`` or another ``gradients``.

Cotangents are kept per *root* buffer (a reshape shares its root's memory): a rule's result
for an input that is a reshape is reshaped to the root's shape before it is added in.
"""
import numpy as np

from . import activity
from .errors import ShapeError, TapegradError, user_site
from .opcodes import DIFFERENTIABLE, N_IN, OP, OUT, X
from .ops._record import as_var, reshape_var
from .ops._vjp import VJP, Rule
from .var import Var


def gradients(y, xs, grad_output=None):
    """d(y)/d(x) for each x of ``xs`` as Vars on ``y``'s tape (shapes of ``xs``): the reverse
    pass recorded as instructions, so the result replays with the tape and can be
    differentiated again.

    ``y`` must have size 1 unless ``grad_output`` (an array or a Var of ``y``'s shape, the
    cotangent) is given. ``xs`` may be params, inputs or any Var recorded before ``y``; a Var
    with no path to ``y`` gets zeros.

    >>> gx, = tg.gradients((x ** 3).sum(), [x])     # 3 x**2, recorded   # doctest: +SKIP
    """
    if not isinstance(y, Var):
        raise TapegradError(f"gradients(): y must be a Var, got {type(y).__name__} "
                            f"({user_site()})")
    single = isinstance(xs, Var)
    xs = [xs] if single else list(xs)
    tape = y.tape
    for i, x in enumerate(xs):
        if not isinstance(x, Var) or x.tape is not tape:
            raise TapegradError(f"gradients(): xs[{i}] is not a Var of y's tape ({user_site()})")
    if grad_output is None:
        if y.size != 1:
            raise TapegradError(f"gradients() of {y._describe()} needs grad_output: only a Var "
                                f"of size 1 has an implicit gradient of 1 ({user_site()})")
        seed = tape.const(np.ones(y.shape))
    else:
        seed = as_var(grad_output, tape, "gradients")
        if seed.shape != y.shape:
            raise ShapeError(f"gradients(): grad_output has shape {seed.shape}, "
                             f"{y._describe()} ({user_site()})")
    tape._flush()
    n, nb = len(tape), tape._nbuf
    instr = tape._instr[:n].copy()
    imm = tape._imm[:n].copy()
    base = np.arange(nb, dtype=np.int64)
    for b, r in tape._alias.items():
        base[b] = r
    varied = np.zeros(max(nb, 1), np.uint8)
    varied[base[[x._b for x in xs]]] = 1
    mask = activity.reverse_mask(instr, N_IN, DIFFERENTIABLE, base, varied, y._b)
    root_shape = {}

    def add_to(b, ct):
        r = int(base[b])
        shape = root_shape.setdefault(r, tape._shape[r])
        ct = reshape_var(ct, shape) if ct.shape != shape else ct
        old = adj.get(r)
        adj[r] = ct if old is None else old + ct

    adj = {}
    add_to(y._b, seed)
    for k in np.flatnonzero(mask & 1)[::-1]:
        row = instr[k]
        out = int(row[OUT])
        g = adj.get(int(base[out]))
        if g is None:
            continue
        if g.shape != tape._shape[out]:
            g = reshape_var(g, tape._shape[out])
        op = int(row[OP])
        n_in = int(N_IN[op])
        need = tuple(bool(mask[k] & (2 << j)) for j in range(n_in))
        cts = VJP[op](Rule(tape, row, imm[k], n_in, need), g)
        for j in range(n_in):
            if need[j] and cts[j] is not None:
                add_to(int(row[X + j]), cts[j])
    out = []
    for x in xs:
        ct = adj.get(int(base[x._b]))
        if ct is None:
            out.append(tape.const(np.zeros(x.shape)))
        else:
            out.append(reshape_var(ct, x.shape) if ct.shape != x.shape else ct)
    return out[0] if single else out
