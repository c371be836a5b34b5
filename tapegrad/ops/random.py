"""Random draws on the tape: ``tg.random.uniform(shape)``, ``tg.random.normal(shape)``,
``tg.dropout(x, p)`` -- fresh values on every replay, reproducible from the tape's seed.

A draw is a counter-based hash (splitmix64's finaliser) of the tape's seed, a replay counter,
the draw's stream number and the element index, so no generator state is carried between
instructions and two tapes with the same seed draw the same numbers. The counter is a
two-number buffer of the tape, advanced by a TICK instruction recorded before the first
draw: every forward replay (``tape.forward``, ``tg.fit``'s steps, the evaluation of what is
recorded) runs it once, then every draw reads it. The seed lives in the draws' attributes, so
a saved tape draws the same sequence after loading.

Random numbers drawn with NumPy inside a recorded function are constants on the tape: every
replay reuses them. Use these instead (README, "Replay pitfalls").
"""
import math

import numpy as np

from .._jit import kernel
from ..errors import TapegradError, user_site
from ..opcodes import Op
from ..tape import TEMP, _check_shape, current_tape
from ..var import Var
from ._record import vars_of
from .elementwise import ge, mul

_LO = 2 ** 20  # the counter is (lo, hi): exact as floats in both arena dtypes


def _stream(tape, shape, op):
    """Record a draw of ``shape`` (and the TICK before the tape's first draw)."""
    shape = _check_shape(shape, f"random.{'uniform' if op == Op.RAND else 'normal'}")
    if tape._rng is None:
        b = tape._new_buffer((2,), TEMP)
        tape._emit(Op.TICK, [b], (2,), out=b)
        tape._rng = b
    n = tape._rng_draws
    tape._rng_draws += 1
    seed = tape.seed
    attrs = (n, seed & 0x7FFFFFFF, (seed >> 31) & 0x7FFFFFFF)
    return Var(tape, tape._emit(op, [tape._rng], shape, attrs))


def _tape(tape, what):
    return tape if tape is not None else current_tape(f"random.{what}")


def uniform(shape, tape=None):
    """Numbers from U[0, 1), drawn afresh on every replay.  Inside ``with tape:`` or with
    ``tape=``: ``tg.random.uniform((32, 8))``"""
    return _stream(_tape(tape, "uniform"), shape, Op.RAND)


def normal(shape, tape=None):
    """Numbers from N(0, 1), drawn afresh on every replay.  ``tg.random.normal((4,))``"""
    return _stream(_tape(tape, "normal"), shape, Op.RANDN)


def dropout(x, p=0.5):
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``, as
    ``torch.nn.functional.dropout`` in training mode; a fresh mask on every replay.
    ``tg.dropout(h, 0.2)``"""
    tape, (x,) = vars_of([x], "dropout")
    if not (isinstance(p, (int, float)) and 0 <= p <= 1):
        raise TapegradError(f"dropout: p must be a number in [0, 1], got {p!r} ({user_site()})")
    if p == 0:
        return x
    if p == 1:
        return mul(x, 0.0)
    keep = ge(uniform(x.shape, tape=tape), float(p))
    return mul(x, keep) * (1.0 / (1.0 - p))


# TICK: the counter (lo, hi) advances by one; no gradient
@kernel
def tick_fwd(v, x):
    lo = v[x] + 1
    if lo >= _LO:
        v[x] = 0
        v[x + np.uint64(1)] += 1
    else:
        v[x] = lo


@kernel
def _mix(z):
    """splitmix64's finaliser: a bijection of uint64 that scrambles every bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@kernel
def _draw_key(v, x, stream, seed_lo, seed_hi):
    counter = np.uint64(v[x + np.uint64(1)]) * np.uint64(_LO) + np.uint64(v[x])
    seed = np.uint64(seed_lo) | (np.uint64(seed_hi) << np.uint64(31))
    return _mix(_mix(seed ^ np.uint64(0x9E3779B97F4A7C15)) ^ _mix(counter)
                ^ (np.uint64(stream) * np.uint64(0xD1B54A32D192ED03)))


@kernel
def _unit(z, bits32):
    """A uniform number in [0, 1) from the hash ``z``: 24 bits for float32 arenas (so it
    never rounds up to 1), 53 bits for float64."""
    if bits32:
        return float(z >> np.uint64(40)) * (1.0 / 16777216.0)
    return float(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


# RAND / RANDN: out[i] from the hash of (seed, counter, stream, i); no gradient
@kernel
def rand_fwd(v, x, ans, n, stream, seed_lo, seed_hi, normal):
    key = _draw_key(v, x, stream, seed_lo, seed_hi)
    bits32 = v.itemsize == 4
    for i in range(n):
        if normal:  # Box-Muller from two draws
            u1 = 1.0 - _unit(_mix(key + np.uint64(2 * i)), bits32)
            u2 = _unit(_mix(key + np.uint64(2 * i + 1)), bits32)
            v[ans + i] = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
        else:
            v[ans + i] = _unit(_mix(key + np.uint64(i)), bits32)
