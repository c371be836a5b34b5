"""``tg.fit`` with the optimizer fused into the step (the default) against the unfused step
(``fuse_optimizer=False``): bit-identical parameters, optimizer state, gradients and losses
for every optimizer, float32 and float64, parameters read by several instructions and through
views, a parameter the loss never reads, an optimizer over a subset of the parameters, the
reverse sweep cut after every parameter's first reader or not cut at all; a step that fails
after some of its updates leaves the state of the last good step (the checkpoint); and the
fused updates against a NumPy transcription of torch.optim's rules."""
import importlib

import numpy as np
import pytest

import tapegrad as tg

FIT = importlib.import_module("tapegrad.fit")  # (tapegrad.fit is also the function)

OPTS = {
    "sgd": (tg.optim.SGD, dict(lr=0.05)),
    "sgd-momentum-wd": (tg.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1,
                                           weight_decay=0.01)),
    "sgd-nesterov": (tg.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True)),
    "adam-wd": (tg.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
    "adamw": (tg.optim.AdamW, dict(lr=0.01, betas=(0.9, 0.9), weight_decay=1e-3)),
    "adamw-no-bc": (tg.optim.AdamW, dict(lr=0.01, bias_correction=False)),
    "adamw-centered": (tg.optim.AdamW, dict(lr=0.01, betas=(0.9, 0.9), weight_decay=1e-3,
                                            bias_correction=False, centered=True)),
}


@pytest.fixture
def count_fused(monkeypatch):
    """Every chunk may run fused (not only those of >= 8 steps); returns a dict counting the
    fused chunks (checkpoints taken) and the restores, so a test can check the fused path ran."""
    monkeypatch.setattr(FIT, "FUSE_MIN_STEPS", 1)
    seen = {"fused": 0, "restored": 0}
    checkpoint, restore = FIT._checkpoint, FIT._restore

    def counting_checkpoint(*a):
        seen["fused"] += 1
        return checkpoint(*a)

    def counting_restore(*a):
        seen["restored"] += 1
        return restore(*a)

    monkeypatch.setattr(FIT, "_checkpoint", counting_checkpoint)
    monkeypatch.setattr(FIT, "_restore", counting_restore)
    return seen


def shared_mlp(dtype, rng=0):
    """x -> tanh(x W0 + b0) -> tanh(. W + b1) -> tanh(. W + b2) -> . Wo: W read by two
    matmuls, and through a reshaped view by an L2 term; ``unused`` read by nothing."""
    r = np.random.default_rng(rng)
    tape = tg.Tape(dtype)
    W0 = tape.param(r.normal(size=(3, 8)) * 0.5, name="W0")
    b0 = tape.param(np.zeros(8), name="b0")
    W = tape.param(r.normal(size=(8, 8)) * 0.4, name="W")
    unused = tape.param(r.normal(size=5), name="unused")
    b1 = tape.param(r.normal(size=8) * 0.1, name="b1")
    b2 = tape.param(r.normal(size=8) * 0.1, name="b2")
    Wo = tape.param(r.normal(size=(8, 1)) * 0.5, name="Wo")
    x = tape.input("x", shape=(4, 3))
    y = tape.input("y", shape=(4, 1))
    h = tg.tanh(x @ W0 + b0)
    h = tg.tanh(h @ W + b1)
    h = tg.tanh(h @ W + b2)
    loss = tg.mse_loss(h @ Wo, y) + 1e-3 * (W.reshape(64) ** 2).sum()
    return tape, loss, unused


def regression_data(n=40, rng=3):
    r = np.random.default_rng(rng)
    X = r.normal(size=(n, 3))
    return X, np.sin(X[:, :1]) * X[:, 1:2] - X[:, 2:]


def run(dtype, case, fuse, steps=30, params=None, shuffle=True):
    tape, loss, unused = shared_mlp(dtype)
    cls, kw = OPTS[case]
    chosen = tape.params if params is None else [p for p in tape.params if p.name in params]
    opt = cls(chosen, **kw)
    X, Y = regression_data()
    hist = tg.fit(loss, opt, {"x": X, "y": Y}, batch_size=4, steps=steps, shuffle=shuffle,
                  seed=5, progress=False, fuse_optimizer=fuse)
    return {"hist": hist, "params": [p.numpy() for p in tape.params],
            "grads": [p.grad.copy() for p in tape.params], "state": opt.state.copy(),
            "t": opt.t, "names": [p.name for p in tape.params]}


def assert_identical(a, b):
    np.testing.assert_array_equal(a["hist"], b["hist"])
    for name, p, q in zip(a["names"], a["params"], b["params"]):
        np.testing.assert_array_equal(p, q, err_msg=name)
    for name, p, q in zip(a["names"], a["grads"], b["grads"]):
        np.testing.assert_array_equal(p, q, err_msg=f"grad of {name}")
    np.testing.assert_array_equal(a["state"], b["state"])
    assert a["t"] == b["t"]


@pytest.mark.parametrize("cut", ["after the sweep", "cut at every parameter"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(OPTS))
def test_fused_fit_is_bit_identical_to_unfused(case, dtype, cut, count_fused, monkeypatch):
    if cut != "after the sweep":
        monkeypatch.setattr(FIT, "FUSE_MIN_ELEMS", 0)
    fused = run(dtype, case, True)
    assert count_fused["fused"] > 0 and count_fused["restored"] == 0
    n = count_fused["fused"]
    unfused = run(dtype, case, False)
    assert count_fused["fused"] == n  # (fuse_optimizer=False never fuses)
    assert_identical(fused, unfused)
    # training moved every parameter, the unused one too (weight decay / its zero gradient
    # only moves it with Adam's L2 term, SGD's weight decay, or AdamW's decay)
    start = run(dtype, case, True, steps=0)
    moved = [not np.array_equal(p, q) for p, q in zip(fused["params"], start["params"])]
    assert all(m for m, name in zip(moved, fused["names"]) if name != "unused")


def test_the_plan_updates_each_parameter_after_its_first_reader(monkeypatch):
    monkeypatch.setattr(FIT, "FUSE_MIN_ELEMS", 0)
    tape, loss, unused = shared_mlp(np.float64)
    opt = tg.optim.Adam(tape.params)
    tape._seal()
    rmask = tape._reverse_mask(loss._b)
    segs, upd = FIT._fused_plan(tape, opt, loss, rmask)
    instr = tape._instr
    # instructions reading W: its two matmuls and the L2 term's square of its view
    readers = [k for k in range(len(tape)) if rmask[k] & 1
               and tape._base[[b for b in instr[k, 1:5] if b >= 0]].tolist().count(W_b(tape))]
    assert len(readers) == 3
    off = int(tape._boff[W_b(tape)])
    (row,) = [q for q in range(len(segs)) if any(upd[u, 0] == off
                                                  for u in range(segs[q, 2], segs[q, 3]))]
    assert segs[row, 0] == min(readers)  # updated once the sweep has run the first reader
    assert segs[:, 1].max() == len(tape) and segs[-1, 0] == 0  # the sweep runs whole
    assert np.all(segs[:-1, 0] == segs[1:, 1])
    # the parameter no instruction reads is updated after the last segment
    u_off = int(tape._boff[unused._b])
    assert any(upd[u, 0] == u_off for u in range(segs[-1, 2], segs[-1, 3]))


def W_b(tape):
    return next(p._b for p in tape.params if p.name == "W")


@pytest.mark.parametrize("cut", [False, True])
def test_optimizer_over_a_subset_fused(cut, count_fused, monkeypatch):
    if cut:
        monkeypatch.setattr(FIT, "FUSE_MIN_ELEMS", 0)
    fused = run(np.float64, "adamw", True, params={"W", "Wo", "b2"})
    unfused = run(np.float64, "adamw", False, params={"W", "Wo", "b2"})
    assert count_fused["fused"] > 0
    assert_identical(fused, unfused)
    start = run(np.float64, "adamw", True, steps=0)
    for name, p, q in zip(fused["names"], fused["params"], start["params"]):
        assert np.array_equal(p, q) == (name not in {"W", "Wo", "b2"}), name


# ------------------------------------------------------------------ against NumPy
def ref_update(case, p, g, s, t):
    """torch.optim's documented update of one parameter array, written out in NumPy."""
    cls, kw = OPTS[case]
    lr, wd = kw["lr"], kw.get("weight_decay", 1e-2 if cls is tg.optim.AdamW else 0.0)
    if cls is tg.optim.SGD:
        mom, damp = kw.get("momentum", 0.0), kw.get("dampening", 0.0)
        d = g + wd * p
        if mom:
            s["buf"] = d.copy() if t == 1 else mom * s["buf"] + (1 - damp) * d
            d = d + mom * s["buf"] if kw.get("nesterov") else s["buf"]
        return p - lr * d
    b1, b2 = kw.get("betas", (0.9, 0.999))
    eps, decoupled = 1e-8, cls is tg.optim.AdamW
    centered, bc = kw.get("centered", False), kw.get("bias_correction", True)
    if not decoupled:
        g = g + wd * p
    elif not centered:
        p = p * (1 - lr * wd)
    s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
    bc1, bc2 = (1 - b1 ** t, 1 - b2 ** t) if bc else (1.0, 1.0)
    if centered:
        mh, vh = s["m"] / bc1, s["v"] / bc2
        q = p - lr * mh / (np.sqrt(np.maximum(vh - mh * mh, 0.0)) + eps)
        return q - lr * wd * q
    return p - (lr / bc1) * (s["m"] / (np.sqrt(s["v"]) / np.sqrt(bc2) + eps))


@pytest.mark.parametrize("case", sorted(OPTS))
def test_fused_fit_matches_numpy_reference(case, count_fused, monkeypatch):
    # full batch, linear least squares: the gradient is analytic
    monkeypatch.setattr(FIT, "FUSE_MIN_ELEMS", 0)
    r = np.random.default_rng(7)
    X, Y = r.normal(size=(6, 3)), r.normal(size=(6, 2))
    W0, b0 = r.normal(size=(3, 2)), r.normal(size=2)
    tape = tg.Tape()
    W, b = tape.param(W0, name="W"), tape.param(b0, name="b")
    x, y = tape.input("x", value=X), tape.input("y", value=Y)
    loss = (((x @ W + b) - y) ** 2).sum()
    cls, kw = OPTS[case]
    opt = cls(tape.params, **kw)
    steps = 12
    hist = tg.fit(loss, opt, None, steps=steps, progress=False)
    assert count_fused["fused"] > 0
    p, q, sw, sb = W0.copy(), b0.copy(), {}, {}
    losses = []
    for t in range(1, steps + 1):
        res = X @ p + q - Y
        losses.append((res ** 2).sum())
        gW, gb = 2 * X.T @ res, 2 * res.sum(0)
        p, q = ref_update(case, p, gW, sw, t), ref_update(case, q, gb, sb, t)
    np.testing.assert_allclose(hist, losses, rtol=1e-12)
    np.testing.assert_allclose(W.value, p, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(b.value, q, rtol=1e-11, atol=1e-13)


# ------------------------------------------------------------------ a step that fails
def nan_gradient_tape(dropout, c_first=True):
    """Finite loss, but at a sample with z = 0 the gradient of c is NaN (sqrt(c^2 z)'s
    derivative is inf there, times 0). With c's term recorded first, a sweep cut at every
    parameter updates W and b before it meets c; uncut, the one update pass over W, b, c
    applies W's and b's updates before the NaN of c is seen. With c's term last, the cut
    sweep stops at c's update with the rules of W's term not run: their gradients stay
    in the arena."""
    r = np.random.default_rng(11)
    tape = tg.Tape(seed=4)  # (the same draws on both tapes)
    W = tape.param(r.normal(size=(3, 1)), name="W")
    b = tape.param(np.zeros(1), name="b")
    c = tape.param(np.array([0.5, -1.5]), name="c")
    x = tape.input("x", shape=(2, 3))
    y = tape.input("y", shape=(2, 1))
    z = tape.input("z", shape=(2, 2))
    term = tg.sqrt(tg.square(c) * z).sum() if c_first else None
    h = x @ W + b
    if dropout:
        h = tg.dropout(h, 0.3)
    fit_term = tg.mse_loss(h, y)
    if not c_first:
        term = tg.sqrt(tg.square(c) * z).sum()
    return tape, term + fit_term


@pytest.mark.parametrize("dropout,c_first", [(False, True), (True, True), (False, False)])
@pytest.mark.parametrize("cut", [False, True])
def test_a_failing_step_leaves_the_last_good_state(cut, dropout, c_first, count_fused,
                                                   monkeypatch):
    if cut:
        monkeypatch.setattr(FIT, "FUSE_MIN_ELEMS", 0)
    r = np.random.default_rng(12)
    X, Y = r.normal(size=(60, 3)), r.normal(size=(60, 1))
    Z = r.uniform(0.5, 1.5, size=(60, 2))
    Z[2 * 23 + 1, 1] = 0.0  # step 23 (batch 2, in order)
    out = {}
    for fuse in (True, False):
        tape, loss = nan_gradient_tape(dropout, c_first)
        opt = tg.optim.AdamW(tape.params, lr=0.01)
        tg.fit(loss, opt, {"x": X, "y": Y, "z": Z}, batch_size=2, steps=3, shuffle=False,
               progress=False, fuse_optimizer=fuse)  # 3 steps, then the failing call
        with pytest.raises(tg.NonFiniteError) as e:
            tg.fit(loss, opt, {"x": X[6:], "y": Y[6:], "z": Z[6:]}, batch_size=2, steps=30,
                   shuffle=False, progress=False, fuse_optimizer=fuse)
        out[fuse] = (str(e.value), e.value.history, [p.numpy() for p in tape.params],
                     opt.state.copy(), opt.t, tape._val.copy())
    assert count_fused["restored"] == 1  # the fused chunk that failed was rerun unfused
    msg, hist, params, state, t, val = out[True]
    assert "stopped at step 20" in msg and "parameters with NaN/Inf gradients: c" in msg, msg
    assert msg == out[False][0]
    np.testing.assert_array_equal(hist, out[False][1])
    for p, q in zip(params, out[False][2]):
        np.testing.assert_array_equal(p, q)
        assert np.isfinite(p).all()
    np.testing.assert_array_equal(state, out[False][3])
    assert t == out[False][4] == 3 + 20
    np.testing.assert_array_equal(val, out[False][5])  # the draws' counter included


def test_mpi_style_options_keep_the_unfused_path(count_fused):
    # fuse_optimizer=False is the path comm= takes (gradients summed over ranks first)
    run(np.float64, "adamw", False)
    assert count_fused["fused"] == 0
