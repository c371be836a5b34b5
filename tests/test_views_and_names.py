"""Issue #16 items 8-10: reserved input names, .value/.grad views that stay live through
replays and training, and .grad only where a gradient exists."""
import numpy as np
import pytest

import tapegrad as tg


@pytest.mark.parametrize("name", ["outputs", "check_finite"])
def test_inputs_cannot_take_forwards_option_names(name):
    tape = tg.Tape()
    with pytest.raises(tg.TapegradError, match="reserved"):
        tape.input(name, shape=(2,))
    assert tape.inputs == {}
    x = tape.input("x", shape=(2,))
    y = (x * 2.0).sum()
    tape.forward(x=np.ones(2), check_finite=True)  # options and feeds cannot collide
    assert y.item() == 4.0


def test_value_and_grad_views_stay_live_through_training():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((32, 3)), rng.standard_normal((32, 1))
    tape = tg.Tape()
    x, y = tape.input("x", shape=(8, 3)), tape.input("y", shape=(8, 1))
    W = tape.param(np.zeros((3, 1)), name="W")
    h = tg.tanh(x @ W)
    b = tape.param(np.zeros(1), name="b")  # a parameter after other ops: the layout moves
    loss = tg.mse_loss(h + b, y)
    tape.forward(x=X[:8], y=Y[:8])          # the first replay lays the arena out
    w_view, b_view = W.value, b.value
    loss.backward()
    g_view = W.grad
    before = w_view.copy()
    opt = tg.optim.SGD(tape.params, lr=0.1)
    opt.step()
    np.testing.assert_array_equal(w_view, W.value)  # the step wrote into the same memory
    assert not np.array_equal(w_view, before)
    tg.fit(loss, opt, {"x": X, "y": Y}, batch_size=8, steps=20)
    np.testing.assert_array_equal(w_view, W.value)
    np.testing.assert_array_equal(b_view, b.value)
    np.testing.assert_array_equal(g_view, W.grad)
    w_view[...] = 0.0                        # writing into the view changes the parameter
    tape.forward(x=X[:8], y=Y[:8])
    np.testing.assert_array_equal(h.value, 0.0)


def test_grad_exists_only_where_a_gradient_does():
    tape = tg.Tape()
    x = tape.input("x", value=np.array([1.0, 2.0]))          # no requires_grad
    xr = tape.input("xr", value=np.array([1.0, 2.0]), requires_grad=True)
    c = tape.const(np.array([3.0, 4.0]))
    W = tape.param(np.ones((2, 2)))
    hx = x * 2.0                                            # depends on no parameter
    out = (hx @ W).sum() + (c * W[0]).sum() + (xr @ W).sum() + (x * W[1]).sum()
    out.backward()
    for v in (x, c, hx):  # through matmul and through mul alike: refused, never zeros
        with pytest.raises(tg.TapegradError, match="no gradient"):
            v.grad
    np.testing.assert_allclose(xr.grad, W.value.sum(axis=1))
    np.testing.assert_allclose(W.grad, [[2 + 3 + 1, 2 + 4 + 1], [4 + 2 + 1, 4 + 2 + 2]])
    h2 = (xr * W[0])                                         # computed from xr: has a gradient
    s = h2.sum()
    s.backward()
    np.testing.assert_allclose(h2.grad, [1.0, 1.0])


def test_replaying_an_input_never_fed_is_a_feed_error():
    tape = tg.Tape()
    x = tape.input("x", shape=(3,))
    y = tape.input("y", shape=(3,))
    w = tape.param(np.ones(3))
    loss = ((w * x) ** 2).sum()
    other = (y * 2.0).sum()
    with pytest.raises(tg.FeedError, match="'x'.*never fed"):
        loss.backward()
    with pytest.raises(tg.FeedError, match="never fed"):
        tape.forward()
    tape.forward(outputs=[loss], x=np.ones(3))   # y is not needed for loss
    loss.backward()
    np.testing.assert_allclose(w.grad, 2.0)
    with pytest.raises(tg.FeedError, match="'y'"):
        tape.forward(outputs=[other])
    tape.forward(y=np.arange(3.0))
    assert other.item() == 6.0


@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_views_of_every_rank_are_live_and_writable(shape):
    # .value and .grad of 0-d, 1-d and n-d Vars are views of the arenas (made without a
    # reshape for the first two): a replay shows through them, and writing into one writes
    # the tape's value
    w0 = np.arange(1.0, 1.0 + np.prod(shape, dtype=int)).reshape(shape)
    tape = tg.Tape()
    w = tape.param(w0, name="w")
    y = w * w
    loss = y.sum()
    loss.backward()
    value, grad = y.value, w.grad
    assert value.shape == shape and grad.shape == shape
    np.testing.assert_array_equal(grad, 2 * w0)
    w.value[...] = 3.0                      # written through the view into the value arena
    tape.forward()
    loss.backward()
    np.testing.assert_array_equal(value, np.full(shape, 9.0))   # the old views show the replay
    np.testing.assert_array_equal(grad, np.full(shape, 6.0))
    assert loss.item() == 9.0 * w0.size
