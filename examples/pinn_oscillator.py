"""A physics-informed network for the damped harmonic oscillator (d = 2, w0 = 20), as in the
well-known PINN tutorial, trained with tg.fit.

    python examples/pinn_oscillator.py [--steps N]     # writes pinn_oscillator.png

u(t) is an MLP 1->32->32->32->1 with tanh. The loss asks for u(0) = 1, u'(0) = 0 and the ODE
u'' + 4u' + 400u = 0 at 30 points of [0, 1]:

    (u(0) - 1)^2 + 0.1 u'(0)^2 + 1e-4 mean((u'' + 4u' + 400u)^2)

u' and u'' are recorded on the tape with ``tg.gradients`` (the reverse pass as instructions),
so the loss, its weight gradient (third-order mixed derivatives) and Adam's update all replay
in compiled code. The RMS error against the exact solution is printed.
"""
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

try:
    import tapegrad as tg
except ImportError:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tapegrad as tg

D, W0 = 2.0, 20.0


def exact(t):
    w = math.sqrt(W0 ** 2 - D ** 2)
    phi = math.atan(-D / w)
    return np.exp(-D * t) * np.cos(phi + w * t) / math.cos(phi)


ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=20000)
steps = ap.parse_args().steps

tape = tg.Tape()
u = tg.nn.MLP(tape, [1, 32, 32, 32, 1], activation=tg.tanh, rng=0)
t0 = tape.input("t0", value=np.zeros((1, 1)), requires_grad=True)
t = tape.input("t", value=np.linspace(0, 1, 30).reshape(-1, 1), requires_grad=True)
u0 = u(t0)
du0, = tg.gradients(u0.sum(), [t0])
ut = u(t)
dut, = tg.gradients(ut.sum(), [t])        # the points are independent: d(sum u)/dt_i = u'(t_i)
d2ut, = tg.gradients(dut.sum(), [t])
residual = d2ut + 2 * D * dut + W0 ** 2 * ut
loss = (u0.sum() - 1.0) ** 2 + 0.1 * du0.sum() ** 2 + 1e-4 * (residual ** 2).mean()
print(f"the tape: {len(tape)} instructions, {tape.stats()['params']} parameters")

opt = tg.optim.Adam(tape.params, lr=1e-3)
start = time.perf_counter()
history = tg.fit(loss, opt, steps=steps)       # full batch: nothing to draw, nothing to feed
dt = time.perf_counter() - start
print(f"{steps} Adam steps in {dt:.2f} s ({dt / steps * 1e6:.1f} us/step); loss "
      f"{history[0]:.3e} -> {history[-1]:.3e}")

grid = np.linspace(0, 1, 200).reshape(-1, 1)
probe = tape.input("grid", value=grid)
pred = u(probe)
tape.forward(outputs=[pred])
rms = float(np.sqrt(np.mean((pred.value[:, 0] - exact(grid[:, 0])) ** 2)))
print(f"rms error against the exact solution on 200 points: {rms:.4f}")

try:
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit(0)
plt.figure(figsize=(7, 3.5))
plt.plot(grid, exact(grid), "k--", label="exact")
plt.plot(grid, pred.value, label=f"PINN after {steps} steps")
plt.scatter(t.value, np.zeros(30), s=8, c="tab:orange", label="physics points")
plt.legend()
plt.xlabel("t")
plt.savefig("pinn_oscillator.png", dpi=120, bbox_inches="tight")
print("wrote pinn_oscillator.png")
