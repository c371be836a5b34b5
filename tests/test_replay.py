"""The known pitfalls of record-then-replay, each as a named test, plus the arena layout."""
import numpy as np
import pytest

import tapegrad as tg


def small_model(dtype=np.float64):
    tape = tg.Tape(dtype)
    W = tape.param(np.array([[0.5, -1.0], [2.0, 0.25]]), name="W")
    b = tape.param(np.array([0.1, -0.2]), name="b")
    x = tape.input("x", shape=(3, 2))
    y = tape.input("y", shape=(3, 2))
    loss = tg.mse_loss(tg.tanh(x @ W + b), y)
    return tape, W, b, loss


def numpy_loss_and_grads(W, b, x, y):
    h = x @ W + b
    t = np.tanh(h)
    loss = np.mean((t - y) ** 2)
    dt = 2 * (t - y) / t.size
    dh = dt * (1 - t ** 2)
    return loss, x.T @ dh, dh.sum(0)


def test_new_inputs_are_used_on_replay():
    tape, W, b, loss = small_model()
    rng = np.random.default_rng(0)
    for _ in range(3):
        x, y = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
        tape.forward(x=x, y=y)
        loss.backward()
        ref, gW, gb = numpy_loss_and_grads(W.value, b.value, x, y)
        assert loss.item() == pytest.approx(ref, rel=1e-12)
        np.testing.assert_allclose(W.grad, gW, rtol=1e-10)
        np.testing.assert_allclose(b.grad, gb, rtol=1e-10)


def test_gradients_are_overwritten_not_accumulated():
    tape, W, b, loss = small_model()
    x, y = np.ones((3, 2)), np.zeros((3, 2))
    tape.forward(x=x, y=y)
    loss.backward()
    first = W.grad.copy()
    loss.backward()
    tape.forward(x=x, y=y)
    loss.backward()
    np.testing.assert_array_equal(W.grad, first)


def test_param_updates_in_place_are_seen_by_replay():
    tape, W, b, loss = small_model()
    x, y = np.ones((3, 2)), np.zeros((3, 2))
    W.value[...] = [[1.0, 2.0], [3.0, 4.0]]
    tape.forward(x=x, y=y)
    assert loss.item() == pytest.approx(numpy_loss_and_grads(W.value, b.value, x, y)[0])


def test_frozen_branch_is_detected():
    tape = tg.Tape()
    x = tape.input("x", value=np.array(1.0))
    if x > 0:  # records a guard: x > 0 was True
        y = x * 2
    else:
        y = -x
    tape.forward(x=np.array(3.0))
    assert y.item() == 6.0
    with pytest.raises(tg.BranchChanged, match="test_replay.py"):
        tape.forward(x=np.array(-1.0))
    tape.forward(x=np.array(2.0))  # the tape is still usable on the recorded branch
    assert y.item() == 4.0


def test_where_replays_both_branches():
    tape = tg.Tape()
    x = tape.input("x", value=np.array([1.0, -2.0]), requires_grad=True)
    y = tg.where(x > 0, x * 2, -x).sum()
    tape.forward(x=np.array([-3.0, 4.0]))
    assert y.item() == 3.0 + 8.0
    y.backward()
    np.testing.assert_array_equal(x.grad, [-1.0, 2.0])


def test_python_constants_are_frozen():
    """A Python number taken from a Var (item/float) is a constant on the tape."""
    tape = tg.Tape()
    a = tape.input("a", value=np.array(2.0))
    frozen = a.item()
    y = a * frozen
    tape.forward(a=np.array(5.0))
    assert y.item() == 10.0  # 5 * 2, not 5 * 5


def test_values_are_current_while_recording():
    tape = tg.Tape()
    a = tape.param(np.array([1.0, 4.0]))
    b = tg.sqrt(a) + 1
    np.testing.assert_array_equal(b.value, [2.0, 3.0])


def test_params_form_one_contiguous_prefix():
    tape = tg.Tape()
    x = tape.input("x", value=np.ones(3))
    p1 = tape.param(np.full(3, 2.0), name="p1")
    h = x * p1
    p2 = tape.param(np.full((2, 2), 3.0), name="p2")  # created after an op
    loss = (h.sum() * p2).sum()
    loss.backward()
    offsets = [tape._boff[p._b] for p in tape.params]
    assert offsets == [0, 3]
    assert tape._n_params == 7
    np.testing.assert_array_equal(tape._val[:7], [2, 2, 2, 3, 3, 3, 3])
    np.testing.assert_array_equal(tape._grad[:3], [4 * 3.0] * 3)  # d/dp1 = x * sum(p2)
    assert [p.name for p in tape.params] == ["p1", "p2"]
    assert p1.value.base is not None  # a view of the arena


def test_recording_after_replay_reseals():
    tape = tg.Tape()
    a = tape.param(np.array([1.0, 2.0]), name="a")
    y = (a * a).sum()
    y.backward()
    c = tape.param(np.array([3.0]), name="c")  # a parameter after sealing
    z = y * c
    z.backward()
    np.testing.assert_array_equal(a.grad, [6.0, 12.0])
    np.testing.assert_array_equal(c.grad, [5.0])
    assert tape._boff[c._b] == 2


def test_reshape_aliases_the_same_memory():
    tape = tg.Tape()
    a = tape.param(np.arange(6.0), name="a")
    r = a.reshape(2, 3)
    assert len(tape) == 0  # no instruction
    a.value[0] = 10.0
    assert r.value[0, 0] == 10.0


def test_forward_outputs_skips_unneeded_work():
    tape = tg.Tape()
    x = tape.input("x", value=np.array(1.0))
    a = x + 1
    b = x * 3
    tape.forward(outputs=[a], x=np.array(5.0))
    assert a.item() == 6.0
    assert b.item() == 3.0  # not recomputed
    tape.forward(x=np.array(5.0))
    assert b.item() == 15.0


def test_reverse_skips_instructions_without_a_gradient_path():
    tape = tg.Tape()
    w = tape.param(np.array(2.0))
    x = tape.input("x", value=np.array(3.0))
    c = tg.exp(x)  # depends on no parameter
    loss = w * c
    loss.backward()
    mask = tape._reverse_mask(loss._b)
    assert mask.tolist() == [0, 1 | 2]  # exp skipped; mul needs the gradient of w only
    assert w.grad == pytest.approx(np.exp(3.0))


def test_requires_grad_input_gets_a_gradient():
    tape = tg.Tape()
    x = tape.input("x", value=np.array([1.0, 2.0]), requires_grad=True)
    (x ** 3).sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 12.0])


def test_backward_with_grad_output():
    tape = tg.Tape()
    a = tape.param(np.array([1.0, 2.0]))
    y = a * 3
    y.backward(np.array([1.0, -1.0]))
    np.testing.assert_array_equal(a.grad, [3.0, -3.0])


def test_with_block_and_module_level_leaves():
    tape = tg.Tape()
    with tape:
        w = tg.param(np.ones(2), name="w")
        x = tg.input("x", shape=(2,))
        c = tg.const(np.array([1.0, 2.0]))
    y = (w * x + c).sum()
    tape.forward(x=np.array([3.0, 4.0]))
    assert y.item() == 10.0
    assert tape["w"] is not None and set(tape.inputs) == {"x"}


def test_numpy_on_the_left_defers_to_var():
    tape = tg.Tape()
    a = tape.param(np.array([1.0, 2.0]))
    y = np.array([10.0, 20.0]) - a
    assert isinstance(y, tg.Var)
    np.testing.assert_array_equal(y.value, [9.0, 18.0])
    z = 2 ** a
    np.testing.assert_array_equal(z.value, [2.0, 4.0])


def test_float32_tape_keeps_float32():
    tape, W, b, loss = small_model(np.float32)
    tape.forward(x=np.ones((3, 2)), y=np.zeros((3, 2)))
    loss.backward()
    assert W.value.dtype == np.float32 and W.grad.dtype == np.float32
    ref = numpy_loss_and_grads(W.value.astype(np.float64), b.value.astype(np.float64),
                               np.ones((3, 2)), np.zeros((3, 2)))
    assert loss.item() == pytest.approx(ref[0], rel=1e-5)
    np.testing.assert_allclose(W.grad, ref[1], rtol=1e-4)
