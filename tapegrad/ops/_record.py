"""Helpers shared by the recording functions: operands to Vars, broadcasting, axes."""
import numbers

import numpy as np

from ..errors import ShapeError, TapegradError, user_site
from ..opcodes import Op
from ..tape import current_tape

Var = None  # tapegrad.var.Var, set by that module once the class exists (they import each other)


def prod(xs):
    p = 1
    for s in xs:
        p *= int(s)
    return p


def tape_of(args, opname):
    """The one tape the Var operands belong to (mixing tapes is an error)."""
    tape = None
    for a in args:
        if isinstance(a, Var):
            if tape is None:
                tape = a.tape
            elif a.tape is not tape:
                raise TapegradError(f"{opname}: operands are Vars of two different tapes "
                                    f"({user_site()})")
    if tape is None:
        tape = current_tape(opname)
    return tape


def as_var(a, tape, opname):
    """``a`` as a Var of ``tape``: Python numbers and arrays become constants."""
    if isinstance(a, Var):
        return a
    if isinstance(a, (numbers.Number, np.ndarray, np.generic, list, tuple)):
        arr = np.asarray(a)
        if arr.dtype.kind not in "biuf":
            raise TapegradError(f"{opname}: cannot use a {arr.dtype} array as an operand "
                                f"({user_site()})")
        return tape.const(arr)
    raise TapegradError(f"{opname}: unsupported operand type {type(a).__name__} "
                        f"({user_site()})")


def vars_of(args, opname):
    tape = tape_of(args, opname)
    return tape, [as_var(a, tape, opname) for a in args]


def broadcast_shape(opname, *vs):
    try:
        return tuple(np.broadcast_shapes(*(v.shape for v in vs)))
    except ValueError:
        shapes = " and ".join(str(v.shape) for v in vs)
        raise ShapeError(f"{opname}: cannot broadcast shapes {shapes} ({user_site()})") from None


def reshape_var(x, shape):
    """``x`` with a new shape of the same size, sharing memory (no instruction)."""
    shape = tuple(int(s) for s in shape)
    if shape == x.shape:
        return x
    return Var(x.tape, x.tape._alias_buffer(x._b, shape))


def broadcast_to(x, shape):
    """``x`` expanded to ``shape`` with one EXPAND per run of broadcast axes."""
    shape = tuple(shape)
    if x.shape == shape:
        return x
    cur = (1,) * (len(shape) - x.ndim) + x.shape
    x = reshape_var(x, cur)
    i = 0
    while i < len(shape):
        if cur[i] == shape[i]:
            i += 1
            continue
        j = i
        while j < len(shape) and cur[j] == 1 and shape[j] != 1:
            j += 1
        n = prod(shape[i:j])
        new = cur[:i] + shape[i:j] + cur[j:]
        b = x.tape._emit(Op.EXPAND, [x._b], new, (prod(cur[:i]), n, prod(cur[j:])))
        x, cur, i = Var(x.tape, b), new, j
    return x


def norm_axis(axis, ndim, opname):
    """A single axis as a non-negative int, or ShapeError."""
    if isinstance(axis, bool) or not isinstance(axis, (numbers.Integral,)):
        raise ShapeError(f"{opname}: axis must be an int, got {axis!r} ({user_site()})")
    a = int(axis)
    if not -ndim <= a < ndim:  # NumPy's AxisError, worded as NumPy does
        raise ShapeError(f"{opname}: axis {a} is out of bounds for array of dimension {ndim} "
                         f"({user_site()})")
    return a % ndim


def norm_axes(axis, ndim, opname):
    """``axis`` (None, int or tuple) as a sorted tuple of distinct non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = sorted(norm_axis(a, ndim, opname) for a in axes)
    if len(set(out)) != len(out):
        raise ShapeError(f"{opname}: repeated axis in {axis!r} ({user_site()})")
    return tuple(out)


def runs(axes):
    """Consecutive runs of sorted axes: (0, 1, 3) -> [(0, 2), (3, 4)] as [start, stop)."""
    out = []
    for a in axes:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], a + 1)
        else:
            out.append((a, a + 1))
    return out
