"""The recorder (issue #10): what must hold however recording is done -- values as if each op
ran when recorded, errors and listings naming the user's line, numbers as immediates,
constant folding, blocks of pending instructions, shapes validated before anything is
counted, compact storage."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tapegrad as tg
import tapegrad.tape as tape_mod
from tapegrad.opcodes import Op

HERE = os.path.basename(__file__)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _line_of(marker):
    with open(__file__) as f:
        for i, line in enumerate(f, 1):
            if marker in line and "_line_of" not in line:
                return i
    raise AssertionError(marker)


def _ops(tape):
    return tape.stats()["by_opcode"]


# ---------------------------------------------------------------------------- immediates
def test_number_operand_is_one_instruction_and_no_buffer():
    tape = tg.Tape()
    x = tape.param(np.array([1.0, 2.0, 3.0]))
    nb = tape._nbuf
    y = x * 0.5
    assert len(tape) == 1 and _ops(tape) == {"mulc": 1}
    assert tape._nbuf == nb + 1  # the output only: no constant, no broadcast
    for f, want in ((lambda v: v + 1, "addc"), (lambda v: v - 1.5, "addc"),
                    (lambda v: 2 - v, "rsubc"), (lambda v: v / 3, "divc"),
                    (lambda v: 3 / v, "rdivc"), (lambda v: 2 ** v, "rpowc"),
                    (lambda v: v ** 2, "powc"), (lambda v: np.float32(2) * v, "mulc"),
                    (lambda v: v * np.int64(3), "mulc")):
        before = dict(_ops(tape))
        f(x)
        after = _ops(tape)
        assert after.get(want, 0) == before.get(want, 0) + 1, want
    np.testing.assert_array_equal(y.value, [0.5, 1.0, 1.5])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_immediates_round_like_the_arena_dtype(dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(257).astype(dtype)
    tape = tg.Tape(dtype)
    x = tape.param(a)
    c = 0.1
    outs = [x + c, x - c, c - x, x * c, x / c, c / x]
    c32 = dtype(c)  # NumPy's float32 arithmetic with the number rounded to float32 first
    want = [a + c32, a - c32, c32 - a, a * c32, a / c32, c32 / a]
    for o, w in zip(outs, want):
        assert o.value.dtype == dtype
        np.testing.assert_array_equal(o.value, w.astype(dtype))


def test_immediate_gradients_match_finite_differences():
    a = np.array([0.7, 1.3, 2.1])
    f = lambda v: ((v + 1) * 0.5 - 3) / 7.0 + (2 - v) * (1.5 / v) + 0.5 ** v  # noqa: E731
    tape = tg.Tape()
    x = tape.param(a)
    loss = f(x).sum()
    loss.backward()
    num = np.array([(f(a + e).sum() - f(a - e).sum()) / 2e-6 for e in np.eye(3) * 1e-6])
    np.testing.assert_allclose(x.grad, num, rtol=1e-7)


def test_rpowc_base_zero_and_negative_follow_torch():
    tape = tg.Tape()
    x = tape.param(np.array([-1.0, 0.0, 2.0]))
    (0.0 ** x).sum().backward()
    assert x.grad[0] == -np.inf and x.grad[1] == 0 and x.grad[2] == 0
    (-2.0 ** x)  # noqa: B018 - parsed as -(2.0 ** x): fine
    y = (-2.0) ** x
    y.sum().backward()
    assert np.isnan(x.grad).all()


# ---------------------------------------------------------------------------- folding
def test_ops_of_constants_fold_to_a_constant():
    tape = tg.Tape()
    c = tape.const(np.array([1.0, 2.0]))
    d = tape.const(np.array([3.0, 4.0]))
    e = tg.exp(c * d) + c
    assert len(tape) == 0
    np.testing.assert_allclose(e.value, np.exp([3.0, 8.0]) + [1.0, 2.0])
    w = tape.param(np.array([0.5, 0.5]))
    loss = (w * e).sum()
    assert _ops(tape) == {"mul": 1, "sum": 1}
    loss.backward()
    np.testing.assert_allclose(w.grad, e.value)
    tape.forward()
    np.testing.assert_allclose(loss.value, 0.5 * e.value.sum())


# ---------------------------------------------------------------------------- values
def test_values_are_those_computed_at_recording():
    tape = tg.Tape()
    w = tape.param(np.array([2.0]))
    y = w * 3.0
    w.value[...] = 10.0  # reading w evaluates y first, as an eager recorder would have
    assert y.item() == 6.0
    tape.forward()
    assert y.item() == 30.0


def test_more_instructions_than_one_block(monkeypatch):
    monkeypatch.setattr(tape_mod, "FLUSH_EVERY", 7)
    tape = tg.Tape()
    x = tape.param(np.array([0.3]))
    y, ref = x, 0.3
    for _ in range(20):
        y = tg.sin(y) * 0.9 + 0.1
        ref = np.sin(ref) * 0.9 + 0.1
    assert y.item() == pytest.approx(ref, rel=1e-15)
    y.sum().backward()
    assert x.grad[0] != 0
    # a branch reads a value in the middle of a block
    if y > 0:
        z = y * 2.0
    assert z.item() == pytest.approx(2 * ref)


def test_recording_after_a_replay_reseals():
    tape = tg.Tape()
    x = tape.input("x", shape=(2,))
    a = (x * 2.0).sum()
    tape.forward(x=np.array([1.0, 2.0]))
    p = tape.param(np.array([5.0]))  # a parameter after temporaries: the layout moves
    b = a * p
    b.backward()
    assert p.grad[0] == 6.0 and tape._boff[p._b] == 0
    tape.forward(x=np.array([2.0, 2.0]))
    assert b.item() == 40.0


# ---------------------------------------------------------------------------- sites
def test_error_names_the_users_line():
    tape = tg.Tape()
    a = tape.param(np.ones((2, 3)))
    b = tape.param(np.ones((4,)))
    with pytest.raises(tg.ShapeError) as e:
        a + b  # line: BROADCAST-ERROR
    assert f"{HERE}:{_line_of('BROADCAST-ERROR')}" in str(e.value)


def _sites_of(tape):
    """``file:line`` of each instruction."""
    return [tape._site(k) for k in range(len(tape))]


def _helper_mul(v):
    return v * v  # line: HELPER-MUL


def test_every_operator_path_names_the_users_line():
    """The operators record their common cases themselves (Tape._rec); the site is still the
    user's line, through helper functions, through the generic path and for the reverse rules
    tg.gradients records."""
    tape = tg.Tape()
    a = tape.param(np.array([1.0, 2.0]))
    b = tape.param(np.array([3.0, 4.0]))
    c = tape.param(np.ones((3, 2)))
    n0 = len(tape)
    ys = [a + b, a - 1, 2.0 * a, a / b, 1 / a, -a, a ** 2, 2 - a]  # line: OPERATORS
    assert len(tape) == n0 + len(ys)
    assert set(_sites_of(tape)[n0:]) == {f"{HERE}:{_line_of('OPERATORS')}"}
    n1 = len(tape)
    c + a  # line: BROADCAST-ADD
    assert set(_sites_of(tape)[n1:]) == {f"{HERE}:{_line_of('BROADCAST-ADD')}"}
    n2 = len(tape)
    _helper_mul(a)
    assert _sites_of(tape)[n2:] == [f"{HERE}:{_line_of('HELPER-MUL')}"]
    n3 = len(tape)
    g, = tg.gradients((a ** 3 * b).sum(), [a])  # line: GRADIENTS
    assert set(_sites_of(tape)[n3:]) == {f"{HERE}:{_line_of('GRADIENTS')}"}
    np.testing.assert_allclose(g.value, 3 * np.array([1.0, 4.0]) * [3.0, 4.0])
    # two call sites on one line: one text
    d = (a * b) * (a * b)  # line: TWO-SITES
    assert _sites_of(tape)[-3:] == [f"{HERE}:{_line_of('TWO-SITES')}"] * 3
    assert d.shape == (2,)


def test_operator_fast_path_matches_the_generic_path():
    rng = np.random.default_rng(1)
    for dtype in (np.float64, np.float32):
        x0, y0 = rng.uniform(0.5, 2.0, 5).astype(dtype), rng.uniform(0.5, 2.0, 5).astype(dtype)
        tape = tg.Tape(dtype)
        x, y = tape.param(x0), tape.param(y0)
        fast = [x + y, x - y, x * y, x / y, x + 0.1, x - 0.1, 0.1 - x, x * 0.1, 0.1 * x,
                x / 0.1, 0.1 / x, x ** 3, -x, 0.1 + x]
        slow = [tg.add(x, y), tg.sub(x, y), tg.mul(x, y), tg.div(x, y), tg.add(x, 0.1),
                tg.sub(x, 0.1), tg.sub(0.1, x), tg.mul(x, 0.1), tg.mul(0.1, x),
                tg.div(x, 0.1), tg.div(0.1, x), tg.pow(x, 3), tg.neg(x), tg.add(0.1, x)]
        for f, g in zip(fast, slow):
            np.testing.assert_array_equal(f.value, g.value)
            assert tape._instr[len(tape) - 1, 0] >= 0
        ops = [tape._instr[k, 0] for k in range(len(tape))]
        assert ops[:len(fast)] == ops[len(fast):]  # the same opcodes, immediates included
        np.testing.assert_array_equal(tape._imm[:len(fast)], tape._imm[len(fast):])


def test_int_index_of_a_vector_is_one_slice():
    tape = tg.Tape()
    x = tape.param(np.array([1.0, 2.0, 3.0, 4.0]))
    nb, n = tape._nbuf, len(tape)
    ys = [x[0], x[-1], x[2]]
    assert len(tape) == n + 3 and tape._nbuf == nb + 3  # no reshape views
    assert all(y.shape == () for y in ys)
    assert [y.item() for y in ys] == [1.0, 4.0, 3.0]
    loss = ys[0] * ys[1] + ys[2] * ys[2]
    loss.backward()
    np.testing.assert_allclose(x.grad, [4.0, 0.0, 6.0, 1.0])
    one = tape.param(np.array([[5.0, 6.0]]))
    n = len(tape)
    row = one[0]  # a length-1 axis: a reshape, no instruction
    assert len(tape) == n and row.shape == (2,)
    np.testing.assert_array_equal(row.value, [5.0, 6.0])
    with pytest.raises(tg.ShapeError) as e:
        x[4]  # line: INDEX-ERROR
    assert "out of bounds for axis 0 with size 4" in str(e.value)
    assert f"{HERE}:{_line_of('INDEX-ERROR')}" in str(e.value)
    with pytest.raises(tg.ShapeError):
        x[0][0]  # a 0-d Var takes no index


def test_stack_of_scalars_places_them_directly():
    tape = tg.Tape()
    xs = [tape.param(np.array(float(i))) for i in range(4)]
    nb, n = tape._nbuf, len(tape)
    s = tg.stack(xs)
    assert len(tape) == n + 4 and tape._nbuf == nb + 1 and _ops(tape) == {"place": 4}
    np.testing.assert_array_equal(s.value, [0.0, 1.0, 2.0, 3.0])
    (tg.softmax(s)[3] * 2.0).backward()
    p = np.exp(np.arange(4.0)) / np.exp(np.arange(4.0)).sum()
    np.testing.assert_allclose([float(x.grad) for x in xs], 2 * p[3] * (np.eye(4)[3] - p),
                               rtol=1e-12)


def test_listing_names_lines_and_survives_save_load(tmp_path):
    tape = tg.Tape()
    w = tape.param(np.array([1.0, 2.0]), name="w")  # line: PARAM-LINE
    loss = (tg.tanh(w) * 0.5).sum()  # line: LOSS-LINE
    loss.name = "loss"
    text = str(tape)
    assert f"{HERE}:{_line_of('PARAM-LINE')}" in text
    assert text.count(f"{HERE}:{_line_of('LOSS-LINE')}") == 3  # tanh, mulc, sum
    assert "mulc %" in text and "{c=0.5}" in text
    path = str(tmp_path / "t.tape.npz")
    tape.save(path)
    loaded = tg.Tape.load(path)
    assert str(loaded) == text
    loaded["loss"].backward()
    np.testing.assert_allclose(loaded["w"].grad, 0.5 * (1 - np.tanh([1.0, 2.0]) ** 2))


def test_nonfinite_error_names_line():
    tape = tg.Tape()
    x = tape.input("x", shape=(1,))
    y = tg.log(x)  # line: LOG-LINE
    with pytest.raises(tg.NonFiniteError) as e:
        tape.forward(x=np.array([-1.0]), check_finite=True)
    assert f"{HERE}:{_line_of('LOG-LINE')}" in str(e.value)
    assert y.shape == (1,)


# ---------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("shape", [(2.7,), (2, 1.5), ("3",), (-1,)])
def test_bad_shapes_are_refused(shape):
    tape = tg.Tape()
    with pytest.raises(tg.ShapeError):
        tape.input("x", shape=shape)
    assert tape.inputs == {}
    tape.input("x", shape=(2,))  # the tape is still usable


def test_huge_shapes_are_refused_before_allocating(monkeypatch):
    tape = tg.Tape()
    for shape in [(2 ** 62, 4), (3, 2 ** 62 + 2 ** 20), (2 ** 31,), (10 ** 6, 10 ** 6)]:
        with pytest.raises(tg.ShapeError, match="elements"):
            tape.input("x", shape=shape)
    # arenas beyond the machine's memory: refused by size, nothing allocated
    monkeypatch.setattr(tape_mod, "_PHYS_BYTES", 10 ** 9)
    with pytest.raises(tg.TapegradError, match="bytes"):
        tape.input("big", shape=(10 ** 8,))
    monkeypatch.undo()
    assert tape.inputs == {}
    a = tape.param(np.array([1.0, 2.0]))
    np.testing.assert_allclose(tg.exp(a).value, np.exp([1.0, 2.0]))


def test_reshape_with_float_dimension_is_refused():
    tape = tg.Tape()
    a = tape.param(np.ones(6))
    with pytest.raises(tg.ShapeError):
        a.reshape(2.9, 2)


def test_wrapped_element_count_no_longer_crashes():
    """The hostile review's segfault: an element count that wrapped to a negative int64."""
    code = textwrap.dedent("""
        import numpy as np, tapegrad as tg
        t = tg.Tape()
        try:
            t.input("x", shape=(3, 2 ** 62 + 2 ** 20))
        except tg.ShapeError as e:
            print("refused:", e)
        a = t.input("a", shape=(2,), value=np.array([0.0, 1.0]))
        print(tg.exp(a).value)
        t._new_buffer((2,), 3)  # a recorder called from the top level: a shallow stack
        print("site", t._bsrc(t._nbuf - 1))
    """)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "refused" in p.stdout and "2.718" in p.stdout and "site <string>:" in p.stdout


# ---------------------------------------------------------------------------- storage
def test_storage_per_scalar_instruction_is_small():
    tape = tg.Tape()
    y = tape.param(np.array([0.5]))
    for _ in range(10000):
        y = tg.sin(y) * 0.999 + 0.001
    y.backward()
    per = tape._memory_bytes() / len(tape)
    assert per < 160, per  # instr 44 + imm 8 + src 4 + buffer table 20 + arenas 16 + lists


def test_opcode_table_arrays_match_the_table():
    from tapegrad.opcodes import DIFFERENTIABLE, N_IN, OPS
    for op in Op:
        if op == Op.N_OPS:
            continue
        assert N_IN[op] == OPS[op].n_in and DIFFERENTIABLE[op] == OPS[op].differentiable
