"""Factorizations: linear solves, Cholesky, triangular solves and log-determinants over a batch
of ``n x n`` matrices (``tg.linalg`` is the public face; this module holds the ops).

Four opcodes, each over ``batch`` matrices stored one after the other, row-major:

* SOLVE    ``X = op(A)^-1 B``  (LU with partial pivoting), ``op(A)`` = A or A^T (``trans``);
* CHOLESKY ``L`` lower with ``L L^T = sym(A)``, sym(A) = (A + A^T) / 2: A is taken as
  symmetric (for a symmetric A, exactly ``np.linalg.cholesky``, which reads one triangle);
* TRISOLVE ``X = op(T)^-1 B``, T the lower or upper triangle of A (``unit``: ones on the
  diagonal, not read), as ``scipy.linalg.solve_triangular``;
* SLOGDET  ``[sign, log|det A|]`` per matrix (mode 0) or ``log det A`` (mode 1: NaN for a
  negative determinant, -inf for zero, as ``torch.logdet``).

The kernels copy one matrix at a time into float64 scratch arrays and factor it there: LU
(partial pivoting) and Cholesky by LAPACK, triangular solves by the loop ``trsm``. A float32
arena is factored in float64, and one compiled version serves both arena dtypes. The kernels
are ``@jit`` functions called (not inlined) from the sweeps and kept small: every line of
them is compiled again into each sweep that calls them. A singular matrix (an exactly zero
pivot) in SOLVE or TRISOLVE, or a matrix that is not positive definite in CHOLESKY, stops
the sweep with ``tg.LinAlgError`` (as NumPy raises ``LinAlgError``); SLOGDET never fails: a
singular matrix has sign 0 and log|det| -inf.

Reverse rules (compiled ``*_bwd`` and recorded ``@vjp``), for G the output's cotangent:

* SOLVE:    gB = op(A)^-T G;  gA = -gB X^T (or -X gB^T when ``trans``);
* CHOLESKY: gA = sym(L^-T Phi(L^T G) L^-1), Phi = lower triangle with the diagonal halved:
  a symmetric gradient, as torch's, and the true one of L(sym(A));
* TRISOLVE: gB = op(T)^-T G;  gA as SOLVE's, restricted to the triangle read;
* SLOGDET:  gA = g A^-T for the cotangent g of log|det| (the sign has none); non-finite at a
  singular matrix.

The tangent rules are in ``tapegrad.ops.tangents``.
"""
import math

import numpy as np
from numba import types

from .._jit import BLAS, ILP64, jit
from ..errors import ShapeError, user_site
from ..opcodes import Op
from ..var import Var
from ._record import broadcast_to, prod, reshape_var, vars_of
from ._vjp import vjp


# ---------------------------------------------------------------------------- float64 routines
# LU and Cholesky factors come from LAPACK (SciPy's, through numba's own entry points, as
# ops.linalg's gemm: no loops to compile); the triangular solves are the loop ``trsm``.
# LAPACK reads a row-major matrix as its transpose (column-major), which the routines below
# account for; addresses go as intp so that the functions stay cacheable.
if not BLAS:  # no SciPy, or not of numba's integer width: numba's own error
    from numba.np.linalg import ensure_lapack
    ensure_lapack()
_getrf = types.ExternalFunction("numba_xxgetrf", types.intc(
    types.char, types.intp, types.intp, types.intp, types.intp, types.intp))
_potrf = types.ExternalFunction("numba_xxpotrf", types.intc(
    types.char, types.char, types.intp, types.intp, types.intp))
PIVOT = np.int64 if ILP64 else np.int32  # LAPACK's integer (numba.np.linalg.F_INT_nptype)
_D, _U = np.int8(ord("d")), np.int8(ord("U"))
# Integer flags go to these functions as _I(1), not 1: a constant argument is typed as a
# literal, and numba would compile one more version of the callee for every constant.
_I = np.int64


@jit
def lu(a, piv):
    """In place: LAPACK getrf of the row-major ``a`` (it factors ``a^T = P^T L U``: ``a``
    then holds U^T on and below the diagonal, L^T above it; ``piv`` the 1-based swaps).
    Returns ``(ok, sign)``: ok is False at an exactly zero pivot (singular; the factors
    still complete), sign = det(P) * the signs of U's diagonal."""
    n = a.shape[0]
    info = _getrf(_D, n, n, a.ctypes.data, max(n, 1), piv.ctypes.data)
    sign = 1.0
    for i in range(n):
        if piv[i] != i + 1:
            sign = -sign
        if a[i, i] < 0:
            sign = -sign
    return info == 0, sign


@jit
def lu_solve(a, piv, b, trans):
    """In place in ``b`` (n, k): ``A^-1 b`` (trans 0) or ``A^-T b`` (trans 1), with ``a`` and
    ``piv`` from ``lu``: A = U^T L^T P, so A^-1 = P^T L^-T U^-T and A^-T = U^-1 L^-1 P."""
    n, k = b.shape
    if trans != 0:
        for j in range(n):
            p = piv[j] - 1
            for c in range(k):
                b[j, c], b[p, c] = b[p, c], b[j, c]
    # U^T is the lower triangle of a, L^T (unit) the upper one: U^-T then L^-T, or L^-1
    # then U^-1
    trsm(a, b, _I(1 - trans), trans, trans)
    trsm(a, b, trans, trans, _I(1 - trans))
    if trans == 0:
        for s in range(n):
            j = n - 1 - s
            p = piv[j] - 1
            for c in range(k):
                b[j, c], b[p, c] = b[p, c], b[j, c]


@jit
def chol(a):
    """In place: the lower Cholesky factor L of ``a`` (LAPACK potrf, reading the lower
    triangle; the upper one is zeroed). False when ``a`` is not positive definite (or NaN)."""
    n = a.shape[0]
    if _potrf(_D, _U, n, a.ctypes.data, max(n, 1)) != 0:
        return False
    for i in range(n):
        for j in range(i + 1, n):
            a[i, j] = 0.0
    return True


@jit
def trsm(a, b, lower, trans, unit):
    """In place in ``b`` (n, k): ``op(T)^-1 b``, T the lower (``lower``) or upper triangle of
    ``a`` (the other one is not read; ``unit``: ones on the diagonal, not read either),
    op(T) = T or T^T (``trans``). False at a zero diagonal element."""
    n, k = b.shape
    down = (lower != 0) != (trans != 0)  # op(T) lower triangular: forward substitution
    for s in range(n):
        i = s if down else n - 1 - s
        lo, hi = (0, i) if down else (i + 1, n)
        for j in range(lo, hi):
            f = a[j, i] if trans != 0 else a[i, j]
            if f != 0:
                for c in range(k):
                    b[i, c] -= f * b[j, c]
        if unit == 0:
            d = a[i, i]
            if d == 0:
                return False
            for c in range(k):
                b[i, c] /= d
    return True


@jit
def in_part(i, j, part):
    """Whether element (i, j) is in ``part``: 0 all, 1 lower, 2 upper, 3 strictly lower,
    4 strictly upper."""
    if part == 0:
        return True
    if part == 1:
        return i >= j
    if part == 2:
        return i <= j
    if part == 3:
        return i > j
    return i < j


@jit
def load(v, off, step, out):
    """``out[i, j] = v[off + (i * cols + j) * step]``: a matrix of the value arena (step 1) or
    one direction of the tangent arena (``off`` = offset * D + d, step D)."""
    r, c = out.shape
    for i in range(r):
        for j in range(c):
            out[i, j] = v[off + (i * c + j) * step]


@jit
def store(v, off, step, m, add):
    """The transpose of ``load``: writes ``m`` into the arena (adds it when ``add`` != 0)."""
    r, c = m.shape
    for i in range(r):
        for j in range(c):
            o = off + (i * c + j) * step
            v[o] = v[o] + m[i, j] if add else m[i, j]


@jit
def outer_add(g, off, p, q, scale, part):
    """``g[i, j] += scale * sum_c p[i, c] q[j, c]`` for (i, j) in ``part`` (a matrix at
    ``off``): the ``-gB X^T`` of the solves' reverse rules."""
    n, k = p.shape
    for i in range(n):
        for j in range(n):
            if in_part(i, j, part):
                s = 0.0
                for c in range(k):
                    s += p[i, c] * q[j, c]
                o = off + i * n + j
                g[o] = g[o] + scale * s


# ---------------------------------------------------------------------------- shape rules
def _square(name, a):
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ShapeError(f"{name}: expected a square matrix or a stack of them (..., M, M), got "
                         f"shape {a.shape} ({user_site()})")
    return a.shape[:-2], a.shape[-1]


def _rhs(name, a, b):
    """Batch shape, n, k and the result's shape of ``a x = b`` with NumPy's rules: a 1-D ``b``
    is one vector, otherwise (..., M, K) with batch axes broadcast against ``a``'s."""
    batch, n = _square(name, a)
    if b.ndim == 0 or (b.ndim == 1 and b.shape[0] != n) or (b.ndim > 1 and b.shape[-2] != n):
        raise ShapeError(f"{name}: right-hand side of shape {b.shape} does not match the "
                         f"matrix of shape {a.shape}: expected ({n},) or (..., {n}, K) "
                         f"({user_site()})")
    if b.ndim == 1:
        return batch, n, 1, batch + (n,)
    try:
        batch = tuple(np.broadcast_shapes(batch, b.shape[:-2]))
    except ValueError:
        raise ShapeError(f"{name}: batch shapes of {a.shape} and {b.shape} do not broadcast "
                         f"({user_site()})") from None
    return batch, n, b.shape[-1], batch + b.shape[-2:]


def _emit(op, ins, shape, attrs):
    tape = ins[0].tape
    return Var(tape, tape._emit(op, [v._b for v in ins], shape, attrs, check=True))


def _solve(op, name, a, b, flags):
    """SOLVE or TRISOLVE of ``a x = b`` (``flags``: the attributes after batch, n, k)."""
    tape, (a, b) = vars_of([a, b], name)
    batch, n, k, final = _rhs(name, a, b)
    A = broadcast_to(a, batch + (n, n))
    B = broadcast_to(reshape_var(b, (n, 1)) if b.ndim == 1 else b, batch + (n, k))
    x = _emit(op, [A, B], batch + (n, k), (prod(batch), n, k) + tuple(flags))
    return reshape_var(x, final)


def solve(a, b, trans=0):
    """``op(a)^-1 b`` (``trans``: a^T) with ``np.linalg.solve``'s shapes; LinAlgError for a
    singular matrix, when recorded or replayed."""
    return _solve(Op.SOLVE, "solve", a, b, (int(bool(trans)),))


def trisolve(a, b, lower=True, trans=False, unit=False, name="solve_triangular"):
    """``op(T)^-1 b``, T the lower or upper triangle of ``a`` (scipy's solve_triangular)."""
    return _solve(Op.TRISOLVE, name, a, b, (int(bool(lower)), int(bool(trans)), int(bool(unit))))


def cholesky(a):
    """The lower Cholesky factor of ``(a + a^T) / 2`` (stacks too)."""
    tape, (a,) = vars_of([a], "cholesky")
    batch, n = _square("cholesky", a)
    return _emit(Op.CHOLESKY, [a], a.shape, (prod(batch), n))


def slogdet(a, mode=0):
    """``[sign, log|det a|]`` stacked on a last axis of 2 (mode 0) or ``log det a`` (mode 1)."""
    name = "slogdet" if mode == 0 else "logdet"
    tape, (a,) = vars_of([a], name)
    batch, n = _square(name, a)
    return _emit(Op.SLOGDET, [a], batch + ((2,) if mode == 0 else ()), (prod(batch), n, mode))


# ---------------------------------------------------------------------------- recorded helpers
def _mT(v):
    """The last two axes of a 3-D Var swapped."""
    from .shape import transpose
    return transpose(v, (0, 2, 1))


def _mask(tape, n, part, diag=1.0, scale=1.0):
    """A constant (n, n) mask of ``part`` (see ``in_part``): ``scale`` inside it, ``scale *
    diag`` on its diagonal (when the diagonal is in it), 0 elsewhere."""
    i, j = np.indices((n, n))
    m = [np.ones((n, n)), i >= j, i <= j, i > j, i < j][part] * float(scale)
    m[np.diag_indices(n)] *= diag
    return tape.const(m)


def _eye(tape, nb, n):
    return broadcast_to(tape.const(np.eye(n)), (nb, n, n))


def _part(lower, unit):
    return (1 if lower else 2) + (2 if unit else 0)


# ---------------------------------------------------------------------------- SOLVE
@jit
def solve_fwd(v, a, b, ans, batch, n, k, trans):
    if batch == 0:  # no scratch: n is unbounded by an empty batch's size
        return True
    A, X, piv = np.empty((n, n)), np.empty((n, k)), np.empty(n, PIVOT)
    for t in range(batch):
        load(v, a + t * n * n, _I(1), A)
        ok, _ = lu(A, piv)
        if not ok:
            return False
        load(v, b + t * n * k, _I(1), X)
        lu_solve(A, piv, X, trans)
        store(v, ans + t * n * k, _I(1), X, _I(0))
    return True


@jit
def solve_bwd(v, g, a, b, ans, batch, n, k, trans, da, db):
    if batch == 0:  # no scratch: n is unbounded by an empty batch's size
        return
    A, X, G, piv = np.empty((n, n)), np.empty((n, k)), np.empty((n, k)), np.empty(n, PIVOT)
    for t in range(batch):
        load(v, a + t * n * n, _I(1), A)
        lu(A, piv)
        load(g, ans + t * n * k, _I(1), G)
        lu_solve(A, piv, G, _I(1 - trans))  # gB
        if db:
            store(g, b + t * n * k, _I(1), G, _I(1))
        if da:
            load(v, ans + t * n * k, _I(1), X)
            if trans == 0:
                outer_add(g, a + t * n * n, G, X, -1.0, _I(0))
            else:
                outer_add(g, a + t * n * n, X, G, -1.0, _I(0))


@vjp(Op.SOLVE)
def solve_vjp(r, g):
    nb, n, k, trans = r.a[:4]
    A = reshape_var(r.x, (nb, n, n))
    gB = solve(A, reshape_var(g, (nb, n, k)), 1 - trans)
    gA = None
    if r.need[0]:
        X = reshape_var(r.ans, (nb, n, k))
        gA = -(gB @ _mT(X) if trans == 0 else X @ _mT(gB))
    return gA, (gB if r.need[1] else None)


# ---------------------------------------------------------------------------- CHOLESKY
@jit
def cholesky_fwd(v, a, ans, batch, n):
    if batch == 0:  # no scratch: n is unbounded by an empty batch's size
        return True
    L = np.empty((n, n))
    for t in range(batch):
        load(v, a + t * n * n, _I(1), L)
        for i in range(n):  # sym(A), so that the gradient below is the true one
            for j in range(i):
                L[i, j] = 0.5 * (L[i, j] + L[j, i])
        if not chol(L):
            return False
        store(v, ans + t * n * n, _I(1), L, _I(0))
    return True


@jit
def cholesky_bwd(v, g, a, ans, batch, n):
    if batch == 0:  # no scratch: n is unbounded by an empty batch's size
        return
    L, G, P = np.empty((n, n)), np.empty((n, n)), np.empty((n, n))
    for t in range(batch):
        load(v, ans + t * n * n, _I(1), L)
        load(g, ans + t * n * n, _I(1), G)
        for i in range(n):  # P = Phi(L^T G)
            for j in range(n):
                s = 0.0
                if i >= j:
                    for q in range(i, n):
                        s += L[q, i] * G[q, j]
                P[i, j] = 0.5 * s if i == j else s
        trsm(L, P, _I(1), _I(1), _I(0))  # Y = L^-T P
        for i in range(n):
            for j in range(n):
                G[i, j] = P[j, i]
        trsm(L, G, _I(1), _I(1), _I(0))  # Z = L^-T Y^T = (Y L^-1)^T
        for i in range(n):
            for j in range(n):
                P[i, j] = 0.5 * (G[i, j] + G[j, i])
        store(g, a + t * n * n, _I(1), P, _I(1))


@vjp(Op.CHOLESKY)
def cholesky_vjp(r, g):
    nb, n = r.a[:2]
    L = reshape_var(r.ans, (nb, n, n))
    P = (_mT(L) @ reshape_var(g, (nb, n, n))) * _mask(g.tape, n, 1, 0.5)
    Y = trisolve(L, P, True, True)
    Z = trisolve(L, _mT(Y), True, True)
    return ((Z + _mT(Z)) * 0.5,)


# ---------------------------------------------------------------------------- TRISOLVE
@jit
def trisolve_fwd(v, a, b, ans, batch, n, k, lower, trans, unit):
    if batch == 0:  # no scratch: n is unbounded by an empty batch's size
        return True
    A, X = np.empty((n, n)), np.empty((n, k))
    for t in range(batch):
        load(v, a + t * n * n, _I(1), A)
        load(v, b + t * n * k, _I(1), X)
        if not trsm(A, X, lower, trans, unit):
            return False
        store(v, ans + t * n * k, _I(1), X, _I(0))
    return True


@jit
def trisolve_bwd(v, g, a, b, ans, batch, n, k, lower, trans, unit, da, db):
    if batch == 0:  # no scratch: n is unbounded by an empty batch's size
        return
    A, X, G = np.empty((n, n)), np.empty((n, k)), np.empty((n, k))
    part = (1 if lower else 2) + (2 if unit else 0)
    for t in range(batch):
        load(v, a + t * n * n, _I(1), A)
        load(g, ans + t * n * k, _I(1), G)
        trsm(A, G, lower, _I(1 - trans), unit)  # gB
        if db:
            store(g, b + t * n * k, _I(1), G, _I(1))
        if da:
            load(v, ans + t * n * k, _I(1), X)
            if trans == 0:
                outer_add(g, a + t * n * n, G, X, -1.0, part)
            else:
                outer_add(g, a + t * n * n, X, G, -1.0, part)


@vjp(Op.TRISOLVE)
def trisolve_vjp(r, g):
    nb, n, k, lower, trans, unit = r.a
    A = reshape_var(r.x, (nb, n, n))
    gB = trisolve(A, reshape_var(g, (nb, n, k)), lower, 1 - trans, unit)
    gA = None
    if r.need[0]:
        X = reshape_var(r.ans, (nb, n, k))
        outer = gB @ _mT(X) if trans == 0 else X @ _mT(gB)
        gA = outer * _mask(g.tape, n, _part(lower, unit), scale=-1.0)
    return gA, (gB if r.need[1] else None)


# ---------------------------------------------------------------------------- SLOGDET
@jit
def slogdet_fwd(v, a, ans, batch, n, mode):
    if batch == 0:  # no scratch: n is unbounded by an empty batch's size
        return
    A, piv = np.empty((n, n)), np.empty(n, PIVOT)
    for t in range(batch):
        load(v, a + t * n * n, _I(1), A)
        ok, sign = lu(A, piv)
        lad = 0.0
        for i in range(n):
            lad += math.log(abs(A[i, i]))
        if not ok:
            sign, lad = 0.0, -math.inf
        if mode == 0:
            v[ans + 2 * t] = sign
            v[ans + 2 * t + 1] = lad
        else:
            v[ans + t] = lad if sign > 0 else (math.nan if sign < 0 else -math.inf)


@jit
def inv_t(v, a, t, n, A, piv, out):
    """``out = A^-T`` of matrix t of the batch at ``a`` (``A``, ``piv``: scratch)."""
    load(v, a + t * n * n, _I(1), A)
    lu(A, piv)
    for i in range(n):
        for j in range(n):
            out[i, j] = 1.0 if i == j else 0.0
    lu_solve(A, piv, out, _I(1))


@jit
def slogdet_bwd(v, g, a, ans, batch, n, mode):
    if batch == 0:  # no scratch: n is unbounded by an empty batch's size
        return
    A, W, piv = np.empty((n, n)), np.empty((n, n)), np.empty(n, PIVOT)
    for t in range(batch):
        w = g[ans + 2 * t + 1] if mode == 0 else g[ans + t]
        inv_t(v, a, t, n, A, piv, W)
        for i in range(n):
            for j in range(n):
                W[i, j] *= w
        store(g, a + t * n * n, _I(1), W, _I(1))


@vjp(Op.SLOGDET)
def slogdet_vjp(r, g):
    nb, n, mode = r.a[:3]
    w = reshape_var(g, (nb, 2))[:, 1] if mode == 0 else g
    inv_t = solve(reshape_var(r.x, (nb, n, n)), _eye(g.tape, nb, n), 1)
    return (inv_t * reshape_var(w, (nb, 1, 1)),)
