"""Activity analysis: which instructions a replay must run.

Two compiled passes over the sealed instruction array (``Tape._seal`` has validated every
index they read). Buffers are compared through ``base`` (an alias shares its root's memory).

* ``forward_mask``: backwards from the wanted outputs, the instructions they depend on
  (guards always run).
* ``reverse_mask``: forwards from the parameters (and inputs with ``requires_grad``), the
  instructions their variation reaches; then backwards from the seed, those of them on a path
  to it. Bit 1 runs the instruction's reverse rule; bit ``2 << j`` says input j needs its
  gradient.

``mark_gradients`` finds the buffers whose gradients a reverse sweep reads or accumulates into,
``unmark_cleared`` drops those it leaves zero itself (``lower.CLEAR``), and ``zero_ranges``
zeroes the rest of the gradient arena's parts (``Tape._zero_grads``), so a large arena is not
cleared whole on every call.
"""
import os

import numpy as np

from ._jit import drop_stale_cache, jit
from .lower import ANS, CLEAR, N
from .opcodes import OP, OUT, X, Op


@jit
def forward_mask(instr, n_in, base, needed):
    """``needed[b]``: 1 for the root buffers wanted (updated in place)."""
    n = instr.shape[0]
    mask = np.zeros(n, np.uint8)
    for k in range(n - 1, -1, -1):
        op = instr[k, OP]
        if op == Op.GUARD or needed[base[instr[k, OUT]]] != 0:
            mask[k] = 1
            for j in range(n_in[op]):
                needed[base[instr[k, X + j]]] = 1
    return mask


@jit
def reverse_mask(instr, n_in, differentiable, base, varied, seed):
    """``varied[b]``: 1 for the root buffers whose gradient is wanted (updated in place)."""
    n = instr.shape[0]
    carries = np.zeros(n, np.uint8)
    for k in range(n):
        op = instr[k, OP]
        if differentiable[op] != 0:
            for j in range(n_in[op]):
                if varied[base[instr[k, X + j]]] != 0:
                    carries[k] = 1
                    varied[base[instr[k, OUT]]] = 1
                    break
    useful = np.zeros(base.shape[0], np.uint8)
    useful[base[seed]] = 1
    mask = np.zeros(n, np.uint8)
    for k in range(n - 1, -1, -1):
        if carries[k] != 0 and useful[base[instr[k, OUT]]] != 0:
            op = instr[k, OP]
            m = 1
            for j in range(n_in[op]):
                b = base[instr[k, X + j]]
                if varied[b] != 0:
                    m |= 2 << j
                useful[b] = 1
            mask[k] = m
    return mask


@jit
def mark_gradients(instr, n_in, base, mask, flags):
    """``flags[base[b]] = 1`` for the gradients a reverse sweep with ``mask`` reads or
    accumulates into and later sweeps may read: the output of every instruction it runs
    (``mask[k] & 1``) and each input ``j`` with ``mask[k] & (2 << j)``. Not the other inputs:
    they have no gradient (no parameter reaches them), so no sweep reads theirs and ``.grad``
    refuses them, though rules such as ``add_bwd`` add into every input's slot."""
    for k in range(instr.shape[0]):
        m = mask[k]
        if m & 1 != 0:
            op = instr[k, OP]
            flags[base[instr[k, OUT]]] = 1
            for j in range(n_in[op]):
                if m & (2 << j) != 0:
                    flags[base[instr[k, X + j]]] = 1


@jit
def unmark_cleared(instr, low, boff, bsize, base, mask, flags):
    """``flags[r] = 0`` for each root ``r`` that a reverse sweep with ``mask`` leaves zero:
    the whole output of an instruction it runs with ``low[k, CLEAR]`` set (the sweep zeroes
    it once its rule has read it; not PLACE's, which the sweep leaves). Every rule adding into
    ``r`` runs before that, as ``r``'s writer runs whenever a gradient reaches ``r``."""
    for k in range(instr.shape[0]):
        if mask[k] & 1 != 0 and low[k, CLEAR] != 0 and instr[k, OP] != Op.PLACE:
            r = base[instr[k, OUT]]
            if low[k, ANS] == boff[r] and low[k, N] == bsize[r]:
                flags[r] = 0


@jit
def zero_ranges(arena, ranges):
    """Zero ``arena[start:stop]`` for each row ``(start, stop)`` of ``ranges`` (int64, inside
    the arena: ``Tape._grad_ranges`` makes them from validated offsets)."""
    for i in range(ranges.shape[0]):
        arena[ranges[i, 0]:ranges[i, 1]] = 0


_HERE = os.path.dirname(os.path.abspath(__file__))
for _f in (forward_mask, reverse_mask, mark_gradients, unmark_cleared, zero_ranges):
    drop_stale_cache(_f, [os.path.join(_HERE, "activity.py"), os.path.join(_HERE, "opcodes.py"),
                          os.path.join(_HERE, "_jit.py"), os.path.join(_HERE, "lower.py")])
