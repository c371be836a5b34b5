"""``tapegrad demo``: the seed MLP (1 -> 64 -> 64 -> 1, LeakyReLU 0.1, AdamW lr 1e-3,
betas (0.9, 0.9), weight decay 1e-3, one sample per step) fitted to
y = 2.777 x^2 + 0.123 - 1.5 x^3 + sin(4x) on [-1, 1), trained with ``tg.fit``."""
import os
import time

import numpy as np

import tapegrad as tg


def target(x):
    return 2.777 * x ** 2 + 0.123 - 1.5 * x ** 3 + np.sin(4 * x)


GRID = np.linspace(-1, 1, 201).reshape(-1, 1)


def build(seed=0):
    """The seed-mlp tape: returns (tape, loss, curve). ``curve`` is the same MLP applied to
    the input "grid" (201 points); training replays skip it (activity analysis)."""
    tape = tg.Tape()
    mlp = tg.nn.MLP(tape, [1, 64, 64, 1], activation=lambda v: tg.leaky_relu(v, 0.1), rng=seed)
    x = tape.input("x", shape=(1, 1))
    y = tape.input("y", shape=(1, 1))
    loss = ((mlp(x) - y) ** 2).sum()
    loss.name = "loss"
    curve = mlp(tape.input("grid", value=GRID))
    return tape, loss, curve


def run(steps=30000, out=".", seed=0, progress=None):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    tape, loss, curve = build(seed)
    opt = tg.optim.AdamW(tape.params, lr=1e-3, betas=(0.9, 0.9), weight_decay=1e-3)
    X = rng.uniform(-1, 1, (steps, 1))
    t0 = time.perf_counter()
    tg.fit(loss, opt, {"x": X, "y": target(X)}, batch_size=1, steps=min(steps, 10), shuffle=False)
    t1 = time.perf_counter()  # the first call compiles (or loads from numba's cache)
    hist = tg.fit(loss, opt, {"x": X, "y": target(X)}, batch_size=1, steps=steps,
                  shuffle=False, progress=progress)
    t2 = time.perf_counter()
    tape.forward(outputs=[curve])
    pred = curve.numpy().ravel()
    mse = float(np.mean((pred - target(GRID).ravel()) ** 2))
    print(f"seed-mlp 1-64-64-1, AdamW, one sample per step, {steps} steps")
    print(f"final loss (mean of last 1000 steps): {np.mean(hist[-1000:]):.5f}")
    print(f"MSE on a 201-point grid of [-1, 1]:   {mse:.5f}")
    print(f"wall time {t2 - t1:.3f} s, {1e6 * (t2 - t1) / max(steps, 1):.2f} us per step "
          f"(first call, compiling or loading: {t1 - t0:.2f} s)")
    _plots(out, GRID.ravel(), pred, hist)
    return 0


def _plots(out, grid, pred, hist):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'tapegrad[examples]')")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(grid, pred, label="MLP (tapegrad)")
    ax.plot(grid, target(grid), "--", label="target")
    ax.set_xlabel("x")
    ax.legend()
    ax.set_title("seed-mlp fit")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "demo_fit.png"), dpi=100)
    fig, ax = plt.subplots(figsize=(6, 4))
    k = max(1, len(hist) // 300)
    smooth = np.convolve(hist, np.ones(k) / k, mode="valid")
    ax.semilogy(hist, alpha=0.25, label="per step")
    ax.semilogy(np.arange(k - 1, len(hist)), smooth, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("squared error")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "demo_loss.png"), dpi=100)
    plt.close("all")
    print(f"wrote {os.path.join(out, 'demo_fit.png')} and {os.path.join(out, 'demo_loss.png')}")
