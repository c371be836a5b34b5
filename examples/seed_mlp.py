"""The seed-mlp fit written out as a user would: a Python loop of forward / backward / step.

MLP 1 -> 64 -> 64 -> 1 with LeakyReLU(0.1), one sample per step (x uniform in [-1, 1)),
squared error, AdamW(lr=1e-3, betas=(0.9, 0.9), weight_decay=1e-3), float64, fitted to
y = 2.777 x^2 + 0.123 - 1.5 x^3 + sin(4x).  The tape is recorded once; every step replays it.
(`tapegrad demo` runs the same fit with tg.fit, i.e. the whole loop in compiled code.)

    python examples/seed_mlp.py            # writes seed_mlp_fit.png
"""
import sys
import time
from pathlib import Path

import numpy as np

try:
    import tapegrad as tg
except ImportError:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tapegrad as tg

STEPS = 15000


def target(x):
    return 2.777 * x ** 2 + 0.123 - 1.5 * x ** 3 + np.sin(4 * x)


rng = np.random.default_rng(0)
tape = tg.Tape()
mlp = tg.nn.MLP(tape, [1, 64, 64, 1], activation=lambda v: tg.leaky_relu(v, 0.1), rng=0)
x = tape.input("x", shape=(1, 1))
y = tape.input("y", shape=(1, 1))
loss = ((mlp(x) - y) ** 2).sum()                    # recorded once, evaluated eagerly
grid = np.linspace(-1, 1, 201).reshape(-1, 1)
curve = mlp(tape.input("grid", value=grid))         # same weights on a grid, for the plot
opt = tg.optim.AdamW(tape.params, lr=1e-3, betas=(0.9, 0.9), weight_decay=1e-3)

X = rng.uniform(-1, 1, (STEPS, 1, 1))
Y = target(X)
losses = np.empty(STEPS)
tape.forward(outputs=[loss], x=X[0], y=Y[0]); loss.backward()   # compile / load numba cache
t0 = time.perf_counter()
for step in range(STEPS):
    tape.forward(outputs=[loss], x=X[step], y=Y[step])  # replay only what the loss needs
    loss.backward()                                      # gradients overwritten, not summed
    opt.step()                                           # AdamW kernel over the param arena
    losses[step] = loss.item()
dt = time.perf_counter() - t0

tape.forward(outputs=[curve])
mse = float(np.mean((curve.value - target(grid)) ** 2))
print(f"seed-mlp 1-64-64-1, {sum(p.size for p in tape.params)} parameters, {len(tape)} instructions")
print(f"{STEPS} steps in a Python loop: {dt:.2f} s, {1e6 * dt / STEPS:.1f} us/step")
print(f"loss: first 500 steps {losses[:500].mean():.4f}, last 1000 steps {losses[-1000:].mean():.5f}")
print(f"MSE of the fit on a 201-point grid: {mse:.5f}")

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
a1.plot(grid, curve.value, label="MLP (tapegrad)")
a1.plot(grid, target(grid), "--", label="target")
a1.set_xlabel("x"); a1.legend(); a1.set_title("seed-mlp fit")
k = 200
a2.semilogy(np.convolve(losses, np.ones(k) / k, mode="valid"))
a2.set_xlabel("step"); a2.set_ylabel(f"squared error (mean of {k})"); a2.set_title("loss")
fig.tight_layout()
fig.savefig("seed_mlp_fit.png", dpi=90)
print("wrote seed_mlp_fit.png")
