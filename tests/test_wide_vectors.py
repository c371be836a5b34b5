"""512-bit vectors for the transcendental kernels on AVX-512 CPUs (``_vmath.wide``,
``_jit.WIDE_VECTORS``, ``TAPEGRAD_AVX512=0`` turns it off).

The attribute must reach the compiled kernels and only them when the switch is on, change no
result (each element is computed alone: the width changes no rounding), and be part of the
cache key so that code of one setting is never loaded under the other.
"""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from tapegrad import _jit
from tapegrad.ops import _vmath, elementwise, linalg

ATTR = '"prefer-vector-width"="512"'


def _fresh(kernel):
    """The kernel's Python function compiled now, uncached (so the switch's state at this
    compile decides)."""
    return numba.njit(error_model="numpy")(kernel.py_func)


@pytest.mark.parametrize("wide", [True, False])
def test_attribute_follows_the_switch(monkeypatch, wide):
    monkeypatch.setattr(_vmath, "WIDE_VECTORS", wide)
    f = _fresh(elementwise.exp_fwd)
    v = np.linspace(-3, 3, 200)
    f(v, np.uint64(0), np.uint64(100), np.uint64(100), 0.0)
    ir = f.inspect_llvm(f.signatures[0])
    assert (ATTR in ir) == wide


def test_interpreter_like_functions_are_not_marked(monkeypatch):
    """Only functions of tapegrad.ops modules: a function elsewhere calling vexp keeps
    LLVM's width (the interpreters inline the scalar rows' vexp)."""
    monkeypatch.setattr(_vmath, "WIDE_VECTORS", True)

    @numba.njit(error_model="numpy")
    def outside(v):
        for i in range(v.size):
            v[i] = _vmath.vexp(v[i])
    outside(np.zeros(4))
    assert ATTR not in outside.inspect_llvm(outside.signatures[0])


@pytest.mark.parametrize("name", ["exp", "log", "tanh", "sigmoid"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_same_bits_wide_or_narrow(monkeypatch, name, dtype):
    rng = np.random.default_rng(3)
    n = 1000 + 13  # a remainder after the vector loop in both widths
    x = rng.standard_normal(n) * 8
    if name == "log":
        x = np.abs(x) * 10.0 ** rng.integers(-30, 30, n)
    v0 = np.concatenate([x, np.zeros(n)]).astype(dtype)
    out = []
    for wide in (True, False):
        monkeypatch.setattr(_vmath, "WIDE_VECTORS", wide)
        f = _fresh(getattr(elementwise, name + "_fwd"))
        v = v0.copy()
        f(v, np.uint64(0), np.uint64(n), np.uint64(n), 0.0)
        out.append(v[n:])
    assert out[0].tobytes() == out[1].tobytes()
    x = v0[:n].astype(np.float64)  # the arguments as the kernel saw them
    with np.errstate(all="ignore"):
        ref = {"exp": np.exp, "log": np.log, "tanh": np.tanh,
               "sigmoid": lambda t: 1 / (1 + np.exp(-t))}[name](x)
    np.testing.assert_allclose(out[0], ref.astype(dtype), rtol=8 * np.finfo(dtype).eps)


def test_vecmat_forward_wide_blocks():
    """x @ Y through the eight-, four- and one-row passes and a partial column block."""
    rng = np.random.default_rng(4)
    for K, N in [(19, 7), (19, 1030), (8, 64), (3, 2100)]:
        x, Y = rng.standard_normal(K), rng.standard_normal((K, N))
        v = np.concatenate([x, Y.ravel(), np.zeros(N)])
        linalg.matvec_fwd(v, 0, K, K + K * N, 1, 1, K, N, 1, 1)
        np.testing.assert_allclose(v[K + K * N:], x @ Y, rtol=1e-12, atol=1e-12)


def test_cache_key_holds_the_switch(monkeypatch):
    if _jit._FunctionCache is None:
        pytest.skip("numba's cache internals are not there: the switch stays off")
    cache = _jit._FunctionCache(elementwise.exp_fwd.py_func)
    codegen = numba.core.registry.cpu_target.target_context.codegen()
    keys = []
    for wide in (True, False):
        monkeypatch.setattr(_jit, "WIDE_VECTORS", wide)
        keys.append(cache._index_key((numba.float64,), codegen))
    assert keys[0] != keys[1]
    assert keys[0][1] == codegen.magic_tuple()  # numba's CPU name and features stay in it


def test_environment_variable_turns_it_off():
    env = dict(os.environ, TAPEGRAD_AVX512="0")
    code = "from tapegrad import _jit; print(_jit.WIDE_VECTORS)"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"


def test_only_with_avx512():
    """Off on a CPU (as numba compiles for it) without AVX-512: a baseline x86-64 target."""
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CPU_FEATURES="+sse2")
    env.pop("TAPEGRAD_AVX512", None)
    code = "from tapegrad import _jit; print(_jit.WIDE_VECTORS)"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
