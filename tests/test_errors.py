"""Bad input: a clear TapegradError naming the op, the shapes or names and the user's line,
and a tape that still works afterwards."""
import numpy as np
import pytest

import tapegrad as tg


def recorded():
    tape = tg.Tape()
    w = tape.param(np.array([1.0, 2.0]), name="w")
    x = tape.input("x", shape=(2,))
    loss = (w * x).sum()
    return tape, w, x, loss


def still_works(tape, w, loss):
    tape.forward(x=np.array([3.0, 4.0]))
    loss.backward()
    assert loss.item() == 11.0
    np.testing.assert_array_equal(w.grad, [3.0, 4.0])


def test_broadcast_error_names_op_shapes_and_line():
    tape, w, x, loss = recorded()
    n = len(tape)
    with pytest.raises(tg.ShapeError, match=r"add: cannot broadcast shapes \(2,\) and \(3,\) "
                                            r"\(test_errors.py:\d+\)"):
        w + np.ones(3)
    assert isinstance(tg.ShapeError("x"), ValueError)
    assert len(tape) == n
    still_works(tape, w, loss)


def test_matmul_mismatch():
    tape, w, x, loss = recorded()
    with pytest.raises(tg.ShapeError, match=r"matmul: shapes \(2,\) and \(3, 4\) do not align"):
        w @ np.ones((3, 4))
    still_works(tape, w, loss)


def test_bad_axis_and_index():
    tape, w, x, loss = recorded()
    with pytest.raises(tg.ShapeError, match="sum: axis 3 is out of bounds for array of dimension"):
        w.sum(axis=3)
    s = w.sum()  # a 0-d Var has no axis 0, as in NumPy (it used to be an IndexError)
    for reduce_ in (tg.sum, tg.mean, tg.max):
        with pytest.raises(tg.ShapeError, match="axis 0 is out of bounds for array of dimension 0"):
            reduce_(s, axis=0)
    with pytest.raises(tg.ShapeError, match="index 5 is out of bounds"):
        w[5]
    with pytest.raises(tg.ShapeError, match="only ints, slices"):
        w[1.5]  # (integer arrays are a gather: tests/test_gather.py)
    with pytest.raises(tg.ShapeError, match="cannot reshape"):
        w.reshape(3)
    still_works(tape, w, loss)


def test_unknown_feed_name():
    tape, w, x, loss = recorded()
    with pytest.raises(tg.FeedError, match=r"unknown input 'z' \(inputs: x\)"):
        tape.forward(z=np.ones(2))
    still_works(tape, w, loss)


def test_wrong_feed_shape_changes_nothing():
    tape = tg.Tape()
    a = tape.input("a", value=np.array([1.0, 1.0]))
    b = tape.input("b", value=np.array([1.0, 1.0]))
    s = (a + b).sum()
    with pytest.raises(tg.FeedError, match=r"input 'b': expected shape \(2,\), got \(3,\)"):
        tape.forward(a=np.array([5.0, 5.0]), b=np.ones(3))
    np.testing.assert_array_equal(a.value, [1.0, 1.0])  # the good feed was not applied either
    tape.forward(a=np.array([5.0, 5.0]))
    assert s.item() == 12.0


def test_non_numeric_feed():
    tape, w, x, loss = recorded()
    with pytest.raises(tg.FeedError, match="expected numbers"):
        tape.forward(x=np.array(["a", "b"]))
    with pytest.raises(tg.FeedError, match="expected numbers"):
        tape.forward(x=np.array([object(), object()]))
    still_works(tape, w, loss)


def test_two_tapes_in_one_op():
    t1, w, x, loss = recorded()
    t2 = tg.Tape()
    v = t2.param(np.ones(2))
    with pytest.raises(tg.TapegradError, match="two different tapes"):
        w + v
    still_works(t1, w, loss)


def test_backward_of_non_scalar_needs_grad_output():
    tape, w, x, loss = recorded()
    y = w * 2
    with pytest.raises(tg.TapegradError, match=r"shape \(2,\) \(recorded at test_errors.py:\d+\) needs grad_output"):
        y.backward()
    with pytest.raises(tg.ShapeError, match="grad_output has shape"):
        y.backward(np.ones(3))
    still_works(tape, w, loss)


def test_unknown_name_is_a_key_error():
    tape, w, x, loss = recorded()
    with pytest.raises(KeyError):
        tape["nope"]
    with pytest.raises(tg.TapegradError, match="no Var named 'nope'"):
        tape["nope"]
    assert tape["w"].shape == (2,)


def test_duplicate_name():
    tape, w, x, loss = recorded()
    with pytest.raises(tg.TapegradError, match="already used"):
        tape.param(np.ones(1), name="w")
    loss.name = "loss"
    assert tape["loss"].item() == loss.item()


def test_bool_of_vector_is_ambiguous():
    tape, w, x, loss = recorded()
    with pytest.raises(tg.TapegradError, match="ambiguous"):
        bool(w > 0)
    still_works(tape, w, loss)


def test_module_level_leaf_without_tape():
    with pytest.raises(tg.TapegradError, match="inside `with tape:`"):
        tg.param(np.ones(2))


def test_bad_dtype():
    with pytest.raises(tg.TapegradError, match="float64 and float32"):
        tg.Tape(np.int32)
    tape = tg.Tape()
    with pytest.raises(tg.TapegradError, match="numeric"):
        tape.param(np.array(["x"]))


def test_check_finite_names_first_bad_op_and_line():
    tape = tg.Tape()
    x = tape.input("x", value=np.array([1.0, 2.0]))
    y = tg.log(x)  # the first op to go non-finite for x <= 0
    z = (y * 2).sum()
    tape.forward(x=np.array([-1.0, 2.0]))  # without the check: NaN flows silently
    assert np.isnan(z.item())
    with pytest.raises(tg.NonFiniteError, match=r"log produced NaN/Inf .*test_errors.py:\d+"):
        tape.forward(x=np.array([-1.0, 2.0]), check_finite=True)
    tape.forward(x=np.array([1.0, 1.0]), check_finite=True)
    assert z.item() == 0.0


def test_cross_entropy_labels_checked():
    tape = tg.Tape()
    logits = tape.param(np.zeros((2, 3)))
    with pytest.raises(tg.ShapeError, match=r"label 3 at index \(1,\) is not a class in \[0, 3\)"):
        tg.cross_entropy(logits, np.array([0, 3]))
    with pytest.raises(tg.TapegradError, match="integer class indices"):
        tg.cross_entropy(logits, np.array([0.5, 1.0]))
    lab = tape.input("lab", shape=(2,))
    loss = tg.cross_entropy(logits, lab)
    with pytest.raises(tg.FeedError, match=r"labels must be integers in \[0, 3\)"):
        tape.forward(lab=np.array([0, 7]))
    with pytest.raises(tg.FeedError, match="labels must be integers"):
        tape.forward(lab=np.array([0.5, 1]))
    tape.forward(lab=np.array([2, 1]))
    assert loss.item() == pytest.approx(np.log(3.0))


def test_label_written_past_validation_is_caught_by_the_kernel():
    tape = tg.Tape()
    logits = tape.param(np.zeros((2, 3)))
    lab = tape.input("lab", value=np.zeros(2))
    loss = tg.cross_entropy(logits, lab)
    lab.value[0] = 1e9  # bypasses the feed check: the compiled sweeps must not trust it
    with pytest.raises(tg.FeedError, match="not an integer in"):
        tape.forward()
    lab.value[0] = 0
    tape.forward()      # (backward refuses the values of a failed forward: forward again)
    lab.value[0] = 1e9
    with pytest.raises(tg.FeedError, match="not an integer in"):
        loss.backward()


def test_validation_rejects_offsets_that_would_overflow():
    from tapegrad.opcodes import WIDTH
    from tapegrad.validate import validate_tape_arrays
    with pytest.raises(tg.TapeFormatError, match="outside the arena"):
        validate_tape_arrays(np.zeros((0, WIDTH), np.int32), np.zeros(0),
                             np.array([2 ** 62], np.int64), np.array([2 ** 62], np.int64),
                             [(2 ** 31, 2 ** 31)], 10)


def _scaled(v):
    return v * 3.0  # the site of the MULC: this line, not the caller's


def test_site_of_an_operator_in_a_helper_names_the_helper_line():
    """Tape._rec finds the user's frame without site_id when its code is the one seen last:
    an operator inside a user's helper must name the helper's line, also when the helper is
    called from a call site that also calls tg.sin directly (one package frame deeper, whose
    site is that call's line)."""
    import inspect
    tape = tg.Tape()
    x = tape.param(np.array([0.5]), name="x")
    y = x
    here = inspect.currentframe().f_lineno
    for _ in range(3):
        y = y + 1.0                   # here + 2
        for f in (tg.sin, _scaled):
            y = f(y)                  # here + 4 for tg.sin; _scaled's own line
    helper_line = inspect.getsourcelines(_scaled)[1] + 1
    lines = [int(tape._site(k).rsplit(":", 1)[1]) for k in range(len(tape))]
    assert lines == [here + 2, here + 4, helper_line] * 3
    assert all(tape._site(k).rsplit(":", 1)[0].endswith("test_errors.py")
               for k in range(len(tape)))
