"""tape.optimize()'s scalar copies in place (tapegrad/optimize.py, ``_alias_copies``): a scalar
stacked into a vector, or sliced out of one, is moved into the vector's element and the copy
is skipped in both sweeps -- with every value and gradient as before (bit for bit in
float64), through save/load, forward mode, recorded gradients, tg.fit and more recording."""
import numpy as np
import pytest

import tapegrad as tg
import tapegrad.optimize as optimize_mod
from tapegrad.lower import CODE, RUN_AHEAD, RUN_BACK, SKIP
from tapegrad.tangent import tangents


def _softmax_np(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def _graph(dtype, n_groups=6, seed=0):
    """Scalar leaves -> groups of (softplus, 4-sum, product, softmax of the last four), as the
    scalar-graph benchmark builds them; returns (tape, leaves, loss)."""
    rng = np.random.default_rng(seed)
    tape = tg.Tape(dtype)
    leaves = [tape.param(np.array(v, dtype)) for v in rng.normal(size=12)]
    nodes = list(leaves)
    for _ in range(n_groups):
        nodes.append(tg.log(1.0 + tg.exp(nodes[-10])))
        nodes.append(nodes[-12] + nodes[-11] + nodes[-9] + nodes[-7])
        nodes.append(nodes[-8] * nodes[-5])
        s = tg.softmax(tg.stack(nodes[-4:]))
        nodes.extend([s[0], s[1], s[2], s[3]])
    w = tape.const(rng.normal(size=8))
    loss = (tg.stack(nodes[-8:]) * w).sum()
    del nodes, s
    return tape, leaves, loss


def _run(tape, leaves, loss, values):
    for p, v in zip(leaves, values):
        p.value[...] = v
    tape.forward()
    loss.backward()
    return float(loss.item()), np.array([float(p.grad) for p in leaves])


def _built(dtype, alias, monkeypatch):
    if not alias:
        monkeypatch.setattr(optimize_mod, "_alias_copies", lambda tape, live: 0)
    tape, leaves, loss = _graph(dtype)
    info = tape.optimize()
    monkeypatch.undo()
    return tape, leaves, loss, info


def _pair(dtype, monkeypatch):
    """The graph optimized with its copies moved in place, and without (same layout)."""
    *aliased, info = _built(dtype, True, monkeypatch)
    *plain, plain_info = _built(dtype, False, monkeypatch)
    assert info["aliased"] > 0 and plain_info["aliased"] == 0
    return aliased, plain, info


def test_copies_are_skipped_and_every_number_is_the_same_bit_for_bit(monkeypatch):
    (ta, la, lossa), (tb, lb, lossb), info = _pair(np.float64, monkeypatch)
    tc, lc, lossc = _graph(np.float64)
    assert int((ta._low[:, CODE] == SKIP).sum()) == info["aliased"]
    assert not np.any(tb._low[:, CODE] == SKIP)
    rng = np.random.default_rng(1)
    for _ in range(3):
        v = rng.normal(size=12) * 2
        ya, ga = _run(ta, la, lossa, v)
        yb, gb = _run(tb, lb, lossb, v)
        yc, gc = _run(tc, lc, lossc, v)
        assert ya == yb and np.array_equal(ga, gb)          # the same arithmetic, in place
        np.testing.assert_allclose(ga, gc, rtol=1e-12, atol=1e-15)   # vs the tape as recorded


def test_skip_rows_hold_their_runs_and_a_partial_replay_steps_over_them(monkeypatch):
    """Each SKIP row holds how many SKIP rows follow from it (itself included) and precede
    it: the sweeps step over a run at once. A replay of part of the tape (outputs=) and a
    corrupted zero run (the sweeps step at least one row: no endless loop) stay right."""
    (ta, la, lossa), (tb, lb, lossb), info = _pair(np.float64, monkeypatch)
    skip = ta._low[:, CODE] == SKIP
    ahead, back, run = np.zeros(len(skip), np.int64), np.zeros(len(skip), np.int64), 0
    for k in range(len(skip) - 1, -1, -1):
        run = run + 1 if skip[k] else 0
        ahead[k] = run
    for k in range(len(skip)):
        run = run + 1 if skip[k] else 0
        back[k] = run
    assert ahead.max() >= 4 and back.max() >= 4  # the stacked / sliced fours
    np.testing.assert_array_equal(ta._low[skip, RUN_AHEAD], ahead[skip])
    np.testing.assert_array_equal(ta._low[skip, RUN_BACK], back[skip])
    v = np.random.default_rng(2).normal(size=12)
    want = _run(tb, lb, lossb, v)
    assert _run(ta, la, lossa, v)[0] == want[0]
    for p, x in zip(la, v + 1):
        p.value[...] = x
    ta.forward(outputs=[lossa])
    assert lossa.item() == _run(tb, lb, lossb, v + 1)[0]
    ta._low[skip, RUN_AHEAD] = 0
    ta._low[skip, RUN_BACK] = 0
    y, g = _run(ta, la, lossa, v)
    assert y == want[0] and np.array_equal(g, want[1])


def test_gradient_matches_central_differences():
    tape, leaves, loss = _graph(np.float64, n_groups=3)
    assert tape.optimize()["aliased"] > 0
    v0 = np.random.default_rng(2).normal(size=12)
    _, g = _run(tape, leaves, loss, v0)
    h, fd = 1e-6, np.empty(12)
    for i in range(12):
        vp, vm = v0.copy(), v0.copy()
        vp[i] += h
        vm[i] -= h
        fd[i] = (_run(tape, leaves, loss, vp)[0] - _run(tape, leaves, loss, vm)[0]) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


def test_float32_within_rounding_of_the_unaliased_tape(monkeypatch):
    (ta, la, lossa), (tb, lb, lossb), _ = _pair(np.float32, monkeypatch)
    v = np.random.default_rng(3).normal(size=12)
    ya, ga = _run(ta, la, lossa, v)
    yb, gb = _run(tb, lb, lossb, v)
    np.testing.assert_allclose(ya, yb, rtol=1e-6)
    np.testing.assert_allclose(ga, gb, rtol=1e-5, atol=1e-7)


def test_held_vars_keep_their_own_values():
    tape = tg.Tape()
    a, b, c = (tape.param(np.array(v)) for v in (0.3, -1.2, 2.0))
    d = a * b                                   # held: stays its own buffer
    stacked = tg.stack([a * c, d, b + c])       # held vector: its PLACE inputs may move in
    s = tg.softmax(stacked)
    s1 = s[1]                                   # held element
    loss = s1 * 2.0 + s[0] * 3.0
    tape.optimize()
    a.value[...] = 0.7
    tape.forward()
    loss.backward()
    ref = _softmax_np(np.array([0.7 * 2.0, 0.7 * -1.2, -1.2 + 2.0]))
    assert float(d.value) == 0.7 * -1.2
    np.testing.assert_allclose(stacked.value, [1.4, 0.7 * -1.2, 0.8], rtol=1e-15)
    np.testing.assert_allclose(s1.value, ref[1], rtol=1e-14)
    np.testing.assert_allclose(s.value, ref, rtol=1e-14)


def test_a_read_between_the_copy_and_the_vectors_reader_keeps_the_copy():
    tape = tg.Tape()
    a, b = tape.param(np.array(0.5)), tape.param(np.array(-0.5))
    e = tg.exp(a)
    f = tg.exp(b)
    st = tg.stack([e, f])
    late = e * 3.0                              # reads e after its PLACE, before the softmax
    loss = tg.softmax(st)[0] + late
    eb, fb = e._b, f._b
    del e, f, st, late                          # (a held Var's buffer never moves)
    tape.optimize()
    moved = set(tape._copy_alias[0].tolist())
    assert fb in moved and eb not in moved   # e is read between its PLACE and the softmax
    a.value[...] = 1.5
    tape.forward()
    loss.backward()
    p = _softmax_np(np.exp([1.5, -0.5]))
    np.testing.assert_allclose(float(loss.item()), p[0] + 3 * np.exp(1.5), rtol=1e-14)
    np.testing.assert_allclose(float(a.grad), p[0] * (1 - p[0]) * np.exp(1.5) + 3 * np.exp(1.5),
                               rtol=1e-13)


def test_save_load_forward_mode_and_recorded_gradients(tmp_path, monkeypatch):
    (tape, leaves, loss), (ref_tape, ref_leaves, ref_loss), _ = _pair(np.float64, monkeypatch)
    v = np.random.default_rng(4).normal(size=12)
    y, g = _run(tape, leaves, loss, v)
    yr, gr = _run(ref_tape, ref_leaves, ref_loss, v)
    # save / load: the dense layout, every buffer's value where a loaded tape reads it
    path = tmp_path / "t.npz"
    tape.save(path)
    t2 = tg.Tape.load(path)
    assert t2._used == ref_tape._used
    np.testing.assert_array_equal(t2._val[:ref_tape._used], ref_tape._val[:ref_tape._used])
    # forward mode on the aliased tape (the tangent sweep reads the buffer table)
    dirs = {p: np.array(1.0 if i == 3 else 0.0) for i, p in enumerate(leaves)}
    rdirs = {p: np.array(1.0 if i == 3 else 0.0) for i, p in enumerate(ref_leaves)}
    np.testing.assert_allclose(tangents(loss, dirs), tangents(ref_loss, rdirs), rtol=1e-13)
    np.testing.assert_allclose(float(tangents(loss, dirs)), g[3], rtol=1e-12)
    # recorded gradients: the VJP rules read the moved buffers
    gs = tg.gradients(loss, leaves)
    tape.forward()
    np.testing.assert_allclose([float(x.value) for x in gs], gr, rtol=1e-12, atol=1e-15)


def test_recording_a_new_parameter_lays_out_densely_and_stays_right():
    tape, leaves, loss = _graph(np.float64, n_groups=3)
    ref_tape, ref_leaves, ref_loss = _graph(np.float64, n_groups=3)
    assert tape.optimize()["aliased"] > 0
    extra = tape.param(np.array(0.25))          # a parameter after temporaries: relayout
    loss2 = loss * extra
    rextra = ref_tape.param(np.array(0.25))
    rloss2 = ref_loss * rextra
    v = np.random.default_rng(5).normal(size=12)
    for t, ls, l2 in ((tape, leaves, loss2), (ref_tape, ref_leaves, rloss2)):
        for p, x in zip(ls, v):
            p.value[...] = x
        t.forward()
        l2.backward()
    assert tape._copy_alias[0].size == 0
    np.testing.assert_allclose(float(loss2.item()), float(rloss2.item()), rtol=1e-14)
    np.testing.assert_allclose([float(p.grad) for p in leaves],
                               [float(p.grad) for p in ref_leaves], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("opt", ["SGD", "Adam"])
def test_fit_on_an_aliased_tape_is_the_unaliased_fit(opt, monkeypatch):
    (ta, la, lossa), (tb, lb, lossb), _ = _pair(np.float64, monkeypatch)
    ha = tg.fit(lossa, getattr(tg.optim, opt)(ta.params, lr=0.05), steps=20, progress=False)
    hb = tg.fit(lossb, getattr(tg.optim, opt)(tb.params, lr=0.05), steps=20, progress=False)
    assert np.array_equal(np.asarray(ha), np.asarray(hb))
    assert np.array_equal(np.array([float(p.value) for p in la]),
                          np.array([float(p.value) for p in lb]))


def test_tg_grad_optimizes_its_own_tape_after_two_replays(monkeypatch):
    calls = []
    real = tg.Tape.optimize
    monkeypatch.setattr(tg.Tape, "optimize", lambda self: calls.append(1) or real(self))

    def f(v):
        xs = [tg.log(1.0 + tg.exp(v[i])) for i in range(4)]
        s = tg.softmax(tg.stack(xs))
        return s[0] * 2.0 + s[3] * s[1]

    df = tg.value_and_grad(f)
    rng = np.random.default_rng(6)
    for k in range(5):
        v = rng.normal(size=4)
        val, g = df(v)
        assert len(calls) == (1 if k >= 3 else 0)     # recorded, replayed twice, then optimized
        h, fd = 1e-6, np.empty(4)
        sp = lambda u: np.logaddexp(0, u)
        ref = lambda u: (lambda p: p[0] * 2 + p[3] * p[1])(_softmax_np(sp(u)))
        for i in range(4):
            e = np.zeros(4)
            e[i] = h
            fd[i] = (ref(v + e) - ref(v - e)) / (2 * h)
        np.testing.assert_allclose(val, ref(v), rtol=1e-14)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)
