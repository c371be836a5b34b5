"""Forward mode: the compiled tangent sweep (tapegrad/tangent.py, rules in ops/tangents.py) and
``tg.jvp`` / ``tg.jacfwd`` built on it, in float64 unless said otherwise.

1. For every op spec of tests/op_specs.py and every case: the tangents of the output along
   three random directions (one sweep) equal central finite differences of the NumPy
   reference along each direction, and the directional derivative of ``sum(w * out)`` equals
   the compiled reverse gradient dotted with the direction (rtol 1e-10) -- when recorded and
   after a replay at new inputs; one direction alone gives the first of the three.
2. ``tg.jvp`` / ``tg.jacfwd`` of random compositions equal ``torch.autograd.functional.jvp``
   / ``jacobian`` to 1e-8 relative (skipped without torch), and jacfwd equals the Jacobian
   built row by row from the compiled reverse sweep and central differences.
3. Recording once per shapes, re-recording when a guard flips, several sweeps per Jacobian,
   float32, tuples of outputs, and clear errors for bad tangents.
"""
import zlib

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.tangent import tangents

try:
    from op_specs import SPECS, case_id
    from test_ops_grad import _inputs, _record, _ref
except ImportError:  # tests/ imported as a package
    from tests.op_specs import SPECS, case_id
    from tests.test_ops_grad import _inputs, _record, _ref

N_DIR = 3


def _close(got, want, rtol, what):
    got, want = np.asarray(got, float), np.asarray(want, float)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def _spec_params():
    return [pytest.param(spec, case, id=f"{spec.id}-{case_id(case)}")
            for spec in SPECS for case in spec.cases]


def _directions(rng, arrays):
    """N_DIR random directions per input, scaled to max |u| = 1 (finite-difference steps stay
    inside the specs' domains: away from kinks, ties and zero)."""
    out = []
    for a in arrays:
        u = rng.standard_normal((N_DIR,) + a.shape)
        out.append(u / max(1.0, float(np.max(np.abs(u)))) if u.size else u)
    return out


@pytest.mark.parametrize("spec, case", _spec_params())
def test_tangent_sweep_against_reverse_and_finite_differences(spec, case, request):
    rng = np.random.default_rng(zlib.crc32(request.node.callspec.id.encode()))
    x0 = _inputs(spec, case, rng)
    tape, params, out = _record(spec, case, x0)
    w = rng.standard_normal(out.shape)
    loss = out if out.shape == () else (out * tape.const(w)).sum()
    if out.shape == ():
        w = np.ones(())
    us = _directions(rng, x0)
    for when, xs in (("recorded", x0), ("replayed", _inputs(spec, case, rng))):
        for p, a in zip(params, xs):
            p.value[...] = a
        tape.forward()
        t = tangents(out, {p: u for p, u in zip(params, us)}, ndir=N_DIR)
        assert t.shape == (N_DIR,) + out.shape
        if spec.zero_grad:
            assert np.all(t == 0), f"{spec.id} {when}: expected zero tangents, got {t}"
        # one direction alone: the first of the three
        t1 = tangents(out, {p: u[0] for p, u in zip(params, us)})
        _close(t1, t[0], 1e-12, f"{spec.id} {when}: one direction vs the first of three")
        # against the compiled reverse sweep: d(sum(w * out)) along u == grad . u
        loss.backward()
        for d in range(N_DIR):
            want = sum(float(np.sum(np.asarray(p.grad) * u[d])) for p, u in zip(params, us))
            _close(float(np.sum(t[d] * w)), want, 1e-10,
                   f"{spec.id} {when}: direction {d}, tangent . w vs gradient . u")
        # against central differences of the NumPy reference, output by output
        h = 1e-6
        for d in range(N_DIR):
            up = _ref(spec, case, [a + h * u[d] for a, u in zip(xs, us)])
            down = _ref(spec, case, [a - h * u[d] for a, u in zip(xs, us)])
            _close(t[d], (up - down) / (2 * h), 1e-6,
                   f"{spec.id} {when}: direction {d}, tangent vs finite differences")


def test_tangents_of_a_float32_tape_match_float64():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3))
    W = rng.standard_normal((3, 5))
    u = rng.standard_normal((2, 4, 3))
    got = {}
    for dtype in (np.float64, np.float32):
        tape = tg.Tape(dtype)
        xv = tape.param(x)
        y = tg.log_softmax(tg.tanh(xv @ tape.const(W)) * 3.0, axis=1).max(axis=0)
        got[dtype] = tangents(y, {xv: u}, ndir=2)
        assert got[dtype].dtype == dtype
    _close(got[np.float32], got[np.float64], 1e-4, "float32 tangents")


def test_ties_and_kinks_follow_the_reverse_rules():
    """At ties (max, maximum, minimum) and kinks (relu, abs at 0) the tangent is the reverse
    rule's choice dotted with the direction: tied maxima share, relu'(0) = abs'(0) = 0."""
    tape = tg.Tape()
    x = tape.param(np.array([[1.0, 3.0, 3.0, 2.0], [0.0, -1.0, 0.0, 0.0]]))
    y = tape.param(np.array([3.0, 3.0, 0.0, 2.0]))
    out = tg.concatenate([tg.max(x, axis=1), tg.max(x).reshape(1), tg.maximum(x, y).reshape(-1),
                          tg.minimum(x, y).reshape(-1), tg.relu(x).reshape(-1),
                          tg.abs(x).reshape(-1)])
    rng = np.random.default_rng(2)
    w = rng.standard_normal(out.shape)
    loss = (out * tape.const(w)).sum()
    ux, uy = rng.standard_normal((2,) + x.shape), rng.standard_normal((2,) + y.shape)
    t = tangents(out, {x: ux, y: uy}, ndir=2)
    loss.backward()
    for d in range(2):
        want = np.sum(x.grad * ux[d]) + np.sum(y.grad * uy[d])
        _close(np.sum(t[d] * w), want, 1e-12, f"direction {d}")
    # by hand: row 0's maximum is tied between columns 1 and 2
    _close(t[:, 0], (ux[:, 0, 1] + ux[:, 0, 2]) / 2, 1e-15, "max of a row with a tie")
    _close(t[:, 1], (ux[:, 1, 0] + ux[:, 1, 2] + ux[:, 1, 3]) / 3, 1e-15, "three-way tie")


def test_a_constant_operand_adds_no_nan():
    """x ** c with a negative base and a constant exponent array: the exponent's slope
    (log of a negative base) is NaN, but the exponent carries no tangent, so it must not
    appear (0 * NaN would): the tangent is c x^(c-1) dx, as in torch."""
    c = np.array([2.0, 3.0])
    x = np.array([-1.5, -2.0])
    _, t = tg.jvp(lambda x: x ** c, (x,), (np.ones(2),))
    _close(t, c * x ** (c - 1), 1e-15, "tangent of x ** const")


# ---------------------------------------------------------------------------- tg.jvp / tg.jacfwd
def _fd_jacobian(fn, args, i, h=1e-6):
    """d fn(*args) / d args[i] by central differences, shape out.shape + args[i].shape."""
    base = np.asarray(fn(*args))
    jac = np.zeros(base.shape + args[i].shape)
    for idx in np.ndindex(args[i].shape):
        a_up = [a.copy() for a in args]
        a_dn = [a.copy() for a in args]
        a_up[i][idx] += h
        a_dn[i][idx] -= h
        jac[(...,) + idx] = (np.asarray(fn(*a_up)) - np.asarray(fn(*a_dn))) / (2 * h)
    return jac


def _mlp_tg(x, W1, b1, W2):
    return tg.log_softmax(tg.tanh(x @ W1 + b1) @ W2, axis=-1)


def _mlp_np(x, W1, b1, W2):
    z = np.tanh(x @ W1 + b1) @ W2
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def _mlp_args(rng, n=3, d=70):
    return [rng.standard_normal((n, 4)), rng.standard_normal((4, d)) * 0.3,
            rng.standard_normal(d) * 0.1, rng.standard_normal((d, 3)) * 0.3]


def test_jacfwd_equals_reverse_rows_and_finite_differences():
    """Jacobians wrt every argument (W1 has 280 elements: nine sweeps of up to 32 directions)
    against the Jacobian built row by row with the compiled reverse sweep, and against
    central differences of the NumPy function."""
    rng = np.random.default_rng(0)
    args = _mlp_args(rng)
    jacs = tg.jacfwd(_mlp_tg, argnums=(0, 1, 2, 3))(*args)
    tape = tg.Tape()
    ps = [tape.param(a) for a in args]
    out = _mlp_tg(*ps)
    rows = [np.zeros(out.shape + a.shape) for a in args]
    for idx in np.ndindex(out.shape):
        e = np.zeros(out.shape)
        e[idx] = 1.0
        out.backward(grad_output=e)
        for r, p in zip(rows, ps):
            r[idx] = p.grad
    for i, a in enumerate(args):
        assert jacs[i].shape == out.shape + a.shape
        _close(jacs[i], rows[i], 1e-10, f"jacfwd vs reverse rows, argument {i}")
        _close(jacs[i], _fd_jacobian(_mlp_np, args, i), 1e-6,
               f"jacfwd vs finite differences, argument {i}")


def test_repeated_calls_reuse_the_tangent_arena():
    """Replays reuse one tangent arena without zeroing it (only what a sweep writes changes):
    later calls, with other inputs, tangents and a last sweep of fewer directions, stay
    exact."""
    rng = np.random.default_rng(4)
    jf = tg.jacfwd(_mlp_tg, argnums=(0, 2))
    for _ in range(3):
        args = _mlp_args(rng, n=2, d=20)
        jx, jb = jf(*args)
        _close(jx, _fd_jacobian(_mlp_np, args, 0), 1e-6, "repeated jacfwd, x")
        _close(jb, _fd_jacobian(_mlp_np, args, 2), 1e-6, "repeated jacfwd, b1")
        for _ in range(2):
            ts = [rng.standard_normal(a.shape) for a in args]
            _, t = tg.jvp(_mlp_tg, tuple(args), tuple(ts))
            h = 1e-6
            want = (_mlp_np(*[a + h * u for a, u in zip(args, ts)])
                    - _mlp_np(*[a - h * u for a, u in zip(args, ts)])) / (2 * h)
            _close(t, want, 1e-6, "repeated jvp")
    # an argument not differentiated is read (as zero tangents) by the add, after sweeps of
    # 32 and then 8 directions that lay the arena out differently
    jb = tg.jacfwd(lambda x, b: tg.tanh(x) + b, argnums=0)
    for _ in range(2):
        x, b = rng.standard_normal(40), rng.standard_normal(40)
        _close(jb(x, b), np.diag(1 - np.tanh(x) ** 2), 1e-14, "jacfwd with an unused b")


def test_jvp_records_once_and_rerecords_when_a_guard_flips():
    calls = []

    def f(x):
        calls.append(1)
        if x.sum() > 0:  # a guard
            return tg.sin(x) * x
        return tg.exp(x) * 2.0

    u = np.array([1.0, -2.0, 0.5])
    for x, n_calls in ((np.array([0.5, 1.0, 2.0]), 1), (np.array([1.5, 0.2, 0.1]), 1),
                       (np.array([-1.0, -2.0, 0.5]), 2), (np.array([-0.5, -0.2, 0.1]), 2),
                       (np.array([0.5, 1.0, 2.0]), 3)):
        value, t = tg.jvp(f, (x,), (u,))
        if x.sum() > 0:
            _close(value, np.sin(x) * x, 1e-14, "value, positive branch")
            _close(t, (np.cos(x) * x + np.sin(x)) * u, 1e-14, "tangent, positive branch")
        else:
            _close(value, 2 * np.exp(x), 1e-14, "value, negative branch")
            _close(t, 2 * np.exp(x) * u, 1e-14, "tangent, negative branch")
        assert len(calls) == n_calls, f"recordings: {len(calls)}, expected {n_calls}"
    tg.jvp(f, (np.ones(4),), (np.ones(4),))  # new shapes: a new recording
    assert len(calls) == 4


def test_jacfwd_rerecords_when_a_guard_flips():
    jf = tg.jacfwd(lambda x: x * 3.0 if x.max() > 0 else x * x)
    np.testing.assert_array_equal(jf(np.array([1.0, -1.0])), np.diag([3.0, 3.0]))
    np.testing.assert_array_equal(jf(np.array([-1.0, -2.0])), np.diag([-2.0, -4.0]))


def test_jvp_several_arguments_tuple_outputs_and_unseeded_paths():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 3)), rng.standard_normal(3)
    ta, tb = rng.standard_normal((2, 3)), rng.standard_normal(3)

    def f(x, y):
        return (x * y).sum(axis=1), tg.maximum(x, 0.0) + 1.0, x * 0.0 + 5.0

    (v1, v2, v3), (t1, t2, t3) = tg.jvp(f, (a, b), (ta, tb))
    _close(v1, (a * b).sum(axis=1), 1e-14, "value 1")
    _close(t1, (ta * b + a * tb).sum(axis=1), 1e-14, "tangent 1")
    _close(t2, np.where(a > 0, ta, 0.0), 1e-14, "tangent 2")
    _close(t3, np.zeros((2, 3)), 0, "tangent 3")
    # a function that ignores an argument: zero Jacobian for it
    jx, jy = tg.jacfwd(lambda x, y: tg.exp(x), argnums=(0, 1))(b, a)
    _close(jx, np.diag(np.exp(b)), 1e-14, "jacfwd, used argument")
    assert jy.shape == (3, 2, 3) and not jy.any()


def test_jvp_and_jacfwd_float32():
    x = np.linspace(-1, 1, 5).astype(np.float32)
    v, t = tg.jvp(lambda x: tg.tanh(x) * x, (x,), (np.ones(5, np.float32),))
    assert v.dtype == np.float32 and t.dtype == np.float32
    x64 = x.astype(np.float64)
    _close(t, np.tanh(x64) + (1 - np.tanh(x64) ** 2) * x64, 1e-6, "float32 jvp")
    j = tg.jacfwd(lambda x: tg.softmax(x))(x)
    assert j.dtype == np.float32 and j.shape == (5, 5)
    s = np.exp(x64) / np.exp(x64).sum()
    _close(j, np.diag(s) - np.outer(s, s), 1e-6, "float32 jacfwd of softmax")


def test_scalar_arguments_and_outputs():
    v, t = tg.jvp(lambda x, y: x * y + tg.sin(x), (2.0, 3.0), (1.0, 0.0))
    assert v.shape == () and t.shape == ()
    _close(t, 3.0 + np.cos(2.0), 1e-15, "jvp of scalars")
    j = tg.jacfwd(lambda x: (x * x).sum())(np.array([1.0, 2.0]))
    _close(j, [2.0, 4.0], 0, "jacfwd of a scalar output")


# ---------------------------------------------------------------------------- errors
def test_bad_tangents_are_clear_errors_and_leave_the_cache_usable():
    f = lambda x: tg.exp(x)  # noqa: E731
    x = np.zeros(3)
    tg.jvp(f, (x,), (np.ones(3),))
    with pytest.raises(tg.ShapeError, match=r"tangent 0 has shape \(2,\) but primal 0 has "
                                            r"shape \(3,\).*test_forward_mode.py:\d+"):
        tg.jvp(f, (x,), (np.ones(2),))
    with pytest.raises(tg.TapegradError, match="1 primals but 2 tangents"):
        tg.jvp(f, (x,), (np.ones(3), np.ones(3)))
    with pytest.raises(tg.TapegradError, match="must be tuples"):
        tg.jvp(f, x, np.ones(3))
    with pytest.raises(tg.TapegradError, match="tangent 0 is not an array of numbers"):
        tg.jvp(f, (x,), ("abc",))
    with pytest.raises(tg.TapegradError, match="argument 0: expected numbers"):
        tg.jvp(f, (np.array(["a"]),), (np.ones(1),))
    with pytest.raises(tg.TapegradError, match="must return a Var"):
        tg.jvp(lambda x: np.ones(3), (x,), (x,))
    with pytest.raises(tg.TapegradError, match="argnums 2 out of range"):
        tg.jacfwd(f, argnums=2)(x)
    _, t = tg.jvp(f, (x,), (np.full(3, 2.0),))  # still works
    _close(t, np.full(3, 2.0), 0, "after errors")


def test_tangents_seed_errors():
    tape = tg.Tape()
    a = tape.param(np.ones(3))
    h = a * 2.0
    y = (h * h).sum()
    with pytest.raises(tg.TapegradError, match="not a param or an input"):
        tangents(y, {h: np.ones(3)})
    with pytest.raises(tg.ShapeError, match=r"has shape \(2, 3\), expected \(3,\)"):
        tangents(y, {a: np.ones((2, 3))})
    with pytest.raises(tg.ShapeError, match=r"expected \(4, 3\)"):
        tangents(y, {a: np.ones((2, 3))}, ndir=4)
    with pytest.raises(tg.TapegradError, match="shares its memory"):
        tangents(y, {a: np.ones(3), a.reshape(1, 3): np.ones((1, 3))})
    other = tg.Tape().param(np.ones(3))
    with pytest.raises(tg.TapegradError, match="another tape"):
        tangents(y, {other: np.ones(3)})
    _close(tangents(y, {a: np.ones(3)}), 24.0, 0, "after errors")


# ---------------------------------------------------------------------------- against PyTorch
def _compositions():
    """Random programs over a table of ops given both in tapegrad and in torch: a chain of
    unary ops and binary ops with the other arguments (broadcasting), ended by a reduction."""
    import torch
    unary = [
        (lambda v: tg.tanh(v), torch.tanh),
        (lambda v: tg.sin(v), torch.sin),
        (lambda v: tg.sigmoid(v) * 2.0, lambda v: torch.sigmoid(v) * 2.0),
        (lambda v: tg.log(1.0 + v * v), lambda v: torch.log(1.0 + v * v)),
        (lambda v: tg.sqrt(v * v + 0.5), lambda v: torch.sqrt(v * v + 0.5)),
        (lambda v: tg.exp(v * 0.3), lambda v: torch.exp(v * 0.3)),
        (lambda v: tg.leaky_relu(v, 0.2), lambda v: torch.nn.functional.leaky_relu(v, 0.2)),
        (lambda v: 1.0 / (1.0 + v * v), lambda v: 1.0 / (1.0 + v * v)),
        (lambda v: tg.softmax(v, axis=-1), lambda v: torch.softmax(v, dim=-1)),
        (lambda v: v ** 3 * 0.1, lambda v: v ** 3 * 0.1),
    ]
    binary = [  # with b of shape (4,) or W of shape (4, 4)
        (lambda v, b, W: v * b, lambda v, b, W: v * b),
        (lambda v, b, W: v - b, lambda v, b, W: v - b),
        (lambda v, b, W: v / (1.0 + b * b), lambda v, b, W: v / (1.0 + b * b)),
        (lambda v, b, W: v @ W, lambda v, b, W: v @ W),
        (lambda v, b, W: tg.maximum(v, b), lambda v, b, W: torch.maximum(v, b)),
        (lambda v, b, W: tg.where(v > 0, v * b, v), lambda v, b, W: torch.where(v > 0, v * b, v)),
        (lambda v, b, W: tg.concatenate([v[:, :2], v[:, 2:] * b[2:]], axis=1),
         lambda v, b, W: torch.cat([v[:, :2], v[:, 2:] * b[2:]], dim=1)),
        (lambda v, b, W: (v.T @ v) * 0.1, lambda v, b, W: (v.T @ v) * 0.1),
    ]
    final = [
        (lambda v: v, lambda v: v),
        (lambda v: tg.logsumexp(v, axis=0), lambda v: torch.logsumexp(v, dim=0)),
        (lambda v: v.sum(axis=1), lambda v: v.sum(dim=1)),
        (lambda v: tg.max(v, axis=1), lambda v: torch.amax(v, dim=1)),
    ]
    progs = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        steps = [("u", int(rng.integers(len(unary)))) if rng.random() < 0.5
                 else ("b", int(rng.integers(len(binary)))) for _ in range(5)]
        progs.append((seed, steps, int(rng.integers(len(final)))))

    def build(steps, fin, lib):
        def fn(x, b, W):
            v = x
            for kind, i in steps:
                if kind == "u":
                    v = unary[i][lib](v)
                else:
                    v = binary[i][lib](v, b, W)
                    if v.shape[0] != x.shape[0]:  # v.T @ v: back to (rows, 4)
                        v = x @ v
            return final[fin][lib](v)
        return fn
    return [(seed, build(s, fin, 0), build(s, fin, 1)) for seed, s, fin in progs]


def test_jvp_and_jacfwd_equal_torch_on_random_compositions():
    torch = pytest.importorskip("torch")
    from torch.autograd.functional import jacobian, jvp
    for seed, f_tg, f_torch in _compositions():
        rng = np.random.default_rng(100 + seed)
        args = [rng.standard_normal((3, 4)), rng.standard_normal(4),
                rng.standard_normal((4, 4)) * 0.5]
        tans = [rng.standard_normal(a.shape) for a in args]
        value, t = tg.jvp(f_tg, tuple(args), tuple(tans))
        tv, tt = jvp(f_torch, tuple(torch.tensor(a) for a in args),
                     tuple(torch.tensor(a) for a in tans))
        _close(value, tv.numpy(), 1e-12, f"program {seed}: value")
        _close(t, tt.numpy(), 1e-8, f"program {seed}: jvp vs torch")
        jacs = tg.jacfwd(f_tg, argnums=(0, 1, 2))(*args)
        want = jacobian(f_torch, tuple(torch.tensor(a) for a in args))
        for i in range(3):
            _close(jacs[i], want[i].numpy(), 1e-8, f"program {seed}: jacfwd arg {i} vs torch")
