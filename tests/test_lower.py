"""The lowered stream (tapegrad/lower.py): the scalar rows that size-1 instructions run
compute bit for bit what the ops' kernels compute, and the lowered offsets are those of the
buffer table."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad import lower, sweep
from tapegrad.opcodes import OP, OUT, X, Op

from op_specs import SPECS, normal


def _scalar_shapes(spec):
    """The spec's cases, plus its first case with every input of one element (so most
    elementwise ops run their scalar rows)."""
    yield from spec.cases
    if spec.cases:
        c = spec.cases[0]
        yield c._replace(shapes=tuple(() for _ in c.shapes))


def _run(tape, loss, low, val0):
    interp = tape._interpreters()
    val, grad = val0.copy(), np.zeros_like(val0)
    s, k = interp.forward(tape._instr, tape._imm, low, val, np.ones(len(tape), np.uint8), 0)
    assert s == sweep.OK, (s, Op(int(tape._instr[k, OP])).name)
    grad[tape._boff[loss._b]] = 1
    s, k = interp.reverse(tape._instr, tape._imm, low, val, grad, tape._reverse_mask(loss._b), 0)
    assert s == sweep.OK
    return val, grad


def _with_gradient(tape):
    """bool per gradient-arena element: in a buffer whose root has a gradient (after
    ``_reverse_mask``: ``tape._varied``)."""
    has = np.zeros(tape._val.shape[0], bool)
    for b in range(tape._nbuf):
        if tape._varied[tape._base[b]]:
            has[tape._boff[b]:tape._boff[b] + tape._bsize[b]] = True
    return has


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scalar_rows_compute_what_the_kernels_compute_bit_for_bit(dtype):
    bits = np.uint64 if dtype == np.float64 else np.uint32
    no_scalar = np.zeros_like(sweep.SCALAR_KIND)
    ran = set()
    rng = np.random.default_rng(5)
    for spec in SPECS:
        for case in _scalar_shapes(spec):
            tape = tg.Tape(dtype=dtype)
            try:
                arrays = (spec.gen or normal)(rng, case.shapes)
                params = [tape.param(np.asarray(a, np.float64)) for a in arrays]
                out = spec.f(*params, **case.kw)
                w = tape.const(rng.normal(size=out.shape))
                loss = (out * w).sum() if out.size > 1 else out * 0.75
            except (tg.TapegradError, ValueError, TypeError, IndexError):
                continue  # (a case that does not take inputs of one element)
            tape._seal()
            low = tape._low
            general = lower.lower(tape._instr, tape._boff, tape._bsize, no_scalar)
            assert (general[:, lower.CODE] == tape._instr[:, OP]).all()
            scalar = low[:, lower.CODE] >= lower.SCALAR
            if not scalar.any():
                continue
            ran |= set(tape._instr[scalar, OP].tolist())
            val0 = tape._val.copy()
            (v1, g1), (v2, g2) = _run(tape, loss, low, val0), _run(tape, loss, general, val0)
            assert np.array_equal(v1.view(bits), v2.view(bits)), spec.id
            has = _with_gradient(tape)  # (a constant's slot: the two-input scalar row of
            # add/sub/mul/div writes it, their one-input kernel does not; nothing reads it)
            assert np.array_equal(g1[has].view(bits), g2[has].view(bits)), spec.id
    with_rows = {int(o) for o in set(sweep.SCALAR_FORWARD) | set(sweep.SCALAR_REVERSE)}
    assert with_rows - ran == set(), sorted(Op(o).name for o in with_rows - ran)


def test_lowered_offsets_are_the_buffer_tables():
    tape = tg.Tape()
    a = tape.param(np.arange(6.0).reshape(2, 3))
    b = tape.param(np.ones(3))
    s = tg.stack([(a * b).sum(), tg.exp(a[0, 1]), a[1, 2] + 1.0])
    loss = tg.softmax(s)[1]
    tape._seal()
    low, instr = tape._low, tape._instr
    for k in range(len(tape)):
        code, op = int(low[k, lower.CODE]), int(instr[k, OP])
        assert code in (op, op + lower.SCALAR)
        out, x = int(instr[k, OUT]), int(instr[k, X])
        if code == op:
            assert low[k, lower.ANS] == tape._boff[out]
            assert low[k, lower.N] == tape._bsize[out]
            assert low[k, lower.LX] == (tape._boff[x] if x >= 0 else 0)
        elif op == Op.PLACE:  # one element of the output, at row `start`
            assert low[k, lower.N] == 1 and low[k, lower.LX] == tape._boff[x]
            assert tape._boff[out] <= low[k, lower.ANS] < tape._boff[out] + tape._bsize[out]
        elif op == Op.SLICE:  # one element of the input
            assert low[k, lower.N] == 1 and low[k, lower.ANS] == tape._boff[out]
            assert tape._boff[x] <= low[k, lower.LX] < tape._boff[x] + tape._bsize[x]
    assert {Op.PLACE, Op.SLICE, Op.EXP} <= {Op(int(instr[k, OP])) for k in range(len(tape))
                                             if low[k, lower.CODE] >= lower.SCALAR}
    loss.backward()
    e = np.exp([15.0, np.exp(1.0), 6.0])  # softmax of (sum(a*b), e^a[0,1], a[1,2] + 1)
    assert np.isclose(loss.value, e[1] / e.sum())
    p = e / e.sum()  # a[1, 2] enters s[0] (times b[2] = 1) and s[2]
    assert np.isclose(a.grad[1, 2], -p[1] * p[0] - p[1] * p[2])


def test_scalar_rows_read_back_from_their_file_are_the_derived_ones(tmp_path, monkeypatch):
    # sweep keeps the derived rows in a file named by the sources' digest (import time);
    # a fresh derivation and the file's rows must give the same tables
    import tapegrad.sweep as sw
    monkeypatch.setattr(sw, "generated_dir", lambda: str(tmp_path))
    before = dict(sw.SCALAR_FORWARD), dict(sw.SCALAR_REVERSE)
    derived = {}
    # (add/sub/mul/div: from their two-input kernels, ``SCALAR_SOURCE``)
    for which, table in (("forward", sw.FORWARD), ("reverse", {**sw.REVERSE,
                                                               **sw.SCALAR_SOURCE})):
        for op, row in table.items():
            d = lower.scalar_row(row, vars(sw))
            if d is not None:
                derived[which, op] = sw._CALLED.sub(r"scalar_\1(", d[0])
    try:
        for _ in range(2):  # derives and writes the file, then reads it back
            sw.SCALAR_FORWARD.clear()
            sw.SCALAR_REVERSE.clear()
            sw._derive_scalar_rows()
            got = {("forward", k): v for k, v in sw.SCALAR_FORWARD.items()}
            got.update({("reverse", k): v for k, v in sw.SCALAR_REVERSE.items()})
            assert got == derived and len(derived) > 50
        assert len(list(tmp_path.glob("scalar_rows-*.json"))) == 1
    finally:
        sw.SCALAR_FORWARD.clear()
        sw.SCALAR_REVERSE.clear()
        sw.SCALAR_FORWARD.update(before[0])
        sw.SCALAR_REVERSE.update(before[1])
