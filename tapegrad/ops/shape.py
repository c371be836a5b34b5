"""Data movement: reshape, broadcast (EXPAND), basic indexing (SLICE), concatenate/stack
(PLACE) and transpose, each a shape rule plus forward and reverse kernels.

Every kernel sees a flat buffer as a 3-D ``(A, n, B)`` view (A = product of the axes before,
B = product of the axes after the one it works on), so one kernel serves every axis and rank.
Kernels index the arenas ``v`` / ``g`` at the uint64 offsets ``x`` (input) and ``ans``
(output), as in ``tapegrad.ops.elementwise``; the attributes arrive as int64.
A reshape records no instruction: it is a new buffer over the same arena slice.
"""
import numbers
import operator

import numpy as np

from .._jit import kernel
from ..errors import ShapeError, user_site
from ..opcodes import Op
from ..tape import TEMP
from ..var import Var
from ._record import norm_axis, prod, reshape_var, vars_of
from ._vjp import view3, vjp
from .gather import advanced_index, is_advanced
from .reduce import sum_middle


# ---------------------------------------------------------------------------- reshape
def reshape(x, shape):
    """``x`` with a new shape (one -1 allowed); shares memory, records no instruction.

    ``tg.reshape(v, (2, -1))``"""
    tape, (x,) = vars_of([x], "reshape")
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise ShapeError(f"reshape: shape must be ints, got {shape!r} ({user_site()})") from None
    if shape.count(-1) > 1 or any(s < -1 for s in shape):
        raise ShapeError(f"reshape: invalid shape {shape} ({user_site()})")
    if -1 in shape:
        rest = prod(s for s in shape if s != -1)
        if rest == 0 or x.size % rest:
            raise ShapeError(f"reshape: cannot reshape {x.shape} into {shape} ({user_site()})")
        shape = tuple(x.size // rest if s == -1 else s for s in shape)
    if prod(shape) != x.size:
        raise ShapeError(f"reshape: cannot reshape {x.shape} (size {x.size}) into {shape} "
                         f"({user_site()})")
    return reshape_var(x, shape)


# ---------------------------------------------------------------------------- expand
# (recorded by _record.broadcast_to) out[a, j, b] = x[a, b];  gx[a, b] += sum_j g[a, j, b]
@kernel
def expand_fwd(v, x, ans, A, n, B):
    if B == 1:  # a scalar or a column spread along rows: one value per contiguous row
        un = np.uint64(n)
        for a in range(np.uint64(A)):
            e = v[x + a]
            dst = ans + a * un
            for j in range(un):
                v[dst + j] = e
        return
    for a in range(A):
        src = x + np.uint64(a * B)
        for j in range(n):
            dst = ans + np.uint64((a * n + j) * B)
            for b in range(np.uint64(B)):
                v[dst + b] = v[src + b]


@kernel
def expand_bwd(g, x, ans, A, n, B):
    # a reduction: summed in float64 (ops.reduce); the flag an int64, not a literal True
    sum_middle(g, ans, g, x, A, n, B, np.int64(1))


@vjp(Op.EXPAND)
def expand_vjp(r, g):
    from .reduce import sum as sum_
    A, n, B = r.a[:3]
    return (sum_(view3(g, A, n, B), axis=1),)


# ---------------------------------------------------------------------------- indexing
def index(x, key):
    """``x[key]`` for ints, slices, ``...`` and ``None`` (basic indexing, a copy); integer
    arrays, boolean NumPy masks and index Vars as NumPy's advanced indexing (a gather)."""
    if type(key) is int and type(x) is Var and x.tape._shape[x._b]:
        return _index_first(x, key)
    if is_advanced(key):  # integer arrays, masks, index Vars: a gather (ops/gather.py)
        return advanced_index(x, key)
    tape, (x,) = vars_of([x], "index")
    key = key if isinstance(key, tuple) else (key,)
    if any(not (k is None or k is Ellipsis or isinstance(k, (slice, numbers.Integral)))
           or isinstance(k, bool) for k in key):
        raise ShapeError(f"index: only ints, slices, ..., None, integer arrays, boolean masks "
                         f"and index Vars are supported, got {key!r} "
                         f"for shape {x.shape} ({user_site()})")
    n_real = sum(1 for k in key if k is not None and k is not Ellipsis)
    if sum(1 for k in key if k is Ellipsis) > 1 or n_real > x.ndim:
        raise ShapeError(f"index: too many indices {key!r} for shape {x.shape} ({user_site()})")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (x.ndim - n_real) + key[i + 1:]
    else:
        key = key + (slice(None),) * (x.ndim - n_real)
    # plan: per input axis (start, step, count, keep) before touching the tape
    plan, out_shape, axis = [], [], 0
    for k in key:
        if k is None:
            out_shape.append(1)
            continue
        dim = x.shape[axis]
        if isinstance(k, slice):
            start, stop, step = k.indices(dim)
            count = len(range(start, stop, step))
            plan.append((axis, start, step, count))
            out_shape.append(count)
        else:
            i = int(k)
            if not -dim <= i < dim:
                raise ShapeError(f"index: index {i} is out of bounds for axis {axis} with size "
                                 f"{dim} (shape {x.shape}) ({user_site()})")
            plan.append((axis, i % dim, 1, 1))
        axis += 1
    cur = list(x.shape)
    for axis, start, step, count in plan:
        if start == 0 and step == 1 and count == cur[axis]:
            continue  # the whole axis: nothing to copy
        attrs = (prod(cur[:axis]), cur[axis], prod(cur[axis + 1:]), start, step, count)
        cur[axis] = count
        x = Var(tape, tape._emit(Op.SLICE, [x._b], tuple(cur), attrs))
    return reshape_var(x, out_shape)


def _index_first(x, i):
    """``x[i]`` for a Python int ``i``: one SLICE of the first axis whose output has the
    shape of the rest (what ``index`` records, without the planning and the reshape)."""
    tape = x.tape
    shape = tape._shape[x._b]
    dim, rest = shape[0], shape[1:]
    if not -dim <= i < dim:
        raise ShapeError(f"index: index {i} is out of bounds for axis 0 with size {dim} "
                         f"(shape {shape}) ({user_site()})")
    if dim == 1:  # the whole axis: nothing to copy
        return reshape_var(x, rest)
    return Var(tape, tape._emit(Op.SLICE, (x._b,), rest, (1, dim, prod(rest), i % dim, 1, 1)))


# out[a, j, b] = x[a, start + j*step, b];  gx[a, start + j*step, b] += g[a, j, b]
@kernel
def slice_fwd(v, x, ans, A, n, B, start, step, count):
    if step == 1:  # each a: one contiguous run of count * B elements
        run = np.uint64(count * B)
        for a in range(A):
            src = x + np.uint64((a * n + start) * B)
            dst = ans + np.uint64(a) * run
            for i in range(run):
                v[dst + i] = v[src + i]
        return
    if B == 1:  # a strided gather along the last axis
        ustep = np.int64(step)
        for a in range(A):
            src = np.int64(x) + (a * n + start)
            dst = ans + np.uint64(a * count)
            for j in range(np.uint64(count)):
                v[dst + j] = v[np.uint64(src + np.int64(j) * ustep)]
        return
    for a in range(A):
        for j in range(count):
            src = x + np.uint64((a * n + start + j * step) * B)
            dst = ans + np.uint64((a * count + j) * B)
            for b in range(np.uint64(B)):
                v[dst + b] = v[src + b]


@kernel
def slice_bwd(g, x, ans, A, n, B, start, step, count):
    if step == 1:
        run = np.uint64(count * B)
        for a in range(A):
            src = x + np.uint64((a * n + start) * B)
            dst = ans + np.uint64(a) * run
            for i in range(run):
                g[src + i] += g[dst + i]
        return
    for a in range(A):
        for j in range(count):
            src = x + np.uint64((a * n + start + j * step) * B)
            dst = ans + np.uint64((a * count + j) * B)
            for b in range(np.uint64(B)):
                g[src + b] += g[dst + b]


@vjp(Op.SLICE)
def slice_vjp(r, g):
    return (_emit3(Op.UNSLICE, g, (r.a[0], r.a[1], r.a[2]), r.a),)


def _emit3(op, g, shape3, attrs):
    """``op`` on ``g`` viewed as the (A, ., B) block its attributes describe."""
    A, n, B, start, step, count = attrs
    tape = g.tape
    g3 = view3(g, A, count if op == Op.UNSLICE else n, B)
    return Var(tape, tape._emit(op, [g3._b], shape3, attrs))


# out[a, start + j*step, b] = x[a, j, b] and zero elsewhere: the transpose of SLICE, recorded
# only by reverse rules (slice_vjp);  gx[a, j, b] += g[a, start + j*step, b]
@kernel
def unslice_fwd(v, x, ans, A, n, B, start, step, count):
    for i in range(np.uint64(A * n * B)):
        v[ans + i] = 0
    if step == 1:
        run = np.uint64(count * B)
        for a in range(A):
            dst = ans + np.uint64((a * n + start) * B)
            src = x + np.uint64(a) * run
            for i in range(run):
                v[dst + i] = v[src + i]
        return
    for a in range(A):
        for j in range(count):
            dst = ans + np.uint64((a * n + start + j * step) * B)
            src = x + np.uint64((a * count + j) * B)
            for b in range(np.uint64(B)):
                v[dst + b] = v[src + b]


@kernel
def unslice_bwd(g, x, ans, A, n, B, start, step, count):
    if step == 1:
        run = np.uint64(count * B)
        for a in range(A):
            dst = ans + np.uint64((a * n + start) * B)
            src = x + np.uint64(a) * run
            for i in range(run):
                g[src + i] += g[dst + i]
        return
    for a in range(A):
        for j in range(count):
            dst = ans + np.uint64((a * n + start + j * step) * B)
            src = x + np.uint64((a * count + j) * B)
            for b in range(np.uint64(B)):
                g[src + b] += g[dst + b]


@vjp(Op.UNSLICE)
def unslice_vjp(r, g):
    A, n, B, start, step, count = r.a
    return (_emit3(Op.SLICE, g, (A, count, B), r.a),)


# ---------------------------------------------------------------------------- concatenate
def concatenate(xs, axis=0):
    """Join Vars (or arrays) along an existing axis.  ``tg.concatenate([a, b], axis=1)``"""
    xs = list(xs)
    if not xs:
        raise ShapeError(f"concatenate: needs at least one array ({user_site()})")
    tape, xs = vars_of(xs, "concatenate")
    ndim = xs[0].ndim
    if ndim == 0:
        raise ShapeError(f"concatenate: zero-dimensional arrays cannot be concatenated "
                         f"({user_site()})")
    ax = norm_axis(axis, ndim, "concatenate")
    shapes = [v.shape for v in xs]
    for s in shapes:
        if len(s) != ndim or s[:ax] + s[ax + 1:] != shapes[0][:ax] + shapes[0][ax + 1:]:
            raise ShapeError(f"concatenate: shapes {shapes} differ outside axis {ax} "
                             f"({user_site()})")
    n = sum(s[ax] for s in shapes)
    out_shape = shapes[0][:ax] + (n,) + shapes[0][ax + 1:]
    A, B = prod(out_shape[:ax]), prod(out_shape[ax + 1:])
    out = tape._new_buffer(out_shape, TEMP)  # written piecewise by PLACE instructions
    start = 0
    for v in xs:
        tape._emit(Op.PLACE, [v._b], out_shape, (A, n, B, start, v.shape[ax]), out=out)
        start += v.shape[ax]
    return Var(tape, out)


def stack(xs, axis=0):
    """Join Vars of one shape along a new axis.  ``tg.stack([a, b, c])``"""
    xs = list(xs)
    if not xs:
        raise ShapeError(f"stack: needs at least one array ({user_site()})")
    tape, xs = vars_of(xs, "stack")
    shapes = {v.shape for v in xs}
    if len(shapes) != 1:
        raise ShapeError(f"stack: all inputs must have one shape, got {sorted(shapes)} "
                         f"({user_site()})")
    ax = norm_axis(axis, xs[0].ndim + 1, "stack")
    s = xs[0].shape
    # concatenate's PLACE instructions, each input read as its (A, 1, B) block as it is
    out_shape = s[:ax] + (len(xs),) + s[ax:]
    A, B = prod(s[:ax]), prod(s[ax:])
    out = tape._new_buffer(out_shape, TEMP)
    for i, v in enumerate(xs):
        tape._emit(Op.PLACE, (v._b,), out_shape, (A, len(xs), B, i, 1), out=out)
    return Var(tape, out)


# out[a, start + j, b] = x[a, j, b];  gx[a, j, b] += g[a, start + j, b]
@kernel
def place_fwd(v, x, ans, A, n, B, start, count):
    for a in range(A):
        dst = ans + np.uint64((a * n + start) * B)
        src = x + np.uint64(a * count * B)
        for i in range(np.uint64(count * B)):
            v[dst + i] = v[src + i]


@kernel
def place_bwd(g, x, ans, A, n, B, start, count):
    for a in range(A):
        dst = ans + np.uint64((a * n + start) * B)
        src = x + np.uint64(a * count * B)
        for i in range(np.uint64(count * B)):
            g[src + i] += g[dst + i]


@vjp(Op.PLACE)
def place_vjp(r, g):
    A, n, B, start, count = r.a[:5]
    return (_emit3(Op.SLICE, g, (A, count, B), (A, n, B, start, 1, count)),)


# ---------------------------------------------------------------------------- transpose
def transpose(x, axes=None):
    """Permute axes (default: reverse them).  ``tg.transpose(v, (0, 2, 1))``, ``v.T``"""
    tape, (x,) = vars_of([x], "transpose")
    nd = x.ndim
    if axes is None:
        axes = tuple(range(nd))[::-1]
    axes = tuple(axes)
    if sorted(norm_axis(a, nd, "transpose") for a in axes) != list(range(nd)) or len(axes) != nd:
        raise ShapeError(f"transpose: axes {axes} are not a permutation of {nd} axes "
                         f"({user_site()})")
    perm = [norm_axis(a, nd, "transpose") for a in axes]
    # bubble-sort `order` (the axis of x each position holds) toward perm, one adjacent swap
    # per instruction; swapping an axis of length 1 moves no data and is a reshape
    order, shape = list(range(nd)), list(x.shape)
    for target_pos in range(nd):
        i = order.index(perm[target_pos])
        while i > target_pos:
            M, N = shape[i - 1], shape[i]
            shape[i - 1], shape[i] = N, M
            order[i - 1], order[i] = order[i], order[i - 1]
            if M == 1 or N == 1:
                x = reshape_var(x, shape)
            else:
                attrs = (prod(shape[:i - 1]), M, N, prod(shape[i + 1:]))
                x = Var(tape, tape._emit(Op.TRANSPOSE, [x._b], tuple(shape), attrs))
            i -= 1
    return x


# (A, M, N, B) -> (A, N, M, B):  out[a, q, m, b] = x[a, m, q, b]. A matrix transpose (B == 1)
# has its own loops: the general ones run a one-iteration inner loop per element (4x slower
# at 32 x 32).
@kernel
def transpose_fwd(v, x, ans, A, M, N, B):
    if B == 1:
        uM, uN = np.uint64(M), np.uint64(N)
        for a in range(A):
            base = np.uint64(a * M * N)
            for m in range(uM):
                src, dst = x + base + m * uN, ans + base + m
                for q in range(uN):
                    v[dst + q * uM] = v[src + q]
        return
    for a in range(A):
        base = a * M * N * B
        for m in range(M):
            for q in range(N):
                src = x + np.uint64(base + (m * N + q) * B)
                dst = ans + np.uint64(base + (q * M + m) * B)
                for b in range(np.uint64(B)):
                    v[dst + b] = v[src + b]


@kernel
def transpose_bwd(g, x, ans, A, M, N, B):
    if B == 1:
        uM, uN = np.uint64(M), np.uint64(N)
        for a in range(A):
            base = np.uint64(a * M * N)
            for q in range(uN):
                src, dst = x + base + q, ans + base + q * uM
                for m in range(uM):
                    g[src + m * uN] += g[dst + m]
        return
    for a in range(A):
        base = a * M * N * B
        for m in range(M):
            for q in range(N):
                src = x + np.uint64(base + (m * N + q) * B)
                dst = ans + np.uint64(base + (q * M + m) * B)
                for b in range(np.uint64(B)):
                    g[src + b] += g[dst + b]


@vjp(Op.TRANSPOSE)
def transpose_vjp(r, g):
    A, M, N, B = r.a[:4]
    tape = g.tape
    return (Var(tape, tape._emit(Op.TRANSPOSE, [g._b], (A, M, N, B), (A, N, M, B))),)
