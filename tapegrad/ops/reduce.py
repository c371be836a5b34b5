"""Reductions and normalisations over the middle axis of an ``(A, n, B)`` view.

``sum``/``max`` over several axes record one instruction per run of adjacent axes; ``mean``
is a sum times 1/count. ``logsumexp``, ``softmax`` and ``log_softmax`` subtract the maximum
first, so they do not overflow. ``max`` splits the gradient of a tie equally and gives a
row whose maximum is nan a nan gradient (as ``torch.amax``). Sums accumulate in float64 in
either arena dtype (``sum_middle``), so a float32 sum of 10^7 terms keeps float32's digits.
Kernels index the arenas at uint64 offsets, as in ``ops.elementwise``;
``_at(p, a, n, B, j, b)`` is the offset of element ``[a, j, b]`` of the buffer at ``p``.
"""
import math

import numpy as np

from .._jit import jit, kernel
from ..errors import ShapeError, user_site
from ..opcodes import Op
from ..var import Var
from ._precision import is_f32
from ._record import norm_axes, prod, reshape_var, runs, vars_of
from ._vjp import expand_mid, view3, vjp
from .elementwise import exp, lt, mul


def sum(x, axis=None, keepdims=False):  # noqa: A001 - the public name is tg.sum
    """Sum over ``axis`` (None: all; int or tuple).  ``tg.sum(v, axis=0)``, ``v.sum()``"""
    return _reduce_keep(Op.SUM, "sum", x, axis, keepdims)


def max(x, axis=None, keepdims=False):  # noqa: A001 - the public name is tg.max
    """Maximum over ``axis``; ties share the gradient.  ``tg.max(v, axis=1)``, ``v.max()``"""
    return _reduce_keep(Op.MAX, "max", x, axis, keepdims)


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis``.  ``tg.mean(v)``, ``v.mean(axis=0)``"""
    tape, (x,) = vars_of([x], "mean")
    count = prod(x.shape[a] for a in norm_axes(axis, x.ndim, "mean"))
    return mul(_reduce_keep(Op.SUM, "mean", x, axis, keepdims), 1.0 / count if count else math.nan)


def _reduce_keep(op, name, x, axis, keepdims):
    tape, (x,) = vars_of([x], name)
    axes = norm_axes(axis, x.ndim, name)
    kept = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
    if op == Op.MAX and any(x.shape[a] == 0 for a in axes):
        raise ShapeError(f"{name}: zero-size axis in shape {x.shape} has no maximum "
                         f"({user_site()})")
    shape = list(x.shape)
    for i0, i1 in reversed(runs(axes)):
        attrs = (prod(shape[:i0]), prod(shape[i0:i1]), prod(shape[i1:]))
        shape = shape[:i0] + shape[i1:]
        x = Var(tape, tape._emit(op, [x._b], tuple(shape), attrs))
    return reshape_var(x, kept) if keepdims else x


@kernel
def _at(p, a, n, B, j, b):
    return p + np.uint64((a * n + j) * B + b)


# dst[a, b] = (or +=, if add) sum_j src[a, j, b]: SUM's forward rule and EXPAND's reverse
# rule. The running sums are float64 whatever the arena: a float32 running sum of 10^7 terms
# of 0.1 was off by 9 %. One column (B == 1) keeps four interleaved sums (independent
# chains, ~4x faster than one); several columns are added row by row into the output in a
# float64 arena, by blocks of 8 rows into a float64 row in a float32 one (_sum_rows_f32).
# Called, not inlined, from the sweeps: their compile time grows faster than their size,
# and a call costs nanoseconds.
@jit
def sum_middle(src, x, dst, ans, A, n, B, add):
    if B == 1:
        for a in range(A):
            row = x + np.uint64(a * n)
            s0 = s1 = s2 = s3 = 0.0
            for q in range(np.uint64(n // 4)):
                i = row + np.uint64(4) * q
                s0 += src[i]
                s1 += src[i + np.uint64(1)]
                s2 += src[i + np.uint64(2)]
                s3 += src[i + np.uint64(3)]
            for j in range(np.uint64(n - n % 4), np.uint64(n)):
                s0 += src[row + j]
            out = ans + np.uint64(a)
            total = (s0 + s1) + (s2 + s3)
            dst[out] = dst[out] + total if add else total
        return
    if is_f32(src):
        _sum_rows_f32(src, x, dst, ans, A, n, B, add)
        return
    for a in range(A):
        out = ans + np.uint64(a * B)
        if not add:
            for b in range(np.uint64(B)):
                dst[out + b] = 0
        for j in range(n):
            row = x + np.uint64((a * n + j) * B)
            for b in range(np.uint64(B)):
                dst[out + b] += src[row + b]


@kernel
def _sum_rows_f32(src, x, dst, ans, A, n, B, add):
    """Column sums of float32 rows: each block of 8 rows is added as a float32 tree (error at
    most 3 float32 roundings, 1.8e-7 of the sum of magnitudes) and the block sums run in
    float64 -- as accurate as a float64 sum here, and at float32's SIMD width for 7/8 of
    the additions (a float64 running sum of every row cost the bias-broadcast reverse of
    digits-mlp 2.4x its time)."""
    acc = np.empty(B)
    uB = np.uint64(B)
    n8 = n - n % 8
    for a in range(A):
        for b in range(uB):
            acc[b] = 0
        for j in range(0, n8, 8):
            r0 = x + np.uint64((a * n + j) * B)  # offsets of the 8 rows, all np.uint64:
            r1 = r0 + uB                          # an int64 * uint64 product is a float64
            r2 = r1 + uB
            r3 = r2 + uB
            r4 = r3 + uB
            r5 = r4 + uB
            r6 = r5 + uB
            r7 = r6 + uB
            for b in range(uB):
                acc[b] += (((src[r0 + b] + src[r1 + b]) + (src[r2 + b] + src[r3 + b]))
                           + ((src[r4 + b] + src[r5 + b]) + (src[r6 + b] + src[r7 + b])))
        for j in range(n8, n):
            row = x + np.uint64((a * n + j) * B)
            for b in range(uB):
                acc[b] += src[row + b]
        out = ans + np.uint64(a * B)
        for b in range(uB):
            dst[out + b] = dst[out + b] + acc[b] if add else acc[b]


# sum:  ans[a, b] = sum_j x[a, j, b];  gx[a, j, b] += g[a, b]
@kernel
def sum_fwd(v, x, ans, A, n, B):
    sum_middle(v, x, v, ans, A, n, B, np.int64(0))  # a flag, not a literal (one compile)


@kernel
def sum_bwd(v, g, x, ans, A, n, B):
    for a in range(A):
        out = ans + np.uint64(a * B)
        for j in range(n):
            row = _at(x, a, n, B, j, 0)
            for b in range(np.uint64(B)):
                g[row + b] += g[out + b]


@vjp(Op.SUM)
def sum_vjp(r, g):
    A, n, B = r.a[:3]
    return (expand_mid(g, A, n, B),)


# max:  ans[a, b] = max_j x[a, j, b] (NaN if any is NaN);  the k tied maxima get g[a, b] / k
@kernel
def _row_max(v, x, a, n, B, b):
    m = -math.inf
    for j in range(n):
        e = v[_at(x, a, n, B, j, b)]
        if e > m or e != e:
            m = e
            if e != e:
                break
    return m


@kernel
def max_fwd(v, x, ans, A, n, B):
    for a in range(A):
        for b in range(B):
            v[ans + np.uint64(a * B + b)] = _row_max(v, x, a, n, B, b)


@kernel
def max_bwd(v, g, x, ans, A, n, B):
    for a in range(A):
        for b in range(B):
            out = ans + np.uint64(a * B + b)
            if v[out] != v[out]:  # a nan in the row: nan to every element (torch.amax)
                for j in range(n):
                    g[_at(x, a, n, B, j, b)] += math.nan
                continue
            ties = 0
            for j in range(n):
                if v[_at(x, a, n, B, j, b)] == v[out]:
                    ties += 1
            if ties:
                share = g[out] / ties
                for j in range(n):
                    i = _at(x, a, n, B, j, b)
                    if v[i] == v[out]:
                        g[i] += share


@vjp(Op.MAX)
def max_vjp(r, g):
    A, n, B = r.a[:3]
    x = view3(r.x, A, n, B)
    top = 1.0 - lt(x, expand_mid(r.ans, A, n, B))  # 1 at the maxima: they share the gradient
    return (top * expand_mid(reshape_var(g, (A, B)) / sum(top, axis=1), A, n, B),)


# ---------------------------------------------------------------------------- logsumexp family
def _single_axis(name, x, axis):
    """(A, n, B) for one axis, or for all axes when axis is None (or a run of adjacent axes)."""
    axes = norm_axes(axis, x.ndim, name)
    rs = runs(axes)
    if len(rs) > 1:
        raise ShapeError(f"{name}: axes {axis!r} must be adjacent ({user_site()})")
    if not rs:  # a 0-d input
        return axes, (1, 1, 1)
    i0, i1 = rs[0]
    return axes, (prod(x.shape[:i0]), prod(x.shape[i0:i1]), prod(x.shape[i1:]))


def logsumexp(x, axis=-1, keepdims=False):
    """log(sum(exp(x))) over ``axis`` without overflow.  ``tg.logsumexp(v, axis=1)``"""
    tape, (x,) = vars_of([x], "logsumexp")
    axes, attrs = _single_axis("logsumexp", x, axis)
    kept = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
    out = tuple(s for i, s in enumerate(x.shape) if i not in axes)
    y = Var(tape, tape._emit(Op.LOGSUMEXP, [x._b], out, attrs))
    return reshape_var(y, kept) if keepdims else y


# ans[a, b] = m + log(sum_j exp(x[a, j, b] - m)), m the maximum;  gx += g * exp(x - ans)
@kernel
def logsumexp_fwd(v, x, ans, A, n, B):
    for a in range(A):
        for b in range(B):
            out = ans + np.uint64(a * B + b)
            m = _row_max(v, x, a, n, B, b)
            if math.isinf(m) or m != m:
                v[out] = m
                continue
            s = 0.0
            for j in range(n):
                s += math.exp(v[_at(x, a, n, B, j, b)] - m)
            v[out] = m + math.log(s)


@kernel
def logsumexp_bwd(v, g, x, ans, A, n, B):
    for a in range(A):
        for b in range(B):
            out = ans + np.uint64(a * B + b)
            for j in range(n):
                i = _at(x, a, n, B, j, b)
                g[i] += g[out] * math.exp(v[i] - v[out])


@vjp(Op.LOGSUMEXP)
def logsumexp_vjp(r, g):
    A, n, B = r.a[:3]
    p = exp(view3(r.x, A, n, B) - expand_mid(r.ans, A, n, B))
    return (p * expand_mid(g, A, n, B),)


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``.  ``tg.softmax(logits, axis=1)``"""
    tape, (x,) = vars_of([x], "softmax")
    _, attrs = _single_axis("softmax", x, axis)
    return Var(tape, tape._emit(Op.SOFTMAX, [x._b], x.shape, attrs))


# ans = exp(x - m) / sum_j exp(x - m);  gx += ans * (g - sum_j g * ans)
@kernel
def softmax_fwd(v, x, ans, A, n, B):
    for a in range(A):
        for b in range(B):
            m = _row_max(v, x, a, n, B, b)
            s = 0.0
            for j in range(n):
                e = math.exp(v[_at(x, a, n, B, j, b)] - m)
                v[_at(ans, a, n, B, j, b)] = e
                s += e
            for j in range(n):
                v[_at(ans, a, n, B, j, b)] /= s


@kernel
def softmax_bwd(v, g, x, ans, A, n, B):
    for a in range(A):
        for b in range(B):
            dot = 0.0
            for j in range(n):
                i = _at(ans, a, n, B, j, b)
                dot += g[i] * v[i]
            for j in range(n):
                i = _at(ans, a, n, B, j, b)
                g[_at(x, a, n, B, j, b)] += v[i] * (g[i] - dot)


@vjp(Op.SOFTMAX)
def softmax_vjp(r, g):
    A, n, B = r.a[:3]
    s, g3 = view3(r.ans, A, n, B), view3(g, A, n, B)
    return (s * (g3 - expand_mid(sum(g3 * s, axis=1), A, n, B)),)


def log_softmax(x, axis=-1):
    """x - logsumexp(x) along ``axis``.  ``tg.log_softmax(logits, axis=1)``"""
    tape, (x,) = vars_of([x], "log_softmax")
    _, attrs = _single_axis("log_softmax", x, axis)
    return Var(tape, tape._emit(Op.LOG_SOFTMAX, [x._b], x.shape, attrs))


# ans = x - logsumexp(x);  gx += g - exp(ans) * sum_j g
@kernel
def log_softmax_fwd(v, x, ans, A, n, B):
    for a in range(A):
        for b in range(B):
            m = _row_max(v, x, a, n, B, b)
            s = 0.0
            for j in range(n):
                s += math.exp(v[_at(x, a, n, B, j, b)] - m)
            lse = m + math.log(s)
            for j in range(n):
                v[_at(ans, a, n, B, j, b)] = v[_at(x, a, n, B, j, b)] - lse


@kernel
def log_softmax_bwd(v, g, x, ans, A, n, B):
    for a in range(A):
        for b in range(B):
            gs = 0.0
            for j in range(n):
                gs += g[_at(ans, a, n, B, j, b)]
            for j in range(n):
                i = _at(ans, a, n, B, j, b)
                g[_at(x, a, n, B, j, b)] += g[i] - math.exp(v[i]) * gs


@vjp(Op.LOG_SOFTMAX)
def log_softmax_vjp(r, g):
    A, n, B = r.a[:3]
    g3 = view3(g, A, n, B)
    return (g3 - exp(view3(r.ans, A, n, B)) * expand_mid(sum(g3, axis=1), A, n, B),)
