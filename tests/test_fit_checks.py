"""tg.fit refuses to train on quietly: a NaN/Inf loss or gradient stops it at that step with the
state of the last good step; data that lacks an input the loss needs, and non-integer step or
batch counts, are errors; data=None trains on the inputs the tape holds (full batch)."""
import pathlib

import numpy as np
import pytest

import tapegrad as tg

SOURCE = pathlib.Path(__file__).read_text().splitlines()


def line_of(snippet):
    """``test_fit_checks.py:N`` of the first line of this file that holds ``snippet``."""
    n = next(i for i, text in enumerate(SOURCE, 1) if snippet in text)
    return f"test_fit_checks.py:{n}"


def regression(batch, n_in=2):
    tape = tg.Tape()
    mlp = tg.nn.MLP(tape, [n_in, 8, 1], activation=tg.tanh, rng=0)
    x = tape.input("x", shape=(batch, n_in))
    y = tape.input("y", shape=(batch, 1))
    return tape, tg.mse_loss(mlp(x), y)


def state(tape, opt):
    return [p.numpy() for p in tape.params], opt.state.copy(), opt.t


def assert_same_state(a, b):
    for p, q in zip(a[0], b[0]):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]


def data(n=12):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, 2))
    return X, np.sin(X[:, :1]) - X[:, 1:]


# ------------------------------------------------------------------ NaN / Inf
def test_nan_row_stops_at_its_step_naming_input_row_and_op():
    X, Y = data()
    X[7, 1] = np.nan                 # batch 2, in order: step 3 holds rows 6 and 7
    tape, loss = regression(2)
    opt = tg.optim.AdamW(tape.params, lr=0.05)
    with pytest.raises(tg.NonFiniteError) as e:
        tg.fit(loss, opt, {"x": X, "y": Y}, batch_size=2, steps=6, shuffle=False)
    msg = str(e.value)
    assert "stopped at step 3" in msg and "the loss is nan" in msg, msg
    assert "input 'x' holds nan at index (1, 1) (data['x'] row 7)" in msg, msg
    assert "first op to produce NaN/Inf: matmul" in msg, msg
    assert line_of("tg.mse_loss(mlp(x), y)") in msg, msg
    # parameters and optimizer state are those after the 3 good steps
    ref_tape, ref_loss = regression(2)
    ref_opt = tg.optim.AdamW(ref_tape.params, lr=0.05)
    hist = tg.fit(ref_loss, ref_opt, {"x": X[:6], "y": Y[:6]}, steps=3, shuffle=False)
    assert_same_state(state(tape, opt), state(ref_tape, ref_opt))
    np.testing.assert_array_equal(e.value.history, hist)
    assert all(np.isfinite(p.value).all() for p in tape.params)


def test_an_op_that_overflows_is_named_with_its_line():
    tape = tg.Tape()
    w = tape.param(np.array([0.5]), name="w")
    x = tape.input("x", shape=(1,))
    loss = tg.sum(tg.log(x) * w)     # log(0) = -inf at step 1
    opt = tg.optim.SGD(tape.params, lr=0.1)
    with pytest.raises(tg.NonFiniteError) as e:
        tg.fit(loss, opt, {"x": np.array([2.0, 0.0])}, steps=2, shuffle=False)
    msg = str(e.value)
    assert "stopped at step 1 " in msg and "the loss is -inf; first op to produce NaN/Inf: log" \
        in msg and line_of("tg.log(x) * w") in msg, msg
    np.testing.assert_array_equal(w.value, 0.5 - 0.1 * np.log(2.0))


def test_finite_loss_with_nan_gradient_stops_before_the_update():
    # sqrt(w^2 * x) at x = 0: value 0, but sqrt's derivative there is inf (and inf * 0 = nan)
    tape = tg.Tape()
    w = tape.param(np.array([1.0, -2.0]), name="w")
    x = tape.input("x", shape=(1, 2))
    loss = tg.sum(tg.sqrt(tg.square(w) * x))
    opt = tg.optim.SGD(tape.params, lr=0.01, momentum=0.9)
    X = np.array([[1.0, 2.0], [3.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    with pytest.raises(tg.NonFiniteError) as e:
        tg.fit(loss, opt, {"x": X}, batch_size=1, steps=4, shuffle=False)
    msg = str(e.value)
    assert "stopped at step 2" in msg and "the gradient is NaN/Inf (loss " in msg, msg
    assert "the reverse sweep of sqrt" in msg and line_of("tg.sqrt(tg.square(w) * x)") in msg, msg
    assert "parameters with NaN/Inf gradients: w" in msg, msg
    # what two steps of SGD with momentum give (torch's rule), from the analytic gradient
    p, buf = np.array([1.0, -2.0]), None
    for xs in X[:2]:
        g = np.sign(p) * np.sqrt(xs)            # d/dw sqrt(w^2 x) = sign(w) sqrt(x)
        buf = g if buf is None else 0.9 * buf + g
        p = p - 0.01 * buf
    np.testing.assert_allclose(w.value, p, rtol=1e-14)
    np.testing.assert_allclose(opt.state[0], buf, rtol=1e-14)
    assert opt.t == 2


def test_nan_at_the_first_step_applies_nothing():
    X, Y = data()
    X[0, 0] = np.inf
    tape, loss = regression(2)
    opt = tg.optim.Adam(tape.params)
    before = state(tape, opt)
    with pytest.raises(tg.NonFiniteError, match="stopped at step 0 .*no step was applied"):
        tg.fit(loss, opt, {"x": X, "y": Y}, steps=3, shuffle=False)
    assert_same_state(state(tape, opt), before)


# ------------------------------------------------------------------ data and counts
def test_data_lacking_a_needed_input_is_a_feed_error():
    X, Y = data()
    tape, loss = regression(2)
    opt = tg.optim.SGD(tape.params, lr=0.1)
    with pytest.raises(tg.FeedError, match="the loss needs input 'y', which is not in data and "
                       "was never fed nor given a value"):
        tg.fit(loss, opt, {"x": X}, steps=3)
    with pytest.raises(tg.FeedError, match="unknown input 'z'"):
        tg.fit(loss, opt, {"x": X, "y": Y, "z": Y}, steps=3)
    assert opt.t == 0
    # once fed (or given a value), an input missing from data keeps the value it holds
    tape.forward(x=X[:2], y=Y[:2])
    hist = tg.fit(loss, tg.optim.SGD(tape.params, lr=0.0), {"x": X[:2]}, steps=2)
    np.testing.assert_allclose(hist, loss.item(), rtol=1e-15)


def test_an_input_the_loss_does_not_need_may_stay_unfed():
    tape, loss = regression(2)
    tape.input("unused", shape=(3,))
    X, Y = data()
    hist = tg.fit(loss, tg.optim.SGD(tape.params, lr=0.1), {"x": X, "y": Y}, steps=5)
    assert hist.shape == (5,) and np.isfinite(hist).all()


@pytest.mark.parametrize("kw", [dict(steps=2.7), dict(steps=3.0), dict(steps="3"),
                                dict(steps=True), dict(steps=-1), dict(steps=None),
                                dict(steps=3, batch_size=2.0), dict(steps=3, batch_size=0)])
def test_non_integer_counts_are_errors(kw):
    X, Y = data()
    tape, loss = regression(2)
    opt = tg.optim.SGD(tape.params, lr=0.1)
    with pytest.raises(tg.TapegradError, match="steps|batch_size"):
        tg.fit(loss, opt, {"x": X, "y": Y}, **kw)
    assert opt.t == 0


def test_numpy_integers_are_counts():
    X, Y = data()
    tape, loss = regression(2)
    hist = tg.fit(loss, tg.optim.SGD(tape.params, lr=0.1), {"x": X, "y": Y},
                  batch_size=np.int32(2), steps=np.int64(4))
    assert hist.shape == (4,)


# ------------------------------------------------------------------ full batch
def test_full_batch_equals_the_python_loop():
    X, Y = data(20)
    t1, l1 = regression(20)
    t2, l2 = regression(20)
    o1, o2 = tg.optim.AdamW(t1.params, lr=0.02), tg.optim.AdamW(t2.params, lr=0.02)
    t1.forward(x=X, y=Y)
    hist = tg.fit(l1, o1, steps=30)              # data=None: the inputs the tape holds
    ref = []
    for _ in range(30):
        t2.forward(x=X, y=Y)
        ref.append(l2.item())
        l2.backward()
        o2.step()
    np.testing.assert_array_equal(hist, ref)
    for a, b in zip(t1.params, t2.params):
        np.testing.assert_array_equal(a.value, b.value)
    assert hist[-1] < hist[0]


def test_full_batch_refuses_unfed_inputs_and_a_batch_size():
    tape, loss = regression(4)
    opt = tg.optim.SGD(tape.params, lr=0.1)
    with pytest.raises(tg.FeedError, match=r"fit\(data=None\): the loss needs input 'x', which "
                       "was never fed nor given a value"):
        tg.fit(loss, opt, steps=3)
    tape.forward(x=np.ones((4, 2)), y=np.ones((4, 1)))
    with pytest.raises(tg.TapegradError, match="batch_size needs data"):
        tg.fit(loss, opt, batch_size=4, steps=3)
    assert tg.fit(loss, opt, steps=3).shape == (3,)
