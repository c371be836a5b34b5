"""Gathers (tapegrad/ops/gather.py): NumPy's advanced indexing, ``take``, ``repeat``,
``expand_dims``, ``squeeze`` on Vars, their errors, index Vars fed at replay (checked by the
kernels, never read out of bounds), and training an embedding with ``tg.fit``.

Gradients and values of every op here are also in the op-spec table (tests/op_specs.py:
finite differences, third order, tangents); these tests check the NumPy semantics on many
keys (value, and gradient against ``np.add.at`` -- NumPy's own scatter-add) and the errors.
"""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad.opcodes import A0, OP, Op
from tapegrad.validate import validate_tape_arrays

S = slice
X3 = np.arange(24.0).reshape(2, 3, 4) * 0.5 - 3.0
I = np.array
KEYS = [
    I([1, 0, 1]), [0], I([[1], [0]]), (S(None), I([2, 2, 0])), (Ellipsis, I([3, -4, 0])),
    (I([0, 1]), I([2, 0])), (I([0, 1]), S(None), I([3, 3])), (1, S(None), I([0, 2])),
    (S(None), 2, I([0, 1, 1])), (I([[0], [1]]), I([0, 2]), 1), (None, I([1]), None),
    (S(1, None), I([0, 0]), S(None, None, -1)), (I([1, 0]), Ellipsis, I([1, 2])),
    (I([0, 1]), None, I([2, 0])), (X3[..., 0] > 0,), (X3 > 0,), (1, X3[0] < -1),
    (S(None), X3[0, :, 0] > -2), (I([], np.int64),), (S(None), I([[0, 1], [2, 2]]), I([1])),
    (I(1), S(None)), (0, I([1, 2]), I([3, 0])),
]


@pytest.mark.parametrize("key", KEYS, ids=[str(i) for i in range(len(KEYS))])
def test_advanced_indexing_matches_numpy(key):
    tape = tg.Tape()
    x = tape.param(X3)
    y = x[key]
    want = X3[key]
    assert y.shape == want.shape
    np.testing.assert_array_equal(y.value, want)
    w = np.random.default_rng(0).standard_normal(want.shape)
    (y * w).sum().backward()
    g = np.zeros_like(X3)
    np.add.at(g, key, w)  # NumPy's scatter-add of the same key: duplicates accumulate
    np.testing.assert_allclose(x.grad, g, rtol=1e-14, atol=1e-14)


def test_index_var_replays_with_new_ids_and_matches_numpy():
    rng = np.random.default_rng(1)
    E = rng.standard_normal((7, 3))
    tape = tg.Tape()
    emb = tape.param(E)
    tok = tape.input("tok", shape=(2, 4))
    w = rng.standard_normal((2, 4, 3))
    loss = (emb[tok] * w).sum()
    for ids in (np.array([[0, 6, 6, 1], [2, 2, 2, -1]]), np.array([[3, 3, 3, 3], [-7, 0, 5, 4]])):
        tape.forward(tok=ids)
        assert loss.item() == pytest.approx(float((E[ids] * w).sum()), rel=1e-13)
        loss.backward()
        g = np.zeros_like(E)
        np.add.at(g, ids, w)
        np.testing.assert_allclose(emb.grad, g, rtol=1e-14)


@pytest.mark.parametrize("bad", [7.0, -8.0, 1.5, np.nan, np.inf])
def test_bad_index_on_replay_is_a_feed_error_and_the_tape_stays_usable(bad):
    tape = tg.Tape()
    emb = tape.param(np.arange(14.0).reshape(7, 2))
    tok = tape.input("tok", value=np.array([1.0, 2.0]))
    lab = tape.input("lab", value=np.array([0.0, 3.0]))
    picked = emb[tok] + emb[np.arange(2), tape.input("col", value=np.array([0.0, 1.0]))][:, None]
    loss = (picked ** 2).sum() + emb[lab, 1].sum()
    with pytest.raises(tg.FeedError, match=r"gather: an index is not an integer in \[-7, 7\)"):
        tape.forward(tok=np.array([0.0, bad]))
    with pytest.raises(tg.FeedError, match=r"gather: an index is not an integer in \[-2, 2\)"):
        tape.forward(tok=np.array([0.0, 1.0]), col=np.array([bad if bad != 7.0 else 2.0, 0.0]))
    tape.forward(tok=np.array([0.0, 6.0]), col=np.array([1.0, -2.0]))
    loss.backward()
    E = np.arange(14.0).reshape(7, 2)
    p = E[[0, 6]] + E[[0, 1], [1, 0]][:, None]
    assert loss.item() == pytest.approx(float((p ** 2).sum() + E[[0, 3], 1].sum()))


def test_bad_index_written_into_the_arena_is_caught_by_the_reverse_and_tangent_sweeps():
    tape = tg.Tape()
    emb = tape.param(np.ones((4, 2)))
    tok = tape.input("tok", value=np.array([1.0, 3.0]))
    loss = (emb[tok] ** 2).sum()
    loss.backward()
    tok.value[...] = [1.0, 1e9]  # behind the kernels' back: no replay of values
    with pytest.raises(tg.FeedError, match="gather"):
        loss.backward()
    from tapegrad.tangent import tangents
    with pytest.raises(tg.FeedError, match="gather"):
        tangents(loss, {emb: np.ones((4, 2))})
    tok.value[...] = [0.0, 2.0]
    loss.backward()
    np.testing.assert_array_equal(emb.grad, [[2, 2], [0, 0], [2, 2], [0, 0]])


def test_record_time_errors_leave_the_tape_usable():
    tape = tg.Tape()
    x = tape.param(np.arange(12.0).reshape(3, 4))
    ids = tape.input("ids", value=np.array([0.0, 5.0]))
    mask = x > 5.0
    n = len(tape)
    cases = [
        (tg.TapegradError, "boolean mask", lambda: x[mask]),
        (tg.ShapeError, "out of bounds for axis 1 with size 4", lambda: x[:, [0, 4]]),
        (tg.ShapeError, "out of bounds for axis 0", lambda: x[np.array([-4])]),
        (tg.ShapeError, "integer or boolean", lambda: x[np.array([0.0, 1.0])]),
        (tg.ShapeError, "does not match", lambda: x[np.array([True, False])]),
        (tg.ShapeError, "could not be broadcast", lambda: x[[0, 1], [0, 1, 2]]),
        (tg.ShapeError, "too many indices", lambda: x[[0], [0], [0]]),
        (tg.FeedError, r"index 5\.0 at \(1,\)", lambda: x[ids]),
        (tg.FeedError, r"not an integer in \[-4, 4\)", lambda: x[0, ids]),
        (tg.TapegradError, "two different tapes", lambda: x[tg.Tape().const(np.zeros(2))]),
        (tg.ShapeError, "not supported", lambda: x[np.array(True)]),
        (tg.ShapeError, "integers", lambda: tg.take(x, np.array([True]))),
        (tg.ShapeError, "out of bounds", lambda: tg.take(x, [12])),
        (tg.TapegradError, "shape depends on the data", lambda: tg.repeat(x, ids)),
        (tg.ShapeError, "negative", lambda: tg.repeat(x, -1)),
        (tg.ShapeError, "3 repeats for an axis of 4", lambda: tg.repeat(x, [1, 2, 3], axis=1)),
        (tg.ShapeError, "out of bounds", lambda: tg.repeat(x, 2, axis=2)),
        (tg.ShapeError, "size not equal to one", lambda: tg.squeeze(x, 0)),
        (tg.ShapeError, "out of bounds", lambda: tg.squeeze(x, 2)),
        (tg.ShapeError, "out of bounds", lambda: tg.expand_dims(x, 3)),
        (tg.ShapeError, "repeated axis", lambda: tg.expand_dims(x, (0, -4))),
        (tg.ShapeError, "axis must be", lambda: tg.expand_dims(x, 1.0)),
    ]
    for err, match, call in cases:
        with pytest.raises(err, match=match):
            call()
        assert len(tape) == n, match
    y = x[[2, 0]].sum()  # still records and replays
    y.backward()
    np.testing.assert_array_equal(x.grad, [[1] * 4, [0] * 4, [1] * 4])


def test_numpy_functions_and_methods_on_vars():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 1, 2))
    tape = tg.Tape()
    v = tape.param(a)
    ids = tape.input("ids", value=np.array([2.0, 0.0]))
    outs = {
        "take": (np.take(v, [1, -1], axis=0), np.take(a, [1, -1], axis=0)),
        "take_flat": (v.take(np.array([[5, 0]])), a.take(np.array([[5, 0]]))),
        "take_array_by_var": (tg.take(np.arange(5.0), ids), np.arange(5.0)[[2, 0]]),
        "repeat": (np.repeat(v, 2, axis=2), np.repeat(a, 2, axis=2)),
        "repeat_method": (v.repeat([1, 0, 2], axis=0), a.repeat([1, 0, 2], axis=0)),
        "expand_dims": (np.expand_dims(v, (0, 2)), np.expand_dims(a, (0, 2))),
        "squeeze": (np.squeeze(v), np.squeeze(a)),
        "squeeze_method": (v.squeeze(1), a.squeeze(1)),
    }
    for name, (got, want) in outs.items():
        assert isinstance(got, tg.Var), name
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got.value, want, err_msg=name)
    with pytest.raises(tg.TapegradError, match="mode"):
        np.take(v, [0], mode="clip")
    # NumPy dispatches np.take on its array argument only: an ndarray indexed by a Var is
    # refused (write tg.take(array, ids)), never an object array or frozen values
    with pytest.raises(tg.TapegradError, match="not an array"):
        np.take(np.arange(5.0), ids)


def test_float32_tape_and_the_exact_integer_limit(monkeypatch):
    tape = tg.Tape(np.float32)
    x = tape.param(np.arange(6.0).reshape(3, 2))
    ids = tape.input("ids", value=np.array([2.0, 2.0, 0.0]))
    y = (x[ids] * x[[1, 1, 1], [0, 1, 0]][:, None]).sum()
    y.backward()
    assert y.value.dtype == np.float32
    X = np.arange(6.0).reshape(3, 2)
    g = np.zeros_like(X)
    c = X[[1, 1, 1], [0, 1, 0]]
    np.add.at(g, [2, 2, 0], np.repeat(c[:, None], 2, axis=1))
    np.add.at(g, ([1, 1, 1], [0, 1, 0]), X[[2, 2, 0]].sum(axis=1))
    np.testing.assert_allclose(x.grad, g, rtol=1e-6)
    import tapegrad.ops.gather as gather
    monkeypatch.setattr(gather, "_F32_EXACT", 2)
    with pytest.raises(tg.ShapeError, match="float32"):
        x[ids]


def test_validation_refuses_gathers_of_wrong_sizes():
    tape = tg.Tape()
    x = tape.param(np.ones((3, 2)))
    y = (x[[0, 2]] ** 2).sum()
    g, = tg.gradients(y, [x])  # records a SCATTER_ADD
    tape.forward()
    instr = tape._instr.copy()
    rows = {Op(int(instr[k, OP])): k for k in range(len(instr))}
    assert Op.GATHER in rows and Op.SCATTER_ADD in rows
    args = (tape._imm, tape._boff, tape._bsize, None, tape._val.shape[0])
    validate_tape_arrays(instr, *args)
    for op in (Op.GATHER, Op.SCATTER_ADD):
        for j, delta in ((1, 5), (3, 1), (2, 1), (0, 1)):
            bad = instr.copy()
            bad[rows[op], A0 + j] += delta  # n, m, B or A no longer match the buffers
            with pytest.raises(tg.TapeFormatError, match="A, n, B, m"):
                validate_tape_arrays(bad, *args)


def test_save_load_round_trip_and_higher_order(tmp_path):
    tape = tg.Tape()
    emb = tape.param(np.linspace(-1, 1, 10).reshape(5, 2), name="emb")
    tok = tape.input("tok", value=np.array([4.0, 1.0, 4.0]))
    loss = (tg.tanh(emb[tok]) ** 2).sum()
    loss.name = "loss"
    path = str(tmp_path / "g.tape.npz")
    tape.save(path)
    t2 = tg.Tape.load(path)
    for t in (tape, t2):
        t.forward(tok=np.array([0.0, 0.0, 3.0]))
        t["loss"].backward()
    np.testing.assert_array_equal(t2["emb"].grad, emb.grad)
    with pytest.raises(tg.FeedError, match="gather"):
        t2.forward(tok=np.array([0.0, 0.0, 5.0]))
    # Hessian of sum(tanh(E[idx])**2) by tg.hessian against finite differences of tg.grad
    idx = np.array([1, 1, 3])
    f = lambda e: (tg.tanh(e[idx]) ** 2).sum()  # noqa: E731
    e0 = np.linspace(-1, 1, 8).reshape(4, 2)
    H = tg.hessian(f)(e0)
    gf = tg.grad(f)
    num = np.zeros((4, 2, 4, 2))
    for i in np.ndindex(4, 2):
        d = np.zeros_like(e0)
        d[i] = 1e-6
        num[(slice(None), slice(None)) + i] = (gf(e0 + d) - gf(e0 - d)) / 2e-6
    np.testing.assert_allclose(H, num, rtol=1e-6, atol=1e-8)


def test_embedding_trains_with_fit_on_token_batches():
    """A bag-of-embeddings classifier: tokens fed by tg.fit as float data, the gradient of
    one step against NumPy, and the loss going down."""
    rng = np.random.default_rng(3)
    V, D, C, L, N = 12, 4, 3, 5, 64
    toks = rng.integers(0, V, (N, L))
    labels = toks[:, 0] % C  # learnable from the first token
    tape = tg.Tape()
    E = tape.param(rng.standard_normal((V, D)) * 0.1)
    W = tape.param(rng.standard_normal((D, C)) * 0.1)
    tok = tape.input("tok", shape=(16, L))
    lab = tape.input("lab", shape=(16,))
    h = E[tok].mean(axis=1)
    loss = tg.cross_entropy(h @ W, lab)
    tape.forward(tok=toks[:16], lab=labels[:16])
    loss.backward()
    # NumPy reference of dE
    e, w = E.value.copy(), W.value.copy()
    hh = e[toks[:16]].mean(axis=1)
    z = hh @ w
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(16), labels[:16]] -= 1
    dh = (p / 16) @ w.T
    dE = np.zeros_like(e)
    np.add.at(dE, toks[:16], np.repeat(dh[:, None, :] / L, L, axis=1))
    np.testing.assert_allclose(E.grad, dE, rtol=1e-10, atol=1e-14)
    opt = tg.optim.Adam(tape.params, lr=0.05)
    hist = tg.fit(loss, opt, {"tok": toks.astype(float), "lab": labels.astype(float)},
                  batch_size=16, steps=150, seed=0)
    assert hist[-10:].mean() < 0.7 * hist[:10].mean()
