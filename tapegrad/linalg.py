"""``tg.linalg``: linear algebra with gradients to any order (``tg.gradients``, ``tg.hessian``,
forward mode), over single matrices or stacks of them (leading batch axes, as NumPy).

Values follow ``np.linalg`` / ``scipy.linalg``; the ops and their derivative rules are in
``tapegrad.ops.factor``. A singular matrix given to ``solve``, ``inv`` or
``solve_triangular``, or a matrix that is not positive definite given to ``cholesky``, raises
``tg.LinAlgError`` (a ``numpy.linalg.LinAlgError`` too) when recorded and on every replay
that meets one -- never a silently wrong value. ``slogdet`` and ``logdet`` never raise.
"""
from typing import NamedTuple

import numpy as np

from .errors import ShapeError, TapegradError, user_site
from .ops import factor
from .ops._record import broadcast_to, vars_of
from .var import Var

__all__ = ["cholesky", "inv", "logdet", "slogdet", "solve", "solve_triangular",
           "triangular_solve", "SlogdetResult"]


def solve(a, b):
    """``x`` with ``a @ x = b``, as ``np.linalg.solve``: ``a`` (..., M, M); ``b`` (M,) is one
    vector, else (..., M, K) with batch axes broadcast. LU with partial pivoting.

    >>> x = tg.linalg.solve(A, b)          # doctest: +SKIP
    """
    return factor.solve(a, b)


def inv(a):
    """The inverse of ``a`` (..., M, M), as ``np.linalg.inv`` (one solve against the
    identity)."""
    tape, (a,) = vars_of([a], "inv")
    batch, n = factor._square("inv", a)
    return factor.solve(a, broadcast_to(tape.const(np.eye(n)), batch + (n, n)))


def cholesky(a):
    """The lower-triangular ``L`` with ``L @ L.T == a`` for a symmetric positive definite
    ``a`` (..., M, M), as ``np.linalg.cholesky``. ``a`` is taken as symmetric: the factor is
    that of ``(a + a.T) / 2`` (the same numbers for a symmetric ``a``; NumPy reads the lower
    triangle only), and the gradient is symmetric, as torch's -- the upper and lower halves
    share it, and it is the true gradient of that function, to any order."""
    return factor.cholesky(a)


class SlogdetResult(NamedTuple):
    sign: Var
    logabsdet: Var


def slogdet(a):
    """``(sign, logabsdet)`` of ``a`` (..., M, M), as ``np.linalg.slogdet``: two Vars of the
    batch shape. A singular matrix gives sign 0 and logabsdet -inf (no error; the gradient
    there is not finite). ``sign`` carries no gradient; ``logabsdet``'s is ``inv(a).T``."""
    out = factor.slogdet(a, 0)
    return SlogdetResult(out[..., 0], out[..., 1])


def logdet(a):
    """``log(det(a))`` of ``a`` (..., M, M), as ``torch.logdet``: NaN where the determinant is
    negative and -inf where it is zero (no error). The gradient is ``inv(a).T``, that of
    log|det a|, wherever ``a`` is invertible. For a symmetric positive definite ``a``,
    ``2 * log(diag(cholesky(a))).sum()`` is the same number."""
    return factor.slogdet(a, 1)


_TRANS = {0: 0, 1: 1, 2: 1, "N": 0, "T": 1, "C": 1, False: 0, True: 1}


def solve_triangular(a, b, lower=True, trans=0, unit_diagonal=False):
    """``x`` with ``op(T) @ x = b``, as ``scipy.linalg.solve_triangular`` (but lower by
    default): T is the lower (``lower=True``) or upper triangle of ``a``; the other triangle is
    not read, nor the diagonal when ``unit_diagonal`` (taken as ones). ``trans``: 0 / "N"
    solves T x = b, 1 / "T" (or 2 / "C", the same for real matrices) solves T^T x = b.
    ``b`` (M,) or (..., M, K) as in ``solve``; stacks of matrices broadcast. The gradient of
    ``a`` lies on the triangle read. A zero on the diagonal raises ``tg.LinAlgError``."""
    key = trans.upper() if isinstance(trans, str) else trans
    if key not in _TRANS or isinstance(key, float):
        raise TapegradError(f"solve_triangular: trans must be 0, 1, 2, 'N', 'T' or 'C', got "
                            f"{trans!r} ({user_site()})")
    return factor.trisolve(a, b, lower, _TRANS[key], unit_diagonal)


def triangular_solve(A, B, upper=False, left=True, unitriangular=False):
    """``torch.linalg.solve_triangular(A, B, upper=upper, left=left,
    unitriangular=unitriangular)``: ``X`` with ``T @ X = B`` (``left``) or ``X @ T = B``, T the
    upper or lower triangle of ``A`` (..., M, M); ``B`` is (..., M, K) (``left``) or
    (..., K, M)."""
    tape, (A, B) = vars_of([A, B], "triangular_solve")
    if B.ndim < 2:
        raise ShapeError(f"triangular_solve: B must be at least 2-D (..., M, K), got shape "
                         f"{B.shape} ({user_site()})")
    if left:
        return factor.trisolve(A, B, not upper, 0, unitriangular, name="triangular_solve")
    # X T = B  <=>  T^T X^T = B^T
    axes = tuple(range(B.ndim - 2)) + (B.ndim - 1, B.ndim - 2)
    from .ops.shape import transpose
    xt = factor.trisolve(A, transpose(B, axes), not upper, 1, unitriangular,
                         name="triangular_solve")
    return transpose(xt, axes)
