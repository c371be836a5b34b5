"""Reductions and normalisations over the middle axis of an ``(A, n, B)`` view.

``sum``/``max`` over several axes record one instruction per run of adjacent axes; ``mean``
is a sum times 1/count. ``logsumexp``, ``softmax`` and ``log_softmax`` subtract the maximum
first, so they do not overflow. ``max`` splits the gradient of a tie equally and gives a
row whose maximum is nan a nan gradient (as ``torch.amax``). Sums accumulate in float64 in
either arena dtype (``sum_middle``), so a float32 sum of 10^7 terms keeps float32's digits.
Kernels index the arenas at uint64 offsets, as in ``ops.elementwise``;
``_at(p, a, n, B, j, b)`` is the offset of element ``[a, j, b]`` of the buffer at ``p``.

Loops that vectorise (issue 17): a reduction over the last axis (``B == 1``: a full sum, a
row sum, the reverse of broadcasting a scalar or a column) runs along contiguous rows, its
additions in a function compiled with ``fastmath={"reassoc"}`` (``_sum_run``, ``_dot_run``:
LLVM may reorder them, so it keeps several vector partial sums -- float64 partials in either
arena); any other axis (``B > 1``) keeps one running value per column in a scratch row and
loops over the columns innermost. Exponentials are ``_vmath.vexp`` of float64 differences
(vector code, as accurate as the libm calls they replace), written to a scratch chunk and then
summed, never summed under ``reassoc`` (which could reorder the range reduction inside exp).
The heavy kernels are ``@jit`` functions called from the inlined rows: a call costs
nanoseconds, and their scratch arrays stay out of the interpreters.
"""
import math
import os

import numpy as np

from .._jit import cached, drop_stale_cache, jit, kernel
from ..errors import ShapeError, user_site
from ..opcodes import Op
from ..var import Var
from ._precision import is_f32
from ._record import norm_axes, prod, reshape_var, runs, vars_of
from ._vjp import expand_mid, view3, vjp
from ._vmath import _exp64 as exp64
from ._vmath import _exp64_short
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


def _reassoc(fn):
    """A called loop whose float additions LLVM may reorder (vector partial sums): only sums
    go here -- no exp, no compensated arithmetic -- so the reordering changes nothing but
    the rounding of the sum."""
    return cached(fn, error_model="numpy", nogil=True, fastmath={"reassoc"})


@_reassoc
def _sum_run(src, p, n):
    """sum_j src[p + j] for j < n, in float64 whatever the arena."""
    s = 0.0
    for j in range(np.uint64(n)):
        s += src[p + j]
    return s


@_reassoc
def _dot_run(a, pa, b, pb, n):
    """sum_j a[pa + j] * b[pb + j] for j < n, each product and the sum in float64."""
    s = 0.0
    for j in range(np.uint64(n)):
        s += np.float64(a[pa + j]) * b[pb + j]
    return s


@_reassoc
def _sum_rows(src, x, dst, ans, A, n, add):
    """dst[ans + a] = (or +=) sum_j src[x + a*n + j]: the sums of A contiguous rows."""
    un = np.uint64(n)
    for a in range(np.uint64(A)):
        row = x + a * un
        s = 0.0
        for j in range(un):
            s += src[row + j]
        out = ans + a
        dst[out] = dst[out] + s if add else s


# dst[a, b] = (or +=, if add) sum_j src[a, j, b]: SUM's forward rule and EXPAND's reverse
# rule. The running sums are float64 whatever the arena: a float32 running sum of 10^7 terms
# of 0.1 was off by 9 %. One column (B == 1: a full sum, row sums) runs along the rows in
# vector partial sums (_sum_rows); several columns are added row by row into the output in a
# float64 arena, by blocks of 8 rows into a float64 row in a float32 one (_sum_rows_f32).
# Called, not inlined, from the sweeps: their compile time grows faster than their size,
# and a call costs nanoseconds.
@jit
def sum_middle(src, x, dst, ans, A, n, B, add):
    if B == 1:
        _sum_rows(src, x, dst, ans, A, n, add)
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
    if B == 1:  # each row gets one number: a contiguous loop per row
        un = np.uint64(n)
        for a in range(np.uint64(A)):
            s = g[ans + a]
            row = x + a * un
            for j in range(un):
                g[row + j] += s
        return
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
def _bigger(m, e):
    """e if it is larger than m or nan (a nan, once met, stays), else m."""
    return e if e > m or e != e else m


@kernel
def _max_run(v, p, n):
    """max of v[p + j], j < n, as a float64 (nan if any is nan, -inf if n == 0): four
    independent running maxima instead of one chain."""
    m0 = m1 = m2 = m3 = -math.inf
    un = np.uint64(n)
    n4 = un - un % np.uint64(4)
    for j in range(np.uint64(0), n4, np.uint64(4)):
        i = p + j
        m0 = _bigger(m0, np.float64(v[i]))
        m1 = _bigger(m1, np.float64(v[i + np.uint64(1)]))
        m2 = _bigger(m2, np.float64(v[i + np.uint64(2)]))
        m3 = _bigger(m3, np.float64(v[i + np.uint64(3)]))
    for j in range(n4, un):
        m0 = _bigger(m0, np.float64(v[p + j]))
    return _bigger(_bigger(m0, m1), _bigger(m2, m3))


@kernel
def _col_max(v, x, a, n, B, mx):
    """mx[b] = max_j v[x][a, j, b] for every b (nan if any is nan): rows innermost."""
    uB = np.uint64(B)
    for b in range(uB):
        mx[b] = -math.inf
    for j in range(n):
        row = _at(x, a, n, B, j, 0)
        for b in range(uB):
            mx[b] = _bigger(mx[b], np.float64(v[row + b]))


@kernel
def max_fwd(v, x, ans, A, n, B):
    _max_fwd(v, x, ans, A, n, B)


@jit
def _max_fwd(v, x, ans, A, n, B):
    if B == 1:
        for a in range(np.uint64(A)):
            v[ans + a] = _max_run(v, x + a * np.uint64(n), n)
        return
    mx = np.empty(B)
    for a in range(A):
        _col_max(v, x, a, n, B, mx)
        out = ans + np.uint64(a * B)
        for b in range(np.uint64(B)):
            v[out + b] = mx[b]


@kernel
def max_bwd(v, g, x, ans, A, n, B):
    _max_bwd(v, g, x, ans, A, n, B)


@jit
def _max_bwd(v, g, x, ans, A, n, B):
    if B == 1:
        un = np.uint64(n)
        for a in range(np.uint64(A)):
            row, out = x + a * un, ans + a
            m = v[out]
            if m != m:  # a nan in the row: nan to every element (torch.amax)
                for j in range(un):
                    g[row + j] += math.nan
                continue
            ties = 0
            for j in range(un):
                ties += v[row + j] == m
            share = g[out] / (ties if ties > 0 else 1)
            for j in range(un):
                i = row + j
                g[i] = g[i] + share if v[i] == m else g[i]
        return
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


_CHUNK = 512  # exps computed into a scratch of this many float64, then summed (_exp_sum)


@kernel
def _exp_sum(v, p, n, m, buf):
    """sum_j exp(v[p + j] - m), j < n, in float64: the exps (vector code, _vmath.vexp) into
    ``buf`` chunk by chunk, each chunk summed by _sum_run."""
    s = 0.0
    for c in range(0, n, _CHUNK):
        L = min(_CHUNK, n - c)
        q = p + np.uint64(c)
        for i in range(np.uint64(L)):
            buf[i] = exp64(np.float64(v[q + i]) - m)
        s += _sum_run(buf, np.uint64(0), L)
    return s


@kernel
def _col_exp_sum(v, x, a, n, B, mx, s):
    """s[b] = sum_j exp(v[x][a, j, b] - mx[b]) for every b, columns innermost."""
    uB = np.uint64(B)
    for b in range(uB):
        s[b] = 0.0
    for j in range(n):
        row = _at(x, a, n, B, j, 0)
        for b in range(uB):
            s[b] += exp64(np.float64(v[row + b]) - mx[b])


# ans[a, b] = m + log(sum_j exp(x[a, j, b] - m)), m the maximum;  gx += g * exp(x - ans)
@kernel
def logsumexp_fwd(v, x, ans, A, n, B):
    _logsumexp_fwd(v, x, ans, A, n, B)


@kernel
def _lse(m, s):
    """m + log(s), or m itself when the maximum is infinite or nan."""
    return m if math.isinf(m) or m != m else m + math.log(s)


@jit
def _logsumexp_fwd(v, x, ans, A, n, B):
    if B == 1:
        buf = np.empty(min(n, _CHUNK))
        for a in range(np.uint64(A)):
            row = x + a * np.uint64(n)
            m = _max_run(v, row, n)
            s = 0.0 if math.isinf(m) or m != m else _exp_sum(v, row, n, m, buf)
            v[ans + a] = _lse(m, s)
        return
    mx, s = np.empty(B), np.empty(B)
    for a in range(A):
        _col_max(v, x, a, n, B, mx)
        _col_exp_sum(v, x, a, n, B, mx, s)
        out = ans + np.uint64(a * B)
        for b in range(np.uint64(B)):
            v[out + b] = _lse(mx[b], s[b])


@kernel
def logsumexp_bwd(v, g, x, ans, A, n, B):
    _logsumexp_bwd(v, g, x, ans, A, n, B)


@jit
def _logsumexp_bwd(v, g, x, ans, A, n, B):
    if B == 1:
        un = np.uint64(n)
        for a in range(np.uint64(A)):
            row, out = x + a * un, ans + a
            go, lo = np.float64(g[out]), np.float64(v[out])
            for j in range(un):
                i = row + j
                g[i] += go * exp64(np.float64(v[i]) - lo)
        return
    uB = np.uint64(B)
    for a in range(A):
        out = ans + np.uint64(a * B)
        for j in range(n):
            row = _at(x, a, n, B, j, 0)
            for b in range(uB):
                g[row + b] += np.float64(g[out + b]) * exp64(np.float64(v[row + b])
                                                            - np.float64(v[out + b]))


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
def exp_for(v, d):
    """exp(d) (a float64) for an element of arena ``v``: to float64 accuracy, or on a float32
    arena to the ~1e-11 a float32 result needs (``_exp64_short``: the softmax's exps are
    rounded to the arena's dtype as they are stored)."""
    return _exp64_short(d) if is_f32(v) else exp64(d)


@kernel
def softmax_fwd(v, x, ans, A, n, B):
    _softmax_fwd(v, x, ans, A, n, B)


@kernel
def softmax_short(f32, a0, a1, a2, a3):
    """The softmax of a row of 2 to 4 elements (float64s; a missing one -inf, whose exp is
    0) as four float64 quotients; ``f32``: on a float32 arena, each exp (``exp_for``'s)
    rounded to float32 as the arena stores it. The kernel's rows of 2 to 4 and SOFTMAX's
    scalar row (a softmax of a few stacked scalars) load and store the elements one by one
    around it: a vector load over elements just stored one by one (``_sum_run``'s, a
    vectorised division loop's) waits for those stores to retire. The four exps are
    independent and overlap; the sum is (e0 + e1) + (e2 + e3). No arena among the
    arguments: numba counts references to an arena around every inlined call taking one."""
    m = _bigger(_bigger(a0, a1), _bigger(a2, a3))  # _max_run's maximum (nan if any is)
    e0 = _exp_stored(f32, a0 - m)
    e1 = _exp_stored(f32, a1 - m)
    e2 = _exp_stored(f32, a2 - m)
    e3 = _exp_stored(f32, a3 - m)
    s = (e0 + e1) + (e2 + e3)
    return e0 / s, e1 / s, e2 / s, e3 / s


@kernel
def _exp_stored(f32, d):
    """exp(d) as ``exp_for`` makes it, rounded to float32 when ``f32``."""
    return np.float64(np.float32(_exp64_short(d))) if f32 else exp64(d)


@kernel
def softmax_short_bwd(s0, s1, s2, s3, g0, g1, g2, g3):
    """The gradients ``s_j (g_j - sum_i g_i s_i)`` of a softmax row of 2 to 4 (float64; a
    missing element's s and g 0), the dot product summed as (p0 + p1) + (p2 + p3)."""
    dot = (g0 * s0 + g1 * s1) + (g2 * s2 + g3 * s3)
    return s0 * (g0 - dot), s1 * (g1 - dot), s2 * (g2 - dot), s3 * (g3 - dot)


@jit
def _softmax_fwd(v, x, ans, A, n, B):
    if B == 1:
        un = np.uint64(n)
        u1, u2, u3 = np.uint64(1), np.uint64(2), np.uint64(3)
        for a in range(np.uint64(A)):
            row, out = x + a * un, ans + a * un
            if 2 <= n <= 4:  # (the same loads and stores as SOFTMAX's scalar row)
                a2 = np.float64(v[row + u2]) if n > 2 else -math.inf
                a3 = np.float64(v[row + u3]) if n > 3 else -math.inf
                q0, q1, q2, q3 = softmax_short(is_f32(v), np.float64(v[row]),
                                               np.float64(v[row + u1]), a2, a3)
                v[out] = q0
                v[out + u1] = q1
                if n > 2:
                    v[out + u2] = q2
                if n > 3:
                    v[out + u3] = q3
                continue
            m = _max_run(v, row, n)
            for j in range(un):
                v[out + j] = exp_for(v, np.float64(v[row + j]) - m)
            s = _sum_run(v, out, n)
            for j in range(un):
                v[out + j] /= s
        return
    uB = np.uint64(B)
    mx, s = np.empty(B), np.empty(B)
    for a in range(A):
        _col_max(v, x, a, n, B, mx)
        for b in range(uB):
            s[b] = 0.0
        for j in range(n):
            src, dst = _at(x, a, n, B, j, 0), _at(ans, a, n, B, j, 0)
            for b in range(uB):
                e = exp_for(v, np.float64(v[src + b]) - mx[b])
                v[dst + b] = e
                s[b] += e
        for j in range(n):
            dst = _at(ans, a, n, B, j, 0)
            for b in range(uB):
                v[dst + b] /= s[b]


@kernel
def softmax_bwd(v, g, x, ans, A, n, B):
    _softmax_bwd(v, g, x, ans, A, n, B)


@jit
def _softmax_bwd(v, g, x, ans, A, n, B):
    if B == 1:
        un = np.uint64(n)
        u1, u2, u3 = np.uint64(1), np.uint64(2), np.uint64(3)
        for a in range(np.uint64(A)):
            row, out = x + a * un, ans + a * un
            if 2 <= n <= 4:  # (the same loads and stores as SOFTMAX's scalar row)
                s2 = np.float64(v[out + u2]) if n > 2 else 0.0
                g2 = np.float64(g[out + u2]) if n > 2 else 0.0
                s3 = np.float64(v[out + u3]) if n > 3 else 0.0
                g3 = np.float64(g[out + u3]) if n > 3 else 0.0
                d0, d1, d2, d3 = softmax_short_bwd(
                    np.float64(v[out]), np.float64(v[out + u1]), s2, s3,
                    np.float64(g[out]), np.float64(g[out + u1]), g2, g3)
                g[row] += d0
                g[row + u1] += d1
                if n > 2:
                    g[row + u2] += d2
                if n > 3:
                    g[row + u3] += d3
                continue
            dot = _dot_run(g, out, v, out, n)
            for j in range(un):
                i = out + j
                g[row + j] += v[i] * (g[i] - dot)
        return
    uB = np.uint64(B)
    dot = np.empty(B)
    for a in range(A):
        for b in range(uB):
            dot[b] = 0.0
        for j in range(n):
            i = _at(ans, a, n, B, j, 0)
            for b in range(uB):
                dot[b] += np.float64(g[i + b]) * v[i + b]
        for j in range(n):
            i, r = _at(ans, a, n, B, j, 0), _at(x, a, n, B, j, 0)
            for b in range(uB):
                g[r + b] += v[i + b] * (g[i + b] - dot[b])


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
    _log_softmax_fwd(v, x, ans, A, n, B)


@jit
def _log_softmax_fwd(v, x, ans, A, n, B):
    if B == 1:
        un = np.uint64(n)
        buf = np.empty(min(n, _CHUNK))
        for a in range(np.uint64(A)):
            row, out = x + a * un, ans + a * un
            m = _max_run(v, row, n)
            lse = m + math.log(_exp_sum(v, row, n, m, buf))
            for j in range(un):
                v[out + j] = v[row + j] - lse
        return
    uB = np.uint64(B)
    mx, s = np.empty(B), np.empty(B)
    for a in range(A):
        _col_max(v, x, a, n, B, mx)
        _col_exp_sum(v, x, a, n, B, mx, s)
        for b in range(uB):
            s[b] = mx[b] + math.log(s[b])  # the logsumexp of column b
        for j in range(n):
            src, dst = _at(x, a, n, B, j, 0), _at(ans, a, n, B, j, 0)
            for b in range(uB):
                v[dst + b] = v[src + b] - s[b]


@kernel
def log_softmax_bwd(v, g, x, ans, A, n, B):
    _log_softmax_bwd(v, g, x, ans, A, n, B)


@jit
def _log_softmax_bwd(v, g, x, ans, A, n, B):
    if B == 1:
        un = np.uint64(n)
        for a in range(np.uint64(A)):
            row, out = x + a * un, ans + a * un
            gs = _sum_run(g, out, n)
            for j in range(un):
                i = out + j
                g[row + j] += g[i] - exp64(np.float64(v[i])) * gs
        return
    uB = np.uint64(B)
    gs = np.empty(B)
    for a in range(A):
        for b in range(uB):
            gs[b] = 0.0
        for j in range(n):
            i = _at(ans, a, n, B, j, 0)
            for b in range(uB):
                gs[b] += g[i + b]
        for j in range(n):
            i, r = _at(ans, a, n, B, j, 0), _at(x, a, n, B, j, 0)
            for b in range(uB):
                g[r + b] += g[i + b] - exp64(np.float64(v[i + b])) * gs[b]


@vjp(Op.LOG_SOFTMAX)
def log_softmax_vjp(r, g):
    A, n, B = r.a[:3]
    g3 = view3(g, A, n, B)
    return (g3 - exp(view3(r.ans, A, n, B)) * expand_mid(sum(g3, axis=1), A, n, B),)


_HERE = os.path.dirname(os.path.abspath(__file__))
# the called functions inline kernels of other files: their cache entries hold for those too
for _f in (sum_middle, _sum_run, _dot_run, _sum_rows, _max_fwd, _max_bwd, _logsumexp_fwd,
           _logsumexp_bwd, _softmax_fwd, _softmax_bwd, _log_softmax_fwd, _log_softmax_bwd):
    drop_stale_cache(_f, [os.path.join(_HERE, f) for f in ("reduce.py", "_vmath.py",
                                                            "_precision.py")]
                     + [os.path.join(_HERE, "..", "_jit.py")])
