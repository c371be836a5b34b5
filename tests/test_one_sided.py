"""Binary elementwise reverse rules that skip an input without a gradient (issue 17, the
``gmm`` workload): ``add sub mul div`` run ``<op>_bwd_one`` when the reverse mask says only
one input has a gradient (ops/elementwise.py, ``sweep._ONE_SIDED``). The constant's slot is
then never written, and the other input's gradient is the same bits as the two-input kernel
gives it -- which these tests check against a tape where the constant is a parameter -- and
agrees with NumPy's derivative."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad import sweep
from tapegrad.opcodes import OP, X, Y, Op

OPS = {"add": (np.add, lambda x, y: (1.0, 1.0)),
       "sub": (np.subtract, lambda x, y: (1.0, -1.0)),
       "mul": (np.multiply, lambda x, y: (y, x)),
       "div": (np.divide, lambda x, y: (1.0 / y, -x / (y * y)))}
N = 257  # not a multiple of a vector width; large enough for the vector kernels


def _arrays(rng, dtype):
    x = rng.normal(size=N)
    y = rng.uniform(0.5, 2.0, size=N) * rng.choice([-1.0, 1.0], size=N)  # away from 0 (div)
    w = rng.normal(size=N)
    return [a.astype(dtype).astype(np.float64) for a in (x, y, w)]


def _grads(name, dtype, x, y, w, const, planning="off"):
    """Gradient of sum(op(x, y) * w) in the operand that is a parameter (both when ``const``
    is None), and the constant's gradient slot after a reverse sweep that started with
    12345 written into the whole gradient arena."""
    tape = tg.Tape(dtype=dtype)
    tape.planning = planning
    vx = tape.const(x) if const == "x" else tape.param(x)
    vy = tape.const(y) if const == "y" else tape.param(y)
    out = getattr(tg, name)(vx, vy)
    loss = (out * tape.const(w)).sum()
    loss.backward()
    assert Op(int(tape._instr[0, OP])).name.lower() == name
    got = {k: v.grad.copy() for k, v in (("x", vx), ("y", vy)) if k != const}
    # the sweep alone, from a gradient arena full of a marker: the constant's slot keeps it
    grad = np.full_like(tape._grad, 12345.0)
    mask = tape._reverse_mask(loss._b)
    grad[tape._boff[out._b]:tape._boff[out._b] + N] = 0.0
    grad[tape._boff[loss._b]] = 1.0
    interp = tape._interpreters()
    status, _ = interp.reverse(tape._instr, tape._imm, tape._low, tape._val, grad, mask, 0)
    assert status == sweep.OK
    slot = None
    if const is not None:
        c = vx if const == "x" else vy
        slot = grad[tape._boff[c._b]:tape._boff[c._b] + N]
    return got, slot


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("const", ["x", "y"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_one_sided_gradient_is_the_two_input_kernels_bits(name, const, dtype):
    rng = np.random.default_rng(3)
    x, y, w = _arrays(rng, dtype)
    one, slot = _grads(name, dtype, x, y, w, const)
    both, _ = _grads(name, dtype, x, y, w, None)
    (k, g), = one.items()
    assert g.dtype == np.dtype(dtype)
    assert np.array_equal(g, both[k]), (name, const)
    # and the derivative, from NumPy in float64
    dx, dy = OPS[name][1](x, y)
    want = w * (dx if k == "x" else dy)
    tol = 1e-13 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(g, np.broadcast_to(want, (N,)), rtol=tol, atol=tol)


@pytest.mark.parametrize("const", ["x", "y"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_the_constants_gradient_slot_is_not_written(name, const):
    rng = np.random.default_rng(4)
    x, y, w = _arrays(rng, np.float64)
    _, slot = _grads(name, np.float64, x, y, w, const)
    assert (slot == 12345.0).all(), (name, const)


def test_both_inputs_with_a_gradient_still_get_both():
    rng = np.random.default_rng(6)
    x, y, w = _arrays(rng, np.float64)
    for name, (f, d) in OPS.items():
        got, _ = _grads(name, np.float64, x, y, w, None)
        dx, dy = d(x, y)
        np.testing.assert_allclose(got["x"], np.broadcast_to(w * dx, (N,)), rtol=1e-13)
        np.testing.assert_allclose(got["y"], np.broadcast_to(w * dy, (N,)), rtol=1e-13)


@pytest.mark.parametrize("planning", ["always", "off"])
def test_gmm_gradient_with_a_constant_data_operand(planning):
    """The workload this is for, small: (x - mu) * exp(-logs) with x a (n, 1, d) constant,
    repeated backward calls, planned and not, against NumPy."""
    rng = np.random.default_rng(7)
    n, K, d = 40, 3, 5
    X = rng.normal(size=(n, d))
    mu0, logs0 = rng.normal(size=(K, d)), 0.1 * rng.normal(size=(K, d))
    tape = tg.Tape()
    tape.planning = planning
    x = tape.const(X)
    mu, logs = tape.param(mu0), tape.param(logs0)
    z = (x.reshape(n, 1, d) - mu.reshape(1, K, d)) * tg.exp(-logs).reshape(1, K, d)
    loss = (z * z).sum()
    tape._seal()
    ops = {Op(int(o)) for o in tape._instr[:, OP]}
    assert Op.SUB in ops and Op.MUL in ops
    s = np.exp(-logs0)
    zz = (X[:, None, :] - mu0[None]) * s[None]
    want_mu = (-2 * zz * s[None]).sum(0)
    want_logs = (-2 * zz * zz).sum(0)
    for _ in range(3):
        tape.forward()
        loss.backward()
        np.testing.assert_allclose(mu.grad, want_mu, rtol=1e-12)
        np.testing.assert_allclose(logs.grad, want_logs, rtol=1e-12)
    with pytest.raises(tg.TapegradError):
        x.grad  # noqa: B018 - a constant has no gradient


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 7, N, 4099])
def test_a_product_of_a_buffer_with_itself(n, dtype):
    """``z * z``: one buffer as both inputs of MUL (``mul_bwd``'s x == y loop, and its scalar
    row at n = 1). Its gradient 2 z w, with a gradient already accumulated in z's slot (an
    earlier use of z): (g + t) + t, the two updates in sequence, to the bit."""
    rng = np.random.default_rng(8)
    z0 = rng.normal(size=n).astype(dtype)
    w, c = rng.normal(size=n).astype(dtype), rng.normal(size=n).astype(dtype)
    tape = tg.Tape(dtype=dtype)
    z = tape.param(z0)
    loss = (z * z * tape.const(w)).sum() + (z * tape.const(c)).sum()
    tape._seal()
    rows = tape._instr[:, OP] == Op.MUL
    assert (tape._instr[rows, X] == tape._instr[rows, Y]).any()  # some MUL has x == y
    for _ in range(2):
        tape.forward()
        loss.backward()
        t = (w * z0).astype(dtype)
        np.testing.assert_array_equal(z.grad, (c + t) + t)
