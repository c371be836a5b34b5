"""Matrix products with ``np.matmul`` semantics, as one MATMUL instruction over a batch.

Shape rule: a 1-D left operand is a row ``(1, K)``, a 1-D right operand a column ``(K, 1)``
(the added axis is dropped from the result); leading batch axes broadcast. A 2-D right
operand folds the left operand's batch into its rows (one ``(B*M, K) @ (K, N)`` product).
Attributes: ``batch, M, K, N, sx, sy`` with ``sx``/``sy`` 0 when that operand is shared by the
whole batch. Products call SciPy's BLAS ``?gemm`` directly (which ``tapegrad._jit`` loads
single-threaded): unlike ``np.dot`` it accumulates into the gradient (beta = 1) without a
temporary, and costs far less to compile. It wins from a few hundred multiply-adds on
(``use_blas``): a (30, 32) @ (32, 32) float64 product took 1.2 us in gemm and 7.2 us as a
loop here, its reverse rule 2.8 vs 27 us. Tinier products are plain loops. So are float32
products below ``BLAS_MIN`` multiply-adds that sum over more than ``F32_SUM_MAX`` terms:
their sums over K (and, in the reverse rule, over M and over a shared operand's batch) run
in float64, as ``ops.reduce``'s sums do. (BLAS's float32 products accumulate in float32,
as PyTorch's do.)
"""
import numpy as np
from numba import types

from .._jit import BLAS, cached, jit, kernel
from ..errors import ShapeError, user_site
from ..opcodes import Op
from ..var import Var
from ._precision import is_f32
from ._record import broadcast_to, prod, reshape_var, vars_of
from ._vjp import vjp
from ._vmath import wide

BLAS_MIN = 65536     # multiply-adds from which every product goes to BLAS
BLAS_SMALL = 256     # ... and from which one goes to BLAS unless a float32 sum is long
F32_SUM_MAX = 1024   # the longest float32 sum left to BLAS below BLAS_MIN

# numba's own entry to SciPy's ?gemm (what its np.dot calls), declared here with addresses as
# intp so that one call site serves both arena dtypes and the function stays cacheable.
# (kind, transa, transb, m, n, k, &alpha, a, lda, b, ldb, &beta, c, ldc) -> status
if not BLAS:  # no SciPy ("scipy 0.16+ is required for linear algebra"), or of another width
    from numba.np.linalg import ensure_blas
    ensure_blas()
_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp, types.intp,
    types.intp, types.intp, types.intp, types.intp, types.intp, types.intp, types.intp))
_N, _T = ord("n"), ord("t")


@kernel
def _ptr(arr, i):
    """Address of element ``i`` of a 1-D array."""
    return np.int64(arr.ctypes.data) + i * arr.itemsize


# alpha = 1 and beta = 0 or 1 for ?gemm, read through pointers: constants compiled into the
# kernels (allocating them per call cost ~0.1 us, a third of a (1, 32) @ (32, 32) product)
_ONE_ZERO_64 = np.array([1.0, 0.0], np.float64)
_ONE_ZERO_32 = np.array([1.0, 0.0], np.float32)


@kernel
def gemm(ta, tb, m, n, k, va, a, lda, vb, b, ldb, beta, vc, c):
    """Column-major ``C[m, n] = op(A)[m, k] @ op(B)[k, n] + beta * C`` on the arenas: ``A`` at
    offset ``a`` of arena ``va`` and so on; ``ta``/``tb`` are ord("n") or ord("t"); ``beta``
    is 0 or 1. A row-major ``Z = X @ Y`` is the column-major ``Z.T = Y.T @ X.T``: see the
    callers."""
    wide = vc.itemsize == 8
    one = _ptr(_ONE_ZERO_64, 0) if wide else _ptr(_ONE_ZERO_32, 0)
    b_ = one if beta != 0 else (_ptr(_ONE_ZERO_64, 1) if wide else _ptr(_ONE_ZERO_32, 1))
    _xxgemm(np.int8(ord("d") if wide else ord("s")), np.int8(ta), np.int8(tb), m, n, k, one,
            _ptr(va, a), lda, _ptr(vb, b), ldb, b_, _ptr(vc, c), m)


# OpenBLAS's small-matrix path (0.3.30, SkylakeX kernels) computes a small A^T @ B ("tn")
# about twice as slow as A @ B ("nn"): in a compiled loop, interleaved, a (32, 32)^T @ (32, 30)
# product took 1.65 us as "tn", 0.88 us as "nn", and a copy of A^T to a scratch 0.21 us. The
# copy pays when A is small and reused over many columns of B, and not when A has few rows
# (m = 1: 0.09 us "tn", 0.22 us with the copy): "tn" products with TN_COPY_M <= m <= TN_COPY_MAX,
# k <= TN_COPY_MAX and n >= TN_COPY_COLS (the recorded reverse rule's G @ W^T, and the reverse
# rule's gradient of X in X @ W, at a PINN's sizes) go through it.
TN_COPY_M, TN_COPY_MAX, TN_COPY_COLS = 16, 32, 24


@kernel
def gemm_t(ta, tb, m, n, k, va, a, lda, vb, b, ldb, beta, vc, c):
    """``gemm`` (same arguments), a small ``tn`` product through a transposed copy of A."""
    if not (ta == _T and tb == _N and TN_COPY_M <= m <= TN_COPY_MAX and k <= TN_COPY_MAX
            and n >= TN_COPY_COLS):
        gemm(ta, tb, m, n, k, va, a, lda, vb, b, ldb, beta, vc, c)
        return
    gemm(_N, _N, m, n, k, _transposed(va, np.int64(a), np.int64(lda), np.int64(m),
                                      np.int64(k)), 0, m, vb, b, ldb, beta, vc, c)


@jit
def _transposed(va, a, lda, m, k):
    """A copy of op(A) = A^T (m x k, column-major): ``s[i + j*m] = A[j + i*lda]``. Called,
    not inlined (gemm_t has six call sites), with int64 arguments only (a literal argument
    would compile one more version)."""
    s = np.empty(m * k, va.dtype)
    mu, ku, au, lu = np.uint64(m), np.uint64(k), np.uint64(a), np.uint64(lda)
    m4 = mu - mu % np.uint64(4)
    for i in range(np.uint64(0), m4, np.uint64(4)):  # four columns of A at a time, written
        r0 = au + i * lu                              # as runs of four (half the time of one
        r1 = r0 + lu                                  # column at a time: 0.21 vs 0.40 us)
        r2 = r1 + lu
        r3 = r2 + lu
        for j in range(ku):
            q = j * mu + i
            s[q] = va[r0 + j]
            s[q + np.uint64(1)] = va[r1 + j]
            s[q + np.uint64(2)] = va[r2 + j]
            s[q + np.uint64(3)] = va[r3 + j]
    for i in range(m4, mu):
        row = au + i * lu
        for j in range(ku):
            s[j * mu + i] = va[row + j]
    return s


def matmul(x, y):
    """Matrix product as ``np.matmul``.  ``tg.matmul(a, b)``, ``a @ b``"""
    tape, (x, y) = vars_of([x, y], "matmul")
    if x.ndim == 0 or y.ndim == 0:
        raise ShapeError(f"matmul: operands must be at least 1-D, got shapes {x.shape} and "
                         f"{y.shape} ({user_site()})")
    xs = (1,) + x.shape if x.ndim == 1 else x.shape
    ys = y.shape + (1,) if y.ndim == 1 else y.shape
    (M, K), (K2, N) = xs[-2:], ys[-2:]
    if K != K2:
        raise ShapeError(f"matmul: shapes {x.shape} and {y.shape} do not align "
                         f"({K} != {K2}) ({user_site()})")
    try:
        batch_shape = tuple(np.broadcast_shapes(xs[:-2], ys[:-2]))
    except ValueError:
        raise ShapeError(f"matmul: batch shapes of {x.shape} and {y.shape} do not broadcast "
                         f"({user_site()})") from None
    final = batch_shape + ((M,) if x.ndim > 1 else ()) + ((N,) if y.ndim > 1 else ())
    if len(ys) == 2:  # fold the left batch into rows: one 2-D product
        rows = prod(batch_shape) * M
        x2 = reshape_var(x, (rows, K))
        y2 = reshape_var(y, (K, N))
        b = tape._emit(Op.MATMUL, [x2._b, y2._b], (rows, N), (1, rows, K, N, 1, 1))
    else:
        nb = prod(batch_shape)
        x2, sx = _batched(reshape_var(x, xs), batch_shape, (M, K))
        y2, sy = _batched(reshape_var(y, ys), batch_shape, (K, N))
        b = tape._emit(Op.MATMUL, [x2._b, y2._b], batch_shape + (M, N), (nb, M, K, N, sx, sy))
    return reshape_var(Var(tape, b), final)


def _batched(v, batch_shape, mat):
    """An operand with the full batch (stride 1) or one matrix shared by it (stride 0)."""
    if prod(v.shape[:-2]) == 1 and prod(batch_shape) != 1:
        return v, 0
    return broadcast_to(v, batch_shape + mat), 1


@kernel
def use_blas(v, batch, M, K, N):
    """Whether a product of these sizes goes to BLAS (module docstring)."""
    mkn = M * K * N
    if mkn >= BLAS_MIN:
        return True
    if mkn < BLAS_SMALL:
        return False
    return not is_f32(v) or max(K, N, M * batch) <= F32_SUM_MAX


# x, y, ans: offsets of X (M, K), Y (K, N) and Z (M, N) in the arenas (int64); batch t reads
# X at x + t*sx*M*K. Products left to loops (use_blas) are plain loops over the arenas at
# uint64 offsets in functions of their own, called (not inlined) from the sweeps: the sweeps'
# compile time grows faster than their size, and a call costs nanoseconds next to a product.
@kernel
def plain_matmul_fwd(v, x, y, ans, batch, M, K, N, sx, sy):
    """``matmul_fwd`` for a tape without transposed operands: the flagged functions stay out
    of the interpreter (and its compile). False for a flagged product (never on a tape
    whose interpreter has this row: ``tapegrad.sweep`` picks the full row for those)."""
    if (sx | sy) > 1:
        return False
    if M == 1 or N == 1:  # a vector operand: vectorised loops, not gemm with one column
        matvec_fwd(v, x, y, ans, batch, M, K, N, sx, sy)
        return True
    if not use_blas(v, batch, M, K, N):
        small_matmul_fwd(v, x, y, ans, batch, M, K, N, sx, sy)
        return True
    for t in range(batch):
        xo, yo, zo = x + t * sx * M * K, y + t * sy * K * N, ans + t * M * N
        gemm(_N, _N, N, M, K, v, yo, N, v, xo, K, 0.0, v, zo)
    return True


# gx += g @ y.T,  gy += x.T @ g   (per batch; a shared operand sums over the batch);
# dx / dy: whether x / y need a gradient at all
@kernel
def plain_matmul_bwd(v, g, x, y, ans, batch, M, K, N, sx, sy, dx, dy):
    """``matmul_bwd`` without the flagged functions (see ``plain_matmul_fwd``)."""
    if (sx | sy) > 1:
        return False
    if M == 1 or N == 1:
        matvec_bwd(v, g, x, y, ans, batch, M, K, N, sx, sy, dx, dy)
        return True
    if not use_blas(v, batch, M, K, N):
        small_matmul_bwd(v, g, x, y, ans, batch, M, K, N, sx, sy, dx, dy)
        return True
    for t in range(batch):
        xo, yo, zo = x + t * sx * M * K, y + t * sy * K * N, ans + t * M * N
        if dx:  # GX.T (K x M) += Y (K x N) @ G.T (N x M)
            gemm_t(_T, _N, K, M, N, v, yo, N, g, zo, N, 1.0, g, xo)
        if dy:  # GY.T (N x K) += G.T (N x M) @ X (M x K)
            gemm(_N, _T, N, K, M, g, zo, N, v, xo, K, 1.0, g, yo)
    return True


# Matrix-vector products (N == 1: X (M, K) @ y (K,)) and vector-matrix products (M == 1:
# x (K,) @ Y (K, N)) -- issue 17. BLAS gemm with one column was 2-3x slower than gemv, and the
# small-product loops ran a one-iteration inner loop; these loops run along contiguous rows:
# row dots (additions reordered by LLVM: vector partial sums) for z = X y and gx = G Y^T,
# scaled-row additions (axpy) for z = x Y and gy = X^T g, rank-1 updates for the other
# gradient. In a float32 arena the forward products and their sums over K are float32 over
# blocks of at most F32_BLOCK terms (as BLAS's float32 sums, which go up to F32_SUM_MAX
# terms), the block sums float64: float64 products ran at half the vector width, 2-3x
# NumPy's sgemv at 10^5 elements. The reverse rule's sums over M or K go through a float64
# scratch row, as every float32 sum does (ops.reduce).
def _reassoc(fn):
    return cached(fn, error_model="numpy", nogil=True, fastmath={"reassoc"})


VM_BLOCK = 1024  # columns of a vector-matrix product summed per pass (8 KB of float64 sums)
F32_BLOCK = 256  # float32 products summed in float32 before a float64 sum (<= F32_SUM_MAX)


@_reassoc
def matvec_fwd(v, x, y, ans, batch, M, K, N, sx, sy):
    uK, uN = np.uint64(K), np.uint64(N)
    wide()
    f32 = is_f32(v)
    acc = np.zeros(min(N, VM_BLOCK) if M == 1 and N > 1 else 0)
    acc32 = np.zeros(acc.size if f32 else 0, np.float32)
    for t in range(batch):
        xo = np.uint64(x + t * sx * M * K)
        yo = np.uint64(y + t * sy * K * N)
        zo = np.uint64(ans + t * M * N)
        if N == 1:  # z[m] = x[m, :] . y
            if f32:
                _matvec_rows_f32(v, xo, yo, zo, np.uint64(M), uK)
                continue
            for m in range(np.uint64(M)):
                row = xo + m * uK
                s = 0.0
                for k in range(uK):
                    s += v[row + k] * v[yo + k]
                v[zo + m] = s
            continue
        # z = sum_k x[k] Y[k, :]: blocks of VM_BLOCK columns (the running sums stay in L1);
        # a float32 arena sums F32_BLOCK rows in float32, then adds them to float64 sums
        for n0 in range(np.uint64(0), uN, np.uint64(VM_BLOCK)):
            n1 = min(n0 + np.uint64(VM_BLOCK), uN)
            if not f32:
                _vm_rows(v, acc, xo, yo, uN, n0, n1, np.uint64(0), uK)
                for n in range(n1 - n0):
                    v[zo + n0 + n] = acc[n]
                continue
            if uK <= np.uint64(F32_BLOCK):  # one block: float32 sums written as they are
                _vm_rows(v, acc32, xo, yo, uN, n0, n1, np.uint64(0), uK)
                for n in range(n1 - n0):
                    v[zo + n0 + n] = acc32[n]
                continue
            for n in range(n1 - n0):
                acc[n] = 0.0
            for k0 in range(np.uint64(0), uK, np.uint64(F32_BLOCK)):
                _vm_rows(v, acc32, xo, yo, uN, n0, n1, k0, min(k0 + np.uint64(F32_BLOCK), uK))
                for n in range(n1 - n0):
                    acc[n] += acc32[n]
            for n in range(n1 - n0):
                v[zo + n0 + n] = acc[n]


@_reassoc
def _matvec_rows_f32(v, xo, yo, zo, M, K):
    """z[m] = X[m, :] . y of a float32 arena: float32 partial sums of at most F32_BLOCK
    terms (LLVM keeps 16-wide vector partials: a few terms each), added in float64. A
    function of its own: inlined into matvec_fwd, the same loops ran 2x slower at 10^7
    elements (0.25 vs 0.12 ns per element; equal at 10^5). (Four rows per pass over y,
    sharing its loads, was 1.2x faster at 10^5 elements and 2x slower at 10^7, as NumPy's
    sgemv is.)"""
    wide()
    for m in range(M):
        a = xo + m * K
        if K <= np.uint64(F32_BLOCK):
            p = np.float32(0.0)
            for k in range(K):
                p += v[a + k] * v[yo + k]
            v[zo + m] = p
            continue
        s = 0.0
        for k0 in range(np.uint64(0), K, np.uint64(F32_BLOCK)):
            q = np.float32(0.0)
            for k in range(k0, min(k0 + np.uint64(F32_BLOCK), K)):
                q += v[a + k] * v[yo + k]
            s += q
        v[zo + m] = s


@kernel
def _vm_rows(v, acc, xo, yo, uN, n0, n1, k0, k1):
    """acc[:n1-n0] = sum over k0 <= k < k1 of x[k] Y[k, n0:n1], in acc's dtype: eight rows of Y per pass over the sums (one load and store of a sum per
    eight rows; four for short rows, whose loop is mostly its scalar remainder), then four,
    then one."""
    for n in range(n1 - n0):
        acc[n] = 0.0
    kn = k1 - k0
    K8 = k0 + (kn - kn % np.uint64(8) if uN >= 64 else np.uint64(0))
    K4 = k1 - (k1 - K8) % np.uint64(4)
    for k in range(k0, K8, np.uint64(8)):
        x0, x1 = v[xo + k], v[xo + k + np.uint64(1)]
        x2, x3 = v[xo + k + np.uint64(2)], v[xo + k + np.uint64(3)]
        x4, x5 = v[xo + k + np.uint64(4)], v[xo + k + np.uint64(5)]
        x6, x7 = v[xo + k + np.uint64(6)], v[xo + k + np.uint64(7)]
        r0 = yo + k * uN + n0
        r1 = r0 + uN
        r2 = r1 + uN
        r3 = r2 + uN
        r4 = r3 + uN
        r5 = r4 + uN
        r6 = r5 + uN
        r7 = r6 + uN
        for n in range(n1 - n0):
            acc[n] += (((x0 * v[r0 + n] + x1 * v[r1 + n])
                        + (x2 * v[r2 + n] + x3 * v[r3 + n]))
                       + ((x4 * v[r4 + n] + x5 * v[r5 + n])
                          + (x6 * v[r6 + n] + x7 * v[r7 + n])))
    for k in range(K8, K4, np.uint64(4)):
        x0, x1 = v[xo + k], v[xo + k + np.uint64(1)]
        x2, x3 = v[xo + k + np.uint64(2)], v[xo + k + np.uint64(3)]
        r0 = yo + k * uN + n0
        r1 = r0 + uN
        r2 = r1 + uN
        r3 = r2 + uN
        for n in range(n1 - n0):
            acc[n] += (x0 * v[r0 + n] + x1 * v[r1 + n]) + (x2 * v[r2 + n] + x3 * v[r3 + n])
    for k in range(K4, k1):
        xk = v[xo + k]
        row = yo + k * uN + n0
        for n in range(n1 - n0):
            acc[n] += xk * v[row + n]


@_reassoc
def matvec_bwd(v, g, x, y, ans, batch, M, K, N, sx, sy, dx, dy):
    uM, uK, uN = np.uint64(M), np.uint64(K), np.uint64(N)
    # float64 sums of gradients: gy (K) of X y summed over m; gx (K) of x Y accumulated over
    # the batch when x is shared by it; gy (K, N) of a shared Y is rank-1 updates (no sum but
    # over the batch, in place)
    gacc = np.zeros(K if (N == 1 and dy) or (M == 1 and N > 1 and dx and sx == 0) else 0)
    # a whole gradient matrix summed over the batch: X shared by products with a column,
    # Y shared by products with a row
    shared_x = N == 1 and dx and sx == 0 and batch > 1
    shared_y = M == 1 and N > 1 and dy and sy == 0 and batch > 1
    gmat = np.zeros(M * K if shared_x else (K * N if shared_y else 0))
    for t in range(batch):
        xo = np.uint64(x + t * sx * M * K)
        yo = np.uint64(y + t * sy * K * N)
        zo = np.uint64(ans + t * M * N)
        if N == 1:
            if dx and shared_x:  # gX[m, k] += g[m] y[k], summed over the batch in float64
                for m in range(uM):
                    gm = np.float64(g[zo + m])
                    row = m * uK
                    for k in range(uK):
                        gmat[row + k] += gm * v[yo + k]
            elif dx:  # gX[m, k] += g[m] y[k]
                for m in range(uM):
                    gm = g[zo + m]
                    row = xo + m * uK
                    for k in range(uK):
                        g[row + k] += gm * v[yo + k]
            if dy:  # gy[k] += sum_m X[m, k] g[m]
                for m in range(uM):
                    gm = np.float64(g[zo + m])
                    row = xo + m * uK
                    for k in range(uK):
                        gacc[k] += gm * v[row + k]
                if sy != 0 or t == batch - 1:
                    for k in range(uK):
                        g[yo + k] += gacc[k]
                        gacc[k] = 0.0
            continue
        if dx:  # gx[k] += sum_n g[n] Y[k, n]
            for k in range(uK):
                row = yo + k * uN
                s = 0.0
                for n in range(uN):
                    s += np.float64(g[zo + n]) * v[row + n]
                if sx == 0:
                    gacc[k] += s
                else:
                    g[xo + k] += s
            if sx == 0 and t == batch - 1:
                for k in range(uK):
                    g[xo + k] += gacc[k]
        if dy and shared_y:  # gY[k, n] += x[k] g[n], summed over the batch in float64
            for k in range(uK):
                xk = np.float64(v[xo + k])
                row = k * uN
                for n in range(uN):
                    gmat[row + n] += xk * g[zo + n]
        elif dy:  # gY[k, n] += x[k] g[n]
            for k in range(uK):
                xk = v[xo + k]
                row = yo + k * uN
                for n in range(uN):
                    g[row + n] += xk * g[zo + n]
    if shared_x:  # x, y: the first batch entry's offsets (the shared operand's only ones)
        for i in range(np.uint64(M * K)):
            g[np.uint64(x) + i] += gmat[i]
    if shared_y:
        for i in range(np.uint64(K * N)):
            g[np.uint64(y) + i] += gmat[i]


# The MATMUL rows of the interpreters: a transposed operand goes to the flagged functions
@kernel
def matmul_fwd(v, x, y, ans, batch, M, K, N, sx, sy):
    if (sx | sy) > 1:  # a transposed operand (the recorded reverse rule's products)
        flagged_matmul_fwd(v, x, y, ans, batch, M, K, N, sx, sy)
        return
    plain_matmul_fwd(v, x, y, ans, batch, M, K, N, sx, sy)


@kernel
def matmul_bwd(v, g, x, y, ans, batch, M, K, N, sx, sy, dx, dy):
    if (sx | sy) > 1:
        flagged_matmul_bwd(v, g, x, y, ans, batch, M, K, N, sx, sy, dx, dy)
        return
    plain_matmul_bwd(v, g, x, y, ans, batch, M, K, N, sx, sy, dx, dy)


# Each row of Z: Z[m] = sum_k X[m, k] Y[k], accumulated in place in a float64 arena and in a
# float64 row in a float32 one (a float32 running sum over K loses digits).
@jit
def small_matmul_fwd(v, x, y, ans, batch, M, K, N, sx, sy):
    if is_f32(v):
        _small_fwd_f32(v, x, y, ans, batch, M, K, N, sx, sy)
        return
    for t in range(batch):
        xo, yo, zo = x + t * sx * M * K, y + t * sy * K * N, ans + t * M * N
        for m in range(M):
            z = np.uint64(zo + m * N)
            for n in range(np.uint64(N)):
                v[z + n] = 0
            for k in range(K):
                xv = v[np.uint64(xo + m * K + k)]
                row = np.uint64(yo + k * N)
                for n in range(np.uint64(N)):
                    v[z + n] += xv * v[row + n]


@kernel
def _small_fwd_f32(v, x, y, ans, batch, M, K, N, sx, sy):
    acc = np.empty(N)
    for t in range(batch):
        xo, yo, zo = x + t * sx * M * K, y + t * sy * K * N, ans + t * M * N
        for m in range(M):
            for n in range(N):
                acc[n] = 0
            for k in range(K):
                xv = np.float64(v[np.uint64(xo + m * K + k)])
                row = np.uint64(yo + k * N)
                for n in range(np.uint64(N)):
                    acc[n] += xv * v[row + n]
            z = np.uint64(zo + m * N)
            for n in range(np.uint64(N)):
                v[z + n] = acc[n]


# gx[m, k] = sum_n g[m, n] y[k, n] and gy[k] += x[m, k] g[m] over m, in place in a float64
# arena; in a float32 one the dot products are float64 scalars, gy a float64 matrix flushed
# per batch entry (or once, when y is shared) and gx too when x is shared by the batch.
@jit
def small_matmul_bwd(v, g, x, y, ans, batch, M, K, N, sx, sy, dx, dy):
    if is_f32(v):
        _small_bwd_f32(v, g, x, y, ans, batch, M, K, N, sx, sy, dx, dy)
        return
    for t in range(batch):
        xo, yo, zo = x + t * sx * M * K, y + t * sy * K * N, ans + t * M * N
        for m in range(M):
            z = np.uint64(zo + m * N)
            for k in range(K):
                row = np.uint64(yo + k * N)
                xi = np.uint64(xo + m * K + k)
                if dx:
                    s = g[xi] * 0
                    for n in range(np.uint64(N)):
                        s += g[z + n] * v[row + n]
                    g[xi] += s
                if dy:
                    xv = v[xi]
                    for n in range(np.uint64(N)):
                        g[row + n] += xv * g[z + n]


# A transposed operand: the 2 bit of its stride attribute (sx, sy = stride | transposed << 1)
# says X is stored as (K, M) (Y as (N, K)) and used transposed, as BLAS's "t" flag does. Only the
# recorded reverse rule makes such products (the gradients need X^T and Y^T: no TRANSPOSE
# copies); the stride attributes of the user's products are 0 or 1. X_eff[m, k] sits at
# x + m*xm + k*xk, with (xm, xk) = (K, 1), or (1, M) when transposed; Y_eff[k, n] likewise.
@jit
def flagged_matmul_fwd(v, x, y, ans, batch, M, K, N, sx, sy):
    ta, tb, sx, sy = sx >> 1, sy >> 1, sx & 1, sy & 1
    blas = use_blas(v, batch, M, K, N)
    xm, xk = (1, M) if ta else (K, 1)
    yk, yn = (1, K) if tb else (N, 1)
    for t in range(batch):
        xo, yo, zo = x + t * sx * M * K, y + t * sy * K * N, ans + t * M * N
        if blas:  # Z.T = Y_eff.T @ X_eff.T, column-major
            gemm_t(_T if tb else _N, _T if ta else _N, N, M, K, v, yo, K if tb else N, v, xo,
                   M if ta else K, 0.0, v, zo)
            continue
        for m in range(M):
            for n in range(N):
                s = 0.0  # float64 in either arena
                for kk in range(K):
                    s += v[xo + m * xm + kk * xk] * v[yo + kk * yk + n * yn]
                v[zo + m * N + n] = s


@jit
def flagged_matmul_bwd(v, g, x, y, ans, batch, M, K, N, sx, sy, dx, dy):
    ta, tb, sx, sy = sx >> 1, sy >> 1, sx & 1, sy & 1
    blas = use_blas(v, batch, M, K, N)
    xm, xk = (1, M) if ta else (K, 1)
    yk, yn = (1, K) if tb else (N, 1)
    for t in range(batch):
        xo, yo, zo = x + t * sx * M * K, y + t * sy * K * N, ans + t * M * N
        if blas:
            if dx and ta:  # GX (K x M) += Y_eff @ G.T:  GX.T = G @ Y_eff.T
                gemm_t(_T, _T if tb else _N, M, K, N, g, zo, N, v, yo, K if tb else N, 1.0, g, xo)
            elif dx:       # GX (M x K) += G @ Y_eff.T:  GX.T = Y_eff @ G.T
                gemm_t(_N if tb else _T, _N, K, M, N, v, yo, K if tb else N, g, zo, N, 1.0, g, xo)
            if dy and tb:  # GY (N x K) += G.T @ X_eff:  GY.T = X_eff.T @ G  (never "tn")
                gemm(_T if ta else _N, _T, K, N, M, v, xo, M if ta else K, g, zo, N, 1.0, g, yo)
            elif dy:       # GY (K x N) += X_eff.T @ G:  GY.T = G.T @ X_eff
                gemm(_N, _N if ta else _T, N, K, M, g, zo, N, v, xo, M if ta else K, 1.0, g, yo)
            continue
        if dx:  # gX_eff[m, k] += sum_n G[m, n] Y_eff[k, n]
            for m in range(M):
                for kk in range(K):
                    s = 0.0
                    for n in range(N):
                        s += g[zo + m * N + n] * v[yo + kk * yk + n * yn]
                    i = xo + m * xm + kk * xk
                    g[i] = g[i] + s
        if dy:  # gY_eff[k, n] += sum_m X_eff[m, k] G[m, n]
            for kk in range(K):
                for n in range(N):
                    s = 0.0
                    for m in range(M):
                        s += v[xo + m * xm + kk * xk] * g[zo + m * N + n]
                    i = yo + kk * yk + n * yn
                    g[i] = g[i] + s


def _product(x, y, batch, M, K, N, fx, fy):
    """One MATMUL of ``x`` and ``y`` with the given attributes (``fx``, ``fy``: stride |
    transposed << 1) -> (batch, M, N)."""
    tape = x.tape
    return Var(tape, tape._emit(Op.MATMUL, [x._b, y._b], (batch, M, N),
                                (batch, M, K, N, fx, fy)))


@vjp(Op.MATMUL)
def matmul_vjp(r, g):
    """gX = g @ Y^T, gY = X^T @ g per batch entry, summed over the batch for an operand
    shared by it (stride 0) -- products with transposed operands, no TRANSPOSE copies."""
    from .reduce import sum as _sum
    batch, M, K, N, fx, fy = r.a
    sx, ta, sy, tb = fx & 1, fx >> 1, fy & 1, fy >> 1
    gx = gy = None
    if r.need[0]:
        if ta:  # X stored (K, M): its gradient is Y_eff @ G^T
            gx = _product(r.y, g, batch, K, N, M, sy | tb << 1, 1 | 1 << 1)
        else:   # G @ Y_eff^T
            gx = _product(g, r.y, batch, M, N, K, 1, sy | (1 - tb) << 1)
        if not sx:
            gx = _sum(gx, axis=0)
    if r.need[1]:
        if tb:  # Y stored (N, K): its gradient is G^T @ X_eff
            gy = _product(g, r.x, batch, N, M, K, 1 | 1 << 1, sx | ta << 1)
        else:   # X_eff^T @ G
            gy = _product(r.x, g, batch, K, M, N, sx | (1 - ta) << 1, 1)
        if not sy:
            gy = _sum(gy, axis=0)
    return gx, gy


@kernel
def _small_bwd_f32(v, g, x, y, ans, batch, M, K, N, sx, sy, dx, dy):
    shared_x = dx and sx == 0 and batch > 1
    gx = np.zeros(M * K if shared_x else 0)
    gy = np.zeros(K * N if dy else 0)
    for t in range(batch):
        xo, yo, zo = x + t * sx * M * K, y + t * sy * K * N, ans + t * M * N
        for m in range(M):
            z = np.uint64(zo + m * N)
            for k in range(K):
                row = np.uint64(yo + k * N)
                xi = np.uint64(xo + m * K + k)
                if dx:
                    s = 0.0
                    for n in range(np.uint64(N)):
                        s += np.float64(g[z + n]) * v[row + n]
                    if shared_x:
                        gx[m * K + k] += s
                    else:
                        g[xi] = g[xi] + s
                if dy:
                    xv = np.float64(v[xi])
                    r = np.uint64(k * N)
                    for n in range(np.uint64(N)):
                        gy[r + n] += xv * g[z + n]
        if dy and (sy != 0 or t == batch - 1):
            for i in range(np.uint64(K * N)):
                g[np.uint64(yo) + i] = g[np.uint64(yo) + i] + gy[i]
                gy[i] = 0
    for i in range(np.uint64(gx.size)):
        g[np.uint64(x) + i] = g[np.uint64(x) + i] + gx[i]
