"""Functional transforms: nested tg.grad to third order against closed forms; hessian, hvp,
jacobian and vjp against finite differences of NumPy references, and against PyTorch's
``torch.autograd.functional`` when torch is installed (skipped cleanly otherwise)."""
import numpy as np
import pytest

import tapegrad as tg

rng = np.random.default_rng(7)
W = rng.standard_normal((4, 3)) * 0.7
C = rng.standard_normal(3)


def f_tg(x, y):
    return (tg.tanh(x @ W) * y).sum() + (tg.exp(0.3 * x) * x).sum() + tg.logsumexp(y * x[:3])


def f_np(x, y):
    from scipy.special import logsumexp
    return (np.tanh(x @ W) * y).sum() + (np.exp(0.3 * x) * x).sum() + logsumexp(y * x[:3])


def g_tg(x):
    return tg.sigmoid(x @ W) * tg.sin(x[1:]) + tg.square(x[:3])


def g_np(x):
    return 1 / (1 + np.exp(-(x @ W))) * np.sin(x[1:]) + x[:3] ** 2


X = rng.standard_normal(4)
Y = rng.standard_normal(3)


def _fd_grad(fun, x, eps=1e-6):
    out = []
    for e in np.eye(x.size):
        out.append((np.asarray(fun(x + eps * e.reshape(x.shape)))
                    - np.asarray(fun(x - eps * e.reshape(x.shape)))) / (2 * eps))
    return np.moveaxis(np.array(out), 0, -1)


def test_nested_grad_to_third_order_closed_forms():
    x = np.array([0.3, -1.2, 2.0])
    d1 = tg.grad(lambda v: (tg.sin(v) * v).sum())
    d2 = tg.grad(lambda v: d1(v).sum())
    d3 = tg.grad(lambda v: d2(v).sum())
    np.testing.assert_allclose(d1(x), np.sin(x) + x * np.cos(x), rtol=1e-14)
    np.testing.assert_allclose(d2(x), 2 * np.cos(x) - x * np.sin(x), rtol=1e-13)
    np.testing.assert_allclose(d3(x), -3 * np.sin(x) - x * np.cos(x), rtol=1e-13)
    # scalar composition, as HIPS autograd's tanh example
    t = tg.grad(tg.grad(tg.grad(tg.tanh)))
    for v in (-1.5, 0.2, 0.9):
        th = np.tanh(v)
        assert t(np.array(v)) == pytest.approx(-2 * (1 - th ** 2) * (1 - 3 * th ** 2), rel=1e-12)


def test_nested_grad_replays_and_rerecords_on_new_shapes():
    d2 = tg.grad(tg.grad(lambda v: (v ** 4).sum() if v.ndim else v ** 4))
    assert d2(np.array(2.0)) == pytest.approx(48.0)
    assert d2(np.array(1.0)) == pytest.approx(12.0)  # replayed


def test_hessian_and_hvp_against_finite_differences():
    H = tg.hessian(f_tg)(X, Y)
    grad_np = lambda x: _fd_grad(lambda z: f_np(z, Y), x)  # noqa: E731
    H_fd = _fd_grad(grad_np, X, eps=1e-4)
    np.testing.assert_allclose(H, H_fd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=1e-14)
    v = rng.standard_normal(4)
    np.testing.assert_allclose(tg.hvp(lambda x: f_tg(x, Y), (X,),
                                      (v,)), H @ v, rtol=1e-12, atol=1e-13)
    blocks = tg.hessian(f_tg, argnums=(0, 1))(X, Y)
    np.testing.assert_allclose(blocks[0][0], H, rtol=1e-12)
    np.testing.assert_allclose(blocks[0][1], blocks[1][0].T, rtol=1e-12, atol=1e-14)


def test_jacobian_and_vjp_against_finite_differences():
    J = tg.jacobian(g_tg)(X)
    assert J.shape == (3, 4)
    np.testing.assert_allclose(J, _fd_grad(g_np, X), rtol=1e-7, atol=1e-9)
    val, back = tg.vjp(g_tg, X)
    np.testing.assert_allclose(val, g_np(X), rtol=1e-14)
    ct = rng.standard_normal(3)
    (gx,) = back(ct)
    np.testing.assert_allclose(gx, ct @ J, rtol=1e-12)
    with pytest.raises(tg.ShapeError):
        back(np.ones(4))
    Jx, Jy = tg.jacrev(lambda x, y: tg.tanh(x[:3] * y), argnums=(0, 1))(X, Y)
    assert Jx.shape == (3, 4) and Jy.shape == (3, 3)
    np.testing.assert_allclose(Jy, np.diag((1 - np.tanh(X[:3] * Y) ** 2) * X[:3]), atol=1e-14)


def test_transforms_rerecord_when_a_guard_flips():
    def f(x):
        s = x.sum()
        return (x ** 3).sum() if s > 0 else (x ** 2).sum()
    h = tg.hessian(f)
    np.testing.assert_allclose(h(np.array([1.0, 2.0])), np.diag([6.0, 12.0]))
    np.testing.assert_allclose(h(np.array([-1.0, -2.0])), np.diag([2.0, 2.0]))


torch = pytest.importorskip("torch")


def _t(a):
    return torch.tensor(a, dtype=torch.float64)


def f_torch(x, y):
    return ((torch.tanh(x @ _t(W)) * y).sum() + (torch.exp(0.3 * x) * x).sum()
            + torch.logsumexp(y * x[:3], 0))


def g_torch(x):
    return torch.sigmoid(x @ _t(W)) * torch.sin(x[1:]) + x[:3] ** 2


def test_against_torch_autograd_functional():
    from torch.autograd.functional import hessian, hvp, jacobian, vjp
    Ht = hessian(lambda x: f_torch(x, _t(Y)), _t(X)).numpy()
    np.testing.assert_allclose(tg.hessian(f_tg)(X, Y), Ht, rtol=1e-8, atol=1e-12)
    v = rng.standard_normal(4)
    hv = hvp(lambda x: f_torch(x, _t(Y)), _t(X), _t(v))[1].numpy()
    np.testing.assert_allclose(tg.hvp(lambda x: f_tg(x, Y), (X,), (v,)), hv, rtol=1e-8,
                               atol=1e-12)
    np.testing.assert_allclose(tg.jacobian(g_tg)(X), jacobian(g_torch, _t(X)).numpy(),
                               rtol=1e-8, atol=1e-12)
    ct = rng.standard_normal(3)
    np.testing.assert_allclose(tg.vjp(g_tg, X)[1](ct)[0],
                               vjp(g_torch, _t(X), _t(ct))[1].numpy(), rtol=1e-8, atol=1e-12)


def test_gradient_penalty_matches_torch_double_backward():
    r = np.random.default_rng(11)
    Xd = r.standard_normal((8, 2))
    W1, W2 = r.standard_normal((2, 6)) * 0.5, r.standard_normal((6, 1)) * 0.5
    tape = tg.Tape()
    x = tape.input("x", value=Xd, requires_grad=True)
    w1, w2 = tape.param(W1), tape.param(W2)
    out = tg.tanh(x @ w1) @ w2
    gx, = tg.gradients(out.sum(), [x])
    loss = (out * out).mean() + (((gx * gx).sum(axis=1) - 1.0) ** 2).mean()
    loss.backward()
    xt = _t(Xd).requires_grad_(True)
    t1, t2 = _t(W1).requires_grad_(True), _t(W2).requires_grad_(True)
    ot = torch.tanh(xt @ t1) @ t2
    (gt,) = torch.autograd.grad(ot.sum(), xt, create_graph=True)
    lt = (ot * ot).mean() + (((gt * gt).sum(dim=1) - 1.0) ** 2).mean()
    lt.backward()
    assert loss.item() == pytest.approx(lt.item(), rel=1e-12)
    np.testing.assert_allclose(w1.grad, t1.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(w2.grad, t2.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_pinn_first_20_adam_steps_match_torch():
    """The pinn-oscillator workload (u, u' and u'' of a tanh MLP in the loss) trained by tg.fit
    and by torch (create_graph=True double backward, torch.optim.Adam) from the same weights:
    the 20 losses and the final parameters agree to 1e-8."""
    from tapegrad.bench import pinn
    params = pinn.init_params(3)
    fit, ref = pinn.TgFit(params), pinn.Torch(params)
    losses = fit.run(20, collect=True)
    want = ref.run(20, collect=True)
    np.testing.assert_allclose(losses, want, rtol=1e-8)
    for p, q in zip(fit.tape.params, ref.ps):
        np.testing.assert_allclose(p.value, q.detach().numpy(), rtol=1e-8, atol=1e-12)
