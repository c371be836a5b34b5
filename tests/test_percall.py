"""What a replay call may skip (issue 17, item 4) without changing a result.

``backward()`` zeroes only the gradient slots a reverse sweep of the tape reads or writes
(``Tape._zero_grads``: the buffers of every reverse mask of the layout, their seeds, the
parameters and the buffers whose ``.grad`` was handed out) instead of the whole arena, and
``forward()`` copies a feed through a cached view after checking its type, dtype and shape.
Each sequence below runs with the arena zeroed by ranges and whole (``zeroing``), and is
compared with NumPy: gradients are overwritten, never accumulated, whatever ran before.
"""
import numpy as np
import pytest

import tapegrad as tg
import tapegrad.tape as tape_mod


@pytest.fixture(params=["ranges", "swept-whole", "small-whole"])
def zeroing(request, monkeypatch):
    """ranges: zero_ranges always; swept-whole: the arena is large, its swept buffers fill
    it (one memset, decided once per layout); small-whole: the arena is small."""
    monkeypatch.setattr(tape_mod, "ZERO_ALL_BELOW",
                        10 ** 9 if request.param == "small-whole" else 0)
    monkeypatch.setattr(tape_mod, "ZERO_WHOLE_ABOVE", 2.0 if request.param == "ranges" else 0.0)
    return request.param


def _model(seed=0):
    """Two losses over one input: ``loss1`` reaches ``w`` through ``h``; ``loss2`` reaches
    ``v`` and ``w`` through ``k`` (``h`` has a gradient under loss2 too: zero)."""
    rng = np.random.default_rng(seed)
    tape = tg.Tape()
    w = tape.param(rng.normal(size=5), name="w")
    v = tape.param(rng.normal(size=5), name="v")
    x = tape.input("x", shape=(5,))
    h = tg.tanh(w * x)
    k = tg.sin(v * x)
    loss1 = (h * h).sum()
    loss2 = (k * w).sum()
    return tape, w, v, x, h, k, loss1, loss2


def _expected(which, w, v, x):
    """NumPy gradients of loss1 / loss2 with respect to w, v, h, k."""
    h, k = np.tanh(w * x), np.sin(v * x)
    if which == 1:
        return {"w": 2 * h * (1 - h * h) * x, "v": np.zeros(5), "h": 2 * h, "k": np.zeros(5)}
    return {"w": k, "v": w * np.cos(v * x) * x, "h": np.zeros(5), "k": w.copy()}


def _check(grads, want):
    for name, g in grads.items():
        np.testing.assert_allclose(g, want[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_alternating_seeds_and_feeds_give_fresh_gradients(zeroing):
    tape, w, v, x, h, k, loss1, loss2 = _model()
    rng = np.random.default_rng(1)
    for step in range(6):
        xv = rng.normal(size=5)
        tape.forward(x=xv)
        which = 1 + step % 2
        (loss1 if which == 1 else loss2).backward()
        want = _expected(which, w.value, v.value, xv)
        _check({"w": w.grad, "v": v.grad, "h": h.grad, "k": k.grad}, want)
        (loss1 if which == 1 else loss2).backward()  # again: overwritten, not accumulated
        _check({"w": w.grad, "v": v.grad, "h": h.grad, "k": k.grad}, want)


def test_a_written_grad_view_is_zeroed_by_the_next_backward(zeroing):
    tape, w, v, x, h, k, loss1, loss2 = _model()
    xv = np.linspace(-1, 1, 5)
    tape.forward(x=xv)
    loss1.backward()
    k.grad[...] = 7.0   # k has a gradient (it depends on v) but loss1 does not reach it
    v.grad[...] = 3.0
    kept = h.grad       # a view kept across calls, written after the next backward
    loss1.backward()
    _check({"w": w.grad, "v": v.grad, "h": h.grad, "k": k.grad},
           _expected(1, w.value, v.value, xv))
    kept[...] = 5.0
    loss2.backward()
    _check({"w": w.grad, "v": v.grad, "h": h.grad, "k": k.grad},
           _expected(2, w.value, v.value, xv))


def test_grad_output_seeds_with_partial_zeroing(zeroing):
    tape, w, v, x, h, k, loss1, loss2 = _model()
    xv = np.linspace(-1, 1, 5)
    tape.forward(x=xv)
    loss2.backward()
    g = np.arange(5.0)
    h.backward(grad_output=g)   # d(sum(g * tanh(w x)))/dw
    hv = np.tanh(w.value * xv)
    np.testing.assert_allclose(w.grad, g * (1 - hv * hv) * xv, rtol=1e-12)
    np.testing.assert_allclose(v.grad, 0.0)
    np.testing.assert_allclose(k.grad, 0.0)


def test_backward_after_fit_with_another_seed(zeroing):
    tape, w, v, x, h, k, loss1, loss2 = _model()
    X = np.random.default_rng(2).normal(size=(8, 5))
    tape.forward(x=X[0])
    tg.fit(loss1, tg.optim.SGD(tape.params, lr=0.01), None, steps=5)
    tape.forward(x=X[3])
    loss2.backward()   # fit's sweeps wrote gradients where loss2's sweep does not look
    _check({"w": w.grad, "v": v.grad, "h": h.grad, "k": k.grad},
           _expected(2, w.value, v.value, X[3]))


def test_resealed_tape_of_the_same_arena_size(zeroing):
    tape, w, v, x, h, k, loss1, loss2 = _model()
    xv = np.linspace(-1, 1, 5)
    tape.forward(x=xv)
    loss2.backward()
    arena = tape._grad
    assert bool(loss1)   # records a guard (no new buffer): a new seal over the same arena
    tape.forward(x=xv)
    loss1.backward()
    assert tape._grad is arena
    _check({"w": w.grad, "v": v.grad, "h": h.grad, "k": k.grad},
           _expected(1, w.value, v.value, xv))


def test_replica_gradients_and_feeds_stay_apart(zeroing):
    tape, w, v, x, h, k, loss1, loss2 = _model()
    a, b = np.linspace(-1, 1, 5), np.linspace(2, 0, 5)
    tape.forward(x=a)
    loss1.backward()
    rep = tape.replica()
    rep.forward(x=b)
    rep[loss2].backward()
    np.testing.assert_array_equal(x.value, a)          # the replica's feed went to its arena
    np.testing.assert_array_equal(rep[x].value, b)
    _check({"w": w.grad, "v": v.grad, "h": h.grad, "k": k.grad},
           _expected(1, w.value, v.value, a))
    _check({"w": rep[w].grad, "v": rep[v].grad, "h": rep[h].grad, "k": rep[k].grad},
           _expected(2, w.value, v.value, b))
    loss1.backward()
    rep2 = tape.replica()   # made right after a backward: it starts with the tape's zeroing
    for xv in (b, a):
        rep2.forward(x=xv)
        rep2[loss1].backward()
    _check({"w": rep2[w].grad, "v": rep2[v].grad, "h": rep2[h].grad, "k": rep2[k].grad},
           _expected(1, w.value, v.value, a))


# ---------------------------------------------------------------------------- feeds
def test_feeds_of_other_types_and_dtypes_are_converted():
    tape, w, v, x, h, k, loss1, loss2 = _model()
    for value in ([1, 2, 3, 4, 5], np.arange(5), np.arange(5, dtype=np.float32),
                  np.ones(5, bool), np.arange(10.0)[::2]):
        tape.forward(x=value)
        np.testing.assert_array_equal(x.value, np.asarray(value, np.float64))
        assert loss1.item() == pytest.approx(np.sum(np.tanh(w.value * x.value) ** 2))


def test_bad_feeds_are_refused_and_change_nothing():
    tape = tg.Tape()
    x = tape.input("x", shape=(2,))
    y = tape.input("y", shape=(2, 1))
    s = (x * x).sum() + y.sum()
    tape.forward(x=np.array([1.0, 2.0]), y=np.ones((2, 1)))
    for bad, match in ((np.ones((2, 2)), r"expected shape \(2, 1\), got \(2, 2\)"),
                       (np.ones(2), r"expected shape \(2, 1\), got \(2,\)"),
                       (np.ones((2, 1), complex), "expected numbers, got dtype complex128"),
                       (np.array([["a"], ["b"]]), "expected numbers"),
                       ("ab", "expected numbers")):
        with pytest.raises(tg.FeedError, match=match):
            tape.forward(x=np.array([5.0, 6.0]), y=bad)
        np.testing.assert_array_equal(x.value, [1.0, 2.0])  # x was not copied either
    with pytest.raises(tg.FeedError, match="unknown input 'z'"):
        tape.forward(z=np.ones(2))
    assert s.item() == 7.0


def test_feeding_after_the_arena_moved():
    tape = tg.Tape()
    x = tape.input("x", shape=(3,))
    y = (x * 2.0).sum()
    tape.forward(x=np.ones(3))
    assert y.item() == 6.0
    big = tape.const(np.zeros(10000))   # grows the arena: the old views are stale
    z = y + big.sum()
    tape.forward(x=np.arange(3.0))
    assert z.item() == 6.0 and y.item() == 6.0
    np.testing.assert_array_equal(x.value, [0.0, 1.0, 2.0])


def test_unfed_input_is_refused_until_fed():
    tape = tg.Tape()
    w = tape.param(np.ones(2))
    x = tape.input("x", shape=(2,))
    loss = (w * x).sum()
    with pytest.raises(tg.FeedError, match="'x' was never fed"):
        tape.forward()
    with pytest.raises(tg.FeedError, match="'x' was never fed"):
        loss.backward()
    tape.forward(x=np.array([3.0, 4.0]))
    loss.backward()
    np.testing.assert_array_equal(w.grad, [3.0, 4.0])


def test_label_feeds_are_still_checked_by_value():
    tape = tg.Tape()
    logits = tape.param(np.zeros((2, 3)))
    lab = tape.input("lab", shape=(2,))
    loss = tg.cross_entropy(logits, lab)
    tape.forward(lab=np.array([2, 1]))
    with pytest.raises(tg.FeedError, match=r"labels must be integers in \[0, 3\)"):
        tape.forward(lab=np.array([0.0, 7.0]))
    np.testing.assert_array_equal(lab.value, [2, 1])
    assert loss.item() == pytest.approx(np.log(3.0))
