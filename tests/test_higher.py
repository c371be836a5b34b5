"""Recorded reverse rules (``tg.gradients``) for every op spec of tests/op_specs.py, to third
order, in float64.

For every spec and case, with ``L = sum(w * f(x))`` and a random direction ``u``:

1. first order: the recorded gradient equals the compiled reverse sweep's (rtol 1e-10), when
   recorded and after a replay at new inputs -- the two reverse rules of each op against each
   other (the compiled one is itself checked against finite differences in test_ops_grad);
2. second order: the recorded Hessian-vector product (``gradients`` of ``sum(grad . u)``)
   equals central differences of the compiled gradient along ``u``;
3. third order: ``d3/dt3 L(x + t u)`` recorded three times equals the second central difference
   of ``grad L(x + t u) . u`` (compiled).

Piecewise-linear ops (relu, abs, max, ...) have zero higher derivatives away from their kinks;
the inputs stay away from kinks (``distinct``), so the differences are zero too.
"""
import zlib

import numpy as np
import pytest

import tapegrad as tg

try:
    from op_specs import SPECS, case_id
    from test_ops_grad import _inputs, _record
except ImportError:  # tests/ imported as a package
    from tests.op_specs import SPECS, case_id
    from tests.test_ops_grad import _inputs, _record


def _params():
    return [pytest.param(spec, case, id=f"{spec.id}-{case_id(case)}")
            for spec in SPECS for case in spec.cases if not spec.zero_grad]


def _close(got, want, rtol, what):
    got, want = np.asarray(got, float), np.asarray(want, float)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def _compiled_grads(tape, params, loss, xs):
    """The compiled reverse sweep's gradient of ``loss`` at parameter values ``xs``."""
    for p, a in zip(params, xs):
        p.value[...] = a
    tape.forward()
    loss.backward()
    return [np.array(p.grad) for p in params]


@pytest.mark.parametrize("spec, case", _params())
def test_recorded_gradients_to_third_order(spec, case, request):
    rng = np.random.default_rng(zlib.crc32(request.node.callspec.id.encode()))
    x0 = _inputs(spec, case, rng)
    tape, params, out = _record(spec, case, x0)
    if out.shape == ():
        loss = out
    else:
        loss = (out * tape.const(rng.standard_normal(out.shape))).sum()
    u = []
    for a in x0:
        d = rng.standard_normal(a.shape)
        u.append(d / max(1.0, float(np.max(np.abs(d)))))

    def along(gs):
        return tg.add(0.0, sum((g * tape.const(d)).sum() for g, d in zip(gs, u)))

    g1 = tg.gradients(loss, params)
    d1 = along(g1)
    g2 = tg.gradients(d1, params)
    d2 = along(g2)
    g3 = tg.gradients(d2, params)
    d3 = along(g3)

    for when, xs in (("recorded", x0), ("replayed", _inputs(spec, case, rng))):
        want1 = _compiled_grads(tape, params, loss, xs)  # also replays g1 .. d3 at xs
        got1 = [np.array(g.value) for g in g1]
        got2 = [np.array(g.value) for g in g2]
        got3 = float(d3.item())
        for i, (g, w) in enumerate(zip(got1, want1)):
            _close(g, w, 1e-10, f"{spec.id} {when}: first order, input {i}")
        h = 1e-5
        up = _compiled_grads(tape, params, loss, [a + h * d for a, d in zip(xs, u)])
        down = _compiled_grads(tape, params, loss, [a - h * d for a, d in zip(xs, u)])
        for i in range(len(params)):
            _close(got2[i], (up[i] - down[i]) / (2 * h), 1e-6,
                   f"{spec.id} {when}: Hessian-vector product, input {i}")

        def dphi(t):
            gs = _compiled_grads(tape, params, loss, [a + t * d for a, d in zip(xs, u)])
            return sum(float(np.sum(g * d)) for g, d in zip(gs, u))
        h = 1e-3
        want3 = (dphi(h) - 2 * dphi(0.0) + dphi(-h)) / h ** 2
        _close(got3, want3, 2e-4, f"{spec.id} {when}: third directional derivative")


def test_no_path_gives_zeros_and_scalar_check():
    tape = tg.Tape()
    a = tape.param(np.array([1.0, 2.0]))
    b = tape.param(np.array([3.0]))
    y = (a * a).sum()
    ga, gb = tg.gradients(y, [a, b])
    np.testing.assert_array_equal(gb.value, [0.0])
    np.testing.assert_array_equal(ga.value, [2.0, 4.0])
    with pytest.raises(tg.TapegradError, match="grad_output"):
        tg.gradients(a * 2.0, [a])
    gy, = tg.gradients(a * 3.0, [a], grad_output=np.array([1.0, -1.0]))
    np.testing.assert_array_equal(gy.value, [3.0, -3.0])
    with pytest.raises(tg.ShapeError):
        tg.gradients(a * 3.0, [a], grad_output=np.ones(3))
    other = tg.Tape().param(np.ones(2))
    with pytest.raises(tg.TapegradError, match="not a Var of y's tape"):
        tg.gradients(y, [other])


def test_gradient_of_an_intermediate_and_of_a_reshape():
    tape = tg.Tape()
    x = tape.param(np.arange(6.0).reshape(2, 3))
    h = tg.sin(x)
    flat = h.reshape(6)
    y = (flat * flat).sum()
    gh, gflat, gx = tg.gradients(y, [h, flat, x])
    np.testing.assert_allclose(gh.value, 2 * np.sin(x.value))
    np.testing.assert_allclose(gflat.value, 2 * np.sin(x.value).reshape(6))
    np.testing.assert_allclose(gx.value, 2 * np.sin(x.value) * np.cos(x.value))


def test_gradient_penalty_trains_with_backward_and_fit():
    """A loss made of a gradient: its parameter gradient (a second derivative) by backward()
    equals central differences, and tg.fit runs on it."""
    rng = np.random.default_rng(3)
    tape = tg.Tape()
    X = rng.standard_normal((16, 2))
    xin = tape.input("x", value=X, requires_grad=True)
    W1 = tape.param(rng.standard_normal((2, 8)) * 0.5)
    W2 = tape.param(rng.standard_normal((8, 1)) * 0.5)
    out = tg.tanh(xin @ W1) @ W2
    gx, = tg.gradients(out.sum(), [xin])
    loss = (out * out).mean() + ((gx * gx).sum(axis=1) - 1.0).__pow__(2).mean()

    def f(w1, w2):
        hdn = np.tanh(X @ w1)
        o = hdn @ w2
        g = ((1 - hdn ** 2) * w2.T) @ w1.T
        return (o * o).mean() + (((g * g).sum(axis=1) - 1.0) ** 2).mean()
    loss.backward()
    w1, w2 = W1.value.copy(), W2.value.copy()
    eps = 1e-6
    num = np.zeros_like(w1)
    for i in np.ndindex(w1.shape):
        e = np.zeros_like(w1)
        e[i] = eps
        num[i] = (f(w1 + e, w2) - f(w1 - e, w2)) / (2 * eps)
    np.testing.assert_allclose(W1.grad, num, rtol=1e-6, atol=1e-9)
    opt = tg.optim.Adam(tape.params, lr=1e-2)
    hist = tg.fit(loss, opt, {"x": X}, batch_size=16, steps=50)
    assert hist[-1] < hist[0]
