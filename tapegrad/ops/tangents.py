"""Tangent rules (forward mode): each opcode's output tangent from its inputs' tangents and the
values of the replay just done, inlined into the compiled tangent sweep of
``tapegrad.tangent`` (ADOL-C's forward sweeps, JAX's jvp rules). Grouped by family in the
order of the op modules; each rule is the derivative of the forward rule in
``ops/<family>.py`` and agrees with the reverse rule there at kinks and ties
(relu'(0) = abs'(0) = 0, ties share).

The tangent arena ``t`` holds ``D`` directions per element of the value arena ``v``, the
directions innermost: the tangents of the value at offset ``p`` are ``t[p*D : p*D + D]``. So a
buffer of shape S has tangents of shape S + (D,), contiguous, and

* an elementwise rule computes the slope once per element and applies it to ``D`` numbers;
* a linear op (expand, slice, place, unslice, transpose, sum) sees its ``(A, n, B)`` view as
  ``(A, n, B*D)``: its tangent rule is its forward kernel run on ``t`` with ``B*D``.

Arguments: ``x, y, c, ans`` value offsets and ``tx, ty, tc, tans`` tangent offsets (= value
offset * D), ``n`` elements, ``D`` directions (all np.uint64), ``k`` the immediate.
A rule *writes* its output's tangent (every output is written by one instruction; PLACE:
each its part). ``dx`` / ``dy``: whether that input carries a tangent at all; an input
without one has zeros in ``t`` and rules that multiply by a value skip it (``inf * 0`` would
make a NaN that input never had).
"""
import math

import numpy as np

from .._jit import jit, kernel
from ..opcodes import Op
from .conv import conv_tangent
from .factor import PIVOT, _I, in_part, inv_t, load, lu, lu_solve, store, trsm
from .linalg import _N, _T, gemm, use_blas


@kernel
def _u(i):
    return np.uint64(i)


# ---------------------------------------------------------------------------- unary (elementwise.py, immediate.py)
@kernel
def unary_slope(op, v, x, ans, k):
    """d ans / d x of the element at value offsets ``x``, ``ans``. (The linear ones, -x,
    x + c, x * c, c - x, x / c, run their forward kernels on the tangents instead.)"""
    a = v[x]
    if op == Op.EXP:            # exp(x)' = exp(x) = ans
        return 1.0 * v[ans]
    elif op == Op.LOG:          # log(x)' = 1 / x
        return 1.0 / a
    elif op == Op.SQRT:         # sqrt(x)' = 1 / (2 sqrt(x)) = 0.5 / ans
        return 0.5 / v[ans]
    elif op == Op.SIN:          # sin' = cos
        return math.cos(a)
    elif op == Op.COS:          # cos' = -sin
        return -math.sin(a)
    elif op == Op.TANH:         # tanh' = 1 - ans^2, as (1 - ans)(1 + ans) (as tanh_bwd)
        return (1.0 - v[ans]) * (1.0 + v[ans])
    elif op == Op.SIGMOID:      # sigmoid' = ans (1 - ans)
        return v[ans] * (1.0 - v[ans])
    elif op == Op.RELU:         # 1 where x > 0, else 0 (relu'(0) = 0)
        return 1.0 if a > 0 else 0.0
    elif op == Op.LEAKY_RELU:   # 1 where x > 0, else the slope k
        return 1.0 if a > 0 else k
    elif op == Op.ABS:          # sign(x), sign(0) = 0
        return 1.0 if a > 0 else (-1.0 if a < 0 else 0.0)
    elif op == Op.SQUARE:       # 2 x
        return 2.0 * a
    elif op == Op.POWC:         # k x^(k-1); x^0 is a constant
        return k * a ** (k - 1) if k != 0 else 0.0
    elif op == Op.RDIVC:        # c / x: -c / x^2 = -ans / x
        return -v[ans] / a
    # RPOWC, c^x: c^x log(c) = ans log(c); c < 0: NaN; c = 0: 0 where x >= 0 (torch) and
    # ans * -inf where x < 0 -- as rpowc_bwd
    if k > 0:
        return v[ans] * math.log(k)
    if k < 0:
        return math.nan
    return v[ans] * -math.inf if a < 0 else 0.0


@kernel
def unary_tan(op, v, t, x, ans, tx, tans, n, D, k):
    """d ans = slope * d x, per element and direction."""
    for i in range(n):
        s = unary_slope(op, v, x + i, ans + i, k)
        o = i * D
        for d in range(D):
            t[tans + o + d] = s * t[tx + o + d]


# ---------------------------------------------------------------------------- binary (elementwise.py)
@kernel
def binary_slopes(op, v, x, y, ans):
    """(d ans / d x, d ans / d y) of the element at value offsets ``x``, ``y``, ``ans``.
    (x + y and x - y are linear: their forward kernels run on the tangents instead.)"""
    a, b = v[x], v[y]
    if op == Op.MUL:            # x y: (y, x)
        return 1.0 * b, 1.0 * a
    elif op == Op.DIV:          # x / y: (1 / y, -x / y^2 = -ans / y)
        return 1.0 / b, -v[ans] / b
    elif op == Op.POW:          # x^y: (y x^(y-1), x^y log(x)); as pow_bwd: no x-slope when
        sx = b * a ** (b - 1) if b != 0 else 0.0  # y = 0, NaN for a negative base, and
        if a > 0:                                 # 0^negative gives inf * nan
            return sx, v[ans] * math.log(a)
        return sx, (v[ans] * math.nan if a < 0 or b < 0 else 0.0)
    elif op == Op.MAXIMUM:      # the larger's slope; a tie shares (1/2, 1/2)
        return (1.0, 0.0) if a > b else ((0.0, 1.0) if a < b else (0.5, 0.5))
    # MINIMUM: the smaller's slope; a tie shares
    return (1.0, 0.0) if a < b else ((0.0, 1.0) if a > b else (0.5, 0.5))


@kernel
def binary_tan(op, v, t, x, y, ans, tx, ty, tans, n, D, dx, dy):
    """d ans = sx d x + sy d y; the slope of an input without a tangent is dropped (its
    tangents are zeros, and an infinite slope times zero would be NaN)."""
    for i in range(n):
        sx, sy = binary_slopes(op, v, x + i, y + i, ans + i)
        sx, sy = sx if dx else 0.0, sy if dy else 0.0
        o = i * D
        for d in range(D):
            t[tans + o + d] = sx * t[tx + o + d] + sy * t[ty + o + d]


# comparisons (gt ge lt le) and onehot: 0/1 values, tangent 0
@kernel
def zero_tan(t, tans, n, D):
    for i in range(n * D):
        t[tans + i] = 0


# where(c, x, y):  d = dx where c != 0, else dy  (no tangent through c)
@kernel
def where_tan(v, t, c, tx, ty, tans, n, D):
    for i in range(n):
        o = i * D
        src = tx if v[c + i] != 0 else ty
        for d in range(D):
            t[tans + o + d] = t[src + o + d]


# ---------------------------------------------------------------------------- data movement (shape.py)
# expand, slice, place, unslice, transpose are linear: the sweep runs their forward kernels
# on t with B*D (see the module docstring); no rule here. So do gather and scatter_add
# (ops/gather.py), which read their indices from the value arena v.

# ---------------------------------------------------------------------------- reductions (reduce.py)
# sum is linear: sum_fwd on t with B*D.
@kernel
def _e(a, n, B, j, b):
    """Offset of element [a, j, b] of an (A, n, B) buffer, from the buffer's start."""
    return np.uint64((a * n + j) * B + b)


# max_j x[a, j, b]:  d = mean of dx over the tied maxima (they share, as max_bwd); 0 where
# the maximum is NaN (no element equals it)
@kernel
def max_tan(v, t, x, ans, tx, tans, A, n, B, D):
    for a in range(A):
        for b in range(B):
            out = _u(a * B + b)
            to = tans + out * D
            for d in range(D):
                t[to + d] = 0
            ties = 0
            for j in range(n):
                e = _e(a, n, B, j, b)
                if v[x + e] == v[ans + out]:
                    ties += 1
                    for d in range(D):
                        t[to + d] += t[tx + e * D + d]
            if ties > 1:
                for d in range(D):
                    t[to + d] /= ties


# logsumexp_j x:  d = sum_j exp(x_j - ans) dx_j  (the softmax-weighted tangents)
@kernel
def logsumexp_tan(v, t, x, ans, tx, tans, A, n, B, D):
    for a in range(A):
        for b in range(B):
            out = _u(a * B + b)
            to = tans + out * D
            for d in range(D):
                t[to + d] = 0
            for j in range(n):
                e = _e(a, n, B, j, b)
                w = math.exp(v[x + e] - v[ans + out])
                for d in range(D):
                    t[to + d] += w * t[tx + e * D + d]


# s = softmax(x):  ds_j = s_j (dx_j - sum_i s_i dx_i)   (acc: D numbers of scratch)
@kernel
def softmax_tan(v, t, ans, tx, tans, A, n, B, D, acc):
    for a in range(A):
        for b in range(B):
            for d in range(D):
                acc[d] = 0
            for j in range(n):
                e = _e(a, n, B, j, b)
                s = v[ans + e]
                for d in range(D):
                    acc[d] += s * t[tx + e * D + d]
            for j in range(n):
                e = _e(a, n, B, j, b)
                s = v[ans + e]
                for d in range(D):
                    t[tans + e * D + d] = s * (t[tx + e * D + d] - acc[d])


# x - logsumexp(x):  d_j = dx_j - sum_i exp(ans_i) dx_i
@kernel
def log_softmax_tan(v, t, ans, tx, tans, A, n, B, D, acc):
    for a in range(A):
        for b in range(B):
            for d in range(D):
                acc[d] = 0
            for j in range(n):
                e = _e(a, n, B, j, b)
                s = math.exp(v[ans + e])
                for d in range(D):
                    acc[d] += s * t[tx + e * D + d]
            for j in range(n):
                e = _e(a, n, B, j, b)
                for d in range(D):
                    t[tans + e * D + d] = t[tx + e * D + d] - acc[d]


# ---------------------------------------------------------------------------- linear algebra (linalg.py)
# Z = X @ Y per batch entry:  dZ = dX @ Y + X @ dY. Tangents are (M, K, D), (K, N, D),
# (M, N, D): X @ dY is one (M, K) @ (K, N*D) product; dX @ Y is, per row m of Z, the
# column-major (D, K) @ (K, N). A shared operand (stride 0) has one tangent for the batch.
# Value offsets x, y, ans as in matmul_fwd (int64); BLAS where linalg.use_blas says so.
@kernel
def matmul_tan(v, t, x, y, ans, D, batch, M, K, N, sx, sy, dx, dy):
    if (sx | sy) > 1:  # a transposed operand (linalg.flagged_matmul_fwd)
        flagged_matmul_tan(v, t, x, y, ans, np.int64(D), batch, M, K, N, sx, sy, dx, dy)
        return
    Di = np.int64(D)
    ND = N * Di
    for b in range(batch):
        xo, yo, zo = x + b * sx * M * K, y + b * sy * K * N, ans + b * M * N
        if use_blas(v, batch, M, K, N * Di):
            if dx and Di == 1:  # dZ.T = Y.T @ dX.T, as matmul_fwd
                gemm(_N, _N, N, M, K, v, yo, N, t, xo, K, 0.0, t, zo)
            elif dx:  # per m:  dZ[m].T (D x N) = dX[m].T (D x K) @ Y (K x N)
                for m in range(M):
                    gemm(_N, _T, Di, N, K, t, (xo + m * K) * Di, Di, v, yo, N, 0.0, t,
                         (zo + m * N) * Di)
            beta = 1.0 if dx else 0.0
            if dy:  # dZ.T (N*D x M) += dY.T (N*D x K) @ X.T (K x M)
                gemm(_N, _N, ND, M, K, t, yo * Di, ND, v, xo, K, beta, t, zo * Di)
            continue
        for m in range(M):
            z = _u((zo + m * N) * Di)
            for q in range(_u(ND)):
                t[z + q] = 0
            for kk in range(K):
                if dx and Di == 1:  # as matmul_fwd: a vectorised row
                    a = t[_u(xo + m * K + kk)]
                    row = _u(yo + kk * N)
                    for q in range(_u(N)):
                        t[z + q] += a * v[row + q]
                elif dx:
                    tx = _u((xo + m * K + kk) * Di)
                    row = _u(yo + kk * N)
                    for q in range(_u(N)):
                        w = v[row + q]
                        zq = z + q * D
                        for d in range(D):
                            t[zq + d] += t[tx + d] * w
                if dy:
                    a = v[_u(xo + m * K + kk)]
                    trow = _u((yo + kk * N) * Di)
                    for q in range(_u(ND)):
                        t[z + q] += a * t[trow + q]


# dZ[m, n] = sum_k dX_eff[m, k] Y_eff[k, n] + X_eff[m, k] dY_eff[k, n], operands at the
# strides of linalg.flagged_matmul_fwd; plain loops (the recorded reverse rule's products)
@jit
def flagged_matmul_tan(v, t, x, y, ans, D, batch, M, K, N, sx, sy, dx, dy):
    ta, tb, sx, sy = sx >> 1, sy >> 1, sx & 1, sy & 1
    xm, xk = (1, M) if ta else (K, 1)
    yk, yn = (1, K) if tb else (N, 1)
    for b in range(batch):
        xo, yo, zo = x + b * sx * M * K, y + b * sy * K * N, ans + b * M * N
        for m in range(M):
            for n in range(N):
                for d in range(D):
                    s = 0.0
                    for kk in range(K):
                        xi, yi = xo + m * xm + kk * xk, yo + kk * yk + n * yn
                        if dx:
                            s += t[xi * D + d] * v[yi]
                        if dy:
                            s += v[xi] * t[yi * D + d]
                    t[(zo + m * N + n) * D + d] = s


# ---------------------------------------------------------------------------- losses (loss.py)
# loss_r = logsumexp(x_r) - x_r[label_r]:  d = sum_j softmax(x_r)_j dx_rj - dx_r[label_r]
# (labels carry no tangent; checked before use as in cross_entropy_fwd)
@kernel
def cross_entropy_tan(v, t, x, y, ans, tx, tans, N, C, D):
    for r in range(N):
        lab = v[y + _u(r)]
        if not (lab >= 0 and lab < C and lab == math.floor(lab)):
            return False
        row = x + _u(r * C)
        trow = tx + _u(r * C) * D
        c = _u(int(lab))
        out = ans + _u(r)
        to = tans + _u(r) * D
        lse = v[out] + v[row + c]
        for d in range(D):
            t[to + d] = -t[trow + c * D + d]
        for j in range(_u(C)):
            p = math.exp(v[row + j] - lse)
            for d in range(D):
                t[to + d] += p * t[trow + j * D + d]
    return True


# ---------------------------------------------------------------------------- factorizations (factor.py)
# Called (not inlined) from the sweep, as the forward kernels are. Value offsets a, b, ans are
# int64; a matrix's direction d is read with factor.load(t, offset * D + d, D, ...).
@jit
def _sub_op_mul(M, X, R, trans, part):
    """``R -= op(M) X`` with op(M) = M or M^T and M restricted to ``part`` (factor.in_part)."""
    n, k = R.shape
    for i in range(n):
        for j in range(n):
            f = M[i, j] if trans == 0 else M[j, i]
            if f != 0 and (in_part(i, j, part) if trans == 0 else in_part(j, i, part)):
                for c in range(k):
                    R[i, c] -= f * X[j, c]


# X = op(A)^-1 B:  dX = op(A)^-1 (dB - op(dA) X)  (TRISOLVE: dA on the triangle read)
@jit
def solve_tan(v, t, a, b, ans, D, batch, n, k, flags, tri, da, db):
    if batch == 0:  # no scratch: n is unbounded by an empty batch's size
        return
    trans = flags[1] if tri else flags[0]
    part = ((1 if flags[0] else 2) + (2 if flags[2] else 0)) if tri else 0
    A, X, R, dA = np.empty((n, n)), np.empty((n, k)), np.empty((n, k)), np.empty((n, n))
    piv = np.empty(n, PIVOT)
    for s in range(batch):
        ao, bo, xo = a + s * n * n, b + s * n * k, ans + s * n * k
        load(v, ao, _I(1), A)
        if not tri:
            lu(A, piv)
        load(v, xo, _I(1), X)
        for d in range(D):
            if db:
                load(t, bo * D + d, D, R)
            else:
                R.fill(0.0)
            if da:
                load(t, ao * D + d, D, dA)
                _sub_op_mul(dA, X, R, trans, part)
            if tri:
                trsm(A, R, flags[0], trans, flags[2])
            else:
                lu_solve(A, piv, R, trans)
            store(t, xo * D + d, D, R, _I(0))


# L = chol(A):  dL = L Phi(L^-1 sym(dA) L^-T)  (sym: the reverse rule's symmetric convention)
@jit
def cholesky_tan(v, t, a, ans, D, batch, n):
    if batch == 0:  # no scratch: n is unbounded by an empty batch's size
        return
    L, S, Z = np.empty((n, n)), np.empty((n, n)), np.empty((n, n))
    for s in range(batch):
        load(v, ans + s * n * n, _I(1), L)
        for d in range(D):
            load(t, (a + s * n * n) * D + d, D, S)
            for i in range(n):
                for j in range(n):
                    Z[i, j] = 0.5 * (S[i, j] + S[j, i])
            trsm(L, Z, _I(1), _I(0), _I(0))   # L^-1 dA
            for i in range(n):
                for j in range(n):
                    S[i, j] = Z[j, i]
            trsm(L, S, _I(1), _I(0), _I(0))   # L^-1 dA L^-T
            for i in range(n):
                for j in range(n):
                    q = 0.0
                    if i >= j:  # (L Phi)[i, j], Phi = the lower triangle, halved diagonal
                        q = 0.5 * L[i, j] * S[j, j]
                        for r in range(j + 1, i + 1):
                            q += L[i, r] * S[r, j]
                    Z[i, j] = q
            store(t, (ans + s * n * n) * D + d, D, Z, _I(0))


# log|det A|:  d = sum_ij (A^-T)_ij dA_ij; the sign's tangent is 0
@jit
def slogdet_tan(v, t, a, ans, D, batch, n, mode):
    if batch == 0:  # no scratch: n is unbounded by an empty batch's size
        return
    A, W, piv = np.empty((n, n)), np.empty((n, n)), np.empty(n, PIVOT)
    for s in range(batch):
        inv_t(v, a, s, n, A, piv, W)
        for d in range(D):
            q = 0.0
            for i in range(n):
                for j in range(n):
                    q += W[i, j] * t[(a + s * n * n + i * n + j) * D + d]
            if mode == 0:
                t[(ans + 2 * s) * D + d] = 0.0
                t[(ans + 2 * s + 1) * D + d] = q
            else:
                t[(ans + s) * D + d] = q
# ---------------------------------------------------------------------------- conv and pooling (conv.py)
# each op is linear in each input: per direction, the op on (dx, y) + (x, dy); pools on dy
# alone (no tangent through the choice of the argmax). nx, ny, nout: the buffers' sizes.
@kernel
def conv_tan(op, v, t, x, y, ans, D, nx, ny, nout, a0, a1, a2, a3, a4, a5, dx, dy):
    conv_tangent(op, v, t, x, y, ans, D, nx, ny, nout, a0, a1, a2, a3, a4, a5, dx, dy)
