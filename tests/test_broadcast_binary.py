"""BCAST (tapegrad/ops/bcast.py): add, sub, mul and div of broadcast operands as one
instruction. Values against NumPy, gradients against central finite differences (float64)
and NumPy's reductions, in float32 too; which shapes take it and which keep the EXPAND path;
one-sided reverse masks; save/load and the validation of its attributes; tape.optimize(),
tg.fit, tg.gradients and forward mode on tapes that hold it. (Every op spec row of
tests/op_specs.py named bcast_* runs through the generic tests as well.)"""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad.errors import TapeFormatError
from tapegrad.opcodes import OP, A0, Op
from tapegrad.ops import bcast as B

OPS = {"add": (lambda a, b: a + b), "sub": (lambda a, b: a - b),
       "mul": (lambda a, b: a * b), "div": (lambda a, b: a / b)}
# (x shape, y shape): outputs of at least bcast.MIN_SIZE elements, every kind of 3-D merge
PATTERNS = [((40, 1, 32), (1, 30, 32)),    # gmm's x - mu: no operand has the output's shape
            ((40, 30, 32), (1, 30, 32)),   # one full operand
            ((40, 30, 1), (40, 1, 32)),    # x lacks the contiguous axis
            ((1, 30, 1), (40, 30, 32)),
            ((40, 30, 32), (30, 1)),       # y one value per contiguous row
            ((1200,), ()),                 # a scalar operand
            ((2, 1, 30, 20), (2, 5, 1, 1))]


def _ops(tape):
    tape._flush()
    return [Op(int(o)) for o in tape._instr[:tape._n, OP]]


def _data(rng, sx, sy, name):
    x = rng.standard_normal(sx)
    y = rng.uniform(0.5, 2.0, sy) if name == "div" else rng.standard_normal(sy)
    return x, y


def _unbroadcast(g, shape):
    g = g.sum(axis=tuple(range(g.ndim - len(shape))))
    return g.sum(axis=tuple(i for i, s in enumerate(shape) if s == 1), keepdims=True)


def _numpy_grads(name, x, y, w):
    """d sum(w * (x op y)) / dx, dy by the calculus rules in NumPy."""
    gx, gy = {"add": (w, w), "sub": (w, -w), "mul": (w * y, w * x),
              "div": (w / y, -w * x / (y * y))}[name]
    return _unbroadcast(gx, x.shape), _unbroadcast(gy, y.shape)


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("sx, sy", PATTERNS, ids=[f"{a}-{b}" for a, b in PATTERNS])
def test_values_and_gradients_against_numpy(name, sx, sy):
    rng = np.random.default_rng(0)
    x, y = _data(rng, sx, sy, name)
    w = rng.standard_normal(np.broadcast_shapes(sx, sy))
    tape = tg.Tape()
    a, b = tape.param(x), tape.param(y)
    out = OPS[name](a, b)
    loss = (out * tape.const(w)).sum()
    assert Op.BCAST in _ops(tape) and Op.EXPAND not in _ops(tape)
    loss.backward()
    np.testing.assert_allclose(out.value, OPS[name](x, y), rtol=1e-15, atol=0)
    gx, gy = _numpy_grads(name, x, y, w)
    np.testing.assert_allclose(a.grad, gx, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(b.grad, gy, rtol=1e-11, atol=1e-12)
    # a replay with new values (the compiled kernels, not the recording's evaluation)
    x2, y2 = _data(rng, sx, sy, name)
    a.value[...], b.value[...] = x2, y2
    tape.forward()
    loss.backward()
    np.testing.assert_allclose(out.value, OPS[name](x2, y2), rtol=1e-15, atol=0)
    gx, gy = _numpy_grads(name, x2, y2, w)
    np.testing.assert_allclose(a.grad, gx, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(b.grad, gy, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPS))
def test_gradients_against_central_differences(name):
    rng = np.random.default_rng(1)
    sx, sy = (12, 1, 10), (1, 9, 10)  # 1080 elements
    x, y = _data(rng, sx, sy, name)
    w = rng.standard_normal((12, 9, 10))
    tape = tg.Tape()
    a, b = tape.param(x), tape.param(y)
    loss = (tg.tanh(OPS[name](a, b)) * tape.const(w)).sum()
    assert Op.BCAST in _ops(tape)
    loss.backward()

    def f(xx, yy):
        return float((np.tanh(OPS[name](xx, yy)) * w).sum())
    h = 1e-6
    for arr, grad, other in ((x, a.grad, 0), (y, b.grad, 1)):
        for idx in [tuple(rng.integers(s) for s in arr.shape) for _ in range(6)]:
            up, dn = arr.copy(), arr.copy()
            up[idx] += h
            dn[idx] -= h
            fd = ((f(up, y) - f(dn, y)) if other == 0 else (f(x, up) - f(x, dn))) / (2 * h)
            assert abs(grad[idx] - fd) <= 1e-7 * max(1.0, abs(fd)), (name, other, idx)


@pytest.mark.parametrize("name", sorted(OPS))
def test_one_input_without_a_gradient(name):
    """A constant operand: only the other input's gradient is computed (mask bits), equal
    to the one of a tape where both are parameters."""
    rng = np.random.default_rng(2)
    x, y = _data(rng, (40, 1, 32), (1, 30, 32), name)
    w = rng.standard_normal((40, 30, 32))
    for const in (0, 1):
        both = tg.Tape()
        pa, pb = both.param(x), both.param(y)
        (OPS[name](pa, pb) * both.const(w)).sum().backward()
        one = tg.Tape()
        a = one.const(x) if const == 0 else one.param(x)
        b = one.const(y) if const == 1 else one.param(y)
        (OPS[name](a, b) * one.const(w)).sum().backward()
        assert Op.BCAST in _ops(one)
        got, want = (b, pb) if const == 0 else (a, pa)
        np.testing.assert_array_equal(got.grad, want.grad)


# both inputs need a gradient and both have the contiguous axis: bcast_bwd's one pass
# (``_grad_both``) into the arena for a full operand, a float64 scratch for a summed one
BOTH = [((40, 1, 32), (1, 30, 32)), ((40, 30, 32), (1, 30, 32)), ((1, 30, 32), (40, 30, 32)),
        ((40, 30, 32), (40, 1, 32))]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sx, sy", BOTH, ids=[f"{a}-{b}" for a, b in BOTH])
@pytest.mark.parametrize("name", sorted(OPS))
def test_both_gradients_in_one_pass_are_the_one_sided_bits(name, sx, sy, dtype):
    """The gradient of each input when both have one equals, to the bit, the one computed
    when the other input is a constant (the one-sided kernels), with a gradient already
    accumulated in both slots (an earlier use of each)."""
    rng = np.random.default_rng(5)
    x, y = _data(rng, sx, sy, name)
    w = rng.standard_normal(np.broadcast_shapes(sx, sy))
    cx, cy = rng.standard_normal(sx), rng.standard_normal(sy)

    def grads(const):
        tape = tg.Tape(dtype=dtype)
        a = tape.const(x) if const == 0 else tape.param(x)
        b = tape.const(y) if const == 1 else tape.param(y)
        loss = (OPS[name](a, b) * tape.const(w)).sum()
        loss = loss + (a * tape.const(cx)).sum() + (b * tape.const(cy)).sum()
        assert Op.BCAST in _ops(tape)
        loss.backward()
        return (None if const == 0 else a.grad.copy()), (None if const == 1 else b.grad.copy())
    gx, gy = grads(None)
    assert np.array_equal(gx, grads(1)[0]) and np.array_equal(gy, grads(0)[1])
    wx, wy = _numpy_grads(name, x, y, w)
    tol = 1e-11 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(gx, (wx + cx).astype(dtype), rtol=tol, atol=tol)
    np.testing.assert_allclose(gy, (wy + cy).astype(dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(OPS))
def test_float32_matches_float64(name):
    rng = np.random.default_rng(3)
    x, y = _data(rng, (300, 1, 16), (1, 20, 16), name)
    x, y = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
    w = rng.standard_normal((300, 20, 16)).astype(np.float32)
    res = {}
    for dt in (np.float32, np.float64):
        tape = tg.Tape(dtype=dt)
        a, b = tape.param(x), tape.param(y)
        out = OPS[name](a, b)
        (out * tape.const(w)).sum().backward()
        assert Op.BCAST in _ops(tape)
        res[dt] = (out.value.astype(np.float64), a.grad.astype(np.float64),
                   b.grad.astype(np.float64))
    for got, want in zip(res[np.float32], res[np.float64]):
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * scale)


def test_small_outputs_and_other_patterns_keep_the_expand_path():
    tape = tg.Tape()
    a, b = tape.param(np.ones((10, 1, 8))), tape.param(np.ones((1, 12, 8)))
    a - b  # 960 < MIN_SIZE elements
    assert Op.BCAST not in _ops(tape) and Op.EXPAND in _ops(tape)
    c, d = tape.param(np.ones((4, 1, 8, 1, 4))), tape.param(np.ones((4, 8, 1, 8, 1)))
    c * d  # four runs of axes: no 3-D view
    assert Op.BCAST not in _ops(tape)
    e, f = tape.param(np.ones((40, 30))), tape.param(np.ones((40, 30)))
    e + f  # same shape: the plain op
    assert _ops(tape)[-1] == Op.ADD
    assert B.plan3((40, 1, 32), (1, 30, 32), (40, 30, 32)) == (40, 30, 32, 2, 1)
    assert B.plan3((40, 30, 32), (30, 1), (40, 30, 32)) == (40, 30, 32, 0, 5)
    assert B.plan3((1, 1200), (), (1, 1200)) == (1, 1, 1200, 0, 4)


def _gmm_tape():
    rng = np.random.default_rng(4)
    tape = tg.Tape()
    X = tape.const(rng.standard_normal((100, 8)))
    mu = tape.param(rng.standard_normal((6, 8)), name="mu")
    logs = tape.param(0.1 * rng.standard_normal((6, 8)), name="logs")
    z = (X.reshape(100, 1, 8) - mu.reshape(1, 6, 8)) * tg.exp(-logs).reshape(1, 6, 8)
    loss = tg.logsumexp(-0.5 * (z * z).sum(2) - logs.sum(1).reshape(1, 6), axis=1).sum()
    loss.name = "loss"
    return tape, loss, mu, logs


def test_save_load_round_trip_and_bad_attributes_refused(tmp_path):
    tape, loss, mu, logs = _gmm_tape()
    assert _ops(tape).count(Op.BCAST) == 2  # (the (100, 6) one is below MIN_SIZE)
    loss.backward()
    want = (loss.value.copy(), mu.grad.copy(), logs.grad.copy())
    p = tmp_path / "g.tape.npz"
    tape.save(p)
    t2 = tg.Tape.load(p)
    t2.forward()
    t2["loss"].backward()
    np.testing.assert_array_equal(t2["loss"].value, want[0])
    np.testing.assert_array_equal(t2["mu"].grad, want[1])
    np.testing.assert_array_equal(t2["logs"].grad, want[2])
    assert "bcast" in str(t2) and "sub d=100x6x8 bx=2 by=1" in str(t2)

    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    k = int(np.flatnonzero(arrays["instr"][:, OP] == Op.BCAST)[0])
    for col, bad in ((0, int(Op.POW)), (0, -1), (1, 101), (3, 9), (4, 8), (4, 0), (5, 3),
                     (2, 2 ** 30)):
        a = dict(arrays)
        a["instr"] = arrays["instr"].copy()
        a["instr"][k, A0 + col] = bad
        q = tmp_path / f"bad{col}_{bad}.tape.npz"
        np.savez(q, **a)
        with pytest.raises(TapeFormatError, match="bcast"):
            tg.Tape.load(q)


def test_optimize_fit_and_recorded_gradients():
    tape, loss, mu, logs = _gmm_tape()
    loss.backward()
    g0 = (mu.grad.copy(), logs.grad.copy())
    tape.optimize()
    tape.forward()
    loss.backward()
    np.testing.assert_allclose(mu.grad, g0[0], rtol=1e-13)
    np.testing.assert_allclose(logs.grad, g0[1], rtol=1e-13)
    # tg.gradients records the reverse rule (BCAST's recorded VJP); its values are the
    # compiled ones, and differentiating their sum again matches finite differences of it
    gm, gl = tg.gradients(loss, [mu, logs])
    np.testing.assert_allclose(gm.value, g0[0], rtol=1e-12)
    np.testing.assert_allclose(gl.value, g0[1], rtol=1e-12)
    # fit: SGD steps inside compiled code equal steps by hand
    t1, l1, m1, s1 = _gmm_tape()
    t2, l2, m2, s2 = _gmm_tape()
    hist = tg.fit(l1, tg.optim.SGD(t1.params, lr=1e-3), steps=3)
    opt = tg.optim.SGD(t2.params, lr=1e-3)
    by_hand = []
    for _ in range(3):
        t2.forward()
        by_hand.append(float(l2.value))
        l2.backward()
        opt.step()
    np.testing.assert_allclose(hist, by_hand, rtol=1e-12)
    np.testing.assert_allclose(m1.value, m2.value, rtol=1e-12)


def test_forward_mode_matches_reverse():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((40, 1, 32)), rng.uniform(0.5, 2.0, (30, 1))

    def f(a, b):
        return ((a - b) * (a / b) + b).sum()
    _, tan = tg.jvp(f, (x, y), (np.ones_like(x), np.zeros_like(y)))
    g = tg.grad(f)(x, y)
    np.testing.assert_allclose(tan, g.sum(), rtol=1e-12)
