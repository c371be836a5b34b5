"""The workloads' data, hyperparameters and tapegrad models, and the scalar graph of
``shared/anchors/scalar_graph_tape.c`` (built from any engine's node operations)."""
import math
import os

import numpy as np

# the tapegrad package directory
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANCHOR_C = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "anchors",
                                         "scalar_graph_tape.c"))

SEED_LR, SEED_BETAS, SEED_EPS, SEED_WD = 1e-3, (0.9, 0.9), 1e-8, 1e-3
DIG_LR, DIG_BETAS, DIG_EPS, DIG_WD = 1e-3, (0.9, 0.999), 1e-8, 1e-2
DIG_BATCH = 128


def seed_target(x):
    return 2.777 * x ** 2 + 0.123 - 1.5 * x ** 3 + np.sin(4 * x)


# =============================================================================== data / init
def seed_data(n=1024, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 1))
    return X, seed_target(X)


def digits_data(n_batches=14):
    n = n_batches * DIG_BATCH
    try:
        from sklearn.datasets import load_digits
        d = load_digits()
        X, y, src = d.data[:n] / 16.0, d.target[:n], "sklearn digits"
    except ImportError:
        rng = np.random.default_rng(2)
        X, y, src = rng.uniform(0, 1, (n, 64)), rng.integers(0, 10, n), "synthetic"
    return X.astype(np.float32), y.astype(np.int64), src


def _adamw_np(ps, gs, ms, vs, t, lr, betas, eps, wd):
    """torch.optim.AdamW on lists of numpy arrays, in place."""
    b1, b2 = betas
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    for p, g, m, v in zip(ps, gs, ms, vs):
        p *= 1 - lr * wd
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        p -= (lr / bc1) * (m / (np.sqrt(v) / math.sqrt(bc2) + eps))


# =============================================================================== tapegrad
def build_seed_tg(seed=0):
    """The seed-mlp tape (1-64-64-1, LeakyReLU 0.1, float64): (tape, loss, opt)."""
    import tapegrad as tg
    tape = tg.Tape()
    mlp = tg.nn.MLP(tape, [1, 64, 64, 1], activation=lambda v: tg.leaky_relu(v, 0.1), rng=seed)
    x = tape.input("x", shape=(1, 1))
    y = tape.input("y", shape=(1, 1))
    loss = ((mlp(x) - y) ** 2).sum()
    opt = tg.optim.AdamW(tape.params, lr=SEED_LR, betas=SEED_BETAS, eps=SEED_EPS,
                         weight_decay=SEED_WD)
    return tape, loss, opt


def build_digits_tg(seed=0):
    import tapegrad as tg
    tape = tg.Tape(np.float32)
    mlp = tg.nn.MLP(tape, [64, 128, 10], activation=tg.relu, rng=seed)
    x = tape.input("x", shape=(DIG_BATCH, 64))
    y = tape.input("y", shape=(DIG_BATCH,))
    loss = tg.cross_entropy(mlp(x), y)
    opt = tg.optim.AdamW(tape.params, lr=DIG_LR, betas=DIG_BETAS, eps=DIG_EPS,
                         weight_decay=DIG_WD)
    return tape, loss, opt


def tg_params(build):
    """Initial parameter values of a tapegrad model, in tape order (W (in, out), b, ...)."""
    tape, _, _ = build()
    return [p.numpy() for p in tape.params]


# =============================================================================== scalar graph
def scalar_graph(n_ops, leaves, softplus, sum4, prod, softmax4):
    """Builds the anchor's graph from ``leaves`` (100 nodes) with the given node operations;
    returns the last node."""
    nodes = list(leaves)
    for k in range(n_ops):
        op = k % 4
        if op == 0:
            nodes.append(softplus(nodes[-10]))
        elif op == 1:
            nodes.append(sum4(nodes[-30], nodes[-25], nodes[-20], nodes[-15]))
        elif op == 2:
            nodes.append(prod(nodes[-20], nodes[-10]))
        else:
            nodes.extend(softmax4(nodes[-4:]))
    return nodes[-1]


LEAVES = [i / 100.0 for i in range(100)]


def _wsum(grads):
    """A check value of the leaf gradients: sum of (i + 1) * grad_i (their plain sum is 0:
    softmax is shift-invariant)."""
    return float(sum((i + 1) * g for i, g in enumerate(grads)))


def tanh_mlp(lib, weights):
    """``x -> (x @ W + b)`` per layer of ``weights`` [(W, b), ...], ``lib.tanh`` between
    layers, for any library with ``@`` and ``tanh`` (tapegrad, torch, jax.numpy)."""
    def f(x):
        h = x
        for i, (W, b) in enumerate(weights):
            h = h @ W + b
            if i < len(weights) - 1:
                h = lib.tanh(h)
        return h
    return f
