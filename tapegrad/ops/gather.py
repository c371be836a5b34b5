"""Gathering rows by integer indices (GATHER) and its transpose (SCATTER_ADD), and the shape
functions built on them or on reshapes: integer-array and boolean-mask indexing, ``take``,
``repeat``, ``expand_dims``, ``squeeze``.

GATHER sees ``x`` as ``(A, n, B)`` and an index buffer ``idx`` of ``m`` numbers:
``out[a, j, b] = x[a, idx[j], b]`` -- ``(A, m, B)``. SCATTER_ADD is its transpose:
``out[a, i, b] = sum over j with idx[j] == i of x[a, j, b]`` -- ``(A, n, B)``, so duplicate
indices accumulate. Each is the other's reverse rule, recorded (``@vjp``) and compiled.
The arenas hold floats, so indices are stored as floats (exact below 2**53, or 2**24 in a
float32 arena: larger axes are refused) and read back by the kernels, which check every one
(an integer in ``[-n, n)``, negative counting from the end as NumPy) before using any: a
bad index -- a fed token id out of range, a fraction, NaN -- stops the sweep with status
``BAD_INDEX``, never an access outside the buffer.

Several index arrays (``x[rows, cols]``) broadcast together as NumPy's and become one flat
index into the merged axes (``rows * n_cols + cols``): computed in NumPy for arrays, on the
tape for index Vars -- each Var first gathered from ``arange(n)``, which checks it against
its own axis and makes it non-negative.

Attributes of both: A0..A3 = A, n, B, m. Kernels take the index values from ``iv`` (the value
arena) and the data from ``v`` / ``g`` (values, gradients or tangents) at uint64 offsets.
"""
import math
import numbers
import operator

import numpy as np

from .._jit import kernel
from ..errors import FeedError, ShapeError, TapegradError, user_site
from ..opcodes import OUT, Op
from ..var import Var
from ._record import as_var, broadcast_to, norm_axis, prod, reshape_var, tape_of, vars_of
from ._vjp import view3, vjp

_F32_EXACT = 2 ** 24  # the largest axis whose indices a float32 arena holds exactly
_COMPARISONS = (Op.GT, Op.GE, Op.LT, Op.LE, Op.EQ, Op.NE)


# ---------------------------------------------------------------------------- kernels
@kernel
def _indices_ok(iv, idx, n, m):
    """Every ``iv[idx + j]``, j < m, an integer in [-n, n) (NaN is not)."""
    for j in range(np.uint64(m)):
        f = iv[idx + j]
        if not (f >= -n and f < n and f == math.floor(f)):
            return False
    return True


@kernel
def _row(iv, idx, j, n):
    """The index ``idx[j]`` made non-negative (checked by ``_indices_ok`` first)."""
    i = np.int64(iv[idx + np.uint64(j)])
    return i + n if i < 0 else i


# out[a, j, b] = x[a, idx[j], b];  gx[a, idx[j], b] += g[a, j, b]
@kernel
def gather_fwd(v, iv, x, idx, ans, A, n, B, m):
    if not _indices_ok(iv, idx, n, m):
        return False
    if B == 1:  # single elements (the last axis, a 1-D gather): no one-element inner loop
        for a in range(A):
            src, dst = np.uint64(a * n), ans + np.uint64(a * m)
            for j in range(np.uint64(m)):
                v[dst + j] = v[x + src + np.uint64(_row(iv, idx, j, n))]
        return True
    for a in range(A):
        for j in range(m):
            src = x + np.uint64((a * n + _row(iv, idx, j, n)) * B)
            dst = ans + np.uint64((a * m + j) * B)
            for b in range(np.uint64(B)):
                v[dst + b] = v[src + b]
    return True


@kernel
def gather_bwd(g, iv, x, idx, ans, A, n, B, m):
    if not _indices_ok(iv, idx, n, m):  # again: the arena may have been written since
        return False
    if B == 1:
        for a in range(A):
            dst, src = np.uint64(a * n), ans + np.uint64(a * m)
            for j in range(np.uint64(m)):
                i = x + dst + np.uint64(_row(iv, idx, j, n))
                g[i] += g[src + j]
        return True
    for a in range(A):
        for j in range(m):
            dst = x + np.uint64((a * n + _row(iv, idx, j, n)) * B)
            src = ans + np.uint64((a * m + j) * B)
            for b in range(np.uint64(B)):
                g[dst + b] += g[src + b]
    return True


@vjp(Op.GATHER)
def gather_vjp(r, g):
    A, n, B, m = r.a[:4]
    return (_emit(Op.SCATTER_ADD, view3(g, A, m, B), r.y, (A, n, B), r.a), None)


# out[a, i, b] = sum_{j: idx[j] = i} x[a, j, b];  gx[a, j, b] += g[a, idx[j], b]
@kernel
def scatter_add_fwd(v, iv, x, idx, ans, A, n, B, m):
    if not _indices_ok(iv, idx, n, m):
        return False
    for i in range(np.uint64(A * n * B)):
        v[ans + i] = 0
    for a in range(A):
        for j in range(m):
            dst = ans + np.uint64((a * n + _row(iv, idx, j, n)) * B)
            src = x + np.uint64((a * m + j) * B)
            for b in range(np.uint64(B)):
                v[dst + b] += v[src + b]
    return True


@kernel
def scatter_add_bwd(g, iv, x, idx, ans, A, n, B, m):
    if not _indices_ok(iv, idx, n, m):
        return False
    for a in range(A):
        for j in range(m):
            src = ans + np.uint64((a * n + _row(iv, idx, j, n)) * B)
            dst = x + np.uint64((a * m + j) * B)
            for b in range(np.uint64(B)):
                g[dst + b] += g[src + b]
    return True


@vjp(Op.SCATTER_ADD)
def scatter_add_vjp(r, g):
    A, n, B, m = r.a[:4]
    return (_emit(Op.GATHER, view3(g, A, n, B), r.y, (A, m, B), r.a), None)


def _emit(op, x, idx, shape, attrs):
    tape = x.tape
    return Var(tape, tape._emit(op, [x._b, idx._b], shape, attrs))


# ---------------------------------------------------------------------------- recording
def _gather_axis(x, axis, idx):
    """``x`` indexed along ``axis`` by ``idx`` (an int ndarray already checked and made
    non-negative, or a Var of indices checked against the axis): shape
    ``x.shape[:axis] + idx.shape + x.shape[axis + 1:]``."""
    tape = x.tape
    n = x.shape[axis]
    A, B = prod(x.shape[:axis]), prod(x.shape[axis + 1:])
    if isinstance(idx, Var):
        ishape, iv = idx.shape, reshape_var(idx, (idx.size,))
    else:
        ishape, iv = idx.shape, tape.const(idx.reshape(-1))
    m = prod(ishape)
    out = _emit(Op.GATHER, view3(x, A, n, B), iv, (A, m, B), (A, n, B, m))
    return reshape_var(out, x.shape[:axis] + tuple(ishape) + x.shape[axis + 1:])


def _check_axis_len(tape, n, what):
    if tape.dtype == np.float32 and n > _F32_EXACT:
        raise ShapeError(f"{what}: an axis of {n} elements is indexed through a float32 arena, "
                         f"which holds integers exactly only up to 2**24: use a float64 tape "
                         f"({user_site()})")


def _const_index(a, n, axis, shape, what):
    """An integer array index, checked against an axis of ``n`` and made non-negative."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
        raise ShapeError(f"{what}: index arrays must be integers or booleans, got dtype "
                         f"{a.dtype} ({user_site()})")
    a = a.astype(np.int64)
    bad = (a < -n) | (a >= n)
    if bad.any():
        i = int(a[bad].reshape(-1)[0])
        raise ShapeError(f"{what}: index {i} is out of bounds for axis {axis} with size {n} "
                         f"(shape {shape}) ({user_site()})")
    return np.where(a < 0, a + n, a)


def _var_index(tape, v, n, axis, shape, what):
    """An index Var: its tape, its current values checked (later replays are checked by the
    kernels), and a boolean mask refused (its result's shape would depend on the data)."""
    if v.tape is not tape:
        raise TapegradError(f"{what}: the array and its indices are Vars of two different "
                            f"tapes ({user_site()})")
    tape._flush(evaluate=False)
    base = tape._base_of(v._b)
    rows = tape._instr[:tape._nf]
    made = np.flatnonzero(rows[:, OUT] == base)
    if made.size and int(rows[made[-1], 0]) in _COMPARISONS:
        raise TapegradError(f"{what}: {v._describe()} is a comparison (a boolean mask): "
                            f"indexing by a mask Var would give a result whose shape depends "
                            f"on the data, which a tape cannot replay. Use tg.where(mask, x, "
                            f"0.0), or a NumPy boolean mask (a constant) ({user_site()})")
    vals = np.asarray(v.value)
    bad = ~((vals >= -n) & (vals < n) & (vals == np.floor(vals)))
    if bad.any():
        i = tuple(int(j) for j in np.argwhere(bad)[0])
        raise FeedError(f"{what}: index {vals[i].item()!r} at {i} of {v._describe()} is not "
                        f"an integer in [-{n}, {n}) (axis {axis} of shape {shape}) "
                        f"({user_site()})")
    return v


def _is_array_index(k):
    return isinstance(k, (Var, list, tuple, np.ndarray))


def advanced_index(x, key):
    """``x[key]`` where ``key`` holds integer arrays, boolean NumPy masks or index Vars, with
    ints, slices, ``...`` and ``None`` as NumPy's advanced indexing (a gather)."""
    from .shape import index
    tape, (x,) = vars_of([x], "index")
    key = key if isinstance(key, tuple) else (key,)
    # boolean masks to their nonzero() index arrays (``masks``: where each starts, its
    # shape), lists to arrays
    parts, masks = [], {}
    for k in key:
        if isinstance(k, (list, tuple, np.ndarray)):
            a = np.asarray(k)
            if a.dtype == bool:
                if a.ndim == 0:
                    raise ShapeError(f"index: a 0-d boolean index is not supported "
                                     f"({user_site()})")
                masks[len(parts)] = a.shape
                parts.extend(a.nonzero())
                continue
            if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
                raise ShapeError(f"index: arrays used as indices must be of integer or boolean "
                                 f"type, got {a.dtype} ({user_site()})")
            parts.append(a.astype(np.int64))
        elif isinstance(k, bool) or not (k is None or k is Ellipsis or isinstance(k, Var)
                                         or isinstance(k, (slice, numbers.Integral))):
            raise ShapeError(f"index: only ints, slices, ..., None, integer arrays, boolean "
                             f"masks and index Vars are supported, got {k!r} for shape "
                             f"{x.shape} ({user_site()})")
        else:
            parts.append(k)
    n_real = sum(1 for k in parts if not (k is None or k is Ellipsis))
    if sum(1 for k in parts if k is Ellipsis) > 1 or n_real > x.ndim:
        raise ShapeError(f"index: too many indices for shape {x.shape} ({user_site()})")
    # one entry per axis of x (Ellipsis expanded) plus the Nones; axis_of: its axis of x
    entries, axis_of, ax = [], [], 0
    for pi, k in enumerate(parts):
        if pi in masks:  # a mask covers as many axes as it has dimensions
            mshape = masks[pi]
            if x.shape[ax:ax + len(mshape)] != mshape:
                raise ShapeError(f"index: boolean mask of shape {mshape} does not match the "
                                 f"indexed axes {x.shape[ax:ax + len(mshape)]} of shape "
                                 f"{x.shape} ({user_site()})")
        if k is Ellipsis:
            for _ in range(x.ndim - n_real):
                entries.append(slice(None))
                axis_of.append(ax)
                ax += 1
            continue
        entries.append(k)
        axis_of.append(None if k is None else ax)
        ax += k is not None
    while ax < x.ndim:
        entries.append(slice(None))
        axis_of.append(ax)
        ax += 1
    has_array = any(isinstance(k, (np.ndarray, Var)) for k in entries)
    adv = [i for i, k in enumerate(entries)
           if isinstance(k, (np.ndarray, Var)) or (has_array and isinstance(k, numbers.Integral))]
    # checks and normalisation per advanced entry (ints are 0-d arrays here)
    comps = []
    for i in adv:
        k, a = entries[i], axis_of[i]
        n = x.shape[a]
        _check_axis_len(tape, n, "index")
        if isinstance(k, Var):
            comps.append(_var_index(tape, k, n, a, x.shape, "index"))
        else:
            comps.append(_const_index(k, n, a, x.shape, "index"))
    try:
        bshape = tuple(np.broadcast_shapes(*(c.shape for c in comps)))
    except ValueError:
        raise ShapeError(f"index: shape mismatch: indexing arrays could not be broadcast "
                         f"together with shapes {' '.join(str(c.shape) for c in comps)} "
                         f"({user_site()})") from None
    # the result's shape as NumPy gives it (indices stood in for by zeros)
    dummy = tuple(np.zeros(k.shape, np.intp) if isinstance(k, Var) else k for k in entries)
    out_shape = np.broadcast_to(np.zeros((), np.int8), x.shape)[dummy].shape
    # 1. the slices and the whole advanced axes, by basic indexing (no None)
    basic = tuple(slice(None) if i in adv else k for i, k in enumerate(entries) if k is not None)
    y = index(x, basic)
    adv_axes = [axis_of[i] for i in adv]
    # 2. the advanced axes next to each other: in place when their entries are (None aside)
    #    adjacent, else moved to the front (NumPy's rule)
    real = [i for i, k in enumerate(entries) if k is not None]
    pos = [real.index(i) for i in adv]
    if pos != list(range(pos[0], pos[0] + len(pos))):
        rest = [a for a in range(x.ndim) if a not in adv_axes]
        y = _transpose(y, adv_axes + rest)
        first = 0
    else:
        first = adv_axes[0]
    # 3. the advanced axes merged into one, indexed by one flat index
    sizes = [x.shape[a] for a in adv_axes]
    N = prod(sizes)
    _check_axis_len(tape, N, "index")
    shape = y.shape
    y = reshape_var(y, shape[:first] + (N,) + shape[first + len(adv):])
    flat = _flat_index(tape, comps, sizes, bshape)
    out = _gather_axis(y, first, flat)
    return reshape_var(out, out_shape)


def _transpose(y, perm):
    from .shape import transpose
    return transpose(y, perm)


def _flat_index(tape, comps, sizes, bshape):
    """One index into the merged axes of ``sizes`` from the components (checked, broadcast
    to ``bshape``): NumPy's ravel_multi_index, on the tape when any component is a Var."""
    if not any(isinstance(c, Var) for c in comps):
        if not comps:
            return np.zeros((), np.int64)
        arrs = np.broadcast_arrays(*comps)
        return np.ravel_multi_index(arrs, sizes) if arrs[0].size else arrs[0].astype(np.int64)
    if len(comps) == 1:
        return comps[0]
    flat = None
    for c, n in zip(comps, sizes):
        if isinstance(c, Var):
            # gathered from arange(n): checked against its own axis and made non-negative
            c = _gather_axis(tape.const(np.arange(n)), 0, c)
        else:
            c = tape.const(c)
        flat = c if flat is None else flat * float(n) + c
    return broadcast_to(flat, bshape)


def is_advanced(key):
    """Whether ``key`` needs a gather (holds an array, a list or a Var)."""
    key = key if isinstance(key, tuple) else (key,)
    return any(_is_array_index(k) for k in key)


# ---------------------------------------------------------------------------- take / repeat
def take(x, indices, axis=None):
    """``np.take``: elements of ``x`` (flattened when ``axis`` is None) at ``indices`` -- an
    integer array, or a Var of integer values (token ids fed as data); negative indices count
    from the end. The gradient scatter-adds (repeated indices accumulate).

    ``tg.take(emb, tokens, axis=0)``"""
    # the tape of x, or of the indices (tg.take(array, ids) gathers from a constant)
    tape = tape_of([x, indices], "take")
    x = as_var(x, tape, "take")
    if axis is None:
        x, axis = reshape_var(x, (x.size,)), 0
    else:
        axis = norm_axis(axis, x.ndim, "take")
    n = x.shape[axis]
    _check_axis_len(tape, n, "take")
    if isinstance(indices, Var):
        idx = _var_index(tape, indices, n, axis, x.shape, "take")
    else:
        a = np.asarray(indices)
        if a.dtype == bool:
            raise ShapeError(f"take: indices must be integers, got a boolean array "
                             f"({user_site()})")
        idx = _const_index(a, n, axis, x.shape, "take")
    return _gather_axis(x, axis, idx)


def repeat(x, repeats, axis=None):
    """``np.repeat``: each element (``axis`` None: of the flattened ``x``) or each slice along
    ``axis`` repeated ``repeats`` times -- an int, or one count per element. An int repeats
    by broadcasting (EXPAND), counts by a gather.  ``tg.repeat(v, 2, axis=0)``"""
    tape, (x,) = vars_of([x], "repeat")
    if isinstance(repeats, Var):
        raise TapegradError(f"repeat: repeats must be ints (a constant): a Var of counts would "
                            f"give a result whose shape depends on the data ({user_site()})")
    if axis is None:
        x, axis = reshape_var(x, (x.size,)), 0
    else:
        axis = norm_axis(axis, x.ndim, "repeat")
    r = np.asarray(repeats)
    if r.dtype.kind not in "iu" or r.ndim > 1:
        raise ShapeError(f"repeat: repeats must be an int or a 1-D array of ints, got "
                         f"{repeats!r} ({user_site()})")
    if (r < 0).any():
        raise ShapeError(f"repeat: negative dimensions are not allowed (repeats {repeats!r}) "
                         f"({user_site()})")
    n = x.shape[axis]
    pre, post = x.shape[:axis], x.shape[axis + 1:]
    if r.size == 1:
        k = int(r.reshape(-1)[0])
        y = reshape_var(x, pre + (n, 1) + post)
        y = broadcast_to(y, pre + (n, k) + post)
        return reshape_var(y, pre + (n * k,) + post)
    if r.shape != (n,):
        raise ShapeError(f"repeat: {r.size} repeats for an axis of {n} elements (axis {axis} "
                         f"of shape {x.shape}) ({user_site()})")
    _check_axis_len(tape, n, "repeat")
    return _gather_axis(x, axis, np.repeat(np.arange(n), r))


# ---------------------------------------------------------------------------- expand_dims / squeeze
def _axes_tuple(axis, what):
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral):
            raise ShapeError(f"{what}: axis must be an int or a tuple of ints, got {axis!r} "
                             f"({user_site()})")
    return tuple(operator.index(a) for a in axes)


def expand_dims(x, axis):
    """``np.expand_dims``: new axes of length 1 at ``axis`` (an int or a tuple), positions in
    the result. A reshape: no instruction.  ``tg.expand_dims(v, 0)``"""
    tape, (x,) = vars_of([x], "expand_dims")
    axes = _axes_tuple(axis, "expand_dims")
    nd = x.ndim + len(axes)
    norm = sorted(norm_axis(a, nd, "expand_dims") for a in axes)
    if len(set(norm)) != len(norm):
        raise ShapeError(f"expand_dims: repeated axis in {axis!r} ({user_site()})")
    it = iter(x.shape)
    return reshape_var(x, tuple(1 if i in norm else next(it) for i in range(nd)))


def squeeze(x, axis=None):
    """``np.squeeze``: axes of length 1 removed (all of them, or those of ``axis``; an axis of
    another length is an error). A reshape.  ``tg.squeeze(v, axis=1)``"""
    tape, (x,) = vars_of([x], "squeeze")
    if axis is None:
        norm = [i for i, s in enumerate(x.shape) if s == 1]
    else:
        norm = [norm_axis(a, x.ndim, "squeeze") for a in _axes_tuple(axis, "squeeze")]
        if len(set(norm)) != len(norm):
            raise ShapeError(f"squeeze: repeated axis in {axis!r} ({user_site()})")
        for a in norm:
            if x.shape[a] != 1:
                raise ShapeError(f"squeeze: cannot select an axis to squeeze out which has "
                                 f"size not equal to one (axis {a} of shape {x.shape}) "
                                 f"({user_site()})")
    return reshape_var(x, tuple(s for i, s in enumerate(x.shape) if i not in norm))
