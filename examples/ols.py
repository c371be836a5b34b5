"""Ordinary least squares by gradient descent on a tape, checked against np.linalg.solve.

100 samples, 5 features plus an intercept; full-batch gradient descent (tg.optim.SGD on the
whole data set) on the mean squared error converges to the normal-equation solution.

    python examples/ols.py
"""
import sys
from pathlib import Path

import numpy as np

try:
    import tapegrad as tg
except ImportError:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tapegrad as tg

rng = np.random.default_rng(0)
N, D = 100, 5
X = rng.normal(size=(N, D))
true_w = np.array([[1.5], [-2.0], [0.7], [0.0], [3.1]])
Y = X @ true_w + 0.4 + 0.1 * rng.normal(size=(N, 1))

tape = tg.Tape()
w = tape.param(np.zeros((D, 1)), name="w")
b = tape.param(np.zeros(1), name="b")
x = tape.input("x", value=X)
y = tape.input("y", value=Y)
loss = tg.mse_loss(x @ w + b, y)
opt = tg.optim.SGD(tape.params, lr=0.2)

for step in range(400):
    tape.forward()
    loss.backward()
    opt.step()
    if step % 100 == 0:
        print(f"step {step:3d}  loss {loss.item():.6f}")
tape.forward()

# normal equations with an intercept column: (A^T A) beta = A^T y
A = np.hstack([X, np.ones((N, 1))])
beta = np.linalg.solve(A.T @ A, A.T @ Y).ravel()
ours = np.concatenate([w.value.ravel(), b.value])
print(f"final loss {loss.item():.6f}")
print("gradient descent:", np.round(ours, 5))
print("np.linalg.solve: ", np.round(beta, 5))
print(f"max abs difference: {np.max(np.abs(ours - beta)):.2e}")
