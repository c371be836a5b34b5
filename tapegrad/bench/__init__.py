"""``tapegrad bench`` / ``python -m tapegrad.bench [--quick] [--out DIR]``.

Times the reference workloads of DESIGN.md in tapegrad and in every other engine that is
installed, side by side in one process:

* **seed-mlp** -- MLP 1->64->64->1, LeakyReLU(0.1), squared error, AdamW(lr 1e-3, betas
  (0.9, 0.9), weight decay 1e-3), float64, one sample per step. Time per training step.
* **digits-mlp** -- MLP 64->128->10, ReLU, softmax cross-entropy, batch 128, AdamW (torch
  defaults, lr 1e-3), float32, on scikit-learn's digits (synthetic data of the same shape when
  scikit-learn is missing). Time per training step.
* **scalar-graph** -- the graph of ``shared/anchors/scalar_graph_tape.c``: 100 leaves i/100,
  then operations cycling through softplus(node[-10]), sum(nodes[-30:-10:5]),
  node[-20]*node[-10] and softmax(nodes[-4:]) (4 new nodes); one forward and one reverse
  sweep from the last node. Time per *anchor* operation (ns).

Engines: ``tg-loop`` (Python loop of tape.forward / backward / opt.step), ``tg-fit``
(``tg.fit``: the steps run in compiled code), ``pyobj`` (one Python object per scalar node,
the seeds' micrograd style, written below), ``numba-fused`` (a hand-written numba training
step: forward, backward and AdamW in one function -- the physical limit), ``c-anchor`` (the C
switch interpreter, compiled with ``gcc -O2``) and, when installed, ``micrograd``,
``autograd`` (HIPS), ``torch`` (eager) and ``jax-jit``.

Every engine starts from the same initial weights and sees the same data; the losses of the
first steps are compared (printed as "check"). Timed blocks are interleaved round-robin, so
machine noise hits every engine alike; medians, quartiles, ratios to tapegrad and compile /
first-call times (separately) are printed and written to ``bench.json`` and ``bench.png``.
All engines run single-threaded (BLAS, torch, XLA) -- tapegrad's replay is single-threaded.
"""
import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

# one thread everywhere (must be set before jax / BLAS start their pools)
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1")
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
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


class TgLoop:
    """tapegrad, a Python loop of tape.forward / loss.backward / opt.step."""

    def __init__(self, build, batches):
        self.tape, self.loss, self.opt = build()
        self.batches, self.s = batches, 0

    def run(self, n, collect=False):
        tape, loss, opt, B = self.tape, self.loss, self.opt, self.batches
        out = [] if collect else None
        outputs = [loss]
        for _ in range(n):
            xb, yb = B[self.s % len(B)]
            self.s += 1
            tape.forward(outputs=outputs, x=xb, y=yb)
            loss.backward()
            opt.step()
            if collect:
                out.append(loss.item())
        return out


class TgFit:
    """tapegrad, ``tg.fit``. Each call starts a pass over its data in order, so a call is
    given the data from the next unused batch on (a view), as the other engines continue."""

    def __init__(self, build, data, batch):
        self.tape, self.loss, self.opt = build()
        self.data, self.batch, self.s = data, batch, 0
        self.nb = len(next(iter(data.values()))) // batch

    def run(self, n, collect=False):
        import tapegrad as tg
        o = (self.s % self.nb) * self.batch
        self.s += n
        h = tg.fit(self.loss, self.opt, {k: v[o:] for k, v in self.data.items()},
                   batch_size=self.batch, steps=n, shuffle=False, progress=False)
        return list(h) if collect else None


def tg_params(build):
    """Initial parameter values of a tapegrad model, in tape order (W (in, out), b, ...)."""
    tape, _, _ = build()
    return [p.numpy() for p in tape.params]


# =============================================================================== hand-fused numba
def _njit(fn):
    import numba
    return numba.njit(cache=True, error_model="numpy")(fn)


def _seed_fused_impl(p, g, m, v, X, Y, s0, n, t0, hyper, losses):
    """n AdamW steps of seed-mlp, params flat in tape order W1 b1 W2 b2 W3 b3."""
    H = 64
    lr, b1, b2, eps, wd, slope = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
    o_b1, o_W2 = H, 2 * H
    o_b2 = o_W2 + H * H
    o_W3 = o_b2 + H
    o_b3 = o_W3 + H
    P = o_b3 + 1
    h1 = np.empty(H)
    a1 = np.empty(H)
    h2 = np.empty(H)
    a2 = np.empty(H)
    d1 = np.empty(H)
    d2 = np.empty(H)
    for s in range(n):
        i = (s0 + s) % X.shape[0]
        x, y = X[i, 0], Y[i, 0]
        for j in range(H):
            h1[j] = x * p[j] + p[o_b1 + j]
            a1[j] = h1[j] if h1[j] > 0 else slope * h1[j]
        for j in range(H):
            h2[j] = p[o_b2 + j]
        for k in range(H):
            ak = a1[k]
            for j in range(H):
                h2[j] += ak * p[o_W2 + k * H + j]
        out = p[o_b3]
        for j in range(H):
            a2[j] = h2[j] if h2[j] > 0 else slope * h2[j]
            out += a2[j] * p[o_W3 + j]
        r = out - y
        losses[s] = r * r
        do = 2 * r
        g[o_b3] = do
        for j in range(H):
            g[o_W3 + j] = a2[j] * do
            d2[j] = p[o_W3 + j] * do * (1.0 if h2[j] > 0 else slope)
            g[o_b2 + j] = d2[j]
        for k in range(H):
            ak = a1[k]
            acc = 0.0
            for j in range(H):
                g[o_W2 + k * H + j] = ak * d2[j]
                acc += p[o_W2 + k * H + j] * d2[j]
            d1[k] = acc * (1.0 if h1[k] > 0 else slope)
        for j in range(H):
            g[j] = x * d1[j]
            g[o_b1 + j] = d1[j]
        t = t0 + s + 1
        bc1 = 1.0 - b1 ** t
        bc2s = math.sqrt(1.0 - b2 ** t)
        step = lr / bc1
        decay = 1.0 - lr * wd
        for q in range(P):
            gq = g[q]
            m[q] = b1 * m[q] + (1 - b1) * gq
            v[q] = b2 * v[q] + (1 - b2) * gq * gq
            p[q] = p[q] * decay - step * (m[q] / (math.sqrt(v[q]) / bc2s + eps))


def _digits_fused_impl(W1, b1, W2, b2, m, v, X, Yl, s0, n, t0, hyper, losses):
    """n AdamW steps of digits-mlp (float32; batches of 128 rows of X in order)."""
    lr, be1, be2, eps, wd = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    B, D = 128, W1.shape[0]
    Hd, C = W1.shape[1], W2.shape[1]
    nb = X.shape[0] // B
    H = np.empty((B, Hd), np.float32)
    L = np.empty((B, C), np.float32)
    dL = np.empty((B, C), np.float32)
    dA = np.empty((B, Hd), np.float32)
    gW1 = np.empty_like(W1)
    gW2 = np.empty_like(W2)
    gb1 = np.empty_like(b1)
    gb2 = np.empty_like(b2)
    for s in range(n):
        bi = (s0 + s) % nb
        Xb = X[bi * B:(bi + 1) * B]
        np.dot(Xb, W1, H)
        for r in range(B):
            for j in range(Hd):
                h = H[r, j] + b1[j]
                H[r, j] = h if h > 0 else np.float32(0)
        np.dot(H, W2, L)
        tot = 0.0
        for r in range(B):
            mx = -np.inf
            for c in range(C):
                L[r, c] += b2[c]
                mx = max(mx, L[r, c])
            se = 0.0
            for c in range(C):
                e = math.exp(L[r, c] - mx)
                dL[r, c] = e
                se += e
            lab = Yl[bi * B + r]
            tot += math.log(se) + mx - L[r, lab]
            for c in range(C):
                dL[r, c] = dL[r, c] / se / B
            dL[r, lab] -= np.float32(1.0 / B)
        losses[s] = tot / B
        np.dot(H.T, dL, gW2)
        for c in range(C):
            acc = np.float32(0)
            for r in range(B):
                acc += dL[r, c]
            gb2[c] = acc
        np.dot(dL, W2.T, dA)
        for j in range(Hd):
            gb1[j] = 0
        for r in range(B):
            for j in range(Hd):
                if H[r, j] <= 0:
                    dA[r, j] = 0
                gb1[j] += dA[r, j]
        np.dot(Xb.T, dA, gW1)
        t = t0 + s + 1
        bc1 = 1.0 - be1 ** t
        bc2s = math.sqrt(1.0 - be2 ** t)
        step = lr / bc1
        decay = 1.0 - lr * wd
        q = 0
        for arr, gr in ((W1.ravel(), gW1.ravel()), (b1, gb1), (W2.ravel(), gW2.ravel()),
                        (b2, gb2)):
            for i in range(arr.size):
                gq = gr[i]
                m[q] = be1 * m[q] + (1 - be1) * gq
                v[q] = be2 * v[q] + (1 - be2) * gq * gq
                arr[i] = arr[i] * decay - step * (m[q] / (math.sqrt(v[q]) / bc2s + eps))
                q += 1


_KERNELS = {}


def _kernel(name):
    if name not in _KERNELS:
        impl = {"seed": _seed_fused_impl, "digits": _digits_fused_impl}[name]
        _KERNELS[name] = _njit(impl)
    return _KERNELS[name]


class SeedFused:
    def __init__(self, params, X, Y):
        self.p = np.concatenate([a.ravel() for a in params]).astype(np.float64)
        self.g = np.zeros_like(self.p)
        self.m = np.zeros_like(self.p)
        self.v = np.zeros_like(self.p)
        self.X, self.Y, self.s = X, Y, 0
        self.hyper = np.array([SEED_LR, SEED_BETAS[0], SEED_BETAS[1], SEED_EPS, SEED_WD, 0.1])
        self.k = _kernel("seed")

    def run(self, n, collect=False):
        losses = np.empty(n)
        self.k(self.p, self.g, self.m, self.v, self.X, self.Y, self.s, n, self.s, self.hyper,
               losses)
        self.s += n
        return list(losses) if collect else None


class DigitsFused:
    def __init__(self, params, X, Y):
        self.W1, self.b1, self.W2, self.b2 = [np.array(a, np.float32, order="C")  # copies
                                              for a in params]
        P = sum(a.size for a in params)
        self.m = np.zeros(P, np.float32)
        self.v = np.zeros(P, np.float32)
        self.X, self.Y, self.s = X, Y, 0
        self.hyper = np.array([DIG_LR, DIG_BETAS[0], DIG_BETAS[1], DIG_EPS, DIG_WD])
        self.k = _kernel("digits")

    def run(self, n, collect=False):
        losses = np.empty(n)
        self.k(self.W1, self.b1, self.W2, self.b2, self.m, self.v, self.X, self.Y, self.s, n,
               self.s, self.hyper, losses)
        self.s += n
        return list(losses) if collect else None


# =============================================================================== per-node objects
class Node:
    """One scalar of a micrograd-style graph (the seeds' engine, written out)."""

    __slots__ = ("data", "grad", "prev", "back")

    def __init__(self, data, prev=(), back=None):
        self.data, self.grad, self.prev, self.back = data, 0.0, prev, back

    def __add__(self, o):
        o = o if isinstance(o, Node) else Node(o)
        out = Node(self.data + o.data, (self, o))

        def back():
            self.grad += out.grad
            o.grad += out.grad
        out.back = back
        return out

    __radd__ = __add__

    def __sub__(self, o):
        return self + (-1.0) * (o if isinstance(o, Node) else Node(o))

    def __mul__(self, o):
        o = o if isinstance(o, Node) else Node(o)
        out = Node(self.data * o.data, (self, o))

        def back():
            self.grad += o.data * out.grad
            o.grad += self.data * out.grad
        out.back = back
        return out

    __rmul__ = __mul__

    def __truediv__(self, o):
        out = Node(self.data / o.data, (self, o))

        def back():
            self.grad += out.grad / o.data
            o.grad -= out.grad * self.data / (o.data * o.data)
        out.back = back
        return out

    def leaky_relu(self, slope):
        d = self.data
        out = Node(d if d > 0 else slope * d, (self,))

        def back():
            self.grad += out.grad if d > 0 else slope * out.grad
        out.back = back
        return out

    def exp(self):
        out = Node(math.exp(self.data), (self,))

        def back():
            self.grad += out.data * out.grad
        out.back = back
        return out

    def log(self):
        out = Node(math.log(self.data), (self,))

        def back():
            self.grad += out.grad / self.data
        out.back = back
        return out

    def square(self):
        out = Node(self.data * self.data, (self,))

        def back():
            self.grad += 2 * self.data * out.grad
        out.back = back
        return out

    def backward(self):
        topo, seen, stack = [], set(), [(self, False)]
        while stack:  # iterative: the scalar graph is thousands of nodes deep
            v, done = stack.pop()
            if done:
                topo.append(v)
                continue
            if id(v) in seen:
                continue
            seen.add(id(v))
            stack.append((v, True))
            for c in v.prev:
                if id(c) not in seen:
                    stack.append((c, False))
        self.grad = 1.0
        for v in reversed(topo):
            if v.back is not None:
                v.back()


def _seed_forward_nodes(params, x, leaky, zero):
    """The seed MLP on scalar nodes (any micrograd-like Value); ``params`` W1 b1 W2 b2 W3 b3
    as nested lists of nodes."""
    W1, b1, W2, b2, W3, b3 = params
    a1 = [leaky(W1[0][j] * x + b1[j]) for j in range(64)]
    a2 = []
    for j in range(64):
        acc = b2[j]
        for k in range(64):
            acc = acc + W2[k][j] * a1[k]
        a2.append(leaky(acc))
    out = b3[0]
    for k in range(64):
        out = out + W3[k][0] * a2[k]
    return out


class SeedNodes:
    """seed-mlp on one object per scalar: our ``Node`` ("pyobj") or micrograd's ``Value``."""

    def __init__(self, params, X, Y, kind):
        if kind == "micrograd":
            from micrograd.engine import Value as V
            self.leaky = lambda h: h.relu() * 0.9 + h * 0.1   # = leaky_relu(h, 0.1)
        else:
            V = Node
            self.leaky = lambda h: h.leaky_relu(0.1)
        self.V = V
        self.params = [[[V(float(w)) for w in row] for row in a] if a.ndim == 2
                       else [V(float(w)) for w in a] for a in params]
        flat = []
        for a in self.params:
            for r in a:
                flat.extend(r if isinstance(r, list) else [r])
        self.flat = flat
        self.m = np.zeros(len(flat))
        self.v = np.zeros(len(flat))
        self.X, self.Y, self.s, self.t = X, Y, 0, 0

    def run(self, n, collect=False):
        out = []
        b1, b2 = SEED_BETAS
        for _ in range(n):
            i = self.s % len(self.X)
            self.s += 1
            for p in self.flat:
                p.grad = 0.0
            pred = _seed_forward_nodes(self.params, float(self.X[i, 0]), self.leaky, None)
            d = pred + (-float(self.Y[i, 0]))
            loss = d * d
            loss.backward()
            self.t += 1
            t = self.t
            bc1, bc2s = 1 - b1 ** t, math.sqrt(1 - b2 ** t)
            m, v = self.m, self.v
            for q, p in enumerate(self.flat):
                g = p.grad
                m[q] = b1 * m[q] + (1 - b1) * g
                v[q] = b2 * v[q] + (1 - b2) * g * g
                p.data = p.data * (1 - SEED_LR * SEED_WD) - (SEED_LR / bc1) * (
                    m[q] / (math.sqrt(v[q]) / bc2s + SEED_EPS))
            out.append(loss.data)
        return out if collect else None


# =============================================================================== torch / jax / autograd
class TorchEngine:
    def __init__(self, params, batches, workload):
        import torch
        torch.set_num_threads(1)
        self.torch = torch
        dt = torch.float64 if workload == "seed" else torch.float32
        self.ps = [torch.tensor(a, dtype=dt, requires_grad=True) for a in params]
        lr, betas, eps, wd = ((SEED_LR, SEED_BETAS, SEED_EPS, SEED_WD) if workload == "seed"
                              else (DIG_LR, DIG_BETAS, DIG_EPS, DIG_WD))
        self.opt = torch.optim.AdamW(self.ps, lr=lr, betas=betas, eps=eps, weight_decay=wd)
        if workload == "seed":
            self.batches = [(torch.tensor(x), torch.tensor(y)) for x, y in batches]
        else:
            self.batches = [(torch.tensor(x), torch.tensor(y, dtype=torch.long))
                            for x, y in batches]
        self.workload, self.s = workload, 0

    def _loss(self, x, y):
        F = self.torch.nn.functional
        if self.workload == "seed":
            W1, b1, W2, b2, W3, b3 = self.ps
            h = F.leaky_relu(x @ W1 + b1, 0.1)
            h = F.leaky_relu(h @ W2 + b2, 0.1)
            return ((h @ W3 + b3 - y) ** 2).sum()
        W1, b1, W2, b2 = self.ps
        return F.cross_entropy(F.relu(x @ W1 + b1) @ W2 + b2, y)

    def run(self, n, collect=False):
        out = []
        for _ in range(n):
            x, y = self.batches[self.s % len(self.batches)]
            self.s += 1
            self.opt.zero_grad()
            loss = self._loss(x, y)
            loss.backward()
            self.opt.step()
            if collect:
                out.append(loss.item())
        return out if collect else None


def _import_jax():
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    return jax


class JaxEngine:
    def __init__(self, params, batches, workload):
        jax = _import_jax()
        import jax.numpy as jnp
        dt = np.float64 if workload == "seed" else np.float32
        self.dt = dt
        self.ps = [jnp.asarray(a.astype(dt)) for a in params]
        self.ms = [jnp.zeros_like(p) for p in self.ps]
        self.vs = [jnp.zeros_like(p) for p in self.ps]
        lr, (b1, b2), eps, wd = ((SEED_LR, SEED_BETAS, SEED_EPS, SEED_WD) if workload == "seed"
                                 else (DIG_LR, DIG_BETAS, DIG_EPS, DIG_WD))
        if workload == "seed":
            def loss_fn(ps, x, y):
                W1, b1_, W2, b2_, W3, b3 = ps
                lk = lambda h: jnp.where(h > 0, h, 0.1 * h)  # noqa: E731
                h = lk(x @ W1 + b1_)
                h = lk(h @ W2 + b2_)
                return jnp.sum((h @ W3 + b3 - y) ** 2)
        else:
            def loss_fn(ps, x, y):
                W1, b1_, W2, b2_ = ps
                logits = jnp.maximum(x @ W1 + b1_, 0) @ W2 + b2_
                lse = jax.nn.logsumexp(logits, axis=1)
                return jnp.mean(lse - jnp.take_along_axis(logits, y[:, None], 1)[:, 0])

        def step(ps, ms, vs, t, x, y):
            loss, gs = jax.value_and_grad(loss_fn)(ps, x, y)
            bc1, bc2s = 1 - b1 ** t, jnp.sqrt(1 - b2 ** t)
            nps, nms, nvs = [], [], []
            for p, g, m, v in zip(ps, gs, ms, vs):
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                p = p * (1 - lr * wd) - (lr / bc1) * (m / (jnp.sqrt(v) / bc2s + eps))
                nps.append(p)
                nms.append(m)
                nvs.append(v)
            return nps, nms, nvs, loss

        self.step = jax.jit(step)
        if workload == "seed":
            self.batches = batches
        else:
            self.batches = [(x, y.astype(np.int32)) for x, y in batches]
        self.s, self.t = 0, 0

    def run(self, n, collect=False):
        out = []
        loss = None
        for _ in range(n):
            x, y = self.batches[self.s % len(self.batches)]
            self.s += 1
            self.t += 1
            self.ps, self.ms, self.vs, loss = self.step(self.ps, self.ms, self.vs,
                                                        self.dt(self.t), x, y)
            if collect:
                out.append(loss)
        if loss is not None:
            loss.block_until_ready()
        return [float(v) for v in out] if collect else None


class AutogradEngine:
    def __init__(self, params, batches, workload):
        import autograd
        import autograd.numpy as anp
        from autograd.scipy.special import logsumexp
        dt = np.float64 if workload == "seed" else np.float32
        self.ps = [a.astype(dt) for a in params]
        self.ms = [np.zeros_like(p) for p in self.ps]
        self.vs = [np.zeros_like(p) for p in self.ps]
        if workload == "seed":
            def loss_fn(ps, x, y):
                W1, b1, W2, b2, W3, b3 = ps
                lk = lambda h: anp.where(h > 0, h, 0.1 * h)  # noqa: E731
                h = lk(anp.dot(x, W1) + b1)
                h = lk(anp.dot(h, W2) + b2)
                return anp.sum((anp.dot(h, W3) + b3 - y) ** 2)
            self.hyper = (SEED_LR, SEED_BETAS, SEED_EPS, SEED_WD)
        else:
            def loss_fn(ps, x, y):
                W1, b1, W2, b2 = ps
                logits = anp.dot(anp.maximum(anp.dot(x, W1) + b1, 0), W2) + b2
                return anp.mean(logsumexp(logits, axis=1) - logits[anp.arange(len(y)), y])
            self.hyper = (DIG_LR, DIG_BETAS, DIG_EPS, DIG_WD)
        self.vg = autograd.value_and_grad(loss_fn)
        self.batches, self.s, self.t = batches, 0, 0

    def run(self, n, collect=False):
        out = []
        for _ in range(n):
            x, y = self.batches[self.s % len(self.batches)]
            self.s += 1
            self.t += 1
            loss, gs = self.vg(self.ps, x, y)
            _adamw_np(self.ps, gs, self.ms, self.vs, self.t, *self.hyper)
            if collect:
                out.append(float(loss))
        return out if collect else None


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


class ScalarTg:
    """tapegrad: record the graph once (float32, like the anchor), replay forward + reverse."""

    def __init__(self, n_ops, dtype=np.float32):
        import tapegrad as tg
        t = time.perf_counter()
        self.tape = tape = tg.Tape(dtype)
        self.leaves = [tape.param(np.array(v, dtype)) for v in LEAVES]

        def softmax4(xs):
            s = tg.softmax(tg.stack(xs))
            return [s[0], s[1], s[2], s[3]]
        self.last = scalar_graph(n_ops, self.leaves, lambda x: tg.log(1.0 + tg.exp(x)),
                                 lambda a, b, c, d: a + b + c + d, lambda a, b: a * b, softmax4)
        self.record_s = time.perf_counter() - t
        self.n_instr = len(tape)
        self.n_ops = n_ops

    def run(self, n, collect=False):
        tape, last = self.tape, self.last
        for _ in range(n):
            tape.forward()
            last.backward()
        if collect:
            return [float(last.item()), _wsum(float(p.grad) for p in self.leaves),
                    float(sum(float(p.grad) for p in self.leaves))]


class ScalarNodes:
    """pyobj: build the graph of Node objects and backpropagate, every time."""

    def __init__(self, n_ops):
        self.n_ops = n_ops

    def run(self, n, collect=False):
        for _ in range(n):
            leaves = [Node(v) for v in LEAVES]

            def softmax4(xs):
                es = [x.exp() for x in xs]
                s = es[0] + es[1] + es[2] + es[3]
                return [e / s for e in es]
            last = scalar_graph(self.n_ops, leaves, lambda x: (x.exp() + 1.0).log(),
                                lambda a, b, c, d: a + b + c + d, lambda a, b: a * b, softmax4)
            last.backward()
        if collect:
            return [last.data, _wsum(p.grad for p in leaves)]


class ScalarTorch:
    def __init__(self, n_ops):
        import torch
        torch.set_num_threads(1)
        self.torch, self.n_ops = torch, n_ops

    def run(self, n, collect=False):
        torch = self.torch
        for _ in range(n):
            leaves = [torch.tensor(v, dtype=torch.float32, requires_grad=True) for v in LEAVES]
            last = scalar_graph(self.n_ops, leaves, lambda x: torch.log(1 + torch.exp(x)),
                                lambda a, b, c, d: a + b + c + d, lambda a, b: a * b,
                                lambda xs: list(torch.softmax(torch.stack(xs), 0)))
            last.backward()
        if collect:
            return [float(last.detach()),
                    _wsum(0.0 if p.grad is None else float(p.grad) for p in leaves)]


class ScalarAutograd:
    def __init__(self, n_ops):
        import autograd
        import autograd.numpy as anp

        def f(xs):
            def softmax4(v):
                es = [anp.exp(x) for x in v]
                s = es[0] + es[1] + es[2] + es[3]
                return [e / s for e in es]
            return scalar_graph(n_ops, xs, lambda x: anp.log(1.0 + anp.exp(x)),
                                lambda a, b, c, d: a + b + c + d, lambda a, b: a * b, softmax4)
        self.vg = autograd.value_and_grad(f)
        self.n_ops = n_ops

    def run(self, n, collect=False):
        for _ in range(n):
            val, g = self.vg([np.float32(v) for v in LEAVES])
        if collect:
            return [float(val), _wsum(float(v) for v in g)]


def compile_anchor(tmp):
    if not os.path.exists(ANCHOR_C) or shutil.which("gcc") is None:
        return None
    exe = os.path.join(tmp, "scalar_graph_tape")
    r = subprocess.run(["gcc", "-O2", "-o", exe, ANCHOR_C, "-lm"], capture_output=True,
                       text=True)
    return exe if r.returncode == 0 else None


class CAnchor:
    """The C switch interpreter; each timed block is one run of the executable."""

    def __init__(self, exe, n_ops, iters):
        self.exe, self.n_ops, self.iters = exe, n_ops, iters

    def ns_per_op(self, iters=None):
        out = subprocess.run([self.exe, str(self.n_ops), str(iters or self.iters)],
                             capture_output=True, text=True, check=True).stdout
        return float(re.search(r"ns_per_op_fwd_bwd=([0-9.]+)", out).group(1)), \
            float(re.search(r"sink=(\S+)", out).group(1))


# =============================================================================== timing
class Bench:
    def __init__(self, quick):
        self.quick = quick
        self.repeats = 3 if quick else 11
        self.block_s = 0.03 if quick else 0.15
        self.results = {}     # workload -> engine -> dict

    def add(self, wl, name, eng, k_check, unit_div=1.0):
        """Create-time check run: first call timed separately, then k_check - 1 steps."""
        t = time.perf_counter()
        first = eng.run(1, collect=True)
        first_s = time.perf_counter() - t
        rest = eng.run(k_check - 1, collect=True) if k_check > 1 else []
        if os.environ.get("TG_BENCH_VERBOSE"):
            print(f"  [{wl} {name}: first {first_s:.2f} s, total "
                  f"{time.perf_counter() - t:.2f} s]", flush=True)
        self.results.setdefault(wl, {})[name] = {
            "engine": eng, "first_call_s": first_s, "check": (first or []) + (rest or []),
            "samples": [], "unit_div": unit_div}

    def calibrate(self, wl):
        for name, r in self.results[wl].items():
            eng = r["engine"]
            if isinstance(eng, CAnchor):
                continue
            t = time.perf_counter()
            eng.run(1)
            dt = time.perf_counter() - t
            if dt < self.block_s:
                t = time.perf_counter()
                eng.run(2)
                dt = min(dt, (time.perf_counter() - t) / 2)
            r["block"] = int(max(1, min(20000, self.block_s / max(dt, 1e-7))))

    def time(self, wl):
        engines = list(self.results[wl].items())
        for rep in range(self.repeats):
            order = engines[rep % len(engines):] + engines[:rep % len(engines)]
            for name, r in order:
                eng = r["engine"]
                if isinstance(eng, CAnchor):
                    r["samples"].append(eng.ns_per_op()[0] * 1e-9)
                    continue
                n = r["block"]
                t = time.perf_counter()
                eng.run(n)
                r["samples"].append((time.perf_counter() - t) / n / r["unit_div"])

    def summary(self, wl, ref):
        rows = []
        res = self.results[wl]
        ref_med = float(np.median(res[ref]["samples"])) if ref in res else None
        for name, r in res.items():
            s = np.array(r["samples"])
            med = float(np.median(s))
            q1, q3 = (float(v) for v in np.percentile(s, [25, 75]))
            r.update(median=med, q1=q1, q3=q3, min=float(s.min()), max=float(s.max()),
                     ratio=med / ref_med if ref_med else None)
            rows.append(name)
        return rows


def _fmt_t(s):
    if s >= 1e-1:
        return f"{s:.3g} s"
    if s >= 1e-4:
        return f"{s * 1e3:.3g} ms"
    if s >= 1e-7:
        return f"{s * 1e6:.3g} us"
    return f"{s * 1e9:.3g} ns"


def _check_line(wl, res, ref, rtol):
    base = res[ref]["check"]
    parts, ok_all = [], True
    for name, r in res.items():
        c = r["check"]
        if name == ref or not c:
            continue
        k = min(len(c), len(base))
        err = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(c[:k], base[:k]))
        ok = err <= rtol
        ok_all &= ok
        parts.append(f"{name} {err:.1e}{'' if ok else ' MISMATCH'}")
        r["check_rel_err"] = err
    head = ", ".join(f"{v:.6g}" for v in base)
    print(f"check {wl}: {ref} gives [{head}]; max relative difference (tol {rtol:g}): "
          + "; ".join(parts))
    return bool(ok_all)


# =============================================================================== subprocess timings
_FIRST_STEP_SCRIPT = r"""
import json, os, sys, time
t0 = time.perf_counter()
import numpy as np
import tapegrad as tg
from tapegrad import bench
t_import = time.perf_counter() - t0
t = time.perf_counter()
tape, loss, opt = bench.build_seed_tg()
t_record = time.perf_counter() - t
t = time.perf_counter()
tape.forward(x=np.array([[0.3]]), y=np.array([[0.5]])); loss.backward(); opt.step()
t_step = time.perf_counter() - t
wall_first_step = time.time()
out = dict(import_s=t_import, record_s=t_record, first_step_s=t_step,
           wall_first_step=wall_first_step)
if "--all" in sys.argv:
    X = np.zeros((8, 1))
    t = time.perf_counter()
    tg.fit(loss, opt, {"x": X, "y": X}, batch_size=1, steps=4, progress=False)
    out["fit_first_s"] = time.perf_counter() - t
    t = time.perf_counter()
    tape, loss, opt = bench.build_digits_tg()
    tape.forward(x=np.zeros((128, 64), np.float32), y=np.zeros(128)); loss.backward(); opt.step()
    out["f32_first_step_s"] = time.perf_counter() - t
    t = time.perf_counter()
    X = np.zeros((128, 64), np.float32)
    tg.fit(loss, opt, {"x": X, "y": np.zeros(128)}, batch_size=128, steps=2, progress=False)
    out["f32_fit_first_s"] = time.perf_counter() - t
print("RESULT " + json.dumps(out))
"""


def first_step_subprocess(cold):
    env = dict(os.environ)
    tmp = None
    if cold:
        tmp = tempfile.mkdtemp(prefix="tg-cold-numba-")
        env["NUMBA_CACHE_DIR"] = tmp
    root = os.path.dirname(HERE)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, "-c", _FIRST_STEP_SCRIPT] + (["--all"] if cold else [])
    t0 = time.time()
    p = subprocess.run(args, capture_output=True, text=True, env=env, cwd=root)
    wall = time.time() - t0
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    m = re.search(r"RESULT (.*)", p.stdout)
    if p.returncode != 0 or not m:
        return {"error": (p.stderr or p.stdout)[-2000:]}
    r = json.loads(m.group(1))
    r["process_start_to_first_step_s"] = r.pop("wall_first_step") - t0
    r["process_wall_s"] = wall
    return r


# =============================================================================== main
def _installed(mod):
    import importlib.util
    return importlib.util.find_spec(mod) is not None


def _versions():
    v = {"python": platform.python_version(), "machine": platform.machine(),
         "platform": platform.platform(), "cpus": os.cpu_count()}
    for mod in ("numpy", "numba", "scipy", "torch", "jax", "jaxlib", "autograd", "micrograd",
                "sklearn"):
        if _installed(mod):
            try:
                from importlib.metadata import version
                name = {"sklearn": "scikit-learn"}.get(mod, mod)
                v[mod] = version(name)
            except Exception:  # noqa: BLE001
                v[mod] = "?"
    if shutil.which("gcc"):
        v["gcc"] = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True,
                                  text=True).stdout.strip()
    return v


def _limit_blas():
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(1)
    except ImportError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(prog="tapegrad bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer repeats, smaller blocks, no cold-compile subprocess (< 1 min)")
    ap.add_argument("--out", default="bench-results", help="directory for bench.json, bench.png")
    ap.add_argument("--skip", default="", help="comma-separated engines to leave out")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    t_start = time.time()
    _limits = _limit_blas()  # noqa: F841 - keep the limit alive
    versions = _versions()
    print(f"tapegrad bench{' --quick' if args.quick else ''}: python {versions['python']}, "
          + ", ".join(f"{k} {versions[k]}" for k in ("numpy", "numba", "torch", "jax",
                                                     "autograd", "micrograd") if k in versions)
          + f"; {versions['cpus']} cpus; every engine single-threaded")
    B = Bench(args.quick)
    have = {m: _installed(m) and m not in skip for m in ("torch", "jax", "autograd",
                                                         "micrograd")}
    K = 3
    info = {}

    def want(name):
        return name not in skip

    # ------------------------------------------------------------------ seed-mlp
    t_setup = time.perf_counter()
    X, Y = seed_data()
    params = tg_params(build_seed_tg)
    batches = [(X[i:i + 1], Y[i:i + 1]) for i in range(len(X))]
    B.add("seed-mlp", "tg-loop", TgLoop(build_seed_tg, batches), K)
    B.add("seed-mlp", "tg-fit", TgFit(build_seed_tg, {"x": X, "y": Y}, 1), K)
    if want("numba-fused"):
        B.add("seed-mlp", "numba-fused", SeedFused(params, X, Y), K)
    if want("pyobj"):
        B.add("seed-mlp", "pyobj", SeedNodes(params, X, Y, "pyobj"), K)
    if have["micrograd"]:
        B.add("seed-mlp", "micrograd", SeedNodes(params, X, Y, "micrograd"), K)
    if have["autograd"]:
        B.add("seed-mlp", "autograd", AutogradEngine(params, batches, "seed"), K)
    if have["torch"]:
        B.add("seed-mlp", "torch", TorchEngine(params, batches, "seed"), K)
    if have["jax"]:
        B.add("seed-mlp", "jax-jit", JaxEngine(params, batches, "seed"), K)
    info["seed-mlp"] = {"check_ok": _check_line("seed-mlp", B.results["seed-mlp"], "tg-loop",
                                                1e-6)}

    # ------------------------------------------------------------------ digits-mlp
    Xd, Yd, src = digits_data()
    params = tg_params(build_digits_tg)
    nb = len(Xd) // DIG_BATCH
    dbatches = [(Xd[i * DIG_BATCH:(i + 1) * DIG_BATCH], Yd[i * DIG_BATCH:(i + 1) * DIG_BATCH])
                for i in range(nb)]
    tg_batches = [(x, y.astype(np.float32)) for x, y in dbatches]
    B.add("digits-mlp", "tg-loop", TgLoop(build_digits_tg, tg_batches), K)
    B.add("digits-mlp", "tg-fit", TgFit(build_digits_tg, {"x": Xd, "y": Yd.astype(np.float32)},
                                        DIG_BATCH), K)
    if want("numba-fused"):
        B.add("digits-mlp", "numba-fused", DigitsFused(params, Xd, Yd), K)
    if have["autograd"]:
        B.add("digits-mlp", "autograd", AutogradEngine(params, dbatches, "digits"), K)
    if have["torch"]:
        B.add("digits-mlp", "torch", TorchEngine(params, dbatches, "digits"), K)
    if have["jax"]:
        B.add("digits-mlp", "jax-jit", JaxEngine(params, dbatches, "digits"), K)
    info["digits-mlp"] = {"data": src, "check_ok": _check_line(
        "digits-mlp", B.results["digits-mlp"], "tg-loop", 1e-4)}

    # ------------------------------------------------------------------ scalar graph
    n_big, n_small = 10000, (1000 if args.quick else 2000)
    sg = ScalarTg(n_big)
    info["scalar-graph"] = {"n_ops": n_big, "n_ops_python_engines": n_small,
                            "tg_record_s": sg.record_s, "tg_instructions": sg.n_instr,
                            "tg_instructions_per_anchor_op": sg.n_instr / n_big}
    print(f"scalar-graph: tapegrad recorded {n_big} anchor ops as {sg.n_instr} instructions "
          f"({sg.n_instr / n_big:.2f} per op) in {sg.record_s:.2f} s")
    B.add("scalar-graph", "tg-replay", sg, 1, unit_div=n_big)
    small = ScalarTg(n_small)
    checks = {"tg-replay": small.run(1, collect=True)}
    for name, cls, ok in (("pyobj", ScalarNodes, want("pyobj")),
                          ("autograd", ScalarAutograd, have["autograd"]),
                          ("torch", ScalarTorch, have["torch"])):
        if ok:
            B.add("scalar-graph", name, cls(n_small), 1, unit_div=n_small)
            checks[name] = B.results["scalar-graph"][name]["check"]
    exe_dir = tempfile.mkdtemp(prefix="tg-anchor-")
    exe = compile_anchor(exe_dir) if want("c-anchor") else None
    c_check = None
    if exe:
        ca = CAnchor(exe, n_big, 300 if args.quick else 2000)
        t = time.perf_counter()
        _, sink = ca.ns_per_op(iters=1)
        B.results["scalar-graph"]["c-anchor"] = {"engine": ca, "samples": [],
                                                 "first_call_s": time.perf_counter() - t,
                                                 "check": [], "unit_div": 1}
        big = B.results["scalar-graph"]["tg-replay"]["check"]
        c_check = abs(sink - big[2])
        print(f"check scalar-graph ({n_big} ops, float32): plain sum of leaf gradients "
              f"(what the anchor prints) tapegrad {big[2]:.3g}, C anchor {sink:.3g} "
              f"(absolute difference {c_check:.1e})")
    else:
        print("scalar-graph: no gcc or no anchor source: C anchor skipped")
    base = checks["tg-replay"]
    print(f"check scalar-graph ({n_small} ops): tapegrad output {base[0]:.6g}, sum (i+1)*grad "
          f"of leaf i {base[1]:.6g}; " + "; ".join(
              f"{k} rel. diff {max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(v, base)):.1e}"
              for k, v in checks.items() if k != "tg-replay"))
    info["scalar-graph"]["check_c_rel_err"] = c_check
    # small graphs: checks ran on a 2000-op graph; tapegrad's own check is the 10k-op one
    B.results["scalar-graph"]["tg-replay"]["check"] = base
    for k in checks:
        if k != "tg-replay":
            B.results["scalar-graph"][k]["check"] = checks[k]
    print(f"setup and checks took {time.perf_counter() - t_setup:.1f} s; timing "
          f"{B.repeats} interleaved rounds per workload ...")

    # ------------------------------------------------------------------ time
    for wl in ("seed-mlp", "digits-mlp", "scalar-graph"):
        t = time.perf_counter()
        B.calibrate(wl)
        B.time(wl)
        print(f"  {wl}: {time.perf_counter() - t:.1f} s", flush=True)
    refs = {"seed-mlp": "tg-fit", "digits-mlp": "tg-fit", "scalar-graph": "tg-replay"}
    for wl, ref in refs.items():
        B.summary(wl, ref)

    # ------------------------------------------------------------------ first step / compile
    print("new process with a warm numba cache: time to its first replayed step ...")
    warm = first_step_subprocess(cold=False)
    cold = None
    if not args.quick:
        print("new process with an empty NUMBA_CACHE_DIR (cold compile) ...")
        cold = first_step_subprocess(cold=True)
    shutil.rmtree(exe_dir, ignore_errors=True)

    report = _report(B, refs, info, warm, cold, versions, args, time.time() - t_start)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(report, f, indent=1)
    png = _plot(report, os.path.join(args.out, "bench.png"))
    print(f"wrote {os.path.join(args.out, 'bench.json')}"
          + (f" and {png}" if png else " (matplotlib missing: no chart)")
          + f"  [{time.time() - t_start:.0f} s]")
    return 0


def _report(B, refs, info, warm, cold, versions, args, elapsed):
    units = {"seed-mlp": "per step", "digits-mlp": "per step", "scalar-graph": "per anchor op"}
    print()
    hdr = f"{'workload':<13} {'engine':<12} {'median':>10} {'IQR':>21} {'x tapegrad':>10} " \
          f"{'first call':>10}"
    print(hdr)
    print("-" * len(hdr))
    out = {"command": "python -m tapegrad.bench" + (" --quick" if args.quick else ""),
           "versions": versions, "repeats": B.repeats, "elapsed_s": elapsed,
           "workloads": {}, "info": info, "warm_first_step": warm, "cold_compile": cold}
    for wl, ref in refs.items():
        res = B.results[wl]
        wd = out["workloads"][wl] = {"unit": "seconds " + units[wl], "reference": ref,
                                     "engines": {}}
        for name, r in sorted(res.items(), key=lambda kv: kv[1]["median"]):
            iqr = f"{_fmt_t(r['q1'])}-{_fmt_t(r['q3'])}"
            print(f"{wl:<13} {name:<12} {_fmt_t(r['median']):>10} {iqr:>21} "
                  f"{r['ratio']:>9.2f}x {_fmt_t(r['first_call_s']):>10}")
            wd["engines"][name] = {k: r.get(k) for k in (
                "median", "q1", "q3", "min", "max", "ratio", "first_call_s", "samples", "block",
                "check", "check_rel_err")}
            wd["engines"][name]["check"] = [float(v) for v in r["check"]]
        print(f"{'':<13} ({units[wl]}; x tapegrad = median / median of {ref})")
    print()
    # ---------------------------------------------------------------- targets
    E = {wl: out["workloads"][wl]["engines"] for wl in refs}
    med = lambda wl, e: E[wl][e]["median"] if e in E[wl] else None  # noqa: E731
    targets = []

    def target(name, value, goal, ok, note=""):
        targets.append({"target": name, "measured": value, "goal": goal,
                        "met": None if ok is None else bool(ok),
                        "note": note})
        val = "n/a" if value is None else f"{value:.3g}"
        status = "n/a" if ok is None else ("MET" if ok else "MISSED")
        print(f"  {name:<54} {val:>8}  (goal {goal})  {status} {note}")

    print("targets (one run, side by side):")
    fit, fused = med("seed-mlp", "tg-fit"), med("seed-mlp", "numba-fused")
    loop = med("seed-mlp", "tg-loop")
    r = fit / fused if fused else None
    target("seed-mlp: tg-fit / numba-fused", r, "<= 1.3", None if r is None else r <= 1.3)
    r = loop / fused if fused else None
    target("seed-mlp: tg-loop / numba-fused (info)", r, "-", None)
    jx = med("seed-mlp", "jax-jit")
    r = jx / fit if jx else None
    target("seed-mlp: jax-jit / tg-fit (speedup over JAX)", r, ">= 4",
           None if r is None else r >= 4)
    jx = med("digits-mlp", "jax-jit")
    dfit = med("digits-mlp", "tg-fit")
    r = dfit / jx if jx else None
    target("digits-mlp f32: tg-fit / jax-jit", r, "<= 1.0", None if r is None else r <= 1.0)
    c = med("scalar-graph", "c-anchor")
    sgm = med("scalar-graph", "tg-replay")
    r = sgm / c if c else None
    target("scalar-graph: tg-replay / C anchor", r, "<= 2",
           None if r is None else r <= 2,
           f"({sgm * 1e9:.1f} vs {c * 1e9:.1f} ns/op)" if c else "")
    w = warm.get("process_start_to_first_step_s") if warm else None
    target("new process, warm cache -> first replayed step [s]", w, "<= 1.5",
           None if w is None else w <= 1.5,
           f"(import {warm['import_s']:.2f} s, first step {warm['first_step_s']:.2f} s)"
           if w is not None else str(warm.get("error", ""))[:200])
    cc = cold.get("process_start_to_first_step_s") if cold else None
    target("cold compile -> first replayed step f64 [s]", cc, "<= 10",
           None if cc is None else cc <= 10, "" if cold else "(skipped with --quick)")
    if cold and "fit_first_s" in cold:
        tot = cc + cold["fit_first_s"] + cold["f32_first_step_s"] + cold["f32_fit_first_s"]
        target("cold compile, all kernels (f64+fit+f32+fit32) [s]", tot, "info", None,
               f"(fit {cold['fit_first_s']:.1f}, f32 step {cold['f32_first_step_s']:.1f}, "
               f"f32 fit {cold['f32_fit_first_s']:.1f})")
    out["targets"] = targets
    return out


def _plot(report, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    wls = list(report["workloads"])
    fig, axes = plt.subplots(len(wls), 1, figsize=(8, 2.2 + 2.6 * len(wls)))
    for ax, wl in zip(axes, wls):
        eng = report["workloads"][wl]["engines"]
        names = sorted(eng, key=lambda n: eng[n]["median"])
        scale = 1e9 if wl == "scalar-graph" else 1e6
        meds = [eng[n]["median"] * scale for n in names]
        lo = [max(eng[n]["median"] - eng[n]["q1"], 0) * scale for n in names]
        hi = [max(eng[n]["q3"] - eng[n]["median"], 0) * scale for n in names]
        colors = ["tab:blue" if n.startswith("tg") else
                  ("tab:green" if n in ("numba-fused", "c-anchor") else "tab:gray")
                  for n in names]
        ax.barh(names, meds, xerr=[lo, hi], color=colors)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("ns per anchor op" if wl == "scalar-graph" else "us per training step")
        ax.set_title(wl)
        for i, m in enumerate(meds):
            ax.text(m, i, f" {m:.3g}", va="center", fontsize=8)
    fig.suptitle("tapegrad bench (log scale; blue tapegrad, green physical limits)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
