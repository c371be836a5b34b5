"""Tangent rules (forward mode): each opcode's output tangent from its inputs' tangents and the
values of the replay just done, inlined into the compiled tangent sweep of
``tapegrad.tangent`` (ADOL-C's fos_forward, JAX's jvp rules). Grouped by family in the order of
the op modules; each rule is the derivative of the forward rule in ``ops/<family>.py`` and
agrees with the reverse rule there at kinks and ties (relu'(0) = abs'(0) = 0, ties share).

Arguments: ``v`` the value arena; ``t`` the tangent arena, ``D`` directions laid out one after
another, each with the value arena's layout (``L`` elements, np.uint64), so the tangent of the
element at offset ``p`` in direction ``d`` is ``t[d * L + p]``. Offsets ``x, y, c, ans``, the
count ``n`` and the immediate ``k`` as in ``ops.elementwise``. A rule *writes* its output's
tangent (every output is written by one instruction; PLACE: each its part). ``dx`` / ``dy``:
whether that input carries a tangent at all; an input without one has zeros in ``t``, and
rules that multiply by a value skip it (``inf * 0`` would make a NaN the input never had).

Loops run direction-outer where the slope is cheap, element-outer where it needs a
transcendental (computed once for all directions).
"""
import math

import numpy as np

from .._jit import kernel
from .linalg import BLAS_MIN, _N, gemm
from .reduce import _at, _row_max, sum_fwd
from .shape import expand_fwd, place_fwd, slice_fwd, transpose_fwd, unslice_fwd


# ---------------------------------------------------------------------------- unary (elementwise.py)
# -x:  d(-x) = -dx
@kernel
def neg_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = -t[o + x + i]


# exp(x):  d = exp(x) dx = ans dx
@kernel
def exp_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = v[ans + i] * t[o + x + i]


# log(x):  d = dx / x
@kernel
def log_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = t[o + x + i] / v[x + i]


# sqrt(x):  d = dx / (2 sqrt(x)) = 0.5 dx / ans
@kernel
def sqrt_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = t[o + x + i] * 0.5 / v[ans + i]


# sin(x):  d = cos(x) dx
@kernel
def sin_tan(v, t, L, D, x, ans, n, k):
    for i in range(n):
        s = math.cos(v[x + i])
        for d in range(D):
            o = np.uint64(d) * L
            t[o + ans + i] = s * t[o + x + i]


# cos(x):  d = -sin(x) dx
@kernel
def cos_tan(v, t, L, D, x, ans, n, k):
    for i in range(n):
        s = -math.sin(v[x + i])
        for d in range(D):
            o = np.uint64(d) * L
            t[o + ans + i] = s * t[o + x + i]


# tanh(x):  d = (1 - ans^2) dx
@kernel
def tanh_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = (1 - v[ans + i] * v[ans + i]) * t[o + x + i]


# sigmoid(x):  d = ans (1 - ans) dx
@kernel
def sigmoid_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = v[ans + i] * (1 - v[ans + i]) * t[o + x + i]


# relu(x):  d = dx where x > 0, else 0
@kernel
def relu_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = t[o + x + i] if v[x + i] > 0 else 0


# leaky_relu(x):  d = dx where x > 0, else k dx
@kernel
def leaky_relu_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = t[o + x + i] if v[x + i] > 0 else k * t[o + x + i]


# |x|:  d = sign(x) dx, sign(0) = 0
@kernel
def abs_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            if v[x + i] > 0:
                t[o + ans + i] = t[o + x + i]
            elif v[x + i] < 0:
                t[o + ans + i] = -t[o + x + i]
            else:
                t[o + ans + i] = 0


# x^2:  d = 2 x dx
@kernel
def square_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = 2 * v[x + i] * t[o + x + i]


# x^k:  d = k x^(k-1) dx  (k = 0: a constant, d = 0)
@kernel
def powc_tan(v, t, L, D, x, ans, n, k):
    for i in range(n):
        s = k * v[x + i] ** (k - 1) if k != 0 else 0.0
        for d in range(D):
            o = np.uint64(d) * L
            t[o + ans + i] = s * t[o + x + i]


# ---------------------------------------------------------------------------- immediates (immediate.py)
# x + c:  d = dx
@kernel
def addc_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = t[o + x + i]


# x * c:  d = c dx
@kernel
def mulc_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = t[o + x + i] * k


# c - x:  d = -dx
@kernel
def rsubc_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = -t[o + x + i]


# x / c:  d = dx / c
@kernel
def divc_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = t[o + x + i] / k


# c / x:  d = -c / x^2 dx = -ans / x dx
@kernel
def rdivc_tan(v, t, L, D, x, ans, n, k):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = -(t[o + x + i] * v[ans + i] / v[x + i])


# c^x:  d = c^x log(c) dx = ans log(c) dx; c < 0: NaN; c = 0: 0 where x >= 0 (torch), and
# ans * -inf * dx where x < 0 -- as rpowc_bwd
@kernel
def rpowc_tan(v, t, L, D, x, ans, n, k):
    lk = math.log(k) if k > 0 else 0.0
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            if k > 0:
                t[o + ans + i] = t[o + x + i] * v[ans + i] * lk
            elif k < 0:
                t[o + ans + i] = t[o + x + i] * math.nan
            elif v[x + i] < 0:
                t[o + ans + i] = t[o + x + i] * v[ans + i] * -math.inf
            else:
                t[o + ans + i] = 0


# ---------------------------------------------------------------------------- binary (elementwise.py)
# x + y:  d = dx + dy
@kernel
def add_tan(v, t, L, D, x, y, ans, n, dx, dy):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = t[o + x + i] + t[o + y + i]


# x - y:  d = dx - dy
@kernel
def sub_tan(v, t, L, D, x, y, ans, n, dx, dy):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = t[o + x + i] - t[o + y + i]


# x * y:  d = dx y + x dy
@kernel
def mul_tan(v, t, L, D, x, y, ans, n, dx, dy):
    for d in range(D):
        o = np.uint64(d) * L
        if dx and dy:
            for i in range(n):
                t[o + ans + i] = t[o + x + i] * v[y + i] + v[x + i] * t[o + y + i]
        elif dx:
            for i in range(n):
                t[o + ans + i] = t[o + x + i] * v[y + i]
        else:
            for i in range(n):
                t[o + ans + i] = v[x + i] * t[o + y + i]


# x / y:  d = dx / y - ans dy / y
@kernel
def div_tan(v, t, L, D, x, y, ans, n, dx, dy):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            s = t[o + x + i] / v[y + i] if dx else 0.0
            if dy:
                s -= t[o + y + i] * v[ans + i] / v[y + i]
            t[o + ans + i] = s


# x^y:  d = y x^(y-1) dx + x^y log(x) dy; log of a negative base (or 0^negative) is NaN/inf
# as in pow_bwd; y = 0 contributes no dx term
@kernel
def pow_tan(v, t, L, D, x, y, ans, n, dx, dy):
    for i in range(n):
        a, b = v[x + i], v[y + i]
        sx = b * a ** (b - 1) if dx and b != 0 else 0.0
        if not dy:
            sy = 0.0
        elif a > 0:
            sy = v[ans + i] * math.log(a)
        elif a < 0 or b < 0:
            sy = v[ans + i] * math.nan
        else:
            sy = 0.0
        for d in range(D):
            o = np.uint64(d) * L
            s = sx * t[o + x + i] if dx else 0.0
            if dy:
                s += sy * t[o + y + i]
            t[o + ans + i] = s


# maximum(x, y):  d = dx where x > y, dy where x < y, (dx + dy) / 2 at a tie
@kernel
def maximum_tan(v, t, L, D, x, y, ans, n, dx, dy):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            a, b = v[x + i], v[y + i]
            if a > b:
                t[o + ans + i] = t[o + x + i]
            elif a < b:
                t[o + ans + i] = t[o + y + i]
            else:
                t[o + ans + i] = 0.5 * (t[o + x + i] + t[o + y + i])


# minimum(x, y):  d = dx where x < y, dy where x > y, (dx + dy) / 2 at a tie
@kernel
def minimum_tan(v, t, L, D, x, y, ans, n, dx, dy):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            a, b = v[x + i], v[y + i]
            if a < b:
                t[o + ans + i] = t[o + x + i]
            elif a > b:
                t[o + ans + i] = t[o + y + i]
            else:
                t[o + ans + i] = 0.5 * (t[o + x + i] + t[o + y + i])


# comparisons (gt ge lt le) and onehot: 0/1 values, tangent 0
@kernel
def zero_tan(t, L, D, ans, n):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = 0


# where(c, x, y):  d = dx where c != 0, else dy  (no tangent through c)
@kernel
def where_tan(v, t, L, D, c, x, y, ans, n):
    for d in range(D):
        o = np.uint64(d) * L
        for i in range(n):
            t[o + ans + i] = t[o + x + i] if v[c + i] != 0 else t[o + y + i]


# ---------------------------------------------------------------------------- data movement (shape.py)
# expand, slice, place, unslice, transpose (and sum, below) are linear: the output's tangent
# is the op applied to the input's tangent -- the forward kernel run on each direction of t
@kernel
def expand_tan(t, L, D, x, ans, A, n, B):
    for d in range(D):
        o = np.uint64(d) * L
        expand_fwd(t, x + o, ans + o, A, n, B)


@kernel
def slice_tan(t, L, D, x, ans, A, n, B, start, step, count):
    for d in range(D):
        o = np.uint64(d) * L
        slice_fwd(t, x + o, ans + o, A, n, B, start, step, count)


@kernel
def place_tan(t, L, D, x, ans, A, n, B, start, count):
    for d in range(D):
        o = np.uint64(d) * L
        place_fwd(t, x + o, ans + o, A, n, B, start, count)


@kernel
def unslice_tan(t, L, D, x, ans, A, n, B, start, step, count):
    for d in range(D):
        o = np.uint64(d) * L
        unslice_fwd(t, x + o, ans + o, A, n, B, start, step, count)


@kernel
def transpose_tan(t, L, D, x, ans, A, M, N, B):
    for d in range(D):
        o = np.uint64(d) * L
        transpose_fwd(t, x + o, ans + o, A, M, N, B)


# ---------------------------------------------------------------------------- reductions (reduce.py)
# sum_j x[a, j, b]:  d = sum_j dx[a, j, b]
@kernel
def sum_tan(t, L, D, x, ans, A, n, B):
    for d in range(D):
        o = np.uint64(d) * L
        sum_fwd(t, x + o, ans + o, A, n, B)


# max_j x[a, j, b]:  d = mean of dx over the tied maxima (the k ties share, as max_bwd);
# 0 where the maximum is NaN
@kernel
def max_tan(v, t, L, D, x, ans, A, n, B):
    for a in range(A):
        for b in range(B):
            out = ans + np.uint64(a * B + b)
            ties = 0
            for j in range(n):
                if v[_at(x, a, n, B, j, b)] == v[out]:
                    ties += 1
            for d in range(D):
                o = np.uint64(d) * L
                s = 0.0
                for j in range(n):
                    i = _at(x, a, n, B, j, b)
                    if v[i] == v[out]:
                        s += t[o + i]
                t[o + out] = s / ties if ties else 0.0


# logsumexp_j x:  d = sum_j exp(x_j - ans) dx_j  (softmax-weighted tangents)
@kernel
def logsumexp_tan(v, t, L, D, x, ans, A, n, B):
    for a in range(A):
        for b in range(B):
            out = ans + np.uint64(a * B + b)
            for d in range(D):
                o = np.uint64(d) * L
                s = 0.0
                for j in range(n):
                    i = _at(x, a, n, B, j, b)
                    s += math.exp(v[i] - v[out]) * t[o + i]
                t[o + out] = s


# s = softmax(x):  ds_j = s_j (dx_j - sum_i s_i dx_i)
@kernel
def softmax_tan(v, t, L, D, x, ans, A, n, B):
    for d in range(D):
        o = np.uint64(d) * L
        for a in range(A):
            for b in range(B):
                dot = 0.0
                for j in range(n):
                    dot += v[_at(ans, a, n, B, j, b)] * t[o + _at(x, a, n, B, j, b)]
                for j in range(n):
                    i = _at(ans, a, n, B, j, b)
                    t[o + i] = v[i] * (t[o + _at(x, a, n, B, j, b)] - dot)


# x - logsumexp(x):  d_j = dx_j - sum_i exp(ans_i) dx_i
@kernel
def log_softmax_tan(v, t, L, D, x, ans, A, n, B):
    for d in range(D):
        o = np.uint64(d) * L
        for a in range(A):
            for b in range(B):
                dot = 0.0
                for j in range(n):
                    dot += math.exp(v[_at(ans, a, n, B, j, b)]) * t[o + _at(x, a, n, B, j, b)]
                for j in range(n):
                    t[o + _at(ans, a, n, B, j, b)] = t[o + _at(x, a, n, B, j, b)] - dot


# ---------------------------------------------------------------------------- linear algebra (linalg.py)
# Z = X @ Y per batch entry:  dZ = dX @ Y + X @ dY  (offsets int64 as in matmul_fwd; a shared
# operand, stride 0, has one tangent matrix for the whole batch); BLAS from BLAS_MIN on
@kernel
def matmul_tan(v, t, L, D, x, y, ans, batch, M, K, N, sx, sy, dx, dy):
    for d in range(D):
        o = np.int64(d) * np.int64(L)
        for b in range(batch):
            xo, yo, zo = x + b * sx * M * K, y + b * sy * K * N, ans + b * M * N
            if M * K * N >= BLAS_MIN:  # dZ.T = Y.T @ dX.T (+) dY.T @ X.T, as matmul_fwd
                beta = 0.0
                if dx:
                    gemm(_N, _N, N, M, K, v, yo, N, t, o + xo, K, 0.0, t, o + zo)
                    beta = 1.0
                if dy:
                    gemm(_N, _N, N, M, K, t, o + yo, N, v, xo, K, beta, t, o + zo)
                continue
            for m in range(M):
                z = np.uint64(o + zo + m * N)
                for q in range(np.uint64(N)):
                    t[z + q] = 0
                for kk in range(K):
                    if dx:
                        a = t[np.uint64(o + xo + m * K + kk)]
                        row = np.uint64(yo + kk * N)
                        for q in range(np.uint64(N)):
                            t[z + q] += a * v[row + q]
                    if dy:
                        a = v[np.uint64(xo + m * K + kk)]
                        row = np.uint64(o + yo + kk * N)
                        for q in range(np.uint64(N)):
                            t[z + q] += a * t[row + q]


# ---------------------------------------------------------------------------- losses (loss.py)
# loss_r = logsumexp(x_r) - x_r[label_r]:  d = sum_j softmax(x_r)_j dx_rj - dx_r[label_r]
# (labels carry no tangent; checked before use as in cross_entropy_fwd)
@kernel
def cross_entropy_tan(v, t, L, D, x, y, ans, N, C):
    for r in range(N):
        lab = v[y + np.uint64(r)]
        if not (lab >= 0 and lab < C and lab == math.floor(lab)):
            return False
        row = x + np.uint64(r * C)
        c = np.uint64(int(lab))
        out = ans + np.uint64(r)
        lse = v[out] + v[row + c]
        for d in range(D):
            o = np.uint64(d) * L
            s = 0.0
            for j in range(np.uint64(C)):
                s += math.exp(v[row + j] - lse) * t[o + row + j]
            t[o + out] = s - t[o + row + c]
    return True
