"""tg.grad and tg.value_and_grad on plain functions, checked against analytic derivatives.

The function is the seed-mlp target  f(x) = 2.777 x^2 + 0.123 - 1.5 x^3 + sin(4x),
whose derivative is  f'(x) = 5.554 x - 4.5 x^2 + 4 cos(4x).  tg.grad records f on the first
call for each argument shape and replays the tape on later calls.

    python examples/grad_of_target.py
"""
import sys
from pathlib import Path

import numpy as np

try:
    import tapegrad as tg
except ImportError:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tapegrad as tg


def target(x, sin=np.sin):           # NumPy by default; target(v, tg.sin) records on a tape
    return 2.777 * x ** 2 + 0.123 - 1.5 * x ** 3 + sin(4 * x)


def dtarget(x):
    return 5.554 * x - 4.5 * x ** 2 + 4 * np.cos(4 * x)


# 1. elementwise derivative: the gradient of sum(f(x)) is f'(x) at every point
df = tg.grad(lambda x: target(x, tg.sin).sum())
np.set_printoptions(precision=4, suppress=True, linewidth=100)
xs = np.linspace(-1, 1, 9)
g = df(xs)
print("x      :", xs)
print("tg.grad:", g)
print("f'(x)  :", dtarget(xs))
print(f"max abs difference: {np.max(np.abs(g - dtarget(xs))):.2e}")
x2 = np.random.default_rng(0).uniform(-1, 1, 9)
g2 = df(x2)                              # same shape: a replay of the tape, no re-recording
print(f"second call (replayed tape) matches too: {np.allclose(g2, dtarget(x2))}")

# 2. value_and_grad with two arguments: least squares of a line a*x + c against the target
def sq_error(a, c, x, y):
    return ((a * x + c - y) ** 2).mean()


X = np.linspace(-1, 1, 50)
Y = target(X)
a0, c0 = np.array(0.5), np.array(-0.2)
value, (ga, gc) = tg.value_and_grad(sq_error, argnums=(0, 1))(a0, c0, X, Y)
r = a0 * X + c0 - Y
print(f"\nvalue_and_grad: loss {value:.6f} (numpy {np.mean(r ** 2):.6f})")
print(f"  dL/da {float(ga): .6f}   analytic {np.mean(2 * r * X): .6f}")
print(f"  dL/dc {float(gc): .6f}   analytic {np.mean(2 * r): .6f}")
err = max(abs(value - np.mean(r ** 2)), abs(ga - np.mean(2 * r * X)), abs(gc - np.mean(2 * r)))
print(f"max abs difference: {float(err):.2e}")


# 3. Python control flow: the functional API re-records when a branch guard flips
def piecewise(x):
    s = x.sum()
    return s ** 2 if s > 0 else -3 * s


dp = tg.grad(piecewise)
print(f"\npiecewise: grad at [1, 2] = {dp(np.array([1.0, 2.0]))} (expect 2*3 = 6 each), "
      f"at [-1, -2] = {dp(np.array([-1.0, -2.0]))} (expect -3 each)")
