"""What ``backward()`` zeroes before its sweep (``Tape._zero_grads``; issue 17 item 4).

Only the gradients a reverse sweep of the layout reads or must deliver are zeroed: outputs of
the instructions it runs and inputs that have a gradient (not a constant's slot, which rules
such as ``add_bwd`` write into and nothing reads), the seeds, the parameters, the ``.grad``
views handed out -- less the outputs the sweep zeroes itself once read (``lower.CLEAR``: on a
tape that arena planning looked at, every temporary no Var refers to). Each sequence here
runs on planned and unplanned tapes, zeroing by ranges and whole, and is compared with NumPy
gradients: whatever ran before, a gradient is that of the last ``backward()``.
"""
import numpy as np
import pytest

import tapegrad as tg
import tapegrad.tape as tape_mod
from tapegrad.lower import CLEAR


@pytest.fixture(params=["always-ranges", "always-whole", "off-ranges"])
def mode(request, monkeypatch):
    """planning "always" (clear flags on the temporaries) or "off"; the arena zeroed by
    ranges or, its swept part being most of it, whole."""
    planning, zeroing = request.param.split("-")
    monkeypatch.setattr(tape_mod, "ZERO_ALL_BELOW", 0)
    monkeypatch.setattr(tape_mod, "ZERO_WHOLE_ABOVE", 2.0 if zeroing == "ranges" else 0.0)
    return planning


def _model(planning):
    """``loss1`` reaches ``w`` through ``h = tanh(w x)`` (held), ``s = h*h`` gathered at
    ``idx`` and a concatenation; ``loss2`` reaches ``v`` and ``w`` (not ``h``); ``c`` is a
    constant added to a parameter (its slot is written, never zeroed)."""
    rng = np.random.default_rng(0)
    tape = tg.Tape()
    tape.planning = planning
    w = tape.param(rng.normal(size=6), name="w")
    v = tape.param(rng.normal(size=6), name="v")
    x = tape.input("x", shape=(6,))
    idx = tape.input("idx", shape=(3,))
    c = tape.const(rng.normal(size=6))
    h = tg.tanh(w * x)
    g = tg.take(h * h, idx)
    cat = tg.concatenate([g, h])
    loss1 = (cat * cat).sum()
    loss2 = (tg.sin(v * x) * (w + c)).sum()
    return tape, dict(w=w, v=v, x=x, idx=idx, c=c, h=h, loss1=loss1, loss2=loss2)


def _numpy_grads(which, w, v, x, idx, c, seed=None):
    """Gradients of loss1 / loss2 (or of h with ``seed`` as its output gradient) w.r.t.
    w, v and h, by hand."""
    h = np.tanh(w * x)
    if which == "h":
        dh = seed
        return {"w": dh * (1 - h * h) * x, "v": np.zeros(6), "h": dh}
    if which == 1:
        s = h * h
        g = s[idx]
        dh = 2 * h                       # through the concatenation
        ds = np.zeros(6)
        np.add.at(ds, idx, 2 * g)        # through the gather
        dh = dh + ds * 2 * h
        return {"w": dh * (1 - h * h) * x, "v": np.zeros(6), "h": dh}
    return {"w": np.sin(v * x), "v": (w + c) * np.cos(v * x) * x, "h": np.zeros(6)}


def _check(vs, want, what):
    for name in ("w", "v", "h"):
        np.testing.assert_allclose(vs[name].grad, want[name], rtol=1e-12, atol=1e-14,
                                   err_msg=f"{what}: {name}")


def test_many_backwards_with_other_seeds_feeds_and_views(mode):
    tape, vs = _model(mode)
    cval = vs["c"].value.copy()
    rng = np.random.default_rng(1)
    kept = None
    for step in range(9):
        xv, iv = rng.normal(size=6), rng.integers(0, 6, size=3)
        tape.forward(x=xv, idx=iv)
        which = (1, 2, "h")[step % 3]
        seed = rng.normal(size=6) if which == "h" else None
        for again in range(2):   # a second backward overwrites, never accumulates
            if which == "h":
                vs["h"].backward(grad_output=seed)
            else:
                vs[f"loss{which}"].backward()
            _check(vs, _numpy_grads(which, vs["w"].value, vs["v"].value, xv, iv, cval, seed),
                   f"step {step} loss {which} call {again}")
        if kept is not None:
            kept[...] = 9.0      # a user writing into a .grad view: zeroed by the next call
        kept = vs["h"].grad
        vs["v"].grad[...] = -3.0
    if mode == "always":
        assert tape._low[:, CLEAR].any()   # the sweeps did clear temporaries


def test_a_constant_has_no_gradient_to_read(mode):
    tape, vs = _model(mode)
    tape.forward(x=np.ones(6), idx=np.array([0, 1, 2]))
    for _ in range(3):
        vs["loss2"].backward()
    with pytest.raises(tg.TapegradError, match="has no gradient"):
        vs["c"].grad


def test_a_sweep_that_failed_part_way_is_cleaned_up(mode):
    """A reverse sweep stopped at the gather (an index made invalid after the forward)
    leaves the gradients of the rules that ran, some of them in slots the sweep would have
    cleared: the next backward zeroes the whole arena."""
    tape, vs = _model(mode)
    xv, iv = np.linspace(-1, 1, 6), np.array([5, 0, 5])
    tape.forward(x=xv, idx=iv)
    vs["loss1"].backward()
    vs["idx"].value[...] = [0.0, 9.0, 1.0]
    with pytest.raises(tg.TapegradError, match="gather"):
        vs["loss1"].backward()
    vs["idx"].value[...] = iv
    vs["loss1"].backward()
    _check(vs, _numpy_grads(1, vs["w"].value, vs["v"].value, xv, iv, vs["c"].value), "after")


def test_backward_after_fit_on_a_planned_tape(mode):
    tape, vs = _model(mode)
    X = np.random.default_rng(2).normal(size=(8, 6))
    iv = np.array([1, 3, 3])
    tape.forward(x=X[0], idx=iv)
    tg.fit(vs["loss1"], tg.optim.SGD(tape.params, lr=0.01), None, steps=4)
    tape.forward(x=X[3], idx=iv)
    vs["loss2"].backward()    # fit's sweeps left gradients where loss2's sweep does not look
    _check(vs, _numpy_grads(2, vs["w"].value, vs["v"].value, X[3], iv, vs["c"].value), "2")
    vs["loss1"].backward()
    _check(vs, _numpy_grads(1, vs["w"].value, vs["v"].value, X[3], iv, vs["c"].value), "1")


def test_held_intermediates_are_not_cleared_unheld_ones_are():
    tape, vs = _model("always")
    tape.forward(x=np.ones(6), idx=np.array([0, 1, 2]))
    vs["loss1"].backward()
    from tapegrad.opcodes import OUT
    outs = tape._instr[:, OUT]
    held = [vs[n]._b for n in ("h", "loss1", "loss2")]
    flags = tape._low[:, CLEAR]
    assert not flags[np.isin(outs, held)].any()
    assert flags[~np.isin(outs, held)].any()


def test_workload_arenas_are_not_zeroed_whole():
    """The bench's least-squares and Gaussian-mixture tapes (smaller): the constant matrix's
    gradient slot and the temporaries the sweep clears are left out of the zeroing."""
    from tapegrad.bench import arrays
    for name in ("lstsq", "gmm"):
        data = arrays.workload_data(name, quick=True)
        w = arrays._TgWorkload(name, data)
        w.tape.planning = "always"
        w()
        w()
        z = w.tape._zero
        assert not isinstance(z, str), name
        zeroed = int((z[:, 1] - z[:, 0]).sum())
        assert zeroed <= w.tape._n_params + 8, (name, zeroed, w.tape._grad.size)
        ref = arrays._TgWorkload(name, data)
        ref.tape.planning = "off"
        for a, b in zip(ref.grads(), w.grads()):
            np.testing.assert_array_equal(a, b)


def test_an_input_with_requires_grad_gets_a_fresh_gradient(mode):
    """An input with ``requires_grad`` is zeroed as an input with a gradient of the
    instructions reading it (it is no parameter): its ``.grad``, first read after several
    backward calls, is that of the last."""
    tape = tg.Tape()
    tape.planning = mode
    x = tape.input("x", shape=(5,), requires_grad=True)
    c = tape.const(np.linspace(1, 2, 5))
    loss = (tg.exp(x * c) + x).sum()
    for xv in (np.zeros(5), np.linspace(-1, 1, 5), np.ones(5)):
        tape.forward(x=xv)
        loss.backward()
    np.testing.assert_allclose(x.grad, c.value * np.exp(xv * c.value) + 1, rtol=1e-13)


def test_zeroing_bench_runs():
    """``python -m tapegrad.bench.zeroing --quick``: both settings give equal gradients."""
    from tapegrad.bench import zeroing
    for name in ("lstsq", "gmm"):
        assert zeroing.compare(name, 2, quick=True) > 0
