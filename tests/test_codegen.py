"""The interpreters generated per opcode set (tapegrad/sweep.py): a module holds the branches
of exactly the opcodes asked for, replays bit for bit as the interpreter of every opcode does,
refuses an opcode it was not generated for, is named by its text (an edited kernel gets a
new module and a new cache entry), and a process falls back to the full interpreter once it
has generated ``MAX_SPECIALISED`` others."""
import re

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import fuse, lower, sweep
from tapegrad.opcodes import A0, OP, Op


def _model(dtype=np.float64):
    tape = tg.Tape(dtype=dtype)
    rng = np.random.default_rng(0)
    w = tape.param(rng.normal(size=(3, 4)), name="w")
    b = tape.param(rng.normal(size=4), name="b")
    x = tape.input("x", value=rng.normal(size=(5, 3)))
    h = tg.tanh(x @ w + b)
    loss = (h * h).mean() + 0.5 * tg.sigmoid(h).sum()
    return tape, loss


def _opset(tape):
    tape._seal()
    return sweep.opcodes_of(tape._instr)


def test_a_module_holds_the_branches_of_its_opcodes_only():
    text = sweep.source({Op.MUL, Op.CROSS_ENTROPY})
    fwd = text.split("def forward")[1].split("def reverse")[0]
    rev = text.split("def reverse")[1].split("def tangent")[0]
    for part in (fwd, rev):  # MUL's size-1 row (lowered code SCALAR + op) and general row
        assert re.findall(r"code == (\d+):", part) == [
            str(int(Op.MUL) + lower.SCALAR), str(int(Op.MUL)), str(int(Op.CROSS_ENTROPY))]
    assert "mul_fwd(" in fwd and "cross_entropy_fwd(" in fwd and "tanh_fwd(" not in fwd
    assert "def train_steps" in text   # tg.fit's loop, calling this module's sweeps
    tan = text.split("def tangent")[1].split("def check_instructions")[0]
    check = text.split("def check_instructions")[1].split("def train_steps")[0]
    for part in (tan, check):
        assert re.findall(r"op == (\d+):", part) == [str(int(Op.MUL)), str(int(Op.CROSS_ENTROPY))]


def test_every_opcode_has_its_three_rows():
    from tapegrad.tangent import TANGENT
    from tapegrad.validate import CHECKS
    assert set(sweep.FORWARD) == set(sweep.REVERSE) == set(TANGENT) == set(CHECKS) == sweep.OPCODES
    assert sweep.OPCODES == {int(o) for o in Op if o != Op.N_OPS}
    assert sweep.ALL_OPS == sweep.OPCODES | {sweep.FLAGGED_MATMUL, fuse.FUSE}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_specialised_and_full_interpreters_agree_bit_for_bit(dtype):
    results = []
    for ops in ("own", sweep.ALL_OPS):
        tape, loss = _model(dtype)
        mod = sweep.interpreter(_opset(tape) if ops == "own" else ops)
        tape._interp, tape._opset, tape._opset_n = mod, _opset(tape), tape._nf
        assert tape._interpreters() is mod
        tape.forward()
        loss.backward()
        results.append((tape._val.copy(), tape._grad.copy()))
    (v1, g1), (v2, g2) = results
    assert np.array_equal(v1, v2) and np.array_equal(g1, g2)
    assert np.abs(g1).sum() > 0


def test_an_opcode_outside_the_module_is_refused_not_skipped():
    tape, loss = _model()
    ops = _opset(tape)
    mod = sweep.interpreter(ops - {int(Op.TANH)})
    mask = np.ones(len(tape), np.uint8)
    status, k = mod.forward(tape._instr, tape._imm, tape._low, tape._val, mask, 0)
    assert status == sweep.UNKNOWN_OP and tape._instr[k, OP] == Op.TANH
    status, k = mod.reverse(tape._instr, tape._imm, tape._low, tape._val,
                            tape._grad, mask, 0)
    assert status == sweep.UNKNOWN_OP and tape._instr[k, OP] == Op.TANH


def test_products_without_transposed_operands_leave_the_flagged_code_out():
    tape, loss = _model()
    ops = _opset(tape)
    assert sweep.FLAGGED_MATMUL not in ops
    plain = sweep.source(ops)
    assert "plain_matmul_fwd(" in plain and not re.search(r"(?<!plain_)matmul_[fb]wd\(val", plain)
    assert "matmul_bwd(val" in sweep.source(ops | {sweep.FLAGGED_MATMUL})
    g = tg.gradients(loss, tape.params)          # the recorded rule of a product: flagged
    tape._seal()
    assert sweep.FLAGGED_MATMUL in sweep.opcodes_of(tape._instr)
    grown = sweep.opcodes_of(tape._instr)
    mod = sweep.interpreter(grown - {sweep.FLAGGED_MATMUL})  # plain rows, every opcode:
    mask = np.ones(len(tape), np.uint8)
    status, k = mod.forward(tape._instr, tape._imm, tape._low, tape._val, mask, 0)
    assert status == sweep.UNKNOWN_OP            # refused, never run as an unflagged product
    assert tape._instr[k, OP] == Op.MATMUL and max(tape._instr[k, A0 + 4:A0 + 6]) > 1
    pen = sum((gi * gi).sum() for gi in g)
    tape.forward()
    pen.backward()                               # the tape's own module: the full rows
    assert sweep.FLAGGED_MATMUL in tape._opset and np.isfinite(tape.params[0].grad).all()


def test_validation_refuses_an_opcode_outside_the_module():
    from tapegrad.validate import N_IN
    tape, loss = _model()
    ops = _opset(tape)
    mod = sweep.interpreter(ops - {int(Op.TANH)})
    k, reason = mod.check_instructions(tape._instr, tape._bsize, N_IN)
    assert reason == 1 and tape._instr[k, OP] == Op.TANH   # "unknown opcode"
    assert sweep.interpreter(ops).check_instructions(tape._instr, tape._bsize, N_IN) == (-1, 0)


def test_the_tape_picks_up_opcodes_recorded_later():
    tape, loss = _model()
    tape.forward()
    before = tape._interpreters()
    z = tg.exp(loss) * 2.0
    assert float(z.value) == pytest.approx(2 * np.exp(float(loss.value)))
    assert int(Op.EXP) in tape._opset
    with open(tape._interpreters().__file__) as fh:
        assert "exp_fwd(" in fh.read()
    assert before.__file__ != tape._interpreters().__file__ or int(Op.EXP) in _opset(tape)


def test_module_name_follows_its_text(monkeypatch):
    ops = {Op.ADD}
    a = sweep.source(ops)
    monkeypatch.setattr(sweep, "_digest_value", "0" * 16)  # as if a kernel had changed
    b = sweep.source(ops)
    assert a != b
    assert sweep._load(a).__name__ != sweep._load(b).__name__


def test_a_process_falls_back_to_the_full_interpreter(monkeypatch):
    monkeypatch.setattr(sweep, "_chosen", {})   # forget earlier choices
    monkeypatch.setattr(sweep, "MAX_SPECIALISED", 0)
    monkeypatch.setattr(sweep, "_ready", lambda d, dtype: False)
    ops = {Op.ADD, Op.SUB, Op.DIVC, Op.ABS}   # a set no other test asks for
    assert sweep.for_ops(ops, np.float64) is sweep.interpreter(sweep.ALL_OPS)
    assert sweep.for_ops(ops, np.float64) is sweep.interpreter(sweep.ALL_OPS)  # remembered
    monkeypatch.setattr(sweep, "MAX_SPECIALISED", 10 ** 6)
    assert sweep.for_ops(ops, np.float32) is sweep.interpreter(ops)
    full = sweep.interpreter(sweep.ALL_OPS)
    monkeypatch.setattr(sweep, "_ready", lambda d, dtype: any(   # only the full one is cached
        d is getattr(full, n) for n in ("forward", "reverse", "check_instructions")))
    other = {Op.ADD, Op.SUB, Op.DIVC, Op.SIN}
    assert sweep.for_ops(other, np.float64) is full
    monkeypatch.setattr(sweep, "_ready", lambda d, dtype: True)   # both cached: its own
    third = {Op.ADD, Op.SUB, Op.DIVC, Op.COS}
    assert sweep.for_ops(third, np.float64) is sweep.interpreter(third)


def _dispatchers():
    """Every compiled function of tapegrad's modules (numba dispatchers), by name."""
    import sys
    from numba.core.dispatcher import Dispatcher
    out = {}
    for name, mod in list(sys.modules.items()):
        if name.startswith("tapegrad.") and "_generated" not in name:
            for k, v in vars(mod).items():
                if isinstance(v, Dispatcher):
                    out[f"{name}.{k}"] = v
    for d, twin in sweep._twins.items():   # the kernels the sweeps call
        out[f"twin of {d.py_func.__qualname__}"] = twin
    return out


def test_called_functions_are_compiled_once_not_per_literal_argument():
    # A Python constant passed to a called (not inlined) jitted function is typed as a
    # Literal and compiles a version of its own: sum_middle's literal add flag compiled it
    # twice, 0.8 s of a cold first gradient. Flags go as np.int64 values.
    tape = tg.Tape()
    rng = np.random.default_rng(1)
    w = tape.param(rng.normal(size=(3, 40)))
    b = tape.param(rng.normal(size=40))
    x = tape.input("x", value=rng.normal(size=(64, 3)))
    h = tg.tanh(x @ w + b) @ tape.param(rng.normal(size=(40, 2)))
    loss = (h * h).mean() + h.sum(axis=0).sum()
    tape.forward()
    loss.backward()
    opt = tg.optim.Adam(tape.params, lr=1e-3)
    opt.step()                      # optim.step_kernel (its counter was a literal 0 once)
    tg.fit(loss, opt, steps=2)
    literal = {name: [str(s) for s in d.signatures if "Literal" in str(s)]
               for name, d in _dispatchers().items()}
    assert {k: v for k, v in literal.items() if v} == {}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_call_types_are_what_the_callers_compile(dtype):
    # a compile worker compiles sweep.call_types: a mismatch would make its work useless
    tape, loss = _model(dtype)
    tape.forward()
    loss.backward()
    interp = tape._interpreters()
    for name in ("forward", "reverse", "check_instructions"):
        assert tuple(sweep.call_types(name, dtype)) in [tuple(s) for s in
                                                       getattr(interp, name).signatures]


_WORKER_CHILD = r"""
import numpy as np, tapegrad as tg
from tapegrad import _jit
tape = tg.Tape()
w = tape.param(np.linspace(-1, 1, 6).reshape(2, 3))
x = tape.input("x", value=np.arange(8.0).reshape(4, 2) / 8)
loss = tg.log(1 + tg.exp(tg.abs(x @ w) - 0.5)).sum()   # an opcode set of this test only
tape.forward()                   # compiles the forward sweep, a worker the reverse one
started = len(_jit._workers)
loss.backward()
rev = tape._interpreters().reverse
print(started, sum(rev.stats.cache_hits.values()), sum(rev.stats.cache_misses.values()))
print(repr(w.grad.tolist()))
"""


def test_compile_workers_follow_the_environment(monkeypatch):
    monkeypatch.setenv("TAPEGRAD_COMPILE_WORKERS", "0")
    assert sweep._worker_budget() == 0
    monkeypatch.setenv("TAPEGRAD_COMPILE_WORKERS", "1")
    assert sweep._worker_budget() == 1


def test_a_compile_worker_compiles_the_reverse_sweep_into_the_cache(tmp_path):
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), TAPEGRAD_COMPILE_WORKERS="1")
    p = subprocess.run([sys.executable, "-c", _WORKER_CHILD], env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    counts, grad = p.stdout.splitlines()
    started, hits, misses = map(int, counts.split())
    # the worker compiled it; this process loaded it from the cache
    assert (started, hits, misses) == (1, 1, 0)
    wv = np.linspace(-1, 1, 6).reshape(2, 3)
    xv = np.arange(8.0).reshape(4, 2) / 8
    z = xv @ wv
    g = np.sign(z) / (1 + np.exp(-(np.abs(z) - 0.5)))   # d softplus(|z| - .5) / dz
    assert np.allclose(np.array(eval(grad)), xv.T @ g, rtol=1e-12, atol=0)


def test_a_failed_worker_leaves_the_compile_to_this_process():
    import sys
    from tapegrad import _jit
    tape, loss = _model()
    tape.forward()
    rev = tape._interpreters().reverse
    _jit._checked.discard(rev)
    _jit.start_worker(rev, [sys.executable, "-c", "raise SystemExit(3)"], ".")
    loss.backward()   # waits for the worker (exit 3), then compiles or loads as usual
    assert rev not in _jit._workers and rev.signatures
    assert np.isfinite(tape.params[0].grad).all()


def test_modules_of_other_sources_are_removed_with_their_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    old = tmp_path / "tg_sweep_0000.py"
    old.write_text('"""x.\nGenerated by tapegrad.sweep from the sources with digest 00: no."""\n')
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    (cache / "tg_sweep_0000.forward-8.py311.nbi").write_bytes(b"")
    (cache / "tg_sweep_0000.forward-8.py311.1.nbc").write_bytes(b"")
    mine = tmp_path / "tg_sweep_1111.py"
    mine.write_text(f'"""x.\nGenerated by tapegrad.sweep from the sources with digest '
                    f'{sweep._digest()}: no."""\n')
    (cache / "tg_sweep_1111.forward-8.py311.nbi").write_bytes(b"")
    other = tmp_path / "notes.py"
    other.write_text("x = 1\n")
    recent = tmp_path / "tg_sweep_2222.py"   # superseded, but used within UNUSED_DAYS
    recent.write_text(old.read_text())
    import os
    import time
    past = time.time() - 2 * 86400 * sweep.UNUSED_DAYS
    for f in (old, mine):
        os.utime(f, (past, past))
    sweep._remove_superseded(str(tmp_path))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "notes.py", "tg_sweep_1111.forward-8.py311.nbi", "tg_sweep_1111.py", "tg_sweep_2222.py"]
