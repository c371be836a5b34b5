"""A hostile review of elementwise fusion (tapegrad/fuse.py), segments especially: every test
compares a fused tape with the same tape replayed op by op (values to the bit, gradients
close) and/or with NumPy and float64 central differences."""
import threading

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import fuse
from tapegrad.opcodes import Op
from tapegrad.tangent import tangents
from test_fusion import fd  # (pytest puts this directory on sys.path)


@pytest.fixture(autouse=True)
def small_groups(monkeypatch):
    monkeypatch.setattr(fuse, "MIN_BYTES", 64)  # groups of 8 float64 / 16 float32 elements on


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def seg(x, b, c, m):
    """x, b parameters, c a constant (no gradient). Three transcendental calls, sin (libm)
    and log: five segments. tanh(x), the first member, is read by later segments and by its
    own reverse rule; x by several segments and twice by one member (x * x); b twice."""
    sg = sigmoid if m is np else tg.sigmoid
    t0 = m.tanh(x)
    t1 = sg(t0 * b + c)
    t2 = m.exp(t1 * t0)
    t3 = m.sin(t2 - x)
    t4 = t3 * t0 + x * x
    t5 = m.log(t4 * t4 + 1.0)
    return t5 / b + t0


def inputs(n, dtype=np.float64, rng=0):
    r = np.random.default_rng(rng)
    x = r.standard_normal(n)
    b = np.abs(r.standard_normal(n)) + 0.5
    c = r.standard_normal(n)
    return [v.astype(dtype) for v in (x, b, c)]


def weights(n, dtype=np.float64):
    """A loss's weights: every element of the output gets a gradient of its own."""
    return np.linspace(0.5, 1.5, n).astype(dtype)


def build(fn, xs, dtype=np.float64, optimize=True, nconst=1, planning=None, weighted=False):
    """A tape of fn over parameters xs[:-nconst] and constants xs[-nconst:] (intermediates
    dropped before optimize()); returns (tape, params, consts, y, loss); the loss is
    sum(y), or with ``weighted`` y @ weights."""
    tape = tg.Tape(dtype)
    if planning is not None:
        tape.planning = planning
    k = len(xs) - nconst
    ps = [tape.param(v.copy()) for v in xs[:k]]
    cs = [tape.const(v.copy()) for v in xs[k:]]
    y = fn(*ps, *cs, tg)
    loss = y @ tape.const(weights(y.size, dtype)) if weighted else y.sum()
    if optimize:
        tape.optimize()
    return tape, ps, cs, y, loss


def group_ops(tape):
    """The opcodes of the fused groups' rows, per group."""
    g = tape._fused_now
    return [] if g is None else [tape._instr[k0:k0 + m, 0].tolist() for k0, m in g]


def both(fn, xs, dtype=np.float64, nconst=1, **kw):
    ref = build(fn, xs, dtype, optimize=False, nconst=nconst, **kw)
    fused = build(fn, xs, dtype, optimize=True, nconst=nconst, **kw)
    return ref, fused


def replay(t, new=None):
    tape, ps, cs, y, loss = t
    if new is not None:
        for p, v in zip(ps, new):
            p.value[...] = v
    tape.forward()
    loss.backward()


def assert_same(ref, fused, dtype=np.float64):
    np.testing.assert_array_equal(fused[3].value, ref[3].value)  # bit for bit, NaN where NaN
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    for p, q in zip(fused[1], ref[1]):
        np.testing.assert_allclose(p.grad, q.grad, **tol)


# ------------------------------------------------------------------ sizes and strips
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [16, 40, 511, 512, 513, 1024, 1025, 2 * fuse.STRIP + 3])
def test_segments_at_strip_edges(n, dtype):
    xs = inputs(n, dtype)
    ref, fused = both(seg, xs, dtype, weighted=True)
    ops = group_ops(fused[0])
    assert len(ops) == 1 and len(ops[0]) == 16
    assert max(fuse.segments(ops[0])) >= 3
    for t in (ref, fused):  # twice: the second replay reads slots the first left behind
        replay(t, [xs[0][::-1] * 1.5, xs[1][::-1]])
        replay(t, [xs[0] * 0.5, xs[1]])
    assert_same(ref, fused, dtype)
    if dtype == np.float64:
        f = lambda x, b, m: seg(x, b, xs[2], m)  # noqa: E731
        at = [xs[0] * 0.5, xs[1]]
        np.testing.assert_allclose(fused[3].value, f(*at, np), rtol=1e-13, atol=1e-15)
        for i in range(2):
            np.testing.assert_allclose(fused[1][i].grad, fd(f, at, i) * weights(n),
                                       rtol=1e-6, atol=1e-8)


def chain70(x, b, c, m):
    """Seventy elementwise instructions: groups of at most fuse.MAX_MEMBERS, each in
    segments, each group's output the next one's external."""
    t = x
    for k in range(14):
        t = m.tanh(t * b) + c
        t = m.sin(t) * 0.5 - x
    return t


def test_groups_of_max_members_in_segments():
    n = 600
    xs = inputs(n, rng=15)
    ref, fused = both(chain70, xs, weighted=True)
    ops = group_ops(fused[0])
    assert len(ops) >= 3 and max(len(o) for o in ops) == fuse.MAX_MEMBERS
    assert all(max(fuse.segments(o)) >= 2 for o in ops)
    for t in (ref, fused):
        replay(t, [xs[0] * 0.8, xs[1]])
    assert_same(ref, fused)
    f = lambda x, b, m: chain70(x, b, xs[2], m)  # noqa: E731
    np.testing.assert_allclose(fused[1][0].grad, fd(f, [xs[0] * 0.8, xs[1]], 0) * weights(n),
                               rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ every fusable op
def ops_a(x, y, c, m):
    """Unary ops, immediates, comparisons and where between transcendental members."""
    e = m.exp(x * 0.25)
    s = m.sqrt(m.abs(y))
    r = m.maximum(x, 0.0 * x) if m is np else tg.relu(x)
    lr = np.where(y > 0, y, 0.1 * y) if m is np else tg.leaky_relu(y, 0.1)
    t = m.tanh(e - s + r * lr)
    q = m.cos(-t) + m.sin(t * 2.0)
    w = (np.where(x > y, q, t) if m is np else tg.where(x > y, q, t))
    ge = (x >= c) * 1.0
    v = w / (2.0 - s) + (3.0 / (e + 1.0)) * ge
    return m.log(v * v + 0.5) + m.square(r) / 4.0


def ops_b(x, y, c, m):
    """Binary ops: maximum, minimum, every comparison, division, subtraction, negation."""
    u = m.exp(-m.abs(x))
    v = m.tanh(y)
    mx = m.maximum(u, v)
    mn = m.minimum(u, c)
    cmp = ((x < y) * 1.0 + (x <= c) * 2.0 + (x > c) * 3.0 + (x == x) * 4.0
           + (y != c) * 5.0)
    d = (mx - mn) / (u + 1.0) - (-v)
    return m.sin(d) * cmp + m.log(u + v * v + 1.0)


@pytest.mark.parametrize("fn", [ops_a, ops_b])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_fusable_op_in_segments(fn, dtype):
    n = 777
    xs = inputs(n, dtype, rng=4)
    xs[1] = xs[1] * np.where(np.arange(n) % 3 == 0, -1, 1).astype(dtype)  # y of both signs
    xs[1][::7] = xs[0][::7]  # ties for maximum / minimum / comparisons
    xs[2][::5] = xs[0][::5]
    ref, fused = both(fn, xs, dtype)
    ops = group_ops(fused[0])
    assert ops and max(len(o) for o in ops) >= 10
    assert any(max(fuse.segments(o)) >= 2 for o in ops)
    seen = {int(o) for g in ops for o in g}
    for t in (ref, fused):
        replay(t)
    assert_same(ref, fused, dtype)
    if dtype == np.float64:
        np.testing.assert_allclose(fused[3].value, fn(*xs, np), rtol=1e-12, atol=1e-14)
    want = {Op.EXP, Op.SQRT, Op.ABS, Op.RELU, Op.LEAKY_RELU, Op.TANH, Op.COS, Op.SIN,
            Op.NEG, Op.WHERE, Op.GT, Op.GE, Op.DIV, Op.RSUBC, Op.RDIVC, Op.LOG,
            Op.SQUARE, Op.MULC} if fn is ops_a else {
        Op.MAXIMUM, Op.MINIMUM, Op.LT, Op.LE, Op.GT, Op.EQ, Op.NE, Op.DIV, Op.SUB, Op.NEG}
    assert {int(o) for o in want} <= seen, [Op(o).name for o in want if int(o) not in seen]


def specials(n, dtype):
    r = np.random.default_rng(7)
    x = r.standard_normal(n) * 3
    x[::11] = np.nan
    x[1::13] = np.inf
    x[2::17] = -np.inf
    x[3::19] = 0.0
    x[4::23] = -0.0
    x[5::29] = 1e300 if dtype == np.float64 else 1e30
    b = np.abs(r.standard_normal(n)) + 0.5
    b[6::31] = 0.0
    b[7::37] = np.nan
    c = r.standard_normal(n)
    return [v.astype(dtype) for v in (x, b, c)]


@pytest.mark.parametrize("fn", [seg, ops_a, ops_b])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_and_inf_as_op_by_op(fn, dtype):
    xs = specials(1100, dtype)
    ref, fused = both(fn, xs, dtype)
    assert fused[0]._fused_now is not None
    with np.errstate(all="ignore"):
        for t in (ref, fused):
            replay(t)
    assert np.isnan(ref[3].value).any() and np.isnan(ref[1][0].grad).any()
    np.testing.assert_array_equal(fused[3].value, ref[3].value)
    for p, q in zip(fused[1], ref[1]):  # NaN and inf where op by op has them
        np.testing.assert_array_equal(np.isnan(p.grad), np.isnan(q.grad))
        np.testing.assert_array_equal(np.isinf(p.grad), np.isinf(q.grad))
        ok = np.isfinite(q.grad)
        np.testing.assert_allclose(p.grad[ok], q.grad[ok],
                                   rtol=2e-5 if dtype == np.float32 else 1e-12, atol=1e-12)


# ------------------------------------------------------------------ float32 immediates
def imms(x, b, c, m):
    """Immediates in SINGLE_OPS members between transcendental members (a float32 tape holds
    the constants of + - * / rounded to float32: 0.1, 1/3 become float32 numbers; 2**-140
    is a subnormal one) and leaky_relu's slopes 0.5 and 0.01 (kept as float64 numbers)."""
    lr = (lambda v, a: np.where(v > 0, v, a * v)) if m is np else tg.leaky_relu
    t = m.exp(lr(x * 3.0, 0.01))
    t = lr(t - 1.2, 0.5) + lr(x, 0.01)
    t = m.tanh(t / 3.0 + (1.0 / 3.0))
    t = (0.1 - t) * 2.0 ** -140 + x * 0.25
    t = m.sin(3.0 / (t * t + 1.0) + 0.1 / (b + 0.1))
    return m.log(t + 2.0) - t / 0.1


def test_float32_immediates_in_segments():
    xs = inputs(1030, np.float32, rng=2)
    ref, fused = both(imms, xs, np.float32)
    ops = group_ops(fused[0])
    assert len(ops) == 1 and max(fuse.segments(ops[0])) >= 2
    for t in (ref, fused):
        replay(t, [xs[0] * 2, xs[1]])
    assert_same(ref, fused, np.float32)


# ------------------------------------------------------------------ externals
def views(x, c, m):
    """Externals that are overlapping views of one parameter (x[1:], x[:-1]) and of a
    constant, each read in several segments; the first member reads two of them."""
    a, b = x[1:], x[:-1]
    d = m.tanh(a - b)
    e = m.exp(d * b) + c[1:]
    f = m.sigmoid(e * a) if m is not np else sigmoid(e * a)
    return m.log(f + d * d + 1.0) * a + b


def test_overlapping_views_as_externals():
    n = 1300
    xs = inputs(n, rng=3)[::2]
    ref, fused = both(views, xs)
    assert fused[0]._fused_now is not None
    assert max(fuse.segments(group_ops(fused[0])[0])) >= 2
    for t in (ref, fused):
        replay(t, [xs[0][::-1]])
    assert_same(ref, fused)
    f = lambda x, m: views(x, xs[1], m)  # noqa: E731
    at = xs[0][::-1].copy()
    h = 1e-6
    want = np.empty(n)
    base = f(at, np).sum()
    for i in list(range(5)) + list(range(510, 516)) + list(range(n - 5, n)):
        up, dn = at.copy(), at.copy()
        up[i] += h
        dn[i] -= h
        want[i] = (f(up, np).sum() - f(dn, np).sum()) / (2 * h)
        np.testing.assert_allclose(fused[1][0].grad[i], want[i], rtol=1e-5, atol=1e-7)
    assert np.isfinite(base)


def test_input_fed_between_replays():
    """An input (no gradient) read in several segments, fed through tape.forward(x=...)."""
    n = 1500
    xs = inputs(n, rng=5)
    tape = tg.Tape()
    b = tape.param(xs[1])
    x = tape.input("x", shape=(n,))
    c = tape.const(xs[2])
    y = seg(x, b, c, tg)
    loss = y.sum()
    tape.optimize()
    assert tape._fused_now is not None
    for k in range(3):
        xv = np.random.default_rng(k).standard_normal(n)
        tape.forward(x=xv)
        loss.backward()
        f = lambda x_, b_, m: seg(x_, b_, xs[2], m)  # noqa: E731
        np.testing.assert_allclose(y.value, f(xv, xs[1], np), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(b.grad, fd(f, [xv, xs[1]], 1), rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ partial replays
def two_groups(xs):
    """Group 1 (segmented) -> y, held; a sum; group 2 (segmented) reading y -> z."""
    tape = tg.Tape()
    x, b = tape.param(xs[0]), tape.param(xs[1])
    c = tape.const(xs[2])
    y = seg(x, b, c, tg)
    s = y.sum()
    z = tg.exp(tg.tanh(y) * 0.5) * tg.sin(y + b)
    loss = s + (z * z).sum()
    return tape, x, b, y, s, z, loss


def np_two(x, b, c):
    y = seg(x, b, c, np)
    z = np.exp(np.tanh(y) * 0.5) * np.sin(y + b)
    return y, z


def test_partial_forward_and_backward_from_a_var_between_groups():
    n = 1100
    xs = inputs(n, rng=6)
    tape, x, b, y, s, z, loss = two_groups(xs)
    tape.optimize()
    assert tape._fused_now is not None and tape._fused_now.shape[0] >= 2
    tape.forward()
    old_z = z.value.copy()
    new = xs[0] * 0.3
    x.value[...] = new
    tape.forward(outputs=[s])  # the first group only: z keeps its value
    wy, wz = np_two(new, xs[1], xs[2])
    np.testing.assert_allclose(y.value, wy, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(z.value, old_z)
    tape.forward(outputs=[z])
    np.testing.assert_allclose(z.value, wz, rtol=1e-13, atol=1e-15)
    s.backward()  # a seed between the groups: only the first group's reverse runs
    f = lambda x_, b_, m: seg(x_, b_, xs[2], m)  # noqa: E731
    np.testing.assert_allclose(x.grad, fd(f, [new, xs[1]], 0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b.grad, fd(f, [new, xs[1]], 1), rtol=1e-6, atol=1e-8)
    tape.forward()
    loss.backward()
    g = lambda x_, b_, m: (lambda yz: yz[0] + yz[1] ** 2)(np_two(x_, b_, xs[2]))  # noqa: E731
    np.testing.assert_allclose(x.grad, fd(g, [new, xs[1]], 0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b.grad, fd(g, [new, xs[1]], 1), rtol=1e-6, atol=1e-7)


def test_gradient_of_some_inputs_only():
    """An input with requires_grad and one without, a parameter, a constant: reverse masks
    where some members of a segmented group need no gradient of some inputs."""
    n = 700
    xs = inputs(n, rng=8)
    tape = tg.Tape()
    u = tape.input("u", value=xs[0], requires_grad=True)
    v = tape.input("v", value=xs[1])
    c = tape.const(xs[2])
    w = tape.param(np.full(n, 0.7))
    y = seg(u, v, c, tg) * tg.tanh(w) + tg.exp(v * w)
    loss = y.sum()
    tape.optimize()
    assert tape._fused_now is not None
    tape.forward()
    loss.backward()
    f = lambda u_, v_, w_, m: seg(u_, v_, xs[2], m) * m.tanh(w_) + m.exp(v_ * w_)  # noqa
    at = [xs[0], xs[1], np.full(n, 0.7)]
    np.testing.assert_allclose(u.grad, fd(f, at, 0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(w.grad, fd(f, at, 2), rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ other paths
def test_check_finite_passes_and_names_nothing_on_finite_values():
    xs = inputs(900, rng=9)
    ref, fused = both(seg, xs)
    for t in (ref, fused):
        t[0].forward(check_finite=True)
    np.testing.assert_array_equal(fused[3].value, ref[3].value)
    bad = xs[0].copy()
    bad[600] = np.nan  # a NaN in an external: the output is NaN there
    for t in (ref, fused):
        t[1][0].value[...] = bad
        with pytest.raises(tg.NonFiniteError):
            t[0].forward(check_finite=True)


def test_fit_with_a_segmented_group_as_op_by_op():
    n = 1 << 16  # parameters large enough for the fused optimizer to update them in the sweep
    xs = inputs(n, rng=10)
    losses, ws = [], []
    for optimize in (False, True):
        tape, (x, b), cs, y, loss = build(seg, [xs[0] * 0.5, xs[1], xs[2]], optimize=optimize)
        assert (tape._fused_now is not None) == optimize
        opt = tg.optim.Adam([x, b], lr=1e-2)
        losses.append(np.asarray(tg.fit(loss, opt, steps=24)))
        ws.append(np.concatenate([x.value, b.value]))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-10)
    np.testing.assert_allclose(ws[1], ws[0], rtol=1e-9, atol=1e-12)


def test_replicas_in_two_threads():
    n = 1025
    xs = inputs(n, rng=11)
    tape, (x, b), cs, y, loss = build(seg, xs)
    assert tape._fused_now is not None
    reps = [tape.replica() for _ in range(2)]
    news = [xs[0] * (k + 2) * 0.3 for k in range(2)]
    out = [None, None]

    def work(k):
        r = reps[k]
        for _ in range(20):
            r[x].value[...] = news[k]
            r.forward()
            r[loss].backward()
        out[k] = (r[y].value.copy(), r[x].grad.copy(), r[b].grad.copy())
    th = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    f = lambda x_, b_, m: seg(x_, b_, xs[2], m)  # noqa: E731
    for k in range(2):
        np.testing.assert_allclose(out[k][0], f(news[k], xs[1], np), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(out[k][1], fd(f, [news[k], xs[1]], 0), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(out[k][2], fd(f, [news[k], xs[1]], 1), rtol=1e-6, atol=1e-8)


def test_tangents_gradients_and_recording_after_a_segmented_replay():
    """After a fused replay the intermediates' slots hold strips (n > STRIP): the tangent
    sweep, tg.gradients and new recordings must see the true intermediates."""
    n = 2 * fuse.STRIP + 1
    xs = inputs(n, rng=12)
    tape, (x, b), cs, y, loss = build(seg, xs)
    new = xs[0] * -0.7
    x.value[...] = new
    tape.forward()
    loss.backward()
    f = lambda x_, b_, m: seg(x_, b_, xs[2], m)  # noqa: E731
    dx = np.random.default_rng(1).standard_normal(n)
    t = tangents(y, {x: dx})
    np.testing.assert_allclose(t, fd(f, [new, xs[1]], 0) * dx, rtol=1e-6, atol=1e-8)
    gx, gb = tg.gradients(loss, [x, b])
    np.testing.assert_allclose(gx.value, fd(f, [new, xs[1]], 0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gb.value, fd(f, [new, xs[1]], 1), rtol=1e-6, atol=1e-8)
    x.value[...] = xs[0]
    tape.forward()
    np.testing.assert_allclose(gb.value, fd(f, xs[:2], 1), rtol=1e-6, atol=1e-8)


def test_recording_more_and_optimizing_again():
    n = 1030
    xs = inputs(n, rng=13)
    tape, (x, b), cs, y, loss = build(seg, xs)
    tape.forward()
    z = tg.cos(y) * tg.exp(y * 0.1) + b  # recorded after a fused replay: reads y only
    loss2 = z.sum() + loss
    tape.optimize()
    assert tape._fused_now is not None and tape._fused_now.shape[0] >= 2
    new = xs[0] * 1.1
    for _ in range(2):
        x.value[...] = new
        tape.forward()
        loss2.backward()
    f = lambda x_, b_, m: (lambda y_: m.cos(y_) * m.exp(y_ * 0.1) + b_ + y_)(  # noqa: E731
        seg(x_, b_, xs[2], m))
    np.testing.assert_allclose(loss2.value, f(new, xs[1], np).sum(), rtol=1e-12)
    np.testing.assert_allclose(x.grad, fd(f, [new, xs[1]], 0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b.grad, fd(f, [new, xs[1]], 1), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n", [40, 1025])
def test_planned_segments_and_save_load(n, tmp_path):
    xs = inputs(n, rng=14)
    def record():
        tape = tg.Tape()
        tape.planning = "always"
        x, b = tape.param(xs[0].copy()), tape.param(xs[1].copy())
        c = tape.const(xs[2])
        y = seg(x, b, c, tg)
        q = x[:7]  # small temporaries that planning lets share slots
        r = tg.cos(tg.sin(q) * 2.0) + q
        z = tg.tanh(y) * tg.exp(y * 0.5) + tg.sin(y)  # a second segmented group
        loss = z.sum() + (r * r).sum()
        y.name = "y"
        return tape, x, b, z, loss
    rt, rx, rb, rz, rloss = record()
    tape, x, b, z, loss = record()
    tape.optimize()
    assert tape._fused_now is not None and tape._fused_now.shape[0] >= 2
    for t, v, ls in ((rt, rx, rloss), (tape, x, loss)):
        v.value[...] = xs[0] * 0.9
        t.forward()
        ls.backward()
    assert tape._plan is not None
    np.testing.assert_array_equal(z.value, rz.value)
    np.testing.assert_allclose(x.grad, rx.grad, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b.grad, rb.grad, rtol=1e-12, atol=1e-14)
    p = tmp_path / "t.npz"
    tape.save(str(p))
    t2 = tg.Tape.load(str(p))
    t2.forward()
    np.testing.assert_allclose(t2["y"].value, seg(xs[0] * 0.9, xs[1], xs[2], np),
                               rtol=1e-13, atol=1e-15)
