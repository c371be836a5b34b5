"""A new tape's first flush (``Tape._ingest``: every pending row and buffer made into the
arrays by one compiled call): the arrays, values, gradients, listings and errors are those of
the general path."""
import math

import numpy as np
import pytest

import tapegrad as tg
import tapegrad.tape as tape_mod
from tapegrad.errors import TapegradError


def _more_ops(tape, a0=-4.0, b0=2.0, split=False):
    """micrograd's test_more_ops graph; ``split``: the buffers are moved into the arrays
    part-way (as an error message naming a buffer's line does), so the rows take the general
    path, not ``_ingest``."""
    a, b = tape.param(np.array(a0)), tape.param(np.array(b0))
    c = a + b
    d = a * b + b ** 3
    if split:
        tape._flush_buffers()
    c = c + c + 1
    c = c + 1 + c + (-1.0 * a)
    d = d + d * 2 + tg.relu(b + a)
    d = d + 3 * d + tg.relu(b - a)
    e = c - d
    f = e * e
    g = f / 2.0
    g = g + 10.0 / f
    return a, b, g


def _more_ops_float(a, b):
    c = a + b
    d = a * b + b ** 3
    c = c + c + 1
    c = c + 1 + c + (-1.0 * a)
    d = d + d * 2 + max(b + a, 0.0)
    d = d + 3 * d + max(b - a, 0.0)
    e = c - d
    f = e * e
    return f / 2.0 + 10.0 / f


def test_ingest_makes_the_arrays_the_general_path_makes():
    t1, t2 = tg.Tape(), tg.Tape()
    calls = []
    real = tape_mod.Tape._ingest

    def spy(self):
        calls.append(self)
        return real(self)

    tape_mod.Tape._ingest = spy
    try:
        for t, split in ((t1, False), (t2, True)):
            _more_ops(t, split=split)
            t._flush(evaluate=False)
    finally:
        tape_mod.Tape._ingest = real
    assert calls == [t1]  # t2's buffers were in its arrays already: the general path
    for name in ("_instr", "_imm", "_boff", "_bsize"):
        np.testing.assert_array_equal(getattr(t1, name), getattr(t2, name))
        assert getattr(t1, name).dtype == getattr(t2, name).dtype
    # the sites differ only by line (the two calls of _more_ops are the same lines)
    np.testing.assert_array_equal(t1._src, t2._src)
    np.testing.assert_array_equal(t1._bsite, t2._bsite)
    assert t1._src.dtype == t1._bsite.dtype == np.int32
    assert str(t1) == str(t2)


def test_fresh_tape_gradients_match_finite_differences():
    tape = tg.Tape()
    a, b, g = _more_ops(tape)
    tape.forward()
    g.backward()
    h = 1e-6
    da = (_more_ops_float(-4.0 + h, 2.0) - _more_ops_float(-4.0 - h, 2.0)) / (2 * h)
    db = (_more_ops_float(-4.0, 2.0 + h) - _more_ops_float(-4.0, 2.0 - h)) / (2 * h)
    assert g.item() == pytest.approx(_more_ops_float(-4.0, 2.0), rel=1e-12)
    assert float(a.grad) == pytest.approx(da, rel=1e-6)
    assert float(b.grad) == pytest.approx(db, rel=1e-6)


def test_ingest_with_attributes_and_a_value_read_mid_recording():
    tape = tg.Tape()
    x = tape.param(np.arange(6.0).reshape(2, 3))
    s = x.sum(axis=1)            # attributes: the reduced axis
    assert s.value.tolist() == [3.0, 12.0]   # read: the first flush evaluates
    y = (s * s).sum()
    tape.forward()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * np.array([[3.0] * 3, [12.0] * 3]))


def test_a_bad_row_is_refused_not_run_and_the_tape_says_where():
    tape = tg.Tape()
    a = tape.param(np.array(1.0))
    y = a * 2.0
    tape._prow[3] = 10 ** 6      # the row's x: a buffer that does not exist
    with pytest.raises(TapegradError):
        tape.forward()
    assert y._b == 1


def test_values_and_gradients_over_many_blocks_and_a_replica_made_between(monkeypatch):
    monkeypatch.setattr(tape_mod, "FLUSH_EVERY", 64)
    tape = tg.Tape()
    x = tape.param(np.array([0.5]), name="x")
    y, ref, dref = x, 0.5, 1.0
    mid = None
    for i in range(900):
        y = tg.sin(y) * 0.999 + 0.001
        dref *= math.cos(ref) * 0.999
        ref = math.sin(ref) * 0.999 + 0.001
        if i == 300:
            mid = tape.replica()   # shares the sealed arrays: the recorder must not write them
            mid_y, mid_ref = mid[y], ref
    assert float(y.value[0]) == pytest.approx(ref, rel=1e-12)
    tape.forward()
    y.backward()
    assert float(x.grad[0]) == pytest.approx(dref, rel=1e-9)
    mid.forward()
    assert len(mid) == 3 * 301
    assert float(mid_y.value[0]) == pytest.approx(mid_ref, rel=1e-12)


def test_blocks_of_thousands_of_rows_note_every_opcode_they_hold():
    # blocks larger than _BLOCK_OPS remembers: their opcodes are counted from the array column
    # (the first block by _ingest, the next by _flush, which brings an opcode of its own);
    # vectors: size-1 rows run as scalar rows whatever opcodes the tape notes
    x0 = np.array([0.5, -0.25, 1.0])
    tape = tg.Tape()
    x = tape.param(x0, name="x")
    y, ref, dref = x, x0.copy(), np.ones(3)
    for i in range(1600):
        if i < 1400:
            y = tg.sin(y) * 0.999 + 0.001
            dref *= np.cos(ref) * 0.999
            ref = np.sin(ref) * 0.999 + 0.001
        else:
            y = tg.tanh(y) - 0.001
            dref *= 1.0 - np.tanh(ref) ** 2
            ref = np.tanh(ref) - 0.001
    assert len(tape) > tape_mod.FLUSH_EVERY + 256
    np.testing.assert_allclose(y.value, ref, rtol=1e-12)
    tape.forward()
    y.backward(np.ones(3))
    np.testing.assert_allclose(y.value, ref, rtol=1e-12)
    np.testing.assert_allclose(x.grad, dref, rtol=1e-9)
    # (a set missing an opcode still runs here: the full interpreter stands in when a set's
    # own is not compiled -- so the noted set itself is checked)
    assert tape._opset == frozenset(np.unique(tape._instr[:len(tape), 0]).tolist())


def test_fresh_tapes_of_one_opcode_set_share_their_interpreters():
    mods = []
    for _ in range(3):
        tape = tg.Tape()
        _, _, g = _more_ops(tape)
        tape.forward()
        g.backward()
        mods.append(tape._interp)
    assert mods[0] is mods[1] is mods[2]


# -- a tape recorded as one sealed before (tape._SEALED) --------------------------------------
def _graph(tape, a0, b0, k):
    a, b = tape.param(np.array(a0)), tape.param(np.array(b0))
    y = (a * b + k) * tg.relu(a - b) + b / k
    return a, b, y


def _graph_float(a, b, k):
    return (a * b + k) * max(a - b, 0.0) + b / k


def _run(a0, b0, k, **tape_kw):
    tape = tg.Tape(**tape_kw)
    a, b, y = _graph(tape, a0, b0, k)
    tape.forward()
    y.backward()
    return tape, a, b, y


@pytest.mark.parametrize("a0,b0,k", [(3.0, 1.5, 2.0), (2.5, -1.0, 5.0), (0.5, 2.0, -3.0)])
def test_a_tape_recorded_alike_takes_the_sealed_arrays_and_computes_its_own_values(a0, b0, k):
    first = _run(1.0, 0.5, 7.0)[0]
    tape, a, b, y = _run(a0, b0, k)   # other leaves and immediates: the same entry
    assert tape._sealed_as is not None and tape._instr is first._instr
    h = 1e-6
    assert y.item() == pytest.approx(_graph_float(a0, b0, k), rel=1e-12, abs=1e-12)
    da = (_graph_float(a0 + h, b0, k) - _graph_float(a0 - h, b0, k)) / (2 * h)
    db = (_graph_float(a0, b0 + h, k) - _graph_float(a0, b0 - h, k)) / (2 * h)
    assert float(a.grad) == pytest.approx(da, rel=1e-6, abs=1e-8)
    assert float(b.grad) == pytest.approx(db, rel=1e-6, abs=1e-8)
    assert str(tape).splitlines()[0].split()[-1] == str(first).splitlines()[0].split()[-1]


def test_recording_more_on_a_shared_tape_copies_first():
    _run(1.0, 0.5, 7.0)
    tape, a, b, y = _run(2.0, 1.0, 3.0)
    assert tape._shared
    entry = tape._sealed_as
    saved = [x.copy() for x in entry[:6]]
    z = y * y + a          # records more: the tape's arrays become its own
    z2 = z * 2.0
    assert not tape._shared and tape._instr is not entry[0]
    tape.forward()
    z2.backward()
    yv = _graph_float(2.0, 1.0, 3.0)
    assert z2.item() == pytest.approx(2 * (yv * yv + 2.0), rel=1e-12)
    for x, s in zip(entry[:6], saved):
        np.testing.assert_array_equal(x, s)
    again = _run(2.0, 1.0, 3.0)[3]   # the entry still serves
    assert again.item() == pytest.approx(yv, rel=1e-12)


def test_a_shared_tape_dropping_a_row_copies_first():
    _run(1.0, 0.5, 7.0)
    tape = _run(2.0, 1.0, 3.0)[0]
    entry = tape._sealed_as
    instr = entry[0].copy()
    tape._drop_from(len(tape) - 1)
    assert not tape._shared and tape._instr is not entry[0]
    np.testing.assert_array_equal(entry[0], instr)


def test_arena_planning_on_a_shared_tape_leaves_the_entry_alone(monkeypatch):
    first = _run(1.0, 0.5, 7.0)[0]
    boff = first._boff.copy()
    tape = tg.Tape()
    tape.planning = "always"
    a, b, y = _graph(tape, 2.0, 1.0, 3.0)
    tape.forward()
    y.backward()
    assert y.item() == pytest.approx(_graph_float(2.0, 1.0, 3.0), rel=1e-12)
    np.testing.assert_array_equal(first._boff, boff)
    assert tape._boff is not first._boff


def test_other_gradient_leaves_are_another_entry():
    _run(1.0, 0.5, 7.0)
    tape = tg.Tape()
    a = tape.input("a", value=np.array(2.0), requires_grad=True)
    b = tape.param(np.array(1.0))
    y = (a * b + 3.0) * tg.relu(a - b) + b / 3.0
    tape.forward()
    y.backward()
    da = (_graph_float(2.0 + 1e-6, 1.0, 3.0) - _graph_float(2.0 - 1e-6, 1.0, 3.0)) / 2e-6
    assert float(a.grad) == pytest.approx(da, rel=1e-6)
    tape2 = tg.Tape()
    a = tape2.input("a", value=np.array(2.0))   # no gradient wanted: another mask
    b = tape2.param(np.array(1.0))
    y = (a * b + 3.0) * tg.relu(a - b) + b / 3.0
    tape2.forward()
    y.backward()
    with pytest.raises(TapegradError, match="no gradient"):
        a.grad


def test_a_first_block_too_large_to_remember(monkeypatch):
    monkeypatch.setattr(tape_mod, "SEALED_MAX_ROWS", 8)
    tape = tg.Tape()
    x = tape.param(np.array([0.5]))
    y, ref = x, 0.5
    for _ in range(5):
        y = tg.sin(y) * 0.999 + 0.001
        ref = math.sin(ref) * 0.999 + 0.001
    assert float(y.value[0]) == pytest.approx(ref, rel=1e-12)
    assert tape._fresh_key is None and tape._sealed_as is None and len(tape._instr) == 15


@pytest.mark.parametrize("case", ["more_ops", "attributes"])
def test_the_first_flush_lowers_the_rows_as_the_seal_would(case, monkeypatch):
    """The stream a new tape's first flush lowered (``lower.ingest``) is the one
    ``sweep.lower`` makes of the sealed arrays, and the seal does not lower again."""
    taken = []
    real = tape_mod._sweep.lower
    monkeypatch.setattr(tape_mod._sweep, "lower", lambda *a: taken.append(a) or real(*a))
    tape = tg.Tape()
    if case == "more_ops":
        y = _more_ops(tape)[2]
    else:
        x = tape.param(np.arange(12.0).reshape(3, 4))
        p = tg.softmax(x[1], axis=0)               # a slice and a one-row softmax
        q = tg.softmax(tg.stack([x[0, 0], x[2, 3], x[1, 1]]), axis=0)  # scalars stacked
        y = (p.sum() * q[1] + x.sum(axis=0)[2]).sum()
    tape._seal(evaluate=False)
    assert not taken, "the seal lowered again what the first flush had lowered"
    general = real(tape._instr, tape._boff, tape._bsize)
    np.testing.assert_array_equal(tape._low, general)
    assert tape._low.dtype == general.dtype
    tape.forward()
    y.backward()  # and the tape runs as before
    assert np.isfinite(y.item())


def test_a_tape_recorded_past_its_first_flush_is_lowered_again(monkeypatch):
    monkeypatch.setattr(tape_mod, "FLUSH_EVERY", 8)
    tape = tg.Tape()
    a = tape.param(np.array(0.5))
    y = a
    for _ in range(20):           # three blocks: the first flush's stream is partial
        y = y * 0.9 + 0.1
    tape._seal(evaluate=False)
    from tapegrad import sweep
    np.testing.assert_array_equal(tape._low, sweep.lower(tape._instr, tape._boff, tape._bsize))
    assert tape._low.shape[0] == len(tape) == 40
    tape.forward()
    y.backward()
    assert float(a.grad) == pytest.approx(0.9 ** 20, rel=1e-12)


@pytest.mark.parametrize("where,value", [("x", 10 ** 6), ("x", -2), ("out", -1),
                                         ("op", 10 ** 5), ("offset", -5), ("size", 10 ** 9)])
def test_the_first_flush_lowers_nothing_it_has_not_checked(where, value):
    """Rows or buffers out of range: ``lower.ingest`` reads nothing through them, lowers
    nothing, and the seal's validation refuses the tape."""
    from tapegrad import lower
    tape = tg.Tape()
    a = tape.param(np.array(1.0))
    tape.param(np.array(2.0))
    y = a * 2.0
    row = {"op": 0, "out": 1, "x": 2}
    if where in row:
        tape._prow[row[where]] = value
    else:   # buffer 2 (y's): offset, size
        tape._pbuf[3 * 2 + (0 if where == "offset" else 1)] = value
    prow, pbuf = list(tape._prow), list(tape._pbuf)
    ints = np.array(prow + pbuf, np.int64)
    m, nb = len(prow) // 6, len(pbuf) // 3
    low = np.full((m, lower.LOW_WIDTH), 7, np.int64)
    args = (np.empty((m, tape_mod.WIDTH), np.int32), np.empty(m, np.int32),
            np.empty(nb, np.int64), np.empty(nb, np.int64), np.empty(nb, np.int32))
    assert not lower.ingest(ints, *args, tape._used, tape_mod._sweep.SCALAR_KIND, low)
    assert (low == 7).all()
    if where != "op":  # (an opcode the recorder cannot write: the interpreter lookup fails)
        with pytest.raises(TapegradError):
            tape.forward()
        assert y._b == 2


def test_a_row_recorded_after_the_first_flush_without_a_new_buffer_is_lowered():
    """A guard (``bool(v)``) writes no new buffer: the stream of the first flush no longer
    covers the tape, and the seal lowers it whole."""
    from tapegrad import sweep
    tape = tg.Tape()
    a = tape.param(np.array(0.5))
    y = a * 3.0 - 1.0
    tape._flush(evaluate=False)   # the first flush: two rows lowered
    assert bool(y)                # one more row, no buffer
    tape._seal(evaluate=False)
    assert tape._low.shape[0] == len(tape) == 3
    np.testing.assert_array_equal(tape._low, sweep.lower(tape._instr, tape._boff, tape._bsize))
    tape.forward()
    y.backward()
    assert float(a.grad) == 3.0
