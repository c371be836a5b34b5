"""The engines of the MLP workloads: tapegrad (a Python loop and ``tg.fit``), one Python
object per scalar (``pyobj``, micrograd), torch, JAX and HIPS autograd. Each has
``run(n, collect=False)``: n training steps, returning their losses with ``collect``."""
import math

import numpy as np

from .workloads import (DIG_BETAS, DIG_EPS, DIG_LR, DIG_WD, SEED_BETAS, SEED_EPS, SEED_LR,
                        SEED_WD, _adamw_np)


# =============================================================================== tapegrad
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
