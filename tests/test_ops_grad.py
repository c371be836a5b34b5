"""Values and gradients of every op, against NumPy/SciPy references (tests/op_specs.py).

For every spec and case, in float64:

1. record ``f`` on a fresh ``tg.Tape()`` with every input a ``tape.param``;
2. compare the eagerly recorded value with the NumPy reference (rtol 1e-10);
3. reduce the output to a scalar with a fixed random weighting (``(out * const(w)).sum()``;
   a 0-d output is used as is), ``backward()``, and compare each param's ``.grad`` with
   central finite differences of the *NumPy reference* (never of tapegrad);
4. write new values into the params in place, replay with ``tape.forward()`` and check
   values and gradients again.

Plus: every opcode has a spec (and each spec really records the opcodes it names), and every
spec's forward values on a float32 tape (recorded and replayed) match the float64 reference.
"""
import zlib

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.opcodes import Op

try:
    from op_specs import SPECS, case_id, normal
except ImportError:  # tests/ imported as a package
    from tests.op_specs import SPECS, case_id, normal

EPS = 1e-6
GRAD_RTOL, GRAD_ATOL = 1e-6, 1e-8
F64_RTOL = 1e-10
F32_RTOL = 1e-4


def _params(test):
    """(spec, case) params, one per case of every spec."""
    return [pytest.param(spec, case, id=f"{spec.id}-{case_id(case)}")
            for spec in SPECS for case in spec.cases]


def _rng(request, salt):
    """A generator seeded by the test id (stable across runs and orderings)."""
    return np.random.default_rng(zlib.crc32(f"{salt}:{request.node.callspec.id}".encode()))


def _inputs(spec, case, rng):
    arrays = (spec.gen or normal)(rng, case.shapes)
    return [np.array(a, dtype=np.float64) for a in arrays]


def _ref(spec, case, arrays):
    # a copy: references such as x.T or x[key] return views of their inputs
    return np.array(spec.ref(*arrays, **case.kw), dtype=np.float64)


def _record(spec, case, arrays, dtype=np.float64):
    tape = tg.Tape(dtype=dtype)
    params = [tape.param(a) for a in arrays]
    out = spec.f(*params, **case.kw)
    assert isinstance(out, tg.Var), f"{spec.id}: f must return a Var, got {type(out)}"
    return tape, params, out


def _assert_values(got, want, rtol, what):
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-2 * scale, err_msg=what)


def _finite_difference(spec, case, arrays, w, i):
    """d/d arrays[i] of sum(ref(*arrays) * w) by central differences, eps = 1e-6.

    The difference is taken output by output before weighting, sum((up - down) * w): the
    same number as sum(up * w) - sum(down * w), but the outputs that do not depend on the
    perturbed element cancel exactly instead of adding the rounding noise of a large sum."""
    arrays = [a.copy() for a in arrays]
    flat = arrays[i].reshape(-1)  # a view: writes go into arrays[i]
    grad = np.zeros(flat.size)
    for j in range(flat.size):
        old = flat[j]
        flat[j] = old + EPS
        up = _ref(spec, case, arrays)
        flat[j] = old - EPS
        down = _ref(spec, case, arrays)
        flat[j] = old
        grad[j] = np.sum((up - down) * w) / (2 * EPS)
    return grad.reshape(arrays[i].shape)


def _check_grads(spec, case, params, loss, arrays, w, when):
    loss.backward()
    for i, p in enumerate(params):
        got = np.array(p.grad)
        assert got.shape == arrays[i].shape
        what = f"{spec.id} {when}: gradient of input {i} (shape {arrays[i].shape})"
        if spec.zero_grad:
            assert np.all(got == 0), f"{what}: expected exactly 0, got {got}"
        want = _finite_difference(spec, case, arrays, w, i)
        np.testing.assert_allclose(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=what)


@pytest.mark.parametrize("spec, case", _params("grad"))
def test_value_and_grad(spec, case, request):
    rng = _rng(request, "f64")
    x0 = _inputs(spec, case, rng)
    tape, params, out = _record(spec, case, x0)
    want0 = _ref(spec, case, x0)
    _assert_values(out.value, want0, F64_RTOL, f"{spec.id}: recorded value")
    assert out.value.dtype == np.float64

    if out.shape == ():
        loss, w = out, 1.0
    else:
        w = rng.standard_normal(out.shape)
        loss = (out * tape.const(w)).sum()
    _check_grads(spec, case, params, loss, x0, w, "recorded")
    # sealing re-lays the arenas: the values must survive it
    _assert_values(out.value, want0, F64_RTOL, f"{spec.id}: value after backward()")

    # replay with new parameter values written in place
    x1 = _inputs(spec, case, rng)
    for p, a in zip(params, x1):
        p.value[...] = a
    tape.forward()
    _assert_values(out.value, _ref(spec, case, x1), F64_RTOL, f"{spec.id}: replayed value")
    _check_grads(spec, case, params, loss, x1, w, "replayed")


@pytest.mark.parametrize("spec, case", _params("f32"))
def test_forward_float32(spec, case, request):
    rng = _rng(request, "f32")
    x0 = [a.astype(np.float32) for a in _inputs(spec, case, rng)]
    tape, params, out = _record(spec, case, x0, np.float32)
    assert out.value.dtype == np.float32
    want = _ref(spec, case, [a.astype(np.float64) for a in x0])
    _assert_values(out.value, want, F32_RTOL, f"{spec.id}: float32 recorded value")

    x1 = [a.astype(np.float32) for a in _inputs(spec, case, rng)]
    tape.forward()  # seals; the values must survive it
    for p, a in zip(params, x1):
        p.value[...] = a
    tape.forward()
    assert out.value.dtype == np.float32
    want = _ref(spec, case, [a.astype(np.float64) for a in x1])
    _assert_values(out.value, want, F32_RTOL, f"{spec.id}: float32 replayed value")


# random draws replay to new values by design: tests/test_random.py checks them against an
# independent NumPy transcription of the generator instead of an op spec
NO_SPEC = {Op.TICK, Op.RAND, Op.RANDN}


def test_every_opcode_has_a_spec():
    declared = set(NO_SPEC)
    for spec in SPECS:
        declared.update(Op(op) for op in spec.ops)
    missing = sorted(op.name for op in Op if op != Op.N_OPS and op not in declared)
    assert not missing, f"opcodes without a spec in tests/op_specs.py: {missing}"


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_spec_records_its_opcodes(spec):
    """A spec may only claim opcodes that its expression really records (in some case)."""
    rng = np.random.default_rng(0)
    recorded = set()
    for case in spec.cases:
        tape, _, _ = _record(spec, case, _inputs(spec, case, rng))
        recorded.update(Op[name.upper()] for name in tape.stats()["by_opcode"])
    claimed = {Op(op) for op in spec.ops}
    assert claimed <= recorded, (f"{spec.id} claims {sorted(o.name for o in claimed)} but "
                                 f"records only {sorted(o.name for o in recorded)}")


def test_spec_ids_are_unique():
    ids = [s.id for s in SPECS]
    assert len(ids) == len(set(ids))
    for spec in SPECS:
        cids = [case_id(c) for c in spec.cases]
        assert len(cids) == len(set(cids)), spec.id
