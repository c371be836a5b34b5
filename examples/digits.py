"""A 64 -> 128 -> 10 ReLU classifier on scikit-learn's bundled 8x8 digits, trained with tg.fit.

float32 arenas, softmax cross-entropy, AdamW, minibatches of 128 drawn inside compiled code.
The test-set logits are recorded on the same tape (same weights, a 450-row input); training
replays skip them (activity analysis), and one replay at the end evaluates them.

    python examples/digits.py          # writes digits_confusion.png
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

BATCH, STEPS = 128, 600
digits = load_digits()                           # 1797 images of 8x8 pixels in 0..16
X = (digits.data / 16.0).astype(np.float32)
labels = digits.target
perm = np.random.default_rng(0).permutation(len(X))
train, test = perm[:1347], perm[1347:]

tape = tg.Tape(np.float32)
mlp = tg.nn.MLP(tape, [64, 128, 10], activation=tg.relu, rng=0)
x = tape.input("x", shape=(BATCH, 64))
y = tape.input("y", shape=(BATCH,))              # class indices, fed as integers
loss = tg.cross_entropy(mlp(x), y)
test_logits = mlp(tape.input("x_test", value=X[test]))
opt = tg.optim.AdamW(tape.params, lr=3e-3, weight_decay=1e-4)

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

conf = np.zeros((10, 10), int)
np.add.at(conf, (labels[test], pred), 1)

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(5, 4.5))
im = ax.imshow(conf, cmap="Blues")
for i in range(10):
    for j in range(10):
        if conf[i, j]:
            ax.text(j, i, conf[i, j], ha="center", va="center", fontsize=8,
                    color="white" if conf[i, j] > conf.max() / 2 else "black")
ax.set_xticks(range(10)); ax.set_yticks(range(10))
ax.set_xlabel("predicted"); ax.set_ylabel("true")
ax.set_title(f"digits test set, accuracy {acc:.3f}")
fig.colorbar(im, ax=ax)
fig.tight_layout()
fig.savefig("digits_confusion.png", dpi=90)
print("wrote digits_confusion.png")
