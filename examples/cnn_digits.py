"""A small CNN on scikit-learn's bundled 8x8 digits, trained with tg.fit, and the same network in
PyTorch eager when it is installed.

conv2d 1 -> 8 channels (3x3, padding 1), ReLU, 2x2 max pooling, a linear layer 128 -> 10,
softmax cross-entropy, Adam, float32, batches of 64. With PyTorch, both start from the same
weights and take their first steps on the same batches (their losses must agree to float32
rounding); then one training step (forward, backward, Adam) on one fixed batch is timed in
both, in interleaved blocks, one thread each, and the medians are printed.

    python examples/cnn_digits.py          # --fast: fewer steps and timing blocks (the tests)
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

try:
    from sklearn.datasets import load_digits
except ImportError:
    print("scikit-learn is not installed: this example needs its bundled digits data set "
          "(pip install scikit-learn, or pip install 'tapegrad[examples]')")
    sys.exit(0)

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None

FAST = "--fast" in sys.argv[1:]
BATCH, LR = 64, 3e-3
STEPS = 200 if FAST else 1500
CHECK_STEPS = 5                                     # steps compared loss by loss with PyTorch
BLOCKS, BLOCK_STEPS = (3, 20) if FAST else (15, 100)  # timing: interleaved blocks of steps

digits = load_digits()                               # 1797 images of 8x8 pixels in 0..16
X = (digits.images / 16.0).astype(np.float32)[:, None]   # (1797, 1, 8, 8): NCHW
labels = digits.target
perm = np.random.default_rng(0).permutation(len(X))
train, test = perm[:1347], perm[1347:]

# ---- the network, recorded once: training loss and test logits on one tape
tape = tg.Tape(np.float32)
conv = tg.nn.Conv2d(tape, 1, 8, 3, padding=1, rng=0)
fc = tg.nn.Linear(tape, 128, 10, rng=1)


def net(x):
    h = tg.max_pool2d(tg.relu(conv(x)), 2)          # (n, 8, 4, 4)
    return fc(h.reshape(x.shape[0], 128))


x = tape.input("x", shape=(BATCH, 1, 8, 8))
y = tape.input("y", shape=(BATCH,))                  # class indices, fed as integers
loss = tg.cross_entropy(net(x), y)
test_logits = net(tape.input("x_test", value=X[test]))
init = [np.array(p.value) for p in tape.params]     # conv.W, conv.b, fc.W, fc.b

# ---- PyTorch: the same weights and the same first batches must give the same losses
if torch is not None:
    torch.set_num_threads(1)                         # tapegrad replays on one thread
    tw = [torch.tensor(a, requires_grad=True) for a in init]
    topt = torch.optim.Adam(tw, lr=LR)
    Xt, Yt = torch.tensor(X), torch.tensor(labels)

    def torch_step(xb, yb):
        topt.zero_grad()
        h = F.max_pool2d(F.relu(F.conv2d(xb, tw[0], tw[1], padding=1)), 2)
        out = F.cross_entropy(h.reshape(xb.shape[0], 128) @ tw[2] + tw[3], yb)
        out.backward()
        topt.step()
        return out.item()

    opt = tg.optim.Adam(tape.params, lr=LR)
    rng = np.random.default_rng(1)
    diffs = []
    for _ in range(CHECK_STEPS):
        idx = rng.choice(train, BATCH, replace=False)
        tape.forward(x=X[idx], y=labels[idx])
        loss.backward()
        opt.step()
        ours, theirs = loss.item(), torch_step(Xt[idx], Yt[idx])
        diffs.append(abs(ours - theirs) / abs(theirs))
    print(f"first {CHECK_STEPS} steps on the same batches from the same weights: loss "
          f"{ours:.6f} (tapegrad) vs {theirs:.6f} (PyTorch); max relative loss difference "
          f"{max(diffs):.1e}")
    for p, a in zip(tape.params, init):              # start the training below afresh
        p.value[...] = a

# ---- training inside compiled code
opt = tg.optim.Adam(tape.params, lr=LR)
t0 = time.perf_counter()
hist = tg.fit(loss, opt, {"x": X[train], "y": labels[train]}, batch_size=BATCH, steps=STEPS,
              seed=0)
dt = time.perf_counter() - t0
print(f"{STEPS} steps of batch {BATCH} ({STEPS * BATCH / len(train):.0f} epochs) in {dt:.2f} s "
      f"(first call includes loading the compiled code)")
print(f"train loss: first 10 steps {hist[:10].mean():.3f}, last 50 steps {hist[-50:].mean():.4f}")
tape.forward(outputs=[test_logits])
pred = test_logits.value.argmax(axis=1)
acc = float(np.mean(pred == labels[test]))
print(f"test accuracy: {acc:.4f} ({int(np.sum(pred == labels[test]))}/{len(test)})")

if torch is None:
    print("PyTorch is not installed: skipped the comparison (pip install torch to run it)")
    sys.exit(0)

# ---- one training step on one fixed batch, timed side by side
idx = train[:BATCH]
tape.forward(x=X[idx], y=labels[idx])   # tg.fit without data replays the inputs the tape holds
xb, yb = Xt[idx], Yt[idx]
tg.fit(loss, opt, steps=BLOCK_STEPS)
for _ in range(BLOCK_STEPS):
    torch_step(xb, yb)
ours, theirs = [], []
for _ in range(BLOCKS):
    t0 = time.perf_counter()
    tg.fit(loss, opt, steps=BLOCK_STEPS)
    t1 = time.perf_counter()
    for _ in range(BLOCK_STEPS):
        torch_step(xb, yb)
    t2 = time.perf_counter()
    ours.append((t1 - t0) / BLOCK_STEPS)
    theirs.append((t2 - t1) / BLOCK_STEPS)
a, b = np.median(ours) * 1e6, np.median(theirs) * 1e6
print(f"one training step (forward, backward, Adam) on the same batch of {BATCH}, median of "
      f"{BLOCKS} blocks of {BLOCK_STEPS}: tapegrad {a:.0f} us, PyTorch eager {b:.0f} us "
      f"({b / a:.1f}x)")
