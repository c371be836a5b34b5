"""A tanh RNN (hidden 32) unrolled on one tape, fitted to the signal y = sin(x)·cos(x).

Training: windows of 24 consecutive samples (x step 0.15); at every time step the RNN reads
y_t and predicts y_{t+1}; the loss is the mean squared error of the predictions made after a
burn-in of BURN samples (before that the hidden state has not yet seen the phase).
All 23 time steps are unrolled onto one tape, recorded once and replayed by tg.fit.
After training, a second unrolled graph on the same tape (same weights) reads the first 20
samples of a new stretch and then runs free for 60 steps, feeding back its own predictions.

    python examples/rnn_sincos.py      # writes rnn_sincos.png
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

H, T, BATCH, STEPS, DX = 32, 24, 32, 1500, 0.15
WARM, FREE, BURN = 20, 60, 4


def signal(x):
    return np.sin(x) * np.cos(x)


rng = np.random.default_rng(0)
tape = tg.Tape()
s = 1 / np.sqrt(H)
Wx = tape.param(rng.uniform(-s, s, (1, H)), name="Wx")
Wh = tape.param(rng.uniform(-s, s, (H, H)), name="Wh")
bh = tape.param(np.zeros(H), name="bh")
Wo = tape.param(rng.uniform(-s, s, (H, 1)), name="Wo")
bo = tape.param(np.zeros(1), name="bo")


def cell(h, u):
    """One RNN step: new hidden state and the prediction of the next sample."""
    h = tg.tanh(u @ Wx + h @ Wh + bh)
    return h, h @ Wo + bo


# training graph: teacher forcing over a window, unrolled T-1 steps
seq = tape.input("seq", shape=(BATCH, T))
h = tape.const(np.zeros((BATCH, H)))
preds = []
for t in range(T - 1):
    h, p = cell(h, seq[:, t:t + 1])
    preds.append(p)
loss = tg.mse_loss(tg.concatenate(preds[BURN:], axis=1), seq[:, BURN + 1:])

# generation graph: read WARM samples, then feed predictions back for FREE steps
prompt = tape.input("prompt", shape=(1, WARM))
h, p = tape.const(np.zeros((1, H))), None
for t in range(WARM):
    h, p = cell(h, prompt[:, t:t + 1])
gen = [p]
for t in range(FREE - 1):
    h, p = cell(h, p)
    gen.append(p)
generated = tg.concatenate(gen, axis=1)
print(f"tape: {len(tape)} instructions ({T - 1} training steps + {WARM + FREE - 1} "
      f"generation steps unrolled), {sum(p.size for p in tape.params)} parameters")

# training data: random windows of the signal
starts = rng.uniform(0, 40, 4096)
windows = signal(starts[:, None] + DX * np.arange(T))
opt = tg.optim.Adam(tape.params, lr=5e-3)
t0 = time.perf_counter()
hist = tg.fit(loss, opt, {"seq": windows}, batch_size=BATCH, steps=STEPS, seed=0)
dt = time.perf_counter() - t0
print(f"{STEPS} Adam steps in {dt:.2f} s ({1e6 * dt / STEPS:.0f} us/step, includes loading "
      f"compiled code); loss {hist[:20].mean():.4f} -> {hist[-100:].mean():.6f}")

x0 = 3.0
xs = x0 + DX * np.arange(WARM + FREE)
tape.forward(outputs=[generated], prompt=signal(xs[:WARM])[None, :])
truth = signal(xs[WARM:])
err = np.max(np.abs(generated.value.ravel() - truth))
print(f"free-running prediction of {FREE} steps: max abs error {err:.4f}")

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
fine = np.linspace(xs[0], xs[-1], 400)
a1.plot(fine, signal(fine), "--", color="gray", label="sin(x)·cos(x)")
a1.plot(xs[:WARM], signal(xs[:WARM]), "o", ms=3, label="prompt (read)")
a1.plot(xs[WARM:], generated.value.ravel(), ".-", label="RNN, free running")
a1.set_ylim(-0.65, 0.85); a1.legend(loc="upper center", ncol=3, fontsize=8)
a1.set_xlabel("x"); a1.set_title("tanh RNN, hidden 32")
a2.semilogy(np.convolve(hist, np.ones(20) / 20, mode="valid"))
a2.set_xlabel("step"); a2.set_ylabel("training MSE (mean of 20)")
fig.tight_layout()
fig.savefig("rnn_sincos.png", dpi=90)
print("wrote rnn_sincos.png")
