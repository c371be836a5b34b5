"""tape.optimize() (tapegrad/optimize.py): fewer instructions, the same values for every Var
still held, gradients as NumPy's, and a tape that keeps recording and replaying."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad.opcodes import OP, Op


def _ops(tape):
    return [Op(int(o)) for o in tape._instr[:len(tape), OP]]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softplus_chains_fuse_with_the_chains_values_and_numpys_gradient(dtype):
    rng = np.random.default_rng(0)
    x0, w0 = rng.normal(size=7) * 3, rng.normal(size=7)
    tape = tg.Tape(dtype)
    x = tape.param(x0)
    w = tape.const(w0)
    sp = tg.log(1.0 + tg.exp(x))
    loss = (w * sp).sum()
    before = sp.value.copy()
    info = tape.optimize()
    assert info["fused"] == 1 and info["before"] - info["after"] == 2 and info["merged"] == 0
    assert Op.SOFTPLUS in _ops(tape) and Op.EXP not in _ops(tape)
    x1 = rng.normal(size=7) * 3
    x.value[:] = x0
    tape.forward()
    bits = np.uint64 if dtype == np.float64 else np.uint32
    assert np.array_equal(sp.value.view(bits), before.view(bits))   # the chain's numbers
    x.value[:] = x1
    tape.forward()
    loss.backward()
    xs = x1.astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(sp.value, np.logaddexp(0, xs.astype(np.float64)), rtol=tol)
    np.testing.assert_allclose(x.grad, w0 / (1 + np.exp(-xs.astype(np.float64))), rtol=tol * 10,
                               atol=tol)


def test_a_held_intermediate_is_not_fused_away_and_stays_current():
    tape = tg.Tape()
    x = tape.param(np.array([0.5, -1.0]))
    e = tg.exp(x)                        # held by the user: must keep its value
    loss = tg.log(e + 1.0).sum()
    assert tape.optimize()["fused"] == 0
    x.value[:] = [2.0, 0.0]
    tape.forward()
    loss.backward()
    np.testing.assert_allclose(e.value, np.exp([2.0, 0.0]))
    np.testing.assert_allclose(x.grad, 1 / (1 + np.exp(-np.array([2.0, 0.0]))))


def test_dead_code_goes_and_every_held_var_still_reads_its_value():
    tape = tg.Tape()
    x = tape.input("x", value=np.array([1.0, 2.0, 3.0]))
    w = tape.param(np.array([0.5, -0.25, 2.0]), name="w")
    y = w * x
    tg.sin(y) * 3.0                      # dropped on the floor: dead
    tape.const(np.ones(3)) * tg.cos(y)   # dead as well
    kept = tg.tanh(y)                    # held, though the loss does not use it
    loss = (y * y).sum()
    n0 = len(tape)
    info = tape.optimize()
    assert info["dead"] == 4 and len(tape) == n0 - 4  # sin, mulc, cos, mul
    assert Op.SIN not in _ops(tape) and Op.COS not in _ops(tape) and Op.TANH in _ops(tape)
    xn = np.array([-1.0, 0.5, 4.0])
    tape.forward(x=xn)
    loss.backward()
    wv = np.array([0.5, -0.25, 2.0])
    np.testing.assert_allclose(kept.value, np.tanh(wv * xn))
    np.testing.assert_allclose(loss.value, ((wv * xn) ** 2).sum())
    np.testing.assert_allclose(w.grad, 2 * wv * xn * xn)
    stats = tape.stats()
    assert stats["instructions"] == n0 - 4 and stats["instructions_before_optimize"] == n0
    assert "before optimize()" in str(stats)


def test_an_optimized_tape_records_more_and_guards_stay():
    tape = tg.Tape()
    x = tape.param(np.array([0.3]))
    if x > 0:                            # a guard: kept although nothing reads it
        loss = tg.log(tg.exp(x * 2.0) + 1.0).sum()
    tape.optimize()
    assert Op.GUARD in _ops(tape) and Op.SOFTPLUS in _ops(tape)
    more = loss * loss                   # recording goes on after optimize()
    more.backward()
    s = np.logaddexp(0, 0.6)
    np.testing.assert_allclose(x.grad, 2 * s * 2 / (1 + np.exp(-0.6)))
    x.value[:] = -1.0
    with pytest.raises(tg.BranchChanged):
        tape.forward()


def test_optimize_twice_keeps_the_first_count_and_a_loaded_tape_replays():
    tape = tg.Tape()
    x = tape.param(np.array([0.1, 0.2]))
    loss = tg.log(tg.exp(x) + 2.0).sum()
    tape.optimize()
    tape.optimize()
    assert tape.stats()["instructions_before_optimize"] == 4
    loss.backward()
    np.testing.assert_allclose(x.grad, 1 / (1 + 2 * np.exp(-np.array([0.1, 0.2]))))


def test_common_subexpressions_merge_unless_a_var_holds_the_repeat():
    tape = tg.Tape()
    x = tape.param(np.array([0.3, -0.7]))
    y = tape.param(np.array([1.5, 2.0]))
    a = tg.exp(x * y)                    # x * y and exp(x * y) twice: the second pair merges
    loss = (a * tg.exp(x * y)).sum() + (x + y).sum()
    held = x + y                         # a repeat the user holds: computed on
    loss = loss + (held * held).sum()
    info = tape.optimize()
    assert info["merged"] == 2 and _ops(tape).count(Op.EXP) == 1
    assert _ops(tape).count(Op.MUL) == 3  # x * y, a * a, held * held
    xv, yv = np.array([0.1, 0.2]), np.array([-1.0, 3.0])
    x.value[:], y.value[:] = xv, yv
    tape.forward()
    loss.backward()
    np.testing.assert_allclose(held.value, xv + yv)
    np.testing.assert_allclose(loss.value, np.exp(2 * xv * yv).sum() + (xv + yv).sum()
                               + ((xv + yv) ** 2).sum())
    np.testing.assert_allclose(x.grad, 2 * yv * np.exp(2 * xv * yv) + 1 + 2 * (xv + yv))
    np.testing.assert_allclose(y.grad, 2 * xv * np.exp(2 * xv * yv) + 1 + 2 * (xv + yv))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chains_of_adds_become_add3_with_the_same_numbers(dtype):
    rng = np.random.default_rng(3)
    vals = [rng.normal(size=5) * 10.0 ** rng.integers(-3, 4) for _ in range(5)]
    tape = tg.Tape(dtype)
    xs = [tape.param(v) for v in vals]
    s = xs[0] + xs[1] + xs[2] + xs[3]     # ((a + b) + c) + d: 3 ADDs
    t = xs[4] + (xs[1] + xs[2])           # the inner sum on the right
    loss = (s * t).sum()
    before_s, before_t = s.value.copy(), t.value.copy()
    info = tape.optimize()
    assert _ops(tape).count(Op.ADD3) == 2 and _ops(tape).count(Op.ADD) == 1
    assert info["fused"] == 2
    tape.forward()
    bits = np.uint64 if dtype == np.float64 else np.uint32
    assert np.array_equal(s.value.view(bits), before_s.view(bits))
    assert np.array_equal(t.value.view(bits), before_t.view(bits))
    loss.backward()
    v = [a.astype(dtype).astype(np.float64) for a in vals]
    sv, tv = v[0] + v[1] + v[2] + v[3], v[4] + v[1] + v[2]
    tol = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(xs[0].grad, tv, rtol=tol)
    np.testing.assert_allclose(xs[1].grad, tv + sv, rtol=tol, atol=tol * np.abs(sv).max())
    np.testing.assert_allclose(xs[3].grad, tv, rtol=tol)
    np.testing.assert_allclose(xs[4].grad, sv, rtol=tol)
