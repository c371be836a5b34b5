"""Newton-CG / trust-region on the 1000-dimensional Rosenbrock function with tapegrad's
gradient and Hessian-vector product.

    python examples/newton_rosenbrock.py

``tg.grad(f)`` records f once and replays it for every gradient; ``tg.hvp(f, (x,), (v,))``
records the gradient as tape instructions once (``tg.gradients``) and returns H(x) v with one
compiled reverse sweep, never forming the 1000 x 1000 Hessian. Both are checked against
SciPy's closed forms (``rosen_der``, ``rosen_hess_prod``) before the solve.
"""
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize, rosen, rosen_der, rosen_hess_prod

try:
    import tapegrad as tg
except ImportError:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tapegrad as tg

N = 1000


def f(x):
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


jac = tg.grad(f)
value_and_grad = tg.value_and_grad(f)


def hessp(x, p):
    return tg.hvp(f, (x,), (p,))


rng = np.random.default_rng(0)
x0 = 1.0 + rng.uniform(-0.5, 0.5, N)  # the SciPy tutorial's start, in 1000 dimensions
xr = rng.uniform(-1.2, 1.2, N)
err_g = np.max(np.abs(jac(xr) - rosen_der(xr))) / np.max(np.abs(rosen_der(xr)))
assert abs(value_and_grad(xr)[0] - rosen(xr)) <= 1e-12 * rosen(xr)
v = rng.standard_normal(N)
hv = rosen_hess_prod(xr, v)
err_h = np.max(np.abs(hessp(xr, v) - hv)) / np.max(np.abs(hv))
assert err_g < 1e-12 and err_h < 1e-12
print(f"gradient vs rosen_der: rel. error {err_g:.1e}; H v vs rosen_hess_prod: {err_h:.1e}")

for method in ("Newton-CG", "trust-ncg", "trust-krylov"):
    t = time.perf_counter()
    tol = {"xtol": 1e-12} if method == "Newton-CG" else {"gtol": 1e-9}
    res = minimize(value_and_grad, x0, jac=True, hessp=hessp, method=method,
                   options={"maxiter": 1000, **tol})
    dt = time.perf_counter() - t
    print(f"{method:<12} f = {res.fun:.3e}  |x - 1|_max = {np.max(np.abs(res.x - 1)):.1e}  "
          f"{res.nit} iterations, {res.njev} gradients, {res.get('nhev', 0)} H v products  "
          f"({dt:.2f} s)")
    assert res.fun < 1e-8, res.message
