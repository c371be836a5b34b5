"""Elementwise groups replayed fused (tapegrad/fuse.py): the same values and gradients as the
op-by-op replay and as finite differences, on every path that reads a fused tape."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad import fuse
from tapegrad.bench.fusion import arith, transcendental as chain  # (NumPy too: m=np)

N = 5000


@pytest.fixture(autouse=True)
def small_groups(monkeypatch):
    monkeypatch.setattr(fuse, "MIN_BYTES", 256)  # groups of test-sized arrays


def two_inputs(a, b, c, m):
    """Externals a, b (parameters) and c (a constant without gradient)."""
    t = a * b
    t = t + c
    t = m.exp(t * 0.1)
    t = t / b
    return t - a * c if m is np else t - (a * c)


def recorded(fn, xs, dtype=np.float64, optimize=True):
    tape = tg.Tape(dtype)
    vs = [tape.param(x) for x in xs]
    y = fn(*vs, tg)
    loss = y.sum()
    if optimize:
        tape.optimize()
    return tape, vs, y, loss


def fd(fn, xs, i, h=1e-6):
    """Central differences of sum(fn(xs)) in xs[i], element by element (fn is elementwise)."""
    up = [x.copy() for x in xs]
    dn = [x.copy() for x in xs]
    up[i] += h
    dn[i] -= h
    return (fn(*up, np) - fn(*dn, np)) / (2 * h)


def data(k, rng=0):
    r = np.random.default_rng(rng)
    return [r.standard_normal(N) for _ in range(k)]


def test_chain_fused_values_and_gradients():
    xs = data(1)
    tape, (x,), y, loss = recorded(chain, xs)
    assert tape._fused_now is not None and tape._fused_now[0, 1] >= 9
    new = np.random.default_rng(5).standard_normal(N)
    x.value[...] = new
    tape.forward()
    loss.backward()
    np.testing.assert_allclose(y.value, chain(new, np), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(x.grad, fd(chain, [new], 0), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_equals_op_by_op(dtype):
    xs = [x.astype(dtype) for x in data(1)]
    ref_tape, (rx,), ry, rloss = recorded(chain, xs, dtype, optimize=False)
    tape, (x,), y, loss = recorded(chain, xs, dtype)
    assert tape._fused_now is not None
    for t, v, ls in ((ref_tape, rx, rloss), (tape, x, loss)):
        v.value[...] = xs[0][::-1]
        t.forward()
        ls.backward()
    np.testing.assert_array_equal(y.value, ry.value)  # the same kernels: the same bits
    np.testing.assert_allclose(x.grad, rx.grad, rtol=1e-6 if dtype == np.float32 else 1e-14)


def immediates(x, m):
    """Constants exact in float32 (2, 0.5, 3) and not (0.1, 1/3): float32 programs compute
    the first in float32, the others in float64 as the kernels do (fuse.SINGLE_OPS)."""
    t = x * 0.1
    t = t + 0.5
    t = 3.0 / (t * t + 1.0)
    t = (1.0 / 3.0) - t
    t = m.maximum(t, x * 2.0) if m is np else tg.leaky_relu(t, 0.1) + x * 2.0
    return t / 3.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_immediates_give_the_op_by_op_bits(dtype):
    xs = [x.astype(dtype) for x in data(1)]
    ref_tape, (rx,), ry, rloss = recorded(immediates, xs, dtype, optimize=False)
    tape, (x,), y, loss = recorded(immediates, xs, dtype)
    assert tape._fused_now is not None and tape._fused_now[:, 1].sum() >= 8
    for t, v, ls in ((ref_tape, rx, rloss), (tape, x, loss)):
        v.value[...] = xs[0] * 3
        t.forward()
        ls.backward()
    np.testing.assert_array_equal(y.value, ry.value)
    np.testing.assert_allclose(x.grad, rx.grad, rtol=1e-5 if dtype == np.float32 else 1e-13)


def test_externals_and_constant():
    a, b = data(2)
    b = np.abs(b) + 0.5
    c = np.random.default_rng(3).standard_normal(N)
    tape = tg.Tape()
    pa, pb = tape.param(a), tape.param(b)
    pc = tape.const(c)
    y = two_inputs(pa, pb, pc, tg)
    loss = y.sum()
    tape.optimize()
    assert tape._fused_now is not None
    tape.forward()
    loss.backward()
    f = lambda a_, b_, m: two_inputs(a_, b_, c, m)  # noqa: E731
    np.testing.assert_allclose(y.value, two_inputs(a, b, c, np), rtol=1e-13)
    np.testing.assert_allclose(pa.grad, fd(f, [a, b], 0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(pb.grad, fd(f, [a, b], 1), rtol=1e-6, atol=1e-8)


def test_no_group_when_an_intermediate_is_held():
    tape = tg.Tape()
    x = tape.param(data(1)[0])
    t = tg.tanh(x * 2.0)
    y = (t * x + 1.0) * t
    tape.optimize()
    # t is held: a group may end at t or start after it, never hold it inside
    for k0, m in (tape._fused_now if tape._fused_now is not None else []):
        inside = tape._base[tape._instr[k0:k0 + m - 1, 1]]
        assert tape._base[t._b] not in inside
    tape.forward()
    np.testing.assert_allclose(t.value, np.tanh(x.value * 2.0), rtol=1e-15)
    np.testing.assert_allclose(y.value, (t.value * x.value + 1.0) * t.value, rtol=1e-15)


def test_recording_after_a_fused_replay_reads_fresh_intermediates():
    """tg.gradients records the members' rules, which read the intermediates: they are
    recomputed before, and the group runs op by op from then on."""
    xs = data(1)
    tape, (x,), y, loss = recorded(chain, xs)
    new = xs[0] * 0.5
    x.value[...] = new
    tape.forward()  # fused: the intermediates' slots still hold the recorded values
    gx, = tg.gradients(loss, [x])
    np.testing.assert_allclose(gx.value, fd(chain, [new], 0), rtol=1e-6, atol=1e-8)
    x.value[...] = xs[0]
    tape.forward()
    np.testing.assert_allclose(gx.value, fd(chain, xs, 0), rtol=1e-6, atol=1e-8)
    assert tape._fused is not None and tape._fused_now is None  # (the rules read them all)


def test_tangents_after_a_fused_replay():
    xs = data(1)
    tape, (x,), y, loss = recorded(chain, xs)
    new = xs[0][::-1].copy()
    x.value[...] = new
    tape.forward()
    dx = np.random.default_rng(9).standard_normal(N)
    from tapegrad.tangent import tangents
    t = tangents(y, {x: dx})
    np.testing.assert_allclose(t, fd(chain, [new], 0) * dx, rtol=1e-6, atol=1e-8)


def test_planned_and_fused(monkeypatch):
    xs = data(1)
    tape = tg.Tape()
    tape.planning = "always"
    x = tape.param(xs[0])
    y = chain(x, tg)
    z = tg.sin(y) * y  # a second group reading the first's output
    q = x[:10]  # small temporaries, which planning lets share slots
    r = tg.cos(tg.sin(q) * 2.0) + q
    loss = z.sum() + (tg.exp(r) * r).sum()
    tape.optimize()
    assert tape._fused_now is not None and tape._fused_now.shape[0] == 2
    assert tape._plan is not None
    new = xs[0] * 0.7
    x.value[...] = new
    tape.forward()
    loss.backward()
    f = lambda v, m: (lambda q: m.sin(q) * q)(chain(v, m))  # noqa: E731
    np.testing.assert_allclose(z.value, f(new, np), rtol=1e-13)
    want = fd(f, [new], 0)
    rq = np.cos(np.sin(new[:10]) * 2.0) + new[:10]  # d/dq of exp(r) r, r = cos(2 sin q) + q
    want[:10] += np.exp(rq) * (rq + 1) * (1 - np.sin(2 * np.sin(new[:10])) * 2 * np.cos(new[:10]))
    np.testing.assert_allclose(x.grad, want, rtol=1e-6, atol=1e-8)


def test_planning_keeps_a_groups_input_for_its_reverse():
    """x (a column sum: no reverse rule reads it) is read only by a group whose own rules do
    not read it either (x + 1, then t * t); op by op, planning could hand x's slot to y, made
    after the group. The fused reverse recomputes t from x, so x keeps its slot."""
    r = np.random.default_rng(7)
    W, W2 = r.standard_normal((3, N)), r.standard_normal((3, N))

    def f(W, W2, m):
        t = W.sum(axis=0) + 1.0
        t = t * t
        return (t * W2.sum(axis=0)).sum()

    tape = tg.Tape()
    tape.planning = "always"
    w, w2 = tape.param(W), tape.param(W2)
    loss = f(w, w2, tg)
    tape.optimize()
    assert tape._fused_now is not None and tape._fused_now[:, 1].tolist() == [2]
    tape.forward()
    loss.backward()
    x = W.sum(axis=0)
    np.testing.assert_allclose(loss.value, f(W, W2, np), rtol=1e-12)
    want = 2 * (x + 1) * W2.sum(axis=0)  # d/dx of (x + 1)^2 y, for every row of W
    np.testing.assert_allclose(w.grad, np.broadcast_to(want, W.shape), rtol=1e-12)


def test_fit_on_a_fused_tape():
    xs = data(1)
    losses = []
    for optimize in (False, True):
        tape, (x,), y, loss = recorded(chain, [xs[0] * 0.1], optimize=optimize)
        assert (tape._fused_now is not None) == optimize
        opt = tg.optim.SGD([x], lr=1e-3)
        losses.append(np.asarray(tg.fit(loss, opt, steps=5)))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-12)


def test_save_and_load_run_op_by_op(tmp_path):
    xs = data(1)
    tape, (x,), y, loss = recorded(chain, xs)
    y.name = "y"
    p = tmp_path / "t.npz"
    tape.save(str(p))
    t2 = tg.Tape.load(str(p))
    assert t2._fused is None
    t2.forward()
    np.testing.assert_allclose(t2["y"].value, chain(xs[0], np), rtol=1e-13)


def test_a_chain_is_one_group():
    """Every op of the ten-op chains is fusable (a product of a value with itself too)."""
    for fn in (chain, arith):
        tape, (x,), y, loss = recorded(fn, data(1))
        assert tape._fused_now is not None and tape._fused_now.tolist() == [[0, 10]]
        x.value[...] *= 0.5
        tape.forward()
        loss.backward()
        np.testing.assert_allclose(y.value, fn(x.value, np), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(x.grad, fd(fn, [x.value.copy()], 0), rtol=1e-6, atol=1e-8)


def test_groups_found():
    """Rows of one size, each intermediate read only inside; a size change ends a group."""
    tape = tg.Tape()
    x = tape.param(data(1)[0])
    y = tg.exp(x * 0.5) + x
    s = y.sum()  # not elementwise: not in a group
    w = (tg.tanh(y) * s).sum()
    tape.optimize()
    g = tape._fused_now
    assert g is not None
    rows = {int(k) for k0, m in g for k in range(k0, k0 + m)}
    ops = tape._instr[:, 0]
    assert all(ops[k] in fuse.fusable() for k in rows)
    assert w.value == pytest.approx(float((np.tanh(y.value) * s.value).sum()))


def segmented(x, m):
    """Three transcendental functions and a libm one (sin): four segments (fuse.segments);
    the first member's value is read by later segments and by its own reverse rule."""
    t0 = m.tanh(x)
    t1 = 1 / (1 + m.exp(-t0)) if m is np else m.sigmoid(t0)
    t2 = m.sin(t1)
    t3 = t2 * t0
    return m.exp(t3) + x


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_segments_over_strips(dtype):
    """A group in segments, over strips of fuse.STRIP elements and a shorter last strip:
    the op-by-op values to the bit, the gradients as op by op and as finite differences."""
    n = 3 * fuse.STRIP + 77
    xs = [np.random.default_rng(3).standard_normal(n).astype(dtype)]
    ref_tape, (rx,), ry, rloss = recorded(segmented, xs, dtype, optimize=False)
    tape, (x,), y, loss = recorded(segmented, xs, dtype)
    k0, m = tape._fused_now[0]
    assert (k0, m) == (0, 6)
    assert fuse.segments(tape._instr[k0:k0 + m, 0]) == [0, 1, 2, 3, 3, 3]
    for t, v, ls in ((ref_tape, rx, rloss), (tape, x, loss)):
        v.value[...] = xs[0][::-1]
        t.forward()
        ls.backward()
    np.testing.assert_array_equal(y.value, ry.value)
    np.testing.assert_allclose(x.grad, rx.grad, rtol=1e-6 if dtype == np.float32 else 1e-14)
    if dtype == np.float64:
        np.testing.assert_allclose(x.grad, fd(segmented, [xs[0][::-1].copy()], 0),
                                   rtol=1e-6, atol=1e-8)
