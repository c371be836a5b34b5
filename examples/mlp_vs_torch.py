"""A one-hidden-layer ReLU MLP trained with SGD in tapegrad and, step by step, in PyTorch.

Both start from the same weights and see the same minibatches (float64), so their losses
should agree to rounding at every step. Without PyTorch the tapegrad half runs alone.

    python examples/mlp_vs_torch.py
"""
import sys
from pathlib import Path

import numpy as np

try:
    import tapegrad as tg
except ImportError:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tapegrad as tg

try:
    import torch
except ImportError:
    torch = None

STEPS, BATCH, D_IN, HIDDEN = 200, 16, 3, 32
LR, MOMENTUM = 0.05, 0.9
rng = np.random.default_rng(0)
X = rng.normal(size=(256, D_IN))
Y = np.sin(X @ np.array([[1.0], [-0.5], [0.3]])) + 0.1 * X[:, :1] ** 2
init = {"W1": rng.normal(size=(D_IN, HIDDEN)) / np.sqrt(D_IN), "b1": np.zeros(HIDDEN),
        "W2": rng.normal(size=(HIDDEN, 1)) / np.sqrt(HIDDEN), "b2": np.zeros(1)}
batches = [rng.choice(len(X), BATCH, replace=False) for _ in range(STEPS)]

# ---- tapegrad: record once, replay each step
tape = tg.Tape()
W1, b1, W2, b2 = (tape.param(init[k], name=k) for k in ("W1", "b1", "W2", "b2"))
x = tape.input("x", shape=(BATCH, D_IN))
y = tape.input("y", shape=(BATCH, 1))
loss = tg.mse_loss(tg.relu(x @ W1 + b1) @ W2 + b2, y)
opt = tg.optim.SGD(tape.params, lr=LR, momentum=MOMENTUM)
tg_losses = []
for idx in batches:
    tape.forward(x=X[idx], y=Y[idx])
    loss.backward()
    opt.step()
    tg_losses.append(loss.item())
tg_losses = np.array(tg_losses)
print(f"tapegrad: loss {tg_losses[0]:.5f} -> {tg_losses[-1]:.5f} in {STEPS} SGD steps "
      f"(lr {LR}, momentum {MOMENTUM}, batch {BATCH})")

if torch is None:
    print("PyTorch is not installed: skipped the step-by-step comparison "
          "(pip install torch to run it)")
    sys.exit(0)

# ---- PyTorch: same weights, same batches, same optimizer
tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
topt = torch.optim.SGD(list(tp.values()), lr=LR, momentum=MOMENTUM)
Xt, Yt = torch.tensor(X), torch.tensor(Y)
torch_losses = []
for idx in batches:
    xb, yb = Xt[idx], Yt[idx]
    out = torch.relu(xb @ tp["W1"] + tp["b1"]) @ tp["W2"] + tp["b2"]
    tl = torch.nn.functional.mse_loss(out, yb)
    topt.zero_grad()
    tl.backward()
    topt.step()
    torch_losses.append(tl.item())
torch_losses = np.array(torch_losses)

print(f"PyTorch {torch.__version__}: loss {torch_losses[0]:.5f} -> {torch_losses[-1]:.5f}")
print(f"max loss difference over {STEPS} steps: {np.max(np.abs(tg_losses - torch_losses)):.2e}")
wdiff = max(np.max(np.abs(p.value - tp[p.name].detach().numpy())) for p in tape.params)
print(f"max weight difference after training:  {wdiff:.2e}")
