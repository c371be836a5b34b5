"""Interrupts and failures mid-run (issue #14 item 3): afterwards the tape, the parameters and
the optimizer state are consistent -- a step is applied whole or not at all, ``opt.t`` counts
the steps applied -- and the next call works.

References are NumPy formulas or the same training run without the interruption.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import tapegrad as tg

ROOT = pathlib.Path(__file__).resolve().parents[1]

CTRL_C_SCRIPT = """
    import json, signal, sys
    import numpy as np, tapegrad as tg
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(256, 4))}
    data["y"] = np.sin(data["x"].sum(1, keepdims=True))

    def model():
        tape = tg.Tape()
        mlp = tg.nn.MLP(tape, [4, 16, 1], activation=tg.tanh, rng=0)
        loss = tg.mse_loss(mlp(tape.input("x", shape=(8, 4))), tape.input("y", shape=(8, 1)))
        opt = tg.optim.AdamW(tape.params, lr=1e-3)
        tg.fit(loss, opt, data, 8, steps=3, progress=False)   # compiled or loaded here
        return tape, loss, opt

    tape, loss, opt = model()
    print("ready", flush=True)
    hist = tg.fit(loss, opt, data, 8, steps=2_000_000, seed=1, progress=False)
    interrupted = len(hist)
    # the same steps without an interruption
    ref_tape, ref_loss, ref_opt = model()
    ref = tg.fit(ref_loss, ref_opt, data, 8, steps=interrupted, seed=1, progress=False)
    same = (np.array_equal(hist, ref) and opt.t == ref_opt.t == 3 + interrupted
            and np.array_equal(opt.state, ref_opt.state)
            and all(np.array_equal(p.value, q.value)
                    for p, q in zip(tape.params, ref_tape.params)))
    more = tg.fit(loss, opt, data, 8, steps=5, progress=False)   # the next call works
    print(json.dumps({"steps": interrupted, "same": bool(same), "t": opt.t,
                      "more": len(more), "finite": bool(np.isfinite(more).all())}))
"""


def test_ctrl_c_during_fit_keeps_steps_and_optimizer_consistent(tmp_path):
    script = tmp_path / "ctrl_c.py"
    script.write_text(textwrap.dedent(CTRL_C_SCRIPT))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    p = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        time.sleep(1.0)   # well inside the 2,000,000 steps
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=300)
    finally:
        p.kill()
    assert p.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert 0 < got["steps"] < 2_000_000, got
    assert got["same"], f"interrupted run differs from {got['steps']} steps run whole"
    assert got["t"] == 3 + got["steps"] + 5 and got["more"] == 5 and got["finite"], got


# ---------------------------------------------------------------------------- tg.grad
def test_exception_while_recording_under_grad_leaves_it_usable():
    calls = []

    def f(x):
        calls.append(x.shape)
        if x.shape == (3,):
            raise ValueError("user bug")
        y = (x * x).sum()
        if y > 10.0:             # a guard: replays with a larger x re-record
            raise OverflowError("too big")
        return y

    df = tg.grad(f)
    np.testing.assert_array_equal(df(np.ones(2)), 2 * np.ones(2))
    with pytest.raises(ValueError, match="user bug"):
        df(np.ones(3))
    with pytest.raises(ValueError, match="user bug"):
        df(np.ones(3))           # not cached: f runs again
    assert calls == [(2,), (3,), (3,)]
    with pytest.raises(OverflowError):
        df(np.full(2, 3.0))      # guard flips, the re-recording raises
    x = np.array([0.5, -1.5])
    np.testing.assert_array_equal(df(x), 2 * x)   # the first recording still serves
    assert calls == [(2,), (3,), (3,), (2,)]
    with pytest.raises(tg.TapegradError, match="needs a tape"):
        tg.param(np.zeros(1))


def test_exception_in_a_nested_grad_leaves_the_outer_tape_usable():
    tape = tg.Tape()
    w0 = np.array([0.3, -0.7])
    w = tape.param(w0, name="w")
    loss = (tg.sin(w) * w).sum()

    def f(v):
        (v ** 3).sum()            # recorded onto the outer tape before the failure
        raise ValueError("half-way")

    with pytest.raises(ValueError, match="half-way"):
        tg.grad(f)(w)
    tape.forward()
    loss.backward()
    np.testing.assert_allclose(w.grad, np.cos(w0) * w0 + np.sin(w0), rtol=1e-14)
    g = tg.grad(lambda v: (v ** 3).sum())(w)   # the next nested call works
    tape.forward()
    np.testing.assert_allclose(g.value, 3 * w0 ** 2, rtol=1e-14)


def test_exception_inside_with_tape_leaves_the_tape_usable():
    tape = tg.Tape()
    with pytest.raises(RuntimeError):
        with tape:
            w = tg.param(np.array([1.0, -2.0]), name="w")
            x = tg.input("x", shape=(2,))
            loss = (w * x * x).sum()
            raise RuntimeError("user code failed half-way through recording")
    with pytest.raises(tg.TapegradError, match="needs a tape"):
        tg.param(np.zeros(1))    # the with-stack was unwound
    xv = np.array([3.0, 0.5])
    tape.forward(x=xv)
    loss.backward()
    np.testing.assert_array_equal(w.grad, xv * xv)


# ---------------------------------------------------------------------------- feeds
def model(guard=False):
    tape = tg.Tape()
    w = tape.param(np.array([0.5, -1.0, 2.0]), name="w")
    x = tape.input("x", shape=(3,))
    h = tg.tanh(w * x)
    if guard and h.sum() > -2:     # records a guard: flips when every w*x is very negative
        pass
    loss = (h * h).sum()
    return tape, w, x, loss


def grad_ref(w, x):
    t = np.tanh(w * x)
    return 2 * t * (1 - t * t) * x


def test_rejected_feed_between_forward_and_backward_changes_nothing():
    tape, w, x, loss = model()
    opt = tg.optim.SGD([w], lr=0.1)
    good = np.array([1.0, 2.0, -1.0])
    tape.forward(x=good)
    for bad in ({"x": np.ones(4)}, {"x": np.array(["a", "b", "c"])}, {"z": good}):
        with pytest.raises(tg.FeedError):
            tape.forward(**bad)
    loss.backward()
    np.testing.assert_allclose(w.grad, grad_ref(w.value, good), rtol=1e-13)
    w0 = w.numpy()
    opt.step()
    assert opt.t == 1
    np.testing.assert_allclose(w.value, w0 - 0.1 * grad_ref(w0, good), rtol=1e-13)


@pytest.mark.parametrize("how", ["non-finite", "guard"])
def test_forward_failing_half_way_blocks_backward_until_a_forward_succeeds(how):
    tape, w, x, loss = model(guard=True)
    opt = tg.optim.SGD([w], lr=0.1)
    good = np.array([1.0, 2.0, -1.0])
    tape.forward(x=good)
    loss.backward()
    g_good = w.grad.copy()
    if how == "non-finite":
        with pytest.raises(tg.NonFiniteError):
            tape.forward(x=np.array([1.0, np.nan, 0.0]), check_finite=True)
    else:
        with pytest.raises(tg.BranchChanged):
            tape.forward(x=np.array([-20.0, 20.0, -20.0]))
    with pytest.raises(tg.TapegradError, match="values are half-updated"):
        loss.backward()
    np.testing.assert_array_equal(w.grad, g_good)   # untouched by the refused backward
    tape.forward(x=good)
    loss.backward()
    np.testing.assert_allclose(w.grad, grad_ref(w.value, good), rtol=1e-13)
    opt.step()
    assert opt.t == 1


def cross_entropy_model():
    tape = tg.Tape()
    W = tape.param(np.array([[0.5, -1.0, 0.2], [0.1, 0.3, -0.4]]), name="W")
    x = tape.input("x", shape=(2, 2))
    labels = tape.input("labels", value=np.array([0, 2]))
    loss = tg.cross_entropy(x @ W, labels)
    return tape, W, x, labels, loss


def test_backward_failing_half_way_blocks_the_optimizer_step():
    tape, W, x, labels, loss = cross_entropy_model()
    opt = tg.optim.Adam([W], lr=0.1)
    xv = np.array([[1.0, 2.0], [-1.0, 0.5]])
    tape.forward(x=xv, labels=np.array([0, 2]))
    labels.value[...] = [0, 7]     # written behind the feed check: the reverse sweep finds it
    with pytest.raises(tg.FeedError, match="label"):
        loss.backward()
    W0, state0 = W.numpy(), opt.state.copy()
    with pytest.raises(tg.TapegradError, match="grads are half-updated"):
        opt.step()
    assert opt.t == 0
    np.testing.assert_array_equal(W.value, W0)
    np.testing.assert_array_equal(opt.state, state0)
    tape.forward(x=xv, labels=np.array([0, 2]))
    loss.backward()
    logits = xv @ W0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[[0, 1], [0, 2]] -= 1
    np.testing.assert_allclose(W.grad, xv.T @ p / 2, rtol=1e-12)
    opt.step()
    assert opt.t == 1


# ---------------------------------------------------------------------------- tg.fit
def fit_model():
    tape = tg.Tape()
    w = tape.param(np.array([0.3, -0.2]), name="w")
    x = tape.input("x", shape=(4, 2))
    y = tape.input("y", shape=(4,))
    pred = (x * w).sum(axis=1)
    if x.max() < 100:       # a guard: a batch with a huge input flips it
        pass
    loss = ((pred - y) ** 2).mean()
    return tape, w, loss, tg.optim.Adam([w], lr=0.05)


def test_fit_rejecting_its_data_changes_nothing():
    tape, w, loss, opt = fit_model()
    X, Y = np.ones((8, 2)), np.zeros(8)
    tg.fit(loss, opt, {"x": X, "y": Y}, 4, steps=3, progress=False)
    w0, state0 = w.numpy(), opt.state.copy()
    for bad in ({"x": X, "y": np.zeros(9)}, {"x": X[:, :1], "y": Y}, {"x": X, "q": Y}):
        with pytest.raises(tg.FeedError):
            tg.fit(loss, opt, bad, 4, steps=3, progress=False)
    assert opt.t == 3
    np.testing.assert_array_equal(w.value, w0)
    np.testing.assert_array_equal(opt.state, state0)
    assert len(tg.fit(loss, opt, {"x": X, "y": Y}, 4, steps=2, progress=False)) == 2
    assert opt.t == 5


def test_fit_failing_mid_run_keeps_the_steps_before_it():
    tape, w, loss, opt = fit_model()
    X = np.ones((16, 2))
    X[12:] = 1e3                  # the 4th batch (in order) flips the guard
    Y = np.zeros(16)
    with pytest.raises(tg.BranchChanged):
        tg.fit(loss, opt, {"x": X, "y": Y}, 4, steps=10, shuffle=False, progress=False)
    assert opt.t == 3             # three whole steps, counted
    ref_tape, ref_w, ref_loss, ref_opt = fit_model()
    tg.fit(ref_loss, ref_opt, {"x": X[:12], "y": Y[:12]}, 4, steps=3, shuffle=False,
           progress=False)
    np.testing.assert_array_equal(w.value, ref_w.value)
    np.testing.assert_array_equal(opt.state, ref_opt.state)
    with pytest.raises(tg.TapegradError, match="half-updated"):
        loss.backward()           # the failed step's forward stopped at the guard
    with pytest.raises(tg.TapegradError, match="half-updated"):
        opt.step()
    hist = tg.fit(loss, opt, {"x": X[:12], "y": Y[:12]}, 4, steps=2, progress=False)
    assert len(hist) == 2 and opt.t == 5
    loss.backward()               # a whole fit step replays both sweeps: usable again
