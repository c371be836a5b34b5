"""``Var``: a handle on one buffer of a tape, with NumPy-like operators.

A Var holds only its tape and buffer index; ``.value`` and ``.grad`` are views of the tape's
arenas made when asked for, so they always show the latest replay.
"""
import numbers

import numpy as np

from .errors import TapegradError, user_site


class Var:
    """A recorded value. Operators record ops on the Var's tape and evaluate them at once.

    >>> import numpy as np, tapegrad as tg
    >>> tape = tg.Tape()
    >>> a = tape.param(np.array([1.0, -2.0]), name="a")
    >>> y = (a * a).sum()
    >>> y.item(), y.shape
    (5.0, ())
    >>> y.backward(); a.grad
    array([ 2., -4.])
    """

    __slots__ = ("tape", "_b")  # tape: the Tape it lives on; _b: its buffer index
    __array_priority__ = 1000

    # NumPy on Vars records the tapegrad op (tapegrad/interop.py): np.tanh(v), np_array * v,
    # np.sum(v, axis=0), np.dot(X, v); anything else raises, never an object array
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _interop.array_ufunc(ufunc, method, *inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return _interop.array_function(func, types, args, kwargs)

    def __array__(self, dtype=None, copy=None):
        raise TapegradError(f"a Var is not an array: np.asarray / np.array of "
                            f"{self._describe()} would freeze its value (or make an object "
                            f"array); use v.value or v.numpy() for the numbers, or a tapegrad "
                            f"op ({user_site()})")

    def __init__(self, tape, b):
        self.tape = tape
        self._b = b

    # ------------------------------------------------------------------ properties
    @property
    def shape(self):
        """The shape, a tuple: ``v.shape == (32, 64)``."""
        return self.tape._shape[self._b]

    @property
    def ndim(self):
        """Number of axes: ``len(v.shape)``."""
        return len(self.shape)

    @property
    def size(self):
        """Number of elements."""
        return _size(self.tape._shape[self._b], "")

    @property
    def dtype(self):
        """The tape's arena dtype (float64 or float32)."""
        return self.tape.dtype

    @property
    def name(self):
        """The Var's name (None if unnamed); settable: ``loss.name = "loss"``, then
        ``tape["loss"]``."""
        return self.tape._bname.get(self._b)

    @name.setter
    def name(self, name):
        self.tape._rename(self._b, name)

    @property
    def value(self):
        """The current value: a view of the tape's value arena. It stays live through every
        replay, ``backward()``, optimizer step and ``tg.fit`` (they write into the arena in
        place; writing into the view changes the Var). Recording more ops may move the arena
        (it grows, and the first replay after recording lays parameters out first): take
        ``.value`` again after recording."""
        return self.tape._view(self.tape._val, self._b)

    @property
    def grad(self):
        """The gradient of the last ``backward()``: a view of the gradient arena (live like
        ``.value``). Defined for parameters, inputs made with ``requires_grad=True`` and Vars
        computed from them; any other Var (a constant, a plain input) has no gradient and
        raises ``TapegradError`` once a reverse sweep has run."""
        tape, b = self.tape, self._b
        if not tape._sealed or tape._done < tape._n:
            tape._seal()
        varied = tape._varied
        if varied is not None and not varied[tape._base[b]]:
            raise TapegradError(f".grad of {self._describe()}: it has no gradient -- it "
                                f"depends on no parameter and no input made with "
                                f"requires_grad=True ({user_site()})")
        if tape._kind[b] != 0 and b not in tape._grad_seen:  # not a parameter (kind 0)
            tape._grad_seen.add(b)  # the view is writable: backward() zeroes it from now on
            tape._zero = None
        # (sealed and evaluated: nothing is pending, _view's flush is a no-op)
        return _arena_view(tape._grad, tape._boff[b], tape._bsize[b], tape._shape[b])

    def item(self):
        """The value as a Python float (size 1 only). The number is frozen: using it in
        further ops records a constant."""
        tape = self.tape
        shape = tape._shape[self._b]
        if (_SIZES.get(shape) or _size(shape, "")) != 1:
            raise TapegradError(f"item() of {self._describe()}: only size-1 Vars convert")
        if tape._done < tape._n or tape._pbuf:
            tape._flush()
        return tape._val.item(tape._boff[self._b])  # (a Python float)

    def numpy(self):
        """A copy of the value."""
        return self.value.copy()

    def backward(self, grad_output=None):
        """Reverse sweep from this Var: fills ``.grad`` of the parameters (and of inputs made
        with ``requires_grad=True``). Gradients are overwritten, never accumulated."""
        self.tape._backward(self, grad_output)

    def _describe(self):
        label = f"%{self._b}" + (f" ({self.name!r})" if self.name else "")
        return f"{label} of shape {self.shape} (recorded at {self.tape._bsrc(self._b)})"

    def __repr__(self):
        v = self.value
        body = np.array2string(v, precision=4, threshold=6, edgeitems=2)
        name = f" {self.name!r}" if self.name else ""
        return f"Var(%{self._b}{name}, shape={self.shape}, {self.dtype.name}, value={body})"

    # ------------------------------------------------------------------ conversions
    def __bool__(self):
        """Truth value; records a guard so a replay that would branch differently raises
        ``tg.BranchChanged``."""
        if self.size != 1:
            raise TapegradError(f"bool() of {self._describe()} is ambiguous; only size-1 Vars "
                                f"have a truth value ({user_site()})")
        from .opcodes import Op
        truth = bool(self.value.reshape(-1)[0] != 0)
        self.tape._emit(Op.GUARD, [self._b], (), (int(truth),), out=self._b)
        return truth

    def __float__(self):
        return self.item()

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d Var")
        return self.shape[0]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    __hash__ = object.__hash__

    # ------------------------------------------------------------------ operators
    # + - * / record the common cases themselves: a Var of the same shape on the same tape, or
    # a Python / NumPy number (an immediate, rounded to float32 on a float32 tape; ``x - c``
    # is ``x + (-c)``; a Python float is taken as it is, without the set lookup and float()
    # call, ~60 ns). Anything else goes to the binary recorder (broadcasting, constants,
    # errors). Recording an op costs about a microsecond, so call levels show.
    def __add__(self, o):
        t, tape = type(o), self.tape
        if t is Var:
            if o.tape is tape and tape._shape[o._b] == tape._shape[self._b]:
                return tape._rec(ADD, self._b, o._b, 0.0)
        elif t is float or t in SCALARS:
            c = o if t is float else float(o)
            return tape._rec(ADDC, self._b, -1, _f32(c) if tape._f32 else c)
        return _ew._binary(ADD, self, o, "add", ADDC, ADDC)

    def __radd__(self, o):
        t = type(o)
        if t is float or t in SCALARS:
            tape, c = self.tape, (o if t is float else float(o))
            return tape._rec(ADDC, self._b, -1, _f32(c) if tape._f32 else c)
        return _ew._binary(ADD, o, self, "add", ADDC, ADDC)

    def __sub__(self, o):
        t, tape = type(o), self.tape
        if t is Var:
            if o.tape is tape and tape._shape[o._b] == tape._shape[self._b]:
                return tape._rec(SUB, self._b, o._b, 0.0)
        elif t is float or t in SCALARS:
            c = -o if t is float else -float(o)
            return tape._rec(ADDC, self._b, -1, _f32(c) if tape._f32 else c)
        return _ew._binary(SUB, self, o, "sub", ADDC, RSUBC, True)

    def __rsub__(self, o):
        t = type(o)
        if t is float or t in SCALARS:
            tape, c = self.tape, (o if t is float else float(o))
            return tape._rec(RSUBC, self._b, -1, _f32(c) if tape._f32 else c)
        return _ew._binary(SUB, o, self, "sub", ADDC, RSUBC, True)

    def __mul__(self, o):
        t, tape = type(o), self.tape
        if t is Var:
            if o.tape is tape and tape._shape[o._b] == tape._shape[self._b]:
                return tape._rec(MUL, self._b, o._b, 0.0)
        elif t is float or t in SCALARS:
            c = o if t is float else float(o)
            return tape._rec(MULC, self._b, -1, _f32(c) if tape._f32 else c)
        return _ew._binary(MUL, self, o, "mul", MULC, MULC)

    def __rmul__(self, o):
        t = type(o)
        if t is float or t in SCALARS:
            tape, c = self.tape, (o if t is float else float(o))
            return tape._rec(MULC, self._b, -1, _f32(c) if tape._f32 else c)
        return _ew._binary(MUL, o, self, "mul", MULC, MULC)

    def __truediv__(self, o):
        t, tape = type(o), self.tape
        if t is Var:
            if o.tape is tape and tape._shape[o._b] == tape._shape[self._b]:
                return tape._rec(DIV, self._b, o._b, 0.0)
        elif t is float or t in SCALARS:
            c = o if t is float else float(o)
            return tape._rec(DIVC, self._b, -1, _f32(c) if tape._f32 else c)
        return _ew._binary(DIV, self, o, "div", DIVC, RDIVC)

    def __rtruediv__(self, o):
        t = type(o)
        if t is float or t in SCALARS:
            tape, c = self.tape, (o if t is float else float(o))
            return tape._rec(RDIVC, self._b, -1, _f32(c) if tape._f32 else c)
        return _ew._binary(DIV, o, self, "div", DIVC, RDIVC)

    def __pow__(self, o):
        t = type(o)
        if t in SCALARS and t is not bool:  # tg.pow's immediate exponent, not rounded
            return self.tape._rec(POWC, self._b, -1, float(o))
        return _ops.pow(self, o)

    def __rpow__(self, o):
        return _ops.pow(o, self)

    def __matmul__(self, o):
        return _ops.matmul(self, o)

    def __rmatmul__(self, o):
        return _ops.matmul(o, self)

    def __neg__(self):
        return self.tape._rec(NEG, self._b, -1, 0.0)

    def __pos__(self):
        return self

    def __abs__(self):
        return _ops.abs(self)

    def abs(self):
        """``tg.abs(v)``."""
        return _ops.abs(self)

    def __gt__(self, o):
        return _ops.gt(self, o)

    def __ge__(self, o):
        return _ops.ge(self, o)

    def __lt__(self, o):
        return _ops.lt(self, o)

    def __le__(self, o):
        return _ops.le(self, o)

    def __eq__(self, o):
        """Elementwise ``==``: a 0/1 Var, like ``<`` (a Var is hashed by identity, so it can
        still be a dict key or set member; ``v is w`` tests identity)."""
        if not _comparable(o):
            return NotImplemented
        return _ops.eq(self, o)

    def __ne__(self, o):
        """Elementwise ``!=``: a 0/1 Var."""
        if not _comparable(o):
            return NotImplemented
        return _ops.ne(self, o)

    def __getitem__(self, key):
        return _ops.index(self, key)

    @property
    def T(self):
        """The axes reversed: ``W.T``."""
        return _ops.transpose(self)

    def reshape(self, *shape):
        """Same memory, new shape: ``v.reshape(2, -1)`` or ``v.reshape((2, -1))``."""
        if len(shape) == 1 and not isinstance(shape[0], int):
            shape = shape[0]
        return _ops.reshape(self, shape)

    def sum(self, axis=None, keepdims=False):
        """``tg.sum(v, axis, keepdims)``: ``v.sum()``, ``v.sum(axis=0)``."""
        return _ops.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        """``tg.mean(v, axis, keepdims)``: ``v.mean()``."""
        return _ops.mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        """``tg.max(v, axis, keepdims)``: ``v.max(axis=1)``."""
        return _ops.max(self, axis=axis, keepdims=keepdims)

    # the elementwise functions as methods, as users of torch tensors write them
    def relu(self):
        """``tg.relu(v)``."""
        return _ops.relu(self)

    def exp(self):
        """``tg.exp(v)``."""
        return _ops.exp(self)

    def log(self):
        """``tg.log(v)``."""
        return _ops.log(self)

    def tanh(self):
        """``tg.tanh(v)``."""
        return _ops.tanh(self)

    def sigmoid(self):
        """``tg.sigmoid(v)``."""
        return _ops.sigmoid(self)

    def sin(self):
        """``tg.sin(v)``."""
        return _ops.sin(self)

    def cos(self):
        """``tg.cos(v)``."""
        return _ops.cos(self)

    def sqrt(self):
        """``tg.sqrt(v)``."""
        return _ops.sqrt(self)

    def pow(self, k):
        """``v ** k``."""
        return _ops.pow(self, k)

    def dot(self, w):
        """``np.dot(v, w)`` for 1-D and 2-D operands (a matrix product)."""
        return _interop._dot(self, w)

    def clip(self, lo=None, hi=None):
        """``tg.clip(v, lo, hi)``: values limited to [lo, hi]; the gradient passes where
        lo <= v <= hi (as torch.clamp)."""
        return _ops.clip(self, lo, hi)

    def take(self, indices, axis=None):
        """``tg.take(v, indices, axis)``: ``np.take``."""
        return _ops.take(self, indices, axis=axis)

    def repeat(self, repeats, axis=None):
        """``tg.repeat(v, repeats, axis)``: ``np.repeat``."""
        return _ops.repeat(self, repeats, axis=axis)

    def squeeze(self, axis=None):
        """``tg.squeeze(v, axis)``: axes of length 1 removed."""
        return _ops.squeeze(self, axis=axis)

    def argmax(self, axis=None):
        """Indices of the maxima (an integer ndarray of the current value, no gradient)."""
        return np.argmax(self.value, axis=axis)


def _comparable(o):
    """Operands ``==`` / ``!=`` compare elementwise; anything else (None, a string) falls back
    to Python's identity comparison, so ``v == None`` is False as for any object."""
    return isinstance(o, (Var, numbers.Number, np.ndarray, np.generic, list, tuple))


from . import interop as _interop  # noqa: E402
from . import ops as _ops  # noqa: E402  (the ops import Var)
from .ops import elementwise as _ew  # noqa: E402
from .tape import _SIZES, _arena_view, _size  # noqa: E402
from .ops import _record  # noqa: E402
from .ops.immediate import SCALARS  # noqa: E402
from .opcodes import Op  # noqa: E402

ADD, SUB, MUL, DIV, NEG, POWC = (int(Op.ADD), int(Op.SUB), int(Op.MUL), int(Op.DIV),
                                 int(Op.NEG), int(Op.POWC))
ADDC, RSUBC, MULC, DIVC, RDIVC = (int(Op.ADDC), int(Op.RSUBC), int(Op.MULC), int(Op.DIVC),
                                  int(Op.RDIVC))


def _f32(c):
    """The float32 number nearest ``c``, as a Python float (a float32 tape's immediate)."""
    return float(np.float32(c))

_record.Var = Var
