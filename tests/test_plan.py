"""Arena memory planning (tapegrad/plan.py): a planned tape computes the same values and
gradients, bit for bit, as the same tape unplanned; held Vars keep their values; planned
arenas are smaller; planned layouts never put two live buffers in one place."""
import zlib

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import plan
from tapegrad.opcodes import N_IN, OP, OUT, X
from tapegrad.tangent import tangents

try:
    from op_specs import SPECS, case_id, normal
except ImportError:  # tests/ imported as a package
    from tests.op_specs import SPECS, case_id, normal


def _layout_sound(tape):
    """Independent of the planner: every root's live range [first write, last read/write]
    read off the instructions one by one; roots sharing an arena element must have disjoint
    ranges, and a root that a reverse rule might read (any input or output of an instruction
    with a nonlinear rule is counted) or that is a leaf must overlap nothing."""
    nb = tape._nbuf
    base, off, size = tape._base, tape._boff[:nb], tape._bsize[:nb]
    assert np.all(off >= 0) and np.all(off + size <= tape._val.shape[0])
    assert tape._grad.shape[0] >= tape._val.shape[0] or tape._plan is None
    lo, hi = {}, {}
    for k in range(tape._n):
        row = tape._instr[k]
        bufs = [int(row[OUT])] + [int(row[X + j]) for j in range(int(N_IN[row[OP]]))]
        for b in bufs:
            r = int(base[b])
            lo.setdefault(r, k)
            hi[r] = k
    roots = [b for b in range(nb) if base[b] == b]
    owner = {}
    for r in roots:
        for e in range(int(off[r]), int(off[r] + size[r])):
            owner.setdefault(e, []).append(r)
    for e, rs in owner.items():
        if len(rs) < 2:
            continue
        used = [r for r in rs if r in lo]  # (a root no instruction touches may go anywhere)
        for i, a in enumerate(used if len(used) > 1 else ()):
            assert tape._kind[a] == 3, f"leaf %{a} shares memory"
            for b in used[i + 1:]:
                assert hi[a] < lo[b] or hi[b] < lo[a], \
                    f"%{a} {lo[a], hi[a]} and %{b} {lo[b], hi[b]} share element {e}"


def _rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def _spec_run(spec, case, arrays, mode):
    """Record f on the spec's inputs (each through a multiply-add, the loss through a few
    scalar steps, so there is something to share), replay at shifted inputs; returns the
    value, the parameters' gradients and whether the tape was planned."""
    tape = tg.Tape()
    tape.planning = mode
    params = [tape.param(a) for a in arrays]
    out = spec.f(*[p * 1.5 + 0.25 for p in params], **case.kw)
    w = np.linspace(0.5, 1.5, out.size).reshape(out.shape)
    loss = ((out * tape.const(w)).sum() * 1.25 - 0.5) * 0.75 + 2.0
    del out
    for p, a in zip(params, arrays):
        p.value[...] = a + 0.01
    tape.forward()
    loss.backward()
    planned = tape._plan is not None
    if planned:
        _layout_sound(tape)
    return float(loss.value), [p.grad.copy() for p in params], planned


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_op_specs_planned_equal_unplanned(spec, request):
    rng = _rng(request)
    planned = 0
    for case in spec.cases:
        arrays = [np.array(a, np.float64) for a in (spec.gen or normal)(rng, case.shapes)]
        v0, g0, _ = _spec_run(spec, case, arrays, "off")
        v1, g1, p = _spec_run(spec, case, arrays, "always")
        planned += p
        assert v1 == v0 or (np.isnan(v0) and np.isnan(v1)), f"{case_id(case)}: value"
        for a, b in zip(g0, g1):
            np.testing.assert_array_equal(b, a, err_msg=f"{spec.id} {case_id(case)}")
    assert planned, f"{spec.id}: no case was planned"


def _random_tape(rng, mode, n_ops=60, n=7):
    """A random tape of elementwise ops, reductions, slices and concatenations over a few
    params, reading random earlier results; holds every fifth intermediate."""
    tape = tg.Tape()
    tape.planning = mode
    params = [tape.param(rng.uniform(0.5, 1.5, n)) for _ in range(3)]
    pool, held = list(params), []
    for i in range(n_ops):
        a, b = pool[rng.integers(len(pool))], pool[rng.integers(len(pool))]
        c = int(rng.integers(9))
        if c == 0:
            v = a * b
        elif c == 1:
            v = a + b
        elif c == 2:
            v = tg.tanh(a) - b
        elif c == 3:
            v = tg.exp(a * 0.1) * 0.5
        elif c == 4:
            v = tg.concatenate([a[1:], a[:1]])
        elif c == 5:
            v = a * 0.9 + a.sum() * 0.01
        elif c == 6:
            v = tg.sigmoid(a) / (b * b + 1.0)
        elif c == 7:
            v = tg.maximum(a, b * 0.5)
        else:
            v = tg.softmax(a) * 3.0 + b
        pool.append(v)
        if i % 5 == 0:
            held.append(v)
        if len(pool) > 12:  # older results drop out of reach: their memory can be shared
            pool.pop(int(rng.integers(3, 6)))
    loss = sum((v * v).sum() for v in pool[-4:])
    return tape, params, held, loss


@pytest.mark.parametrize("seed", range(8))
def test_random_tapes_planned_equal_unplanned(seed):
    res = {}
    for mode in ("off", "always"):
        rng = np.random.default_rng(seed)
        tape, params, held, loss = _random_tape(rng, mode)
        for p in params:
            p.value[...] = p.value * 1.1
        tape.forward()
        loss.backward()
        if mode == "always":
            assert tape._plan is not None
            _layout_sound(tape)
            st = tape.stats()
            assert st["arena_bytes"] < st["arena_bytes_unplanned"]
        res[mode] = (float(loss.value), [p.grad.copy() for p in params],
                     [h.value.copy() for h in held], [h.grad.copy() for h in held])
    (v0, g0, h0, hg0), (v1, g1, h1, hg1) = res["off"], res["always"]
    assert v0 == v1
    for a, b in zip(g0 + h0 + hg0, g1 + h1 + hg1):
        np.testing.assert_array_equal(b, a)


def _rk4(tape, y0, a, b, steps, h=0.05):
    n = y0.shape[0]
    zero = tape.const(np.zeros(1))

    def f(y):
        return b * tg.tanh(tg.concatenate([zero, y[:n - 1]])) - a * y
    y = y0
    for _ in range(steps):
        k1 = f(y)
        k2 = f(y + (h / 2) * k1)
        k3 = f(y + (h / 2) * k2)
        k4 = f(y + h * k3)
        y = y + (h / 6) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return (y * y).sum()


def _rk4_np(y, a, b, steps, h=0.05):
    def f(y):
        return b * np.tanh(np.concatenate([[0.0], y[:-1]])) - a * y
    for _ in range(steps):
        k1 = f(y)
        k2 = f(y + (h / 2) * k1)
        k3 = f(y + (h / 2) * k2)
        k4 = f(y + h * k3)
        y = y + (h / 6) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return float((y * y).sum())


def test_rk4_planned_against_finite_differences_and_smaller():
    rng = np.random.default_rng(3)
    y0 = rng.uniform(-1, 1, 12)
    tape = tg.Tape()
    tape.planning = "always"
    py, pa, pb = tape.param(y0), tape.param(np.array(0.7)), tape.param(np.array(1.3))
    loss = _rk4(tape, py, pa, pb, 6)
    tape.forward()
    loss.backward()
    assert tape._plan is not None
    _layout_sound(tape)
    st = tape.stats()
    assert st["arena_bytes"] < 0.6 * st["arena_bytes_unplanned"]
    assert "without planning" in str(st)
    assert loss.item() == pytest.approx(_rk4_np(y0, 0.7, 1.3, 6), rel=1e-12)
    eps = 1e-6
    for j, (p, x) in enumerate(((py, y0), (pa, 0.7), (pb, 1.3))):
        x = np.array(x, np.float64)
        fd = np.zeros(x.size)
        for i in range(x.size):
            args = [y0, 0.7, 1.3]
            up, dn = x.copy().reshape(-1), x.copy().reshape(-1)
            up[i] += eps
            dn[i] -= eps
            args[j] = up.reshape(x.shape) if x.ndim else up[0]
            f_up = _rk4_np(np.asarray(args[0]), float(args[1]), float(args[2]), 6)
            args[j] = dn.reshape(x.shape) if x.ndim else dn[0]
            f_dn = _rk4_np(np.asarray(args[0]), float(args[1]), float(args[2]), 6)
            fd[i] = (f_up - f_dn) / (2 * eps)
        np.testing.assert_allclose(np.ravel(p.grad), fd, rtol=1e-6, atol=1e-8)
    before = st["arena_bytes"]
    tape.optimize()  # equal broadcasts merged: even less to keep
    tape.forward()
    loss.backward()
    assert tape.stats()["arena_bytes"] < before
    _layout_sound(tape)


def _chain(mode):
    tape = tg.Tape()
    tape.planning = mode
    w = tape.param(np.linspace(0.1, 1.0, 16))
    x = tape.input("x", value=np.linspace(-1, 1, 16))
    h = w * x
    for _ in range(6):
        h = tg.tanh(h * 1.1 + 0.2)
    held = tg.exp(h * 0.5)        # an intermediate the user keeps
    for _ in range(6):
        held2 = held * 0.9 + 0.1
        held = tg.sigmoid(held2)
    loss = (held * held).sum()
    return tape, w, x, held, loss


def test_held_vars_read_their_values_and_grads():
    out = {}
    for mode in ("off", "always"):
        tape, w, x, held, loss = _chain(mode)
        tape.forward(x=np.linspace(-2, 2, 16))
        loss.backward()
        if mode == "always":
            assert tape._plan is not None and tape._plan.shared.any()
            assert not tape._plan.shared[held._b]
        out[mode] = (held.value.copy(), held.grad.copy(), w.grad.copy())
    for a, b in zip(out["off"], out["always"]):
        np.testing.assert_array_equal(b, a)


def test_recording_after_planning_unplans_and_restores_values():
    res = {}
    for mode in ("off", "always"):
        tape, w, x, held, loss = _chain(mode)
        tape.forward(x=np.linspace(-2, 2, 16))
        loss.backward()
        planned = tape._plan is not None
        (gw,) = tg.gradients(loss, [w])          # records the reverse pass: reads every value
        assert tape._plan is None
        pen = loss + (gw * gw).sum()
        v_recorded = float(pen.value)
        pen.backward()
        res[mode] = (v_recorded, w.grad.copy(), planned, tape._plan is not None)
    assert res["always"][2] and res["always"][3]  # planned before, and again after the seal
    assert res["off"][0] == res["always"][0]
    np.testing.assert_array_equal(res["always"][1], res["off"][1])


def test_fit_save_load_replica_tangents_on_planned_tapes(tmp_path):
    res = {}
    for mode in ("off", "always"):
        tape, w, x, held, loss = _chain(mode)
        del held
        opt = tg.optim.SGD(tape.params, lr=0.05)
        hist = tg.fit(loss, opt, steps=5)
        assert (tape._plan is not None) == (mode == "always")
        rep = tape.replica()
        rep.forward()
        rep[loss].backward()
        path = tape.save(tmp_path / f"{mode}.tape.npz")
        t2 = tg.Tape.load(path)
        t2.forward()
        l2 = t2.params[0]
        lv = float(t2["loss"].value) if "loss" in t2._names else None
        t2_loss_grad = None
        del lv, t2_loss_grad
        tan = tangents(loss, {w: np.ones(16)})
        res[mode] = (hist, w.value.copy(), rep[w].grad.copy(), l2.value.copy(), float(tan),
                     tape._plan is None)
    for a, b in zip(res["off"][:5], res["always"][:5]):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    assert res["always"][5]  # forward mode un-planned it for good


def test_auto_mode_plans_only_large_arenas(monkeypatch):
    monkeypatch.setattr(plan, "MODE", "auto")
    tape, w, x, held, loss = _chain(None)
    del held
    loss.backward()
    assert tape._plan is None  # far below MIN_BYTES
    monkeypatch.setattr(plan, "MIN_BYTES", 0)
    tape, w, x, held, loss = _chain(None)
    del held
    loss.backward()
    assert tape._plan is not None


def test_every_reverse_rule_has_a_read_set():
    from tapegrad import sweep
    from tapegrad.opcodes import Op
    reads = plan.reverse_reads()
    assert set(reads) == set(int(o) for o in sweep.REVERSE)
    assert reads[int(Op.MUL)] == {"x", "y"}
    assert reads[int(Op.TANH)] == {"ans"}
    assert reads[int(Op.ADD)] == frozenset()
    assert reads[int(Op.EXPAND)] == frozenset()
    assert reads[int(Op.MATMUL)] == {"x", "y", "z", "ans"}  # not read off: all


def test_a_bad_plan_is_refused_by_validation(monkeypatch):
    """The planned offsets go through the seal's validation like any layout: a planner bug
    that put a buffer past the arena raises instead of reaching the compiled sweeps."""
    real = plan._assign

    def short(*args):
        return real(*args) // 2  # a shared region too short for its slots
    monkeypatch.setattr(plan, "_assign", short)
    tape, w, x, held, loss = _chain("always")
    with pytest.raises(tg.TapegradError):
        loss.backward()


def test_loaded_tape_is_planned_when_resealed(tmp_path):
    tape, w, x, held, loss = _chain("off")
    loss.name = "loss"
    del held
    path = tape.save(tmp_path / "chain.tape.npz")
    loss.backward()
    want = w.grad.copy()
    t2 = tg.Tape.load(path)
    t2.planning = "always"
    t2.const(np.zeros(1))  # recording re-seals it at the next replay
    t2.forward()
    t2["loss"].backward()
    assert t2._plan is not None
    _layout_sound(t2)
    np.testing.assert_array_equal(t2.params[0].grad, want)
