"""NumPy on Vars (tapegrad/interop.py) and the Var methods: each records the tapegrad op,
gradients equal central differences of the same NumPy expression on arrays, and every other
NumPy call on a Var is a clear TapegradError -- never an object array."""
import numpy as np
import pytest

import tapegrad as tg

rng = np.random.default_rng(5)
X = rng.standard_normal((6, 3))
A = np.array([0.7, -0.4, 1.3])


def _fd(f, a, eps=1e-6):
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        e = np.zeros_like(a)
        e[i] = eps
        g[i] = (f(a + e) - f(a - e)) / (2 * eps)
    return g


CASES = {
    "ufuncs": lambda v: np.sum(np.tanh(v) * np.exp(v) + np.sin(v) - np.cos(v) ** 2
                               + np.sqrt(np.abs(v) + 1.0) + np.log(np.square(v) + 1.0)),
    "array_on_the_left": lambda v: np.sum(np.ones(3) * v + np.arange(3.0) / (v + 3.0)
                                          - 2.0 ** v + np.maximum(v, 0.1)
                                          + np.minimum(0.2, v)),
    "dot_and_matmul": lambda v: np.sum(np.dot(X, v) ** 2) + np.sum(X @ v),
    "reductions": lambda v: np.mean(np.stack([v, v * 2.0])) + np.max(v)
    + np.sum(np.reshape(np.transpose(np.stack([v, v], axis=1)), (6,)) * np.arange(6.0)),
    "concatenate_hstack_vstack": lambda v: np.sum(np.concatenate([v, np.ones(2)]) ** 2)
    + np.sum(np.hstack([v, v]) * np.arange(6.0)) + np.sum(np.vstack([v, np.ones(3)]) ** 3),
    "where": lambda v: np.sum(np.where(np.array([1.0, 0.0, 1.0]), v * v, np.exp(v))),
    "sum_axis_keepdims": lambda v: np.sum(np.sum(np.stack([v, v * v]), axis=0, keepdims=True)
                                          * np.sum(np.stack([v, v]), 1)[:1]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_numpy_calls_record_and_differentiate(name):
    f = CASES[name]
    tape = tg.Tape()
    v = tape.param(A)
    out = f(v)
    assert isinstance(out, tg.Var) and out.size == 1
    assert out.item() == pytest.approx(float(f(A)), rel=1e-13)
    out.backward()
    np.testing.assert_allclose(v.grad, _fd(lambda a: float(f(a)), A), rtol=1e-7, atol=1e-9)


def test_np_dot_on_many_rows_is_one_instruction():
    tape = tg.Tape()
    w = tape.param(np.ones(3))
    y = np.dot(np.ones((100, 3)), w)
    assert len(tape) == 1 and y.shape == (100,)


@pytest.mark.parametrize("call", [
    lambda v: np.asarray(v), lambda v: np.array([v, v]), lambda v: np.linalg.norm(v),
    lambda v: np.cumsum(v), lambda v: np.tanh(v, out=np.zeros(3)), lambda v: np.add.reduce(v),
    lambda v: np.sum(v, dtype=np.float32), lambda v: np.dot(v, np.ones((3, 2, 2))),
    lambda v: np.exp2(v), lambda v: np.reshape(v, (3,), order="F")])
def test_other_numpy_calls_are_refused(call):
    tape = tg.Tape()
    v = tape.param(A)
    n = len(tape)
    with pytest.raises(tg.TapegradError, match="not|only|Var"):
        call(v)
    assert len(tape) == n


def test_var_methods():
    tape = tg.Tape()
    v = tape.param(A)
    np.testing.assert_allclose(v.relu().value, np.maximum(A, 0))
    for m, ref in (("exp", np.exp), ("tanh", np.tanh), ("sin", np.sin), ("cos", np.cos),
                   ("sigmoid", lambda a: 1 / (1 + np.exp(-a)))):
        np.testing.assert_allclose(getattr(v, m)().value, ref(A), rtol=1e-15)
    np.testing.assert_allclose((v * v + 1.0).log().value, np.log(A * A + 1))
    np.testing.assert_allclose((v * v).sqrt().value, np.abs(A))
    np.testing.assert_allclose(v.pow(3).value, A ** 3)
    np.testing.assert_allclose(v.dot(np.ones(3)).value, A.sum())
    np.testing.assert_allclose(v.clip(-0.5, 1.0).value, np.clip(A, -0.5, 1.0))
    assert v.mean().item() == pytest.approx(A.mean())
    assert v.argmax() == 2 and tg.argmax(v) == 2
    M = tape.param(X)
    np.testing.assert_array_equal(M.argmax(axis=1), X.argmax(axis=1))


def test_clip_gradient_passes_inside_the_bounds_only():
    tape = tg.Tape()
    v = tape.param(np.array([-1.0, -0.2, 0.3, 0.9]))
    tg.clip(v, -0.5, 0.5).sum().backward()
    np.testing.assert_array_equal(v.grad, [0.0, 1.0, 1.0, 0.0])
    tape2 = tg.Tape()
    w = tape2.param(np.array([-1.0, 2.0]))
    tg.clip(w, lo=0.0).sum().backward()
    np.testing.assert_array_equal(w.grad, [0.0, 1.0])


def test_mse_loss_of_different_shapes_is_a_shape_error():
    tape = tg.Tape()
    p = tape.param(np.zeros((4, 1)))
    with pytest.raises(tg.ShapeError, match=r"\(4, 1\).*\(4,\)"):
        tg.mse_loss(p, np.zeros(4))
    assert len(tape) == 0
    assert tg.mse_loss(p, np.ones((4, 1))).item() == 1.0
