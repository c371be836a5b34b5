"""Optimizers against NumPy transcriptions of torch.optim's documented rules (and torch itself
when installed), tg.fit against the equivalent Python loop, the functional API and nn."""
import numpy as np
import pytest

import tapegrad as tg


# ------------------------------------------------------------------ reference update rules
def ref_sgd(p, g, s, t, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    g = g + weight_decay * p
    if momentum:
        s["buf"] = g.copy() if t == 1 else momentum * s["buf"] + (1 - dampening) * g
        g = g + momentum * s["buf"] if nesterov else s["buf"]
    return p - lr * g


def ref_adam(p, g, s, t, lr, betas, eps, weight_decay, decoupled, bias_correction=True,
             centered=False):
    b1, b2 = betas
    if decoupled and not centered:
        p = p * (1 - lr * weight_decay)
    elif not decoupled:
        g = g + weight_decay * p
    s["m"] = b1 * s.get("m", 0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0) + (1 - b2) * g * g
    bc1 = 1 - b1 ** t if bias_correction else 1.0
    bc2 = 1 - b2 ** t if bias_correction else 1.0
    if centered:
        mh, vh = s["m"] / bc1, s["v"] / bc2
        p = p - lr * mh / (np.sqrt(np.maximum(vh - mh * mh, 0)) + eps)
        return p - lr * weight_decay * p
    return p - (lr / bc1) * (s["m"] / (np.sqrt(s["v"]) / np.sqrt(bc2) + eps))


CASES = {
    "sgd": (tg.optim.SGD, dict(lr=0.05), lambda p, g, s, t: ref_sgd(p, g, s, t, 0.05)),
    "sgd-momentum-wd": (tg.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1,
                                           weight_decay=0.01),
                        lambda p, g, s, t: ref_sgd(p, g, s, t, 0.05, 0.9, 0.1, 0.01)),
    "sgd-nesterov": (tg.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True),
                     lambda p, g, s, t: ref_sgd(p, g, s, t, 0.05, 0.8, 0.0, 0.0, True)),
    "adam": (tg.optim.Adam, dict(lr=0.01, weight_decay=0.1),
             lambda p, g, s, t: ref_adam(p, g, s, t, 0.01, (0.9, 0.999), 1e-8, 0.1, False)),
    "adamw": (tg.optim.AdamW, dict(lr=0.01, betas=(0.9, 0.9), weight_decay=1e-3),
              lambda p, g, s, t: ref_adam(p, g, s, t, 0.01, (0.9, 0.9), 1e-8, 1e-3, True)),
    "adamw-no-bc": (tg.optim.AdamW, dict(lr=0.01, bias_correction=False),
                    lambda p, g, s, t: ref_adam(p, g, s, t, 0.01, (0.9, 0.999), 1e-8, 1e-2,
                                                True, False)),
    "adamw-centered-seed": (tg.optim.AdamW, dict(lr=0.01, betas=(0.9, 0.9), weight_decay=1e-3,
                                                 bias_correction=False, centered=True),
                            lambda p, g, s, t: ref_adam(p, g, s, t, 0.01, (0.9, 0.9), 1e-8,
                                                        1e-3, True, False, True)),
}


def quadratic_tape(rng):
    tape = tg.Tape()
    a = tape.param(rng.normal(size=(3, 2)), name="a")
    b = tape.param(rng.normal(size=4), name="b")
    target = rng.normal(size=(3, 2))
    loss = ((a - target) ** 2).sum() + (tg.sin(b) * b).sum()
    return tape, [a, b], loss, target


def ref_grads(a, b, target):
    return [2 * (a - target), np.cos(b) * b + np.sin(b)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_optimizer_matches_reference_rule_for_100_steps(case):
    cls, kw, rule = CASES[case]
    tape, params, loss, target = quadratic_tape(np.random.default_rng(1))
    opt = cls(tape.params, **kw)
    ref = [p.numpy() for p in params]
    states = [{}, {}]
    for t in range(1, 101):
        tape.forward()
        loss.backward()
        opt.step()
        grads = ref_grads(ref[0], ref[1], target)
        ref = [rule(p, g, s, t) for p, g, s in zip(ref, grads, states)]
        for p, r in zip(params, ref):
            np.testing.assert_allclose(p.value, r, rtol=1e-10, atol=1e-12)


def test_optimizer_on_a_subset_leaves_the_rest():
    tape, params, loss, target = quadratic_tape(np.random.default_rng(2))
    before = params[0].numpy()
    opt = tg.optim.Adam([params[1]], lr=0.1)
    loss.backward()
    opt.step()
    np.testing.assert_array_equal(params[0].value, before)
    assert not np.allclose(params[1].value, tape.params[1].value * 0 + before.sum())


def test_state_dict_resumes_exactly():
    rng = np.random.default_rng(3)
    t1, p1, l1, _ = quadratic_tape(rng)
    o1 = tg.optim.AdamW(t1.params, lr=0.05)
    for _ in range(5):
        l1.backward()
        o1.step()
        t1.forward()
    sd = o1.state_dict()
    t2, p2, l2, _ = quadratic_tape(np.random.default_rng(3))
    for a, b in zip(p2, p1):
        a.value[...] = b.value
    t2.forward()
    o2 = tg.optim.AdamW(t2.params, lr=0.05)
    o2.load_state_dict(sd)
    for _ in range(5):
        for t, o, l in ((t1, o1, l1), (t2, o2, l2)):
            l.backward()
            o.step()
            t.forward()
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a.value, b.value)
    with pytest.raises(tg.TapegradError, match="state of 'AdamW', not SGD"):
        tg.optim.SGD(t2.params).load_state_dict(sd)


def test_optimizer_rejects_non_params():
    tape = tg.Tape()
    x = tape.input("x", shape=(2,))
    with pytest.raises(tg.TapegradError, match="parameter Var"):
        tg.optim.SGD([x])
    with pytest.raises(tg.TapegradError, match="lr must be"):
        tg.optim.SGD([tape.param(np.ones(1))], lr=-1)


TORCH_CASES = sorted(c for c in CASES if "centered" not in CASES[c][1]
                     and "bias_correction" not in CASES[c][1])  # variants torch does not have


@pytest.mark.parametrize("case", TORCH_CASES)
def test_optimizer_matches_torch(case):
    torch = pytest.importorskip("torch")
    cls, kw, _ = CASES[case]
    tape, params, loss, target = quadratic_tape(np.random.default_rng(4))
    tp = [torch.tensor(p.numpy(), dtype=torch.float64, requires_grad=True) for p in params]
    tt = torch.tensor(target)
    topt = getattr(torch.optim, cls.__name__)(tp, **kw)
    opt = cls(tape.params, **kw)
    for _ in range(100):
        tape.forward()
        loss.backward()
        opt.step()
        topt.zero_grad()
        tl = ((tp[0] - tt) ** 2).sum() + (torch.sin(tp[1]) * tp[1]).sum()
        tl.backward()
        topt.step()
    for p, q in zip(params, tp):
        np.testing.assert_allclose(p.value, q.detach().numpy(), rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ fit
def regression(batch, dtype=np.float64, seed=0):
    tape = tg.Tape(dtype)
    mlp = tg.nn.MLP(tape, [2, 8, 1], activation=tg.tanh, rng=seed)
    x = tape.input("x", shape=(batch, 2))
    y = tape.input("y", shape=(batch, 1))
    loss = tg.mse_loss(mlp(x), y)
    return tape, loss


def test_fit_equals_python_loop_on_the_same_batches():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(37, 2))
    Y = np.sin(X[:, :1]) + X[:, 1:] ** 2
    t1, l1 = regression(8)
    t2, l2 = regression(8)
    o1 = tg.optim.AdamW(t1.params, lr=0.01)
    o2 = tg.optim.AdamW(t2.params, lr=0.01)
    hist = tg.fit(l1, o1, {"x": X, "y": Y}, batch_size=8, steps=25, shuffle=True, seed=7)
    # the same order, drawn the documented way: seeded passes over the data, wrapped
    rs = np.random.default_rng(7)
    order = np.concatenate([rs.permutation(37) for _ in range(6)])
    ref = []
    for s in range(25):
        idx = order[s * 8:(s + 1) * 8]
        t2.forward(x=X[idx], y=Y[idx])
        ref.append(l2.item())
        l2.backward()
        o2.step()
    np.testing.assert_allclose(hist, ref, rtol=1e-12)
    for a, b in zip(t1.params, t2.params):
        np.testing.assert_allclose(a.value, b.value, rtol=1e-12)
    assert hist[-1] < hist[0]


def test_fit_in_order_wraps_around():
    X = np.arange(5.0).reshape(5, 1).repeat(2, 1)
    tape, loss = regression(2)
    opt = tg.optim.SGD(tape.params, lr=0.0)
    hist = tg.fit(loss, opt, {"x": X, "y": X[:, :1]}, batch_size=2, steps=4, shuffle=False)
    refs = []
    for idx in ([0, 1], [2, 3], [4, 0], [1, 2]):
        tape.forward(x=X[idx], y=X[idx, :1])
        refs.append(loss.item())
    np.testing.assert_allclose(hist, refs, rtol=1e-12)


def test_fit_rejects_bad_data_before_any_step():
    tape, loss = regression(4)
    opt = tg.optim.SGD(tape.params, lr=0.1)
    before = [p.numpy() for p in tape.params]
    X, Y = np.ones((10, 2)), np.ones((10, 1))
    with pytest.raises(tg.FeedError, match="unknown input 'z'"):
        tg.fit(loss, opt, {"x": X, "z": Y}, batch_size=4, steps=3)
    with pytest.raises(tg.FeedError, match=r"input 'x': expected shape \(4, 2\), got \(10, 3\)"):
        tg.fit(loss, opt, {"x": np.ones((10, 3)), "y": Y}, batch_size=4, steps=3)
    with pytest.raises(tg.FeedError, match="different numbers of samples"):
        tg.fit(loss, opt, {"x": X, "y": np.ones((9, 1))}, batch_size=4, steps=3)
    with pytest.raises(tg.FeedError, match="batch_size=5"):
        tg.fit(loss, opt, {"x": X, "y": Y}, batch_size=5, steps=3)
    with pytest.raises(tg.FeedError, match="expected numbers"):
        tg.fit(loss, opt, {"x": X.astype(str), "y": Y}, batch_size=4, steps=3)
    for p, b in zip(tape.params, before):
        np.testing.assert_array_equal(p.value, b)


def test_fit_stops_on_nan_loss_naming_the_step():
    tape, loss = regression(1)
    opt = tg.optim.SGD(tape.params, lr=0.0)
    X = np.ones((6, 2))
    X[3, 0] = np.nan
    with pytest.raises(tg.NonFiniteError, match="at step 3"):
        tg.fit(loss, opt, {"x": X, "y": np.ones((6, 1))}, batch_size=1, steps=6, shuffle=False)


def test_fit_float32_learns():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(64, 2)).astype(np.float32)
    Y = (X[:, :1] - 2 * X[:, 1:]).astype(np.float32)
    tape, loss = regression(16, np.float32)
    hist = tg.fit(loss, tg.optim.Adam(tape.params, lr=0.02), {"x": X, "y": Y},
                  batch_size=16, steps=400)
    assert hist.dtype == np.float64 and np.mean(hist[-20:]) < 0.1 * np.mean(hist[:20])


def test_fit_cross_entropy_with_label_input():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(90, 2))
    labels = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)
    tape = tg.Tape()
    mlp = tg.nn.MLP(tape, [2, 16, 3], rng=0)
    x = tape.input("x", shape=(30, 2))
    lab = tape.input("lab", shape=(30,))
    loss = tg.cross_entropy(mlp(x), lab)
    with pytest.raises(tg.FeedError, match="labels must be integers"):
        tg.fit(loss, tg.optim.Adam(tape.params), {"x": X, "lab": labels + 1}, 30, 3)
    hist = tg.fit(loss, tg.optim.Adam(tape.params, lr=0.05), {"x": X, "lab": labels}, 30, 300)
    assert hist[-1] < 0.5 * hist[0]


# ------------------------------------------------------------------ functional, nn
def test_grad_matches_analytic_and_rerecords_on_branch_change():
    def f(x, y):
        s = (x * y).sum()
        if s > 0:
            return s ** 2
        return tg.exp(s)

    df = tg.grad(f, argnums=(0, 1))
    x, y = np.array([1.0, 2.0]), np.array([0.5, 0.25])
    gx, gy = df(x, y)
    s = x @ y
    np.testing.assert_allclose(gx, 2 * s * y)
    np.testing.assert_allclose(gy, 2 * s * x)
    x2 = -x
    gx, gy = df(x2, y)  # the other branch: re-recorded, never stale
    s = x2 @ y
    np.testing.assert_allclose(gx, np.exp(s) * y)
    v, g = tg.value_and_grad(f)(x, y)
    assert v == pytest.approx((x @ y) ** 2)
    np.testing.assert_allclose(g, 2 * (x @ y) * y)


def test_grad_records_once_per_shape():
    calls = []

    def f(x):
        calls.append(1)
        return (x ** 2).sum()

    df = tg.grad(f)
    for k in range(3):
        np.testing.assert_allclose(df(np.full(3, float(k))), 2.0 * k)
    assert len(calls) == 1
    df(np.ones(4))
    assert len(calls) == 2


def test_linear_init_matches_torch_bound_and_shapes():
    tape = tg.Tape()
    layer = tg.nn.Linear(tape, 16, 4, rng=0)
    assert layer.W.shape == (16, 4) and layer.b.shape == (4,)
    assert np.abs(layer.W.value).max() <= 0.25 and np.abs(layer.W.value).max() > 0.2
    again = tg.nn.Linear(tg.Tape(), 16, 4, rng=0)
    np.testing.assert_array_equal(layer.W.value, again.W.value)
    x = tape.input("x", value=np.ones((2, 16)))
    np.testing.assert_allclose(layer(x).value, np.ones((2, 16)) @ layer.W.value + layer.b.value)
    mlp = tg.nn.MLP(tape, [4, 3, 2], rng=1)
    assert [p.shape for p in mlp.params] == [(4, 3), (3,), (3, 2), (2,)]


def _mixed_model():
    """Concatenate (PLACE), slices, a gather, reshapes, a constant operand, an input with
    requires_grad, and an intermediate used twice: every way a gradient slot is reached."""
    tape = tg.Tape()
    W = tape.param(np.random.default_rng(1).normal(size=(3, 4)) * 0.5)
    E = tape.param(np.random.default_rng(2).normal(size=(5, 2)) * 0.5)
    x = tape.input("x", shape=(6, 3), requires_grad=True)
    tok = tape.input("tok", shape=(6,))
    y = tape.input("y", shape=(6,))
    h = tg.tanh(x @ W)                                   # (6, 4), used twice below
    z = tg.concatenate([h[:, :2] * np.arange(1.0, 3.0), E[tok], h[:, 2:] ** 2], axis=1)
    pred = z.reshape(6, 3, 2).sum(axis=(1, 2)) + h.mean()
    return tape, ((pred - y) ** 2).mean(), h, z, x


def test_fit_equals_loop_with_concatenate_gather_and_views():
    """tg.fit's reverse sweeps zero each gradient they read (only the leaves are zeroed
    between steps): parameters, the last step's .grad of every Var and the losses equal a
    Python loop's exactly, over fit calls of one and of many steps."""
    rng = np.random.default_rng(8)
    X, T, Y = rng.normal(size=(6, 3)), rng.integers(0, 5, 6).astype(float), rng.normal(size=6)
    t1, l1, h1, z1, x1 = _mixed_model()
    t2, l2, h2, z2, x2 = _mixed_model()
    o1, o2 = tg.optim.Adam(t1.params, lr=0.05), tg.optim.Adam(t2.params, lr=0.05)
    data = {"x": X[None].repeat(2, 0).reshape(12, 3), "tok": np.tile(T, 2),
            "y": np.tile(Y, 2)}
    hist = np.concatenate([tg.fit(l1, o1, data, batch_size=6, steps=n, shuffle=False)
                           for n in (1, 30, 2)])
    ref = []
    for _ in range(33):
        t2.forward(x=X, tok=T, y=Y)
        ref.append(l2.item())
        l2.backward()
        o2.step()
    np.testing.assert_array_equal(hist, ref)
    for a, b in zip(t1.params, t2.params):
        np.testing.assert_array_equal(a.value, b.value)
        np.testing.assert_array_equal(a.grad, b.grad)
    for a, b in ((h1, h2), (z1, z2), (x1, x2), (l1, l2)):   # intermediates and the input
        np.testing.assert_array_equal(a.grad, b.grad)
    assert np.abs(h1.grad).sum() > 0 and np.abs(x1.grad).sum() > 0
