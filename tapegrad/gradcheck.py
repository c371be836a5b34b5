"""``tg.gradcheck``: test a function's tape gradient against finite differences of the function.

The finite differences call ``f`` afresh on perturbed arrays -- every evaluation records a new
tape, never a replay -- so a value wrongly frozen into the tape (``float(x.sum())``, ``.item()``
or NumPy math on ``.value``) shows up as a gradient mismatch instead of being replayed as a
constant on both sides.
"""
import math
import numbers

import numpy as np

from .errors import GradcheckError, TapegradError, user_site
from .tape import Tape
from .var import Var


def _evaluate(f, arrays, want_grad):
    """Record ``f`` on a fresh float64 tape: its value and (optionally) the input gradients."""
    tape = Tape(np.float64)
    ins = [tape.input(f"arg{i}", value=a, requires_grad=True) for i, a in enumerate(arrays)]
    out = f(*ins)
    name = getattr(f, "__name__", "f")
    if not isinstance(out, Var) or out.tape is not tape:
        raise TapegradError(f"gradcheck: {name} must return a Var recorded from its "
                            f"arguments, got {type(out).__name__}")
    if out.size != 1:
        raise TapegradError(f"gradcheck: {name} must return a Var of size 1, got shape "
                            f"{out.shape}")
    value = float(out.value.reshape(-1)[0])
    if not want_grad:
        return value, None
    out.backward()
    return value, [v.grad.copy() for v in ins]


def gradcheck(f, *arrays, eps=1e-6, rtol=1e-5, atol=1e-8, n_directions=3, seed=0):
    """Check ``f``'s reverse-mode gradient against central differences of ``f`` itself.

    ``f(*vars) -> size-1 Var`` is recorded on a float64 tape with each array as an input
    ``arg{i}`` (``requires_grad=True``); its ``backward()`` gradients are compared with
    ``(f(x + eps*d) - f(x - eps*d)) / (2*eps)`` along ``n_directions`` random directions ``d``
    and along every entry. An entry passes when
    ``|tape - fd| <= atol + rtol * |fd|``. Returns True, or raises ``GradcheckError`` naming
    the argument, the index, the tape's gradient and the finite difference of the worst entry.
    Each entry costs two fresh recordings of ``f``: meant for small test arrays.
    The arguments are checked first (``eps`` finite and > 0 and not lost in ``x + eps``,
    tolerances finite and >= 0, finite numeric arrays): TapegradError says which is wrong.
    Below, ``float()`` freezes ``sum(x)`` into the tape, so its gradient misses a term:

    >>> import numpy as np, tapegrad as tg
    >>> tg.gradcheck(lambda x, y: (x * tg.sin(y)).sum(), np.ones(3), np.arange(3.0))
    True
    >>> tg.gradcheck(lambda x: (x * float(x.sum())).sum(), np.ones(2))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tapegrad.errors.GradcheckError: gradcheck: argument 0 (arg0, shape (2,)) index (0,): ...
    """
    arrays = _check_args(f, arrays, eps, rtol, atol, n_directions, seed)
    name = getattr(f, "__name__", "f")
    _, grads = _evaluate(f, arrays, True)

    def fd(direction):
        plus = [a + eps * d for a, d in zip(arrays, direction)]
        minus = [a - eps * d for a, d in zip(arrays, direction)]
        return (_evaluate(f, plus, False)[0] - _evaluate(f, minus, False)[0]) / (2 * eps)

    def badness(tape_g, num):
        if not (np.isfinite(tape_g) and np.isfinite(num)):
            return np.inf if tape_g != num else 0.0
        tol = atol + rtol * abs(num)
        if tol == 0:  # rtol = atol = 0 (or num = 0 with atol = 0): exact agreement only
            return 0.0 if tape_g == num else np.inf
        return abs(tape_g - num) / tol

    rng = np.random.default_rng(seed)
    for j in range(n_directions):
        direction = [rng.standard_normal(a.shape) for a in arrays]
        num = fd(direction)
        tape_g = float(sum(np.sum(g * d) for g, d in zip(grads, direction)))
        if badness(tape_g, num) > 1:
            worst = _worst_entry(arrays, grads, fd, badness)
            if worst is None:
                raise GradcheckError(
                    f"gradcheck: {name}: along random direction {j} (seed {seed}) the tape's "
                    f"directional derivative is {tape_g!r} but the finite difference is "
                    f"{num!r}")
            _raise(name, arrays, *worst)
    worst = _worst_entry(arrays, grads, fd, badness)
    if worst is not None:
        _raise(name, arrays, *worst)
    return True


def _check_args(f, arrays, eps, rtol, atol, n_directions, seed):
    """The arrays as float64, or TapegradError naming the argument that makes no sense."""
    def fail(msg):
        raise TapegradError(f"gradcheck: {msg} ({user_site()})")

    def real(v):
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

    if not callable(f):
        fail(f"f must be a function of Vars, got {type(f).__name__}")
    if not real(eps) or eps <= 0:
        fail(f"eps must be a finite number > 0, got {eps!r}")
    for what, v in (("rtol", rtol), ("atol", atol)):
        if not real(v) or v < 0:
            fail(f"{what} must be a finite number >= 0, got {v!r}")
    if (isinstance(n_directions, bool) or not isinstance(n_directions, numbers.Integral)
            or n_directions < 0):
        fail(f"n_directions must be an integer >= 0, got {n_directions!r}")
    try:
        np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        fail(f"seed {seed!r} is not a seed for np.random.default_rng ({e})")
    if not arrays:
        fail("needs at least one array to differentiate")
    out = []
    for i, a in enumerate(arrays):
        try:
            x = np.asarray(a)
        except Exception as e:  # noqa: BLE001 - anything NumPy cannot take
            fail(f"argument {i} cannot be converted to an array ({e})")
        if x.dtype.kind not in "biuf":
            fail(f"argument {i} must be numeric, got dtype {x.dtype}")
        x = np.array(x, dtype=np.float64)
        if not np.isfinite(x).all():
            fail(f"argument {i} holds NaN or Inf: finite differences need finite points")
        if np.any(np.abs(x) + eps == np.abs(x)):
            big = float(np.max(np.abs(x)))
            fail(f"eps={eps!r} is below the spacing of float64 numbers at argument {i} "
                 f"(|x| up to {big:.3g}): x + eps == x")
        out.append(x)
    return out


def _worst_entry(arrays, grads, fd, badness):
    """(badness, argument, index, tape gradient, finite difference) of the worst failing
    entry, or None when every entry passes."""
    worst = None
    for i, a in enumerate(arrays):
        for idx in np.ndindex(a.shape):
            direction = [np.zeros_like(x) for x in arrays]
            direction[i][idx] = 1.0
            num = fd(direction)
            tape_g = float(grads[i][idx])
            bad = badness(tape_g, num)
            if bad > 1 and (worst is None or bad > worst[0]):
                worst = (bad, i, idx, tape_g, num)
    return worst


def _raise(name, arrays, bad, i, idx, tape_g, num):
    raise GradcheckError(
        f"gradcheck: argument {i} (arg{i}, shape {arrays[i].shape}) index {idx}: tape "
        f"gradient {tape_g!r} but finite difference {num!r} (|difference| "
        f"{abs(tape_g - num):.3g}; function {name})")
