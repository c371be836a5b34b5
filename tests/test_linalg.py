"""``tg.linalg`` beyond the op specs (values, gradients to third order and tangents of every op
are in tests/op_specs.py): bad shapes, singular and indefinite matrices when recorded and when
replayed, NumPy's functions on Vars, Hessians against closed forms, float32, validation of
the attributes a loaded tape carries."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad.opcodes import A0, OP, Op
from tapegrad.validate import validate_tape_arrays


def _spd(n, seed=0):
    r = np.random.default_rng(seed).standard_normal((n, n))
    return r @ r.T / n + np.eye(n)


# ---------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("call, words", [
    (lambda t: tg.linalg.solve(t.param(np.ones((2, 3))), np.ones(2)), "square"),
    (lambda t: tg.linalg.solve(t.param(np.ones(3)), np.ones(3)), "square"),
    (lambda t: tg.linalg.solve(t.param(np.eye(3)), np.ones(2)), "does not match"),
    (lambda t: tg.linalg.solve(t.param(np.eye(3)), np.ones((2, 2))), "does not match"),
    (lambda t: tg.linalg.solve(t.param(np.ones((2, 3, 3))), np.ones((4, 3, 1))), "broadcast"),
    (lambda t: tg.linalg.solve(t.param(np.eye(3)), np.float64(1.0)), "does not match"),
    (lambda t: tg.linalg.inv(t.param(np.ones((3, 2)))), "square"),
    (lambda t: tg.linalg.cholesky(t.param(np.ones((2, 3)))), "square"),
    (lambda t: tg.linalg.slogdet(t.param(np.ones(4))), "square"),
    (lambda t: tg.linalg.logdet(t.param(np.ones((1, 2)))), "square"),
    (lambda t: tg.linalg.solve_triangular(t.param(np.eye(3)), np.ones(4)), "does not match"),
    (lambda t: tg.linalg.triangular_solve(t.param(np.eye(3)), np.ones(3)), "2-D"),
    (lambda t: tg.linalg.triangular_solve(t.param(np.eye(3)), np.ones((2, 3)),
                                          left=False, upper=True).value, None),
])
def test_bad_shapes_are_shape_errors_naming_the_op_and_line(call, words):
    tape = tg.Tape()
    if words is None:  # a right solve takes (K, M): no error
        call(tape)
        return
    with pytest.raises(tg.ShapeError) as e:
        call(tape)
    assert words in str(e.value) and "test_linalg.py:" in str(e.value)
    n = len(tape)
    tape.forward()  # the tape stays usable
    assert len(tape) == n


def test_bad_trans_flag():
    tape = tg.Tape()
    with pytest.raises(tg.TapegradError, match="trans must be"):
        tg.linalg.solve_triangular(tape.param(np.eye(2)), np.ones(2), trans="X")


# ---------------------------------------------------------------------------- singular matrices
def test_singular_matrix_raises_when_recorded_and_the_tape_stays_usable():
    tape = tg.Tape()
    good = tape.param(np.eye(2) * 3.0)
    x = tg.linalg.solve(good, np.ones(2))
    n = len(tape)
    A = tape.param(np.array([[1.0, 2.0], [2.0, 4.0]]))
    for call, what in ((lambda: tg.linalg.solve(A, np.ones(2)), "solve: .*singular"),
                       (lambda: tg.linalg.inv(A), "solve: .*singular"),
                       (lambda: tg.linalg.cholesky(-good), "cholesky: .*not positive definite"),
                       (lambda: tg.linalg.solve_triangular(A - np.eye(2), np.ones(2)),
                        "solve_triangular|trisolve: .*singular")):
        with pytest.raises(tg.LinAlgError, match=what) as e:
            call()
        assert isinstance(e.value, np.linalg.LinAlgError)
        assert "test_linalg.py:" in str(e.value)
    # only the successful ops (and the -good, A - I before the failing ones) remain
    loss = (x * x).sum()
    loss.backward()
    np.testing.assert_allclose(good.grad, -2 * np.outer(np.ones(2) / 3, np.ones(2) / 3) / 3)
    assert len(tape) >= n


def test_singular_matrix_raises_on_replay_and_in_fit():
    tape = tg.Tape()
    A = tape.param(np.eye(3), name="A")
    S = tape.param(np.eye(3), name="S")
    b = tape.input("b", value=np.ones(3))
    L = tg.linalg.cholesky(S)
    loss = (tg.linalg.solve(A, b) ** 2).sum() + L.sum()
    loss.backward()
    A.value[...] = np.array([[1.0, 2, 3], [2, 4, 6], [0, 0, 1]])
    with pytest.raises(tg.LinAlgError, match=r"solve: .*singular .*test_linalg.py:"):
        tape.forward()
    A.value[...] = np.eye(3)
    tape.forward()  # usable again
    loss.backward()
    opt = tg.optim.SGD(tape.params, lr=0.0)
    S.value[...] = -np.eye(3)
    with pytest.raises(tg.LinAlgError, match="fit.*step 0.*not positive definite"):
        tg.fit(loss, opt, steps=3)


def test_zero_diagonal_and_unit_diagonal():
    tape = tg.Tape()
    T = tape.param(np.array([[0.0, 0.0], [1.0, 0.0]]))
    x = tg.linalg.solve_triangular(T, np.array([1.0, 2.0]), unit_diagonal=True)
    np.testing.assert_allclose(x.value, [1.0, 1.0])  # the zero diagonal is not read
    with pytest.raises(tg.LinAlgError):
        tg.linalg.solve_triangular(T, np.array([1.0, 2.0]))


def test_slogdet_and_logdet_of_singular_and_negative_matrices_do_not_raise():
    tape = tg.Tape()
    S = tape.param(np.array([[1.0, 2.0], [2.0, 4.0]]))
    sign, lad = tg.linalg.slogdet(S)
    assert sign.value == 0.0 and lad.value == -np.inf
    assert tg.linalg.logdet(S).value == -np.inf
    N = tape.param(np.diag([-1.0, 2.0]))
    assert np.isnan(tg.linalg.logdet(N).value)
    sign, lad = np.linalg.slogdet(N)
    assert sign.value == -1.0 and lad.value == pytest.approx(np.log(2.0))
    # the gradient of log|det| at the negative-determinant matrix is still inv(N)^T
    lad.backward()
    np.testing.assert_allclose(N.grad, np.linalg.inv(N.value).T)
    # a stack: the batch shape is kept, as NumPy's
    st = tape.param(np.stack([np.eye(2), 2 * np.eye(2), -np.eye(2)[::-1]]))
    s2, l2 = tg.linalg.slogdet(st)
    ref = np.linalg.slogdet(st.value)
    np.testing.assert_array_equal(s2.value, ref.sign)
    np.testing.assert_allclose(l2.value, ref.logabsdet)


# ---------------------------------------------------------------------------- NumPy interop
def test_numpy_linalg_on_vars_records_the_tg_ops():
    rng = np.random.default_rng(1)
    A0, S0, b0 = rng.standard_normal((3, 3)) + 3 * np.eye(3), _spd(3), rng.standard_normal(3)
    tape = tg.Tape()
    A, S = tape.param(A0), tape.param(S0)
    n = len(tape)
    x = np.linalg.solve(A, b0)
    Ai = np.linalg.inv(A)
    L = np.linalg.cholesky(S)
    sign, lad = np.linalg.slogdet(A)
    assert all(isinstance(v, tg.Var) for v in (x, Ai, L, sign, lad))
    np.testing.assert_allclose(x.value, np.linalg.solve(A0, b0))
    np.testing.assert_allclose(Ai.value, np.linalg.inv(A0))
    np.testing.assert_allclose(L.value, np.linalg.cholesky(S0))
    assert lad.value == pytest.approx(np.linalg.slogdet(A0).logabsdet)
    ops = {Op(int(o)) for o in tape._instr[n:len(tape), OP]}
    assert {Op.SOLVE, Op.CHOLESKY, Op.SLOGDET} <= ops
    with pytest.raises(tg.TapegradError, match="upper=True"):
        np.linalg.cholesky(S, upper=True)
    with pytest.raises(tg.TapegradError, match="not supported on Vars"):
        np.linalg.eig(A)


# ---------------------------------------------------------------------------- higher order
def test_hessian_of_logdet_and_of_a_quadratic_form_match_closed_forms():
    """d2 logdet(A)[E, F] = -tr(A^-1 E A^-1 F): hessian[i, j, k, l] = -(A^-1)_li (A^-1)_jk.
    f(A) = b^T A^-1 b: hessian = (A^-T b b^T A^-T)(A^-T ...) terms, checked via finite
    differences of the closed-form gradient -A^-T b b^T A^-T."""
    rng = np.random.default_rng(2)
    A0 = rng.standard_normal((3, 3)) + 3 * np.eye(3)
    Ai = np.linalg.inv(A0)
    H = tg.hessian(lambda a: tg.linalg.logdet(a @ a.T))(A0)
    # logdet(A A^T) = 2 log|det A|: the Hessian is 2 * -(A^-1)_li (A^-1)_jk
    np.testing.assert_allclose(H, -2 * np.einsum("li,jk->ijkl", Ai, Ai), rtol=1e-9, atol=1e-12)

    b = rng.standard_normal(3)

    def grad_ref(a):
        ai = np.linalg.inv(a)
        return -np.outer(ai.T @ b, ai @ b)

    H2 = tg.hessian(lambda a: b @ tg.linalg.solve(a, b))(A0)
    eps = 1e-6
    for i in range(3):
        for j in range(3):
            E = np.zeros((3, 3))
            E[i, j] = eps
            fd = (grad_ref(A0 + E) - grad_ref(A0 - E)) / (2 * eps)
            np.testing.assert_allclose(H2[i, j], fd, rtol=1e-6, atol=1e-8)


def test_jacfwd_of_cholesky_equals_reverse_jacobian():
    S0 = _spd(4, seed=3)
    Jf = tg.jacfwd(tg.linalg.cholesky)(S0)
    Jr = tg.jacobian(tg.linalg.cholesky)(S0)
    np.testing.assert_allclose(Jf, Jr, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- float32
def test_float32_gradients_match_float64():
    rng = np.random.default_rng(4)
    A0, S0, B0 = rng.standard_normal((4, 4)) + 4 * np.eye(4), _spd(4), rng.standard_normal((4, 2))
    grads = []
    for dt in (np.float64, np.float32):
        tape = tg.Tape(dtype=dt)
        A, S, B = tape.param(A0.astype(dt)), tape.param(S0.astype(dt)), tape.param(B0.astype(dt))
        L = tg.linalg.cholesky(S)
        loss = ((tg.linalg.solve(A, B) ** 2).sum() + tg.linalg.logdet(S)
                + (tg.linalg.solve_triangular(L, B, trans=1) ** 2).sum()
                + tg.linalg.slogdet(A).logabsdet)
        loss.backward()
        grads.append([np.array(p.grad, np.float64) for p in (A, S, B)])
    for g64, g32 in zip(*grads):
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- validation
def _sealed(build):
    tape = tg.Tape()
    build(tape)
    tape._seal()
    return tape


@pytest.mark.parametrize("op, build", [
    (Op.SOLVE, lambda t: tg.linalg.solve(t.param(np.eye(3)), t.param(np.ones((2, 3, 2))))),
    (Op.TRISOLVE, lambda t: tg.linalg.solve_triangular(t.param(np.eye(3)), t.param(np.ones(3)))),
    (Op.CHOLESKY, lambda t: tg.linalg.cholesky(t.param(np.eye(3)))),
    (Op.SLOGDET, lambda t: tg.linalg.slogdet(t.param(np.eye(3)))),
])
def test_validation_rejects_bad_attributes(op, build):
    tape = _sealed(build)
    k = int(np.flatnonzero(tape._instr[:, OP] == op)[0])

    def check(col, value):
        instr = tape._instr.copy()
        instr[k, A0 + col] = value
        validate_tape_arrays(instr, tape._imm, tape._boff, tape._bsize, None,
                             tape._val.shape[0])

    check(0, tape._instr[k, A0])  # unchanged: fine
    for col, value in [(0, tape._instr[k, A0] + 1), (1, 4), (1, -1), (2, 7)]:
        with pytest.raises(tg.TapeFormatError):
            check(col, value)
    if op in (Op.SOLVE, Op.TRISOLVE):
        for col in ([3] if op == Op.SOLVE else [3, 4, 5]):
            with pytest.raises(tg.TapeFormatError):
                check(col, 2)
    if op == Op.SOLVE:
        with pytest.raises(tg.TapeFormatError):
            check(4, 1)


def test_an_empty_batch_with_a_huge_n_allocates_nothing():
    """Sizes are products batch * n * n: with batch 0 any n validates, so the kernels must not
    make n x n scratch for an empty batch."""
    tape = tg.Tape()
    a = tape.param(np.zeros((0, 3, 3)))
    for f in (tg.linalg.cholesky, tg.linalg.inv, lambda v: tg.linalg.slogdet(v)[1]):
        out = f(a)
        assert out.shape[0] == 0
    tape._seal()
    for k in np.flatnonzero(np.isin(tape._instr[:, OP], [Op.SOLVE, Op.CHOLESKY, Op.SLOGDET])):
        tape._instr[k, A0 + 1] = 2 ** 30
    validate_tape_arrays(tape._instr, tape._imm, tape._boff, tape._bsize, None,
                         tape._val.shape[0])
    tape.forward()
    out.backward(np.zeros(out.shape))
