"""The Python tier (tapegrad/tier.py): the same numbers as the compiled sweeps, and the switch to
the compiled ones once a worker has put them in the cache.

The comparisons run the full interpreter (every opcode; compiled once per dtype for the whole
suite, as in test_tape_fuzz) and its Python-tier copy on the same lowered stream and arenas.
"""
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import sweep, tier

try:
    from op_specs import SPECS, case_id, normal
except ImportError:  # tests/ imported as a package
    from tests.op_specs import SPECS, case_id, normal


def _cases():
    return [pytest.param(spec, case, id=f"{spec.id}-{case_id(case)}")
            for spec in SPECS for case in spec.cases]


@pytest.fixture(scope="module")
def full():
    return sweep.interpreter(sweep.ALL_OPS)


def _same(a, b):
    """Equal bit for bit (NaNs of the same payload included)."""
    return a.shape == b.shape and bool(np.all(a.view(np.uint8) == b.view(np.uint8)))


ULPS = 8  # the bound: |python - compiled| <= ULPS * eps * the arena's largest finite magnitude


def _close(a, b):
    """The same non-finite entries, and finite ones within the bound: the compiled sums run
    in LLVM's vectorised order (partial sums), the Python tier's one term after another, so
    a sum may differ in its last bits; every other operation is the same IEEE operation."""
    eps = np.finfo(a.dtype).eps
    a, b = a.astype(np.float64), b.astype(np.float64)
    fin = np.isfinite(a)
    if not (np.array_equal(fin, np.isfinite(b)) and _same(a[~fin], b[~fin])):
        return False
    scale = float(np.abs(a[fin]).max()) if fin.any() else 0.0
    return bool(np.all(np.abs(a[fin] - b[fin]) <= ULPS * eps * scale))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_python_tier_equals_compiled_over_the_op_specs(full, dtype):
    """Forward and reverse sweeps of every op-spec case, both dtypes: the Python tier's arenas
    equal the compiled sweeps' within ``ULPS`` (``_close``), statuses alike."""
    py_fwd, py_rev = tier.python(full.forward), tier.python(full.reverse)
    checked, mismatches, exact = 0, [], 0
    for spec in SPECS:
        for case in spec.cases:
            name = f"{spec.id}-{case_id(case)}"
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            arrays = [np.array(a, np.float64) for a in (spec.gen or normal)(rng, case.shapes)]
            tape = tg.Tape(dtype=dtype)
            params = [tape.param(a) for a in arrays]
            try:
                out = spec.f(*params, **case.kw)
                tape.forward()
            except tg.TapegradError:  # an op without this dtype: not this test's business
                continue
            fmask = np.ones(len(tape), np.uint8)
            args = (tape._instr, tape._imm, tape._low)
            v1, v2 = tape._val.copy(), tape._val.copy()
            s1 = full.forward(*args, v1, fmask, 0)
            with np.errstate(all="ignore"):
                s2 = py_fwd(*args, v2, fmask, 0)
            if tuple(s1) != tuple(s2) or not _close(v1, v2):
                mismatches.append(f"{name} forward: {np.flatnonzero(v1 != v2)[:5]}")
            rmask = tape._reverse_mask(out._b)
            g1 = np.zeros_like(tape._grad)
            off, size = int(tape._boff[out._b]), out.size
            g1[off:off + size] = rng.standard_normal(size)
            g2 = g1.copy()
            s1 = full.reverse(*args, v1, g1, rmask, 0)
            with np.errstate(all="ignore"):
                s2 = py_rev(*args, v1, g2, rmask, 0)
            if tuple(s1) != tuple(s2) or not _close(g1, g2):
                mismatches.append(f"{name} reverse: {np.flatnonzero(g1 != g2)[:5]}")
            exact += _same(v1, v2) and _same(g1, g2)
            checked += 1
    assert checked > 100 and exact > checked // 2
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_python_transcendentals_are_bitwise(dtype):
    """exp, log, tanh, sigmoid (ops/_vmath.py) as Python: the compiled bits exactly, over
    the whole range, subnormals, signed zeros, +-inf and NaN."""
    from tapegrad.ops import _vmath as vm
    rng = np.random.default_rng(3)
    with np.errstate(over="ignore"):  # (float32: the large ones become inf, as wanted)
        x = np.concatenate([rng.standard_normal(300) * 10, rng.uniform(-800, 800, 100),
                            np.ldexp(rng.uniform(0.5, 1, 50), rng.integers(-1074, 1000, 50)),
                            [0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, 1e-310, 709.8,
                             -745.2, 88.7, -103.9, 22.0, 9.99]]).astype(dtype)
    for pub, compiled in ((vm.vexp, sweep.scalar_vexp), (vm.vlog, sweep.scalar_vlog),
                          (vm.vtanh, sweep.scalar_vtanh), (vm.vsigmoid, sweep.scalar_vsigmoid)):
        py = tier._convert(pub)
        xs = np.abs(x) if pub is vm.vlog else x
        with np.errstate(all="ignore"):
            got = np.array([py(v) for v in xs], dtype)
        want = np.array([compiled(v) for v in xs], dtype)
        assert _same(got, want), (pub.__name__, xs[got.view(np.uint8).reshape(len(xs), -1).any(1)
                                                    != want.view(np.uint8).reshape(len(xs), -1).any(1)][:5])


def test_python_tier_checks_equal_compiled(full):
    """The checks as Python give the compiled verdict on valid and on corrupted rows."""
    tape = tg.Tape()
    w = tape.param(np.ones((3, 2)))
    loss = tg.tanh(w @ np.ones((2, 4))).sum()
    tape.forward()
    from tapegrad.opcodes import N_IN, X
    py = tier.python(full.check_instructions)
    instr = tape._instr.copy()
    assert tuple(full.check_instructions(instr, tape._bsize, N_IN)) == \
        tuple(py(instr, tape._bsize, N_IN))
    instr[len(instr) - 1, X] = 10 ** 6  # an input buffer out of range
    bad = tuple(full.check_instructions(instr, tape._bsize, N_IN))
    assert bad[0] >= 0 and tuple(py(instr, tape._bsize, N_IN)) == bad
    assert loss.item() != 0


def test_fma_is_rounded_once():
    """The Python fused multiply-add (what _vmath's polynomials use) against exact
    arithmetic: cases where a * b + c in two roundings differs from one."""
    from fractions import Fraction
    a = 1.0 + 2.0 ** -30
    exact = Fraction(a) * Fraction(a) - 1
    assert tier._fma64(a, a, -1.0) == float(exact) != a * a - 1.0
    assert tier._fma64(0.0, 5.0, -0.0) == 0.0
    assert np.isnan(tier._fma64(np.inf, 0.0, 1.0))
    big = float(Fraction(2e154) * Fraction(1e154) - Fraction(1.5e308))  # a * b overflows
    assert tier._fma64(2e154, 1e154, -1.5e308) == big and np.isfinite(big)
    f = np.float32
    a32 = f(1.0) + f(2.0 ** -13)
    got = tier._fma32(a32, a32, f(-1.0))
    assert type(got) is f and got == f(Fraction(float(a32)) ** 2 - 1)


class _Proc:
    """A stand-in worker: running for ``polls`` polls, then done."""

    def __init__(self, polls):
        self.polls, self.waited = polls, False

    def poll(self):
        self.polls -= 1
        return None if self.polls >= 0 else 0

    def wait(self, timeout=None):
        self.waited, self.polls = True, -1
        return 0


def test_tiered_runs_python_then_switches(full, monkeypatch):
    """While its worker runs, a Tiered call runs as Python (same result); once the worker is
    done the attribute is the compiled function itself; a call too large for Python waits."""
    procs = []
    monkeypatch.setattr(tier, "_start", lambda mod, names, dtype: procs.append(_Proc(2))
                        or procs[-1])
    tape = tg.Tape()
    w = tape.param(np.linspace(-1, 1, 6).reshape(2, 3))
    loss = (tg.tanh(w) * w).sum()
    tape.forward()
    t = tier.Tiered(full, np.float64, workers=2)
    assert len(procs) == 2 and getattr(t.forward, "tier", None) == "python"
    args = (tape._instr, tape._imm, tape._low)
    mask = np.ones(len(tape), np.uint8)
    v = tape._val.copy()
    t.forward(*args, v, mask, 0)  # worker running: Python
    assert getattr(t.forward, "tier", None) == "python" and _same(v, tape._val)
    t.forward(*args, v, mask, 0)
    t.forward(*args, v, mask, 0)  # the worker is done now: compiled from here on
    assert t.forward is full.forward and _same(v, tape._val)
    monkeypatch.setattr(tier, "COST_LIMIT", 0.0)
    g = np.zeros_like(tape._grad)
    g[int(tape._boff[loss._b])] = 1.0
    t.reverse(*args, v, g, tape._reverse_mask(loss._b), 0)  # too large: waits for the worker
    assert t.reverse is full.reverse and procs[1].waited
    assert np.allclose(g[:6], (np.tanh(w.value) + w.value / np.cosh(w.value) ** 2).ravel())
    assert t.train_steps is full.train_steps  # not tiered: settles, then the module's


def test_tier_off_and_without_workers(monkeypatch):
    monkeypatch.setenv("TAPEGRAD_TIER", "off")
    assert not tier.enabled()
    monkeypatch.setenv("TAPEGRAD_TIER", "on")
    monkeypatch.setenv("TAPEGRAD_COMPILE_WORKERS", "0")
    assert not tier.enabled()
    monkeypatch.setenv("TAPEGRAD_COMPILE_WORKERS", "1")
    assert tier.enabled()


def test_cold_process_gets_python_tier_then_compiled(tmp_path):
    """End to end, empty cache: the first gradient comes from the Python tier; after the
    workers finish, the compiled sweeps give the same bits. (A two-opcode tape: cheap.)"""
    code = textwrap.dedent("""
        import numpy as np, tapegrad as tg
        tape = tg.Tape()
        w = tape.param(np.linspace(-2.0, 3.0, 7))
        loss = (w * w).sum()
        tape.forward(); loss.backward()
        interp = tape._interp
        assert type(interp).__name__ == "Tiered", type(interp)
        assert getattr(interp.reverse, "tier", None) == "python"
        g = w.grad.copy()
        assert np.array_equal(g, 2 * w.value)
        interp.settle()
        assert getattr(interp.reverse, "tier", None) is None
        tape.forward(); loss.backward()
        assert np.array_equal(w.grad, g)
        print("ok")
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), TAPEGRAD_TIER="on",
               TAPEGRAD_COMPILE_WORKERS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(tg.__file__)))]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]
