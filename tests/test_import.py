"""What ``import tapegrad`` loads, in a new process: nothing a first gradient does not need
(SciPy's linear algebra package, plotting, MPI, the benchmarks), SciPy's BLAS loaded
single-threaded all the same, and SciPy left whole for the user."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, **env):
    e = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    e.pop("OPENBLAS_NUM_THREADS", None)
    e.update(env)
    p = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


NOT_AT_IMPORT = ["scipy.linalg", "scipy.linalg.cython_blas", "scipy.linalg.cython_lapack",
                 "scipy.sparse", "matplotlib", "mpi4py", "sklearn", "pandas", "IPython",
                 "tapegrad.bench", "tapegrad.dist", "tapegrad.tier", "tapegrad.demo",
                 "tapegrad.cli", "tapegrad.io"]


def test_import_loads_only_what_a_first_gradient_needs():
    mods = _run("import sys, json, tapegrad\nprint(json.dumps(sorted(sys.modules)))")
    assert "tapegrad.tape" in mods and "numba" in mods
    assert [m for m in NOT_AT_IMPORT if m in mods] == []
    # numba's array lowering (0.07 s): only a compile needs it, and numba imports it then
    assert "numba.np.linalg" not in mods and "numba.np.arraymath" not in mods


def test_lapack_integer_is_numbas():
    # ops.factor's pivots are numba's LAPACK integer, read without importing numba.np.linalg
    from numba.np.linalg import F_INT_nptype

    from tapegrad import _jit
    from tapegrad.ops.factor import PIVOT
    assert PIVOT is F_INT_nptype
    assert _jit.BLAS  # SciPy is there, of numba's integer width


def test_scipy_blas_is_single_threaded_and_scipy_whole():
    # tapegrad loads SciPy's BLAS library with one thread (DESIGN.md) without importing
    # scipy.linalg; a later import of scipy.linalg finds its submodules as usual
    out = _run(r"""
import json, os, sys
import tapegrad
import scipy
env_left = "OPENBLAS_NUM_THREADS" in os.environ
threads = None
try:
    import threadpoolctl
    threads = [i["num_threads"] for i in threadpoolctl.threadpool_info()
               if i.get("internal_api") == "openblas" and "scipy" in i["filepath"]
               and "numpy" not in i["filepath"]]
except ImportError:
    pass
import scipy.linalg
from scipy.linalg import cython_lapack
print(json.dumps({"env_left": env_left, "threads": threads,
                  "blas": hasattr(scipy.linalg, "cython_blas") or
                          "scipy.linalg.cython_blas" in sys.modules,
                  "lapack_capi": "dgetrf" in cython_lapack.__pyx_capi__,
                  "solve": scipy.linalg.solve([[2.0, 0.0], [0.0, 4.0]], [2.0, 4.0]).tolist()}))
""")
    assert out["env_left"] is False
    if out["threads"]:  # threadpoolctl is there and sees SciPy's OpenBLAS
        assert out["threads"] == [1] * len(out["threads"])
    assert out["lapack_capi"] and out["blas"]
    assert out["solve"] == [1.0, 1.0]


def test_blas_and_lapack_run_in_a_new_process():
    # A product large enough for BLAS (ops.linalg.BLAS_MIN) and an LU factorization (LAPACK)
    # in a process where tapegrad loaded only SciPy's extension modules: numba imports them
    # by name at the first call. Compared with NumPy.
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(64, 48)), rng.normal(size=(48, 40))
    m = rng.normal(size=(5, 5)) + 5 * np.eye(5)
    out = _run(f"""
import json, sys
import numpy as np
import tapegrad as tg
from tapegrad.ops.linalg import BLAS_MIN
assert "scipy.linalg" not in sys.modules
a, b = np.array({a.tolist()}), np.array({b.tolist()})
tape = tg.Tape()
x = tape.param(a, name="x")
y = tape.input("y", value=b)
loss = (x @ y).sum()
tape.forward()
loss.backward()
from tapegrad.ops.factor import PIVOT, lu
m = np.array({m.tolist()})
ok, sign = lu(m, np.zeros(5, PIVOT))
print(json.dumps({{"big": 64 * 48 * 40 >= BLAS_MIN, "value": float(loss.value),
                  "grad": x.grad.tolist(), "det": sign * float(np.prod(np.abs(np.diag(m))))}}))
""")
    assert out["big"]
    assert abs(out["value"] - (a @ b).sum()) <= 1e-10 * np.abs(a @ b).sum()
    np.testing.assert_allclose(out["grad"], np.ones((64, 40)) @ b.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["det"], np.linalg.det(m), rtol=1e-12)


def test_a_users_blas_thread_count_is_kept():
    out = _run("import json, os, tapegrad\n"
               "print(json.dumps(os.environ.get('OPENBLAS_NUM_THREADS')))",
               OPENBLAS_NUM_THREADS="3")
    assert out == "3"
