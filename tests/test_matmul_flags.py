"""Matrix products with transposed operands (``sx``/``sy`` = stride | transposed << 1): only the
recorded reverse rule of MATMUL makes them (gradients need X^T and Y^T without TRANSPOSE
copies), so they are tested here directly, in every sweep, for every flag combination, at a
size below the BLAS threshold (loops) and one above it (gemm), in float64 and float32. The
references are NumPy products and float64 central differences."""
import itertools

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.ops.linalg import _product
from tapegrad.tangent import tangents

# batch, M, K, N: loops, BLAS, and BLAS with "tn" products through a transposed copy
# (ops/linalg.py, gemm_t: 16 <= m <= 32, k <= 32, n >= 24)
CASES = [(1, 2, 3, 4), (3, 2, 3, 4), (2, 16, 8, 12), (2, 30, 21, 27)]


def _operands(rng, batch, M, K, N, fx, fy):
    """Stored arrays of X and Y for the flags, and their effective (M, K), (K, N) stacks."""
    X = rng.standard_normal(((batch,) if fx & 1 else (1,)) + ((K, M) if fx & 2 else (M, K)))
    Y = rng.standard_normal(((batch,) if fy & 1 else (1,)) + ((N, K) if fy & 2 else (K, N)))
    Xe = np.swapaxes(X, 1, 2) if fx & 2 else X
    Ye = np.swapaxes(Y, 1, 2) if fy & 2 else Y
    return X, Y, Xe, Ye


# (a batch of one has both strides 1, as the recorder makes it)
PRODUCTS = [(c, fx, fy) for c in CASES for fx, fy in itertools.product(range(4), repeat=2)
            if c[0] > 1 or (fx & 1 and fy & 1)]


@pytest.mark.parametrize("case, fx, fy", PRODUCTS,
                         ids=lambda p: "x".join(map(str, p)) if isinstance(p, tuple) else str(p))
def test_flagged_products_every_sweep(case, fx, fy):
    batch, M, K, N = case
    rng = np.random.default_rng(fx * 4 + fy)
    X, Y, Xe, Ye = _operands(rng, batch, M, K, N, fx, fy)
    C = rng.standard_normal((batch, M, N))
    tape = tg.Tape()
    x, y = tape.param(X), tape.param(Y)
    z = _product(x, y, batch, M, K, N, fx, fy)
    want = np.broadcast_to(Xe @ Ye, (batch, M, N))  # a batch of shared operands
    np.testing.assert_allclose(z.value, want, rtol=1e-12, atol=1e-12)
    loss = (z * C).sum()
    loss.backward()
    gx_eff = (C @ np.swapaxes(Ye, 1, 2))     # d loss / d Xe per batch entry
    gy_eff = (np.swapaxes(Xe, 1, 2) @ C)
    if not fx & 1:
        gx_eff = gx_eff.sum(axis=0, keepdims=True)
    if not fy & 1:
        gy_eff = gy_eff.sum(axis=0, keepdims=True)
    np.testing.assert_allclose(x.grad, np.swapaxes(gx_eff, 1, 2) if fx & 2 else gx_eff,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y.grad, np.swapaxes(gy_eff, 1, 2) if fy & 2 else gy_eff,
                               rtol=1e-10, atol=1e-12)
    dX, dY = rng.standard_normal(X.shape), rng.standard_normal(Y.shape)
    tz = tangents(z, {x: dX, y: dY})
    dXe = np.swapaxes(dX, 1, 2) if fx & 2 else dX
    dYe = np.swapaxes(dY, 1, 2) if fy & 2 else dY
    np.testing.assert_allclose(tz, np.broadcast_to(dXe @ Ye + Xe @ dYe, (batch, M, N)),
                               rtol=1e-10, atol=1e-12)
    tape.forward()                            # the replay agrees with the recorded value
    np.testing.assert_allclose(z.value, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fx, fy", [(3, 1), (1, 3), (3, 3)])
def test_flagged_products_float32(fx, fy):
    batch, M, K, N = 2, 16, 8, 12
    X, Y, Xe, Ye = _operands(np.random.default_rng(1), batch, M, K, N, fx, fy)
    tape = tg.Tape(np.float32)
    x, y = tape.param(X.astype(np.float32)), tape.param(Y.astype(np.float32))
    z = _product(x, y, batch, M, K, N, fx, fy)
    np.testing.assert_allclose(z.value, np.broadcast_to(Xe @ Ye, z.shape), rtol=1e-5,
                               atol=1e-5)
    z.sum().backward()
    gx = np.swapaxes(np.ones((batch, M, N)) @ np.swapaxes(Ye, 1, 2), 1, 2) if fx & 2 else None
    if gx is not None:
        np.testing.assert_allclose(x.grad, gx, rtol=1e-5, atol=1e-5)


def test_second_order_through_flagged_products_matches_finite_differences():
    """A Hessian of a batched product with a shared operand: its recorded gradient is built of
    flagged products, whose own reverse rules then run."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 3, 5))

    def f(w):
        return (tg.tanh(A @ w) ** 2).sum() + (w @ w.T).sum()

    W = rng.standard_normal((5, 3))
    H = tg.hessian(f)(W)
    g = tg.grad(f)
    num = np.zeros((5, 3, 5, 3))
    for i in np.ndindex(5, 3):
        d = np.zeros_like(W)
        d[i] = 1e-5
        num[(slice(None), slice(None)) + i] = (g(W + d) - g(W - d)) / 2e-5
    np.testing.assert_allclose(H, num, rtol=1e-6, atol=1e-7)
