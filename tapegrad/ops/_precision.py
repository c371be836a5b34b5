"""``is_f32(arena)``: whether a kernel runs on a float32 arena, as a compile-time constant.

``arena.itemsize == 4`` is read at run time, so both of its branches are compiled into (and
optimised with) each interpreter; ``is_f32`` is inlined as the constant True or False of the
arena's type, so LLVM drops the other branch at once and the float64 interpreter carries no
float32-only code (nor the reverse). Use it for kernels that differ by precision.
"""
import numpy as np
from numba import types
from numba.extending import overload


def is_f32(arena):
    """Python fallback (``NUMBA_DISABLE_JIT``): the same answer at run time."""
    return arena.dtype == np.float32


@overload(is_f32, inline="always")
def _is_f32(arena):
    if isinstance(arena, types.Array) and arena.dtype == types.float32:
        return lambda arena: True
    return lambda arena: False
