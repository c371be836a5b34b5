"""NumPy called on Vars: ufuncs and common functions record the tapegrad op.

``Var.__array_ufunc__`` and ``Var.__array_function__`` look the NumPy callable up in the two
tables below. ``np.tanh(v)``, ``np.sum(v, axis=0)``, ``np.dot(X, w)``, ``X @ w``,
``np.concatenate([a, v])`` record one tapegrad op each; any other NumPy call on a Var raises
``TapegradError`` naming it -- a Var never becomes an object array (``np.asarray(v)`` raises
too: use ``v.value`` or ``v.numpy()`` for the numbers).
"""
import numpy as np

from . import linalg as _linalg
from . import ops
from .errors import TapegradError, user_site


def _eq(x, y):
    return ops.elementwise.eq(x, y)


def _ne(x, y):
    return ops.elementwise.ne(x, y)


def _ufuncs():
    return {
        np.add: ops.add, np.subtract: ops.sub, np.multiply: ops.mul, np.true_divide: ops.div,
        np.power: ops.pow, np.negative: ops.neg, np.positive: lambda x: x, np.exp: ops.exp,
        np.log: ops.log, np.sqrt: ops.sqrt, np.sin: ops.sin, np.cos: ops.cos, np.tanh: ops.tanh,
        np.absolute: ops.abs, np.square: ops.square, np.maximum: ops.maximum,
        np.minimum: ops.minimum, np.greater: ops.gt, np.greater_equal: ops.ge, np.less: ops.lt,
        np.less_equal: ops.le, np.equal: _eq, np.not_equal: _ne, np.matmul: ops.matmul,
    }


def _axis_kw(fn, name):
    """``np.sum``-like functions: ``axis`` (keyword or first positional) and ``keepdims``."""
    def call(a, axis=None, *args, keepdims=False, **kw):
        unsupported = [k for k, v in kw.items() if v is not None and k != "keepdims"]
        if args or unsupported:
            raise TapegradError(f"np.{name} on a Var: only axis and keepdims are supported, "
                                f"got {unsupported or 'more positional arguments'} "
                                f"({user_site()})")
        return fn(a, axis=axis, keepdims=keepdims)
    return call


def _concat(xs, axis=0, out=None, **kw):
    if out is not None or kw:
        raise TapegradError(f"np.concatenate on Vars: out= and {sorted(kw)} are not supported "
                            f"({user_site()})")
    return ops.concatenate(list(xs), axis=axis)


def _stack(xs, axis=0, out=None, **kw):
    if out is not None or kw:
        raise TapegradError(f"np.stack on Vars: out= and {sorted(kw)} are not supported "
                            f"({user_site()})")
    return ops.stack(list(xs), axis=axis)


def _hstack(xs, **kw):
    xs = list(xs)
    return _concat(xs, axis=0 if all(np.ndim(x) == 1 for x in xs) else 1, **kw)


def _vstack(xs, **kw):
    return _concat([x.reshape(1, -1) if np.ndim(x) == 1 else x for x in xs], axis=0, **kw)


def _dot(a, b, out=None):
    if out is not None or np.ndim(a) > 2 or np.ndim(b) > 2 or 0 in (np.ndim(a), np.ndim(b)):
        raise TapegradError(f"np.dot on a Var: 1-D and 2-D operands only, no out= "
                            f"({user_site()})")
    return ops.matmul(a, b)


def _take(a, indices, axis=None, out=None, mode="raise"):
    if out is not None or mode != "raise":
        raise TapegradError(f"np.take on a Var: out= and mode= are not supported "
                            f"({user_site()})")
    return ops.take(a, indices, axis=axis)


def _cholesky(a, upper=False):
    if upper:
        raise TapegradError(f"np.linalg.cholesky(..., upper=True) on a Var is not supported: "
                            f"use tg.linalg.cholesky(a) (lower) and its transpose "
                            f"({user_site()})")
    return _linalg.cholesky(a)


def _functions():
    return {
        np.sum: _axis_kw(ops.sum, "sum"), np.mean: _axis_kw(ops.mean, "mean"),
        np.max: _axis_kw(ops.max, "max"), np.amax: _axis_kw(ops.max, "amax"),
        np.dot: _dot, np.concatenate: _concat, np.stack: _stack, np.hstack: _hstack,
        np.vstack: _vstack, np.where: lambda c, x, y: ops.where(c, x, y),
        np.transpose: lambda a, axes=None: ops.transpose(a, axes),
        np.reshape: lambda a, shape=None, order="C", **kw: _reshape(a, shape, order, kw),
        np.take: _take, np.repeat: lambda a, repeats, axis=None: ops.repeat(a, repeats, axis),
        np.expand_dims: lambda a, axis: ops.expand_dims(a, axis),
        np.squeeze: lambda a, axis=None: ops.squeeze(a, axis),
        np.shape: lambda a: a.shape,
        np.ndim: lambda a: a.ndim,
        np.size: lambda a, axis=None: (a.size if axis is None else a.shape[axis]),
        np.linalg.solve: _linalg.solve, np.linalg.inv: _linalg.inv,
        np.linalg.cholesky: _cholesky, np.linalg.slogdet: _linalg.slogdet,
    }


_TABLES = []


def _tables():
    """(ufunc table, function table), built at first use (the ops import Var, which imports
    this module)."""
    if not _TABLES:
        _TABLES.extend((_ufuncs(), _functions()))
    return _TABLES


def _reshape(a, shape, order, kw):
    shape = kw.pop("newshape", shape)
    if order != "C" or kw:
        raise TapegradError(f"np.reshape on a Var: only C order is supported ({user_site()})")
    return ops.reshape(a, shape)


def array_ufunc(ufunc, method, *inputs, **kwargs):
    """``Var.__array_ufunc__``: NumPy ufuncs with a Var operand record the tapegrad op."""
    fn = _tables()[0].get(ufunc)
    if method != "__call__" or fn is None or kwargs.get("out") is not None or any(
            k not in ("out",) for k in kwargs):
        what = f"np.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
        extra = f" with {sorted(kwargs)}" if kwargs else ""
        raise TapegradError(f"{what}{extra} is not supported on Vars; use the tapegrad op "
                            f"(tg.{ufunc.__name__}, ...) or v.value for plain numbers "
                            f"({user_site()})")
    return fn(*inputs)


def array_function(func, types, args, kwargs):
    """``Var.__array_function__``: common NumPy functions on Vars record the tapegrad op."""
    fn = _tables()[1].get(func)
    if fn is None:
        raise TapegradError(f"np.{getattr(func, '__name__', func)} is not supported on Vars; "
                            f"use a tapegrad op, or v.value / v.numpy() for plain numbers "
                            f"({user_site()})")
    return fn(*args, **kwargs)
