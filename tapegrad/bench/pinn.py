"""The pinn-oscillator workload (``python -m tapegrad.bench.pinn [--quick]``; also a section
of ``tapegrad bench``): the damped harmonic oscillator PINN of the well-known tutorial
(d = 2, w0 = 20). u(t) = MLP 1->32->32->32->1 (tanh); loss = (u(0) - 1)^2 + 0.1 u'(0)^2 +
1e-4 mean((u'' + 4u' + 400u)^2) over 30 points in [0, 1]; Adam lr 1e-3, float64. Each step
needs du/dt, d2u/dt2 and the gradient of that loss with respect to the weights (third-order
mixed derivatives).

Engines: ``tg-fit`` (``tg.fit``, the steps in compiled code), ``tg-loop`` (Python loop of
``tape.forward(); loss.backward(); opt.step()``), ``torch`` (eager, ``torch.autograd.grad(...,
create_graph=True)`` twice, then ``backward``) and ``jax-jit`` (``jax.grad`` nested per point,
``vmap`` over the points, the whole Adam step jitted), each when installed. Same initial
weights everywhere; the first losses are compared.
"""
import argparse
import math
import sys
import time

import numpy as np

from .workloads import tanh_mlp

D, W0, N_PHYS = 2.0, 20.0, 30
SIZES = (1, 32, 32, 32, 1)
LR = 1e-3


def exact(t):
    """The oscillator's solution with u(0) = 1, u'(0) = 0."""
    w = math.sqrt(W0 ** 2 - D ** 2)
    phi = math.atan(-D / w)
    A = 1 / (2 * math.cos(phi))
    return np.exp(-D * t) * 2 * A * np.cos(phi + w * t)


def init_params(seed=0):
    """[(W (in, out), b (out,)), ...] drawn as torch.nn.Linear does."""
    rng = np.random.default_rng(seed)
    out = []
    for a, b in zip(SIZES[:-1], SIZES[1:]):
        s = 1 / math.sqrt(a)
        out.append((rng.uniform(-s, s, (a, b)), rng.uniform(-s, s, b)))
    return out


def t_phys():
    return np.linspace(0.0, 1.0, N_PHYS).reshape(-1, 1)


# ---------------------------------------------------------------------------- tapegrad
def build_tg(params):
    """(tape, loss, optimizer, params Vars) of the PINN on one tape."""
    import tapegrad as tg
    tape = tg.Tape()
    layers = [(tape.param(W, name=f"W{i}"), tape.param(b, name=f"b{i}"))
              for i, (W, b) in enumerate(params)]

    u = tanh_mlp(tg, layers)
    t0 = tape.input("t0", value=np.zeros((1, 1)), requires_grad=True)
    t = tape.input("t", value=t_phys(), requires_grad=True)
    u0 = u(t0)
    du0 = tg.gradients(u0.sum(), [t0])[0]
    ut = u(t)
    dut = tg.gradients(ut.sum(), [t])[0]      # points are independent: d(sum u)/dt_i = u'(t_i)
    d2ut = tg.gradients(dut.sum(), [t])[0]
    residual = d2ut + 2 * D * dut + W0 ** 2 * ut
    loss = (u0.sum() - 1.0) ** 2 + 0.1 * du0.sum() ** 2 + 1e-4 * (residual ** 2).mean()
    loss.name = "loss"
    opt = tg.optim.Adam(tape.params, lr=LR)
    return tape, loss, opt, [p for layer in layers for p in layer]


class TgLoop:
    def __init__(self, params):
        self.tape, self.loss, self.opt, _ = build_tg(params)

    def run(self, n, collect=False):
        losses = []
        for _ in range(n):
            self.tape.forward()
            self.loss.backward()
            self.opt.step()
            losses.append(self.loss.item())
        return losses if collect else None


class TgFit:
    def __init__(self, params):
        import tapegrad as tg
        self.fit = tg.fit
        self.tape, self.loss, self.opt, _ = build_tg(params)

    def run(self, n, collect=False):
        h = self.fit(self.loss, self.opt, data=None, steps=n)
        return list(h) if collect else None


# ---------------------------------------------------------------------------- torch
class Torch:
    def __init__(self, params):
        import torch
        torch.set_num_threads(1)
        self.torch = torch
        self.ps = [torch.tensor(a, dtype=torch.float64, requires_grad=True)
                   for layer in params for a in layer]
        self.opt = torch.optim.Adam(self.ps, lr=LR)
        self.t = torch.tensor(t_phys(), requires_grad=True)
        self.t0 = torch.zeros((1, 1), dtype=torch.float64, requires_grad=True)

    def u(self, t):
        h = t
        n = len(self.ps) // 2
        for i in range(n):
            h = h @ self.ps[2 * i] + self.ps[2 * i + 1]
            if i < n - 1:
                h = self.torch.tanh(h)
        return h

    def step(self):
        torch = self.torch
        self.opt.zero_grad()
        u0 = self.u(self.t0)
        du0 = torch.autograd.grad(u0.sum(), self.t0, create_graph=True)[0]
        ut = self.u(self.t)
        dut = torch.autograd.grad(ut.sum(), self.t, create_graph=True)[0]
        d2ut = torch.autograd.grad(dut.sum(), self.t, create_graph=True)[0]
        res = d2ut + 2 * D * dut + W0 ** 2 * ut
        loss = (u0.sum() - 1) ** 2 + 0.1 * du0.sum() ** 2 + 1e-4 * (res ** 2).mean()
        loss.backward()
        self.opt.step()
        return loss.item()

    def run(self, n, collect=False):
        losses = [self.step() for _ in range(n)]
        return losses if collect else None


# ---------------------------------------------------------------------------- jax
class Jax:
    def __init__(self, params):
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        self.jax = jax
        ps = [jnp.asarray(a) for layer in params for a in layer]

        def u_scalar(ps, t):  # one point: t scalar -> u scalar
            h = jnp.reshape(t, (1, 1))
            n = len(ps) // 2
            for i in range(n):
                h = h @ ps[2 * i] + ps[2 * i + 1]
                if i < n - 1:
                    h = jnp.tanh(h)
            return h[0, 0]

        du = jax.grad(u_scalar, argnums=1)
        d2u = jax.grad(du, argnums=1)
        tp = jnp.asarray(t_phys()[:, 0])

        def loss_fn(ps):
            u0 = u_scalar(ps, 0.0)
            du0 = du(ps, 0.0)
            ut = jax.vmap(u_scalar, (None, 0))(ps, tp)
            dut = jax.vmap(du, (None, 0))(ps, tp)
            d2ut = jax.vmap(d2u, (None, 0))(ps, tp)
            res = d2ut + 2 * D * dut + W0 ** 2 * ut
            return (u0 - 1) ** 2 + 0.1 * du0 ** 2 + 1e-4 * jnp.mean(res ** 2)

        b1, b2, eps = 0.9, 0.999, 1e-8

        @jax.jit
        def step(ps, ms, vs, t):
            loss, gs = jax.value_and_grad(loss_fn)(ps)
            ms = [b1 * m + (1 - b1) * g for m, g in zip(ms, gs)]
            vs = [b2 * v + (1 - b2) * g * g for v, g in zip(vs, gs)]
            c1, c2 = 1 - b1 ** t, 1 - b2 ** t
            ps = [p - LR * (m / c1) / (jnp.sqrt(v / c2) + eps) for p, m, v in zip(ps, ms, vs)]
            return ps, ms, vs, loss

        self.step_fn = step
        self.state = (ps, [jnp.zeros_like(p) for p in ps], [jnp.zeros_like(p) for p in ps])
        self.t = 0

    def run(self, n, collect=False):
        ps, ms, vs = self.state
        losses = []
        for _ in range(n):
            self.t += 1
            ps, ms, vs, loss = self.step_fn(ps, ms, vs, float(self.t))
            if collect:
                losses.append(float(loss))
        loss.block_until_ready()
        self.state = (ps, ms, vs)
        return losses if collect else None


def engines(params, skip=()):
    import importlib.util
    out = {"tg-fit": TgFit, "tg-loop": TgLoop}
    if importlib.util.find_spec("torch") is not None:
        out["torch"] = Torch
    if importlib.util.find_spec("jax") is not None:
        out["jax-jit"] = Jax
    return {k: v for k, v in out.items() if k not in skip}


def run(quick=False, skip=()):
    """Per-step medians of interleaved rounds; returns a dict (also printed)."""
    params = init_params()
    made, first = {}, {}
    for name, cls in engines(params, skip).items():
        t = time.perf_counter()
        e = made[name] = cls(params)
        first[name] = e.run(3, collect=True)
        first[name + " setup+first 3 steps s"] = time.perf_counter() - t
    ref = first["tg-loop"]
    print("pinn-oscillator: first 3 losses " + "; ".join(
        f"{k} {np.max(np.abs(np.array(first[k]) - ref) / np.abs(ref)):.1e}"
        for k in made) + " (max rel. diff to tg-loop)")
    tape = made["tg-loop"].tape
    print(f"pinn-oscillator: the tape holds {len(tape)} instructions; "
          + ", ".join(f"{k} {v}" for k, v in list(tape.stats()["by_opcode"].items())[:8]))
    rounds = 5 if quick else 15
    reps = {}
    for name, e in made.items():  # about 0.05 s (quick) or 0.2 s per timed block
        t = time.perf_counter()
        e.run(5)
        dt = (time.perf_counter() - t) / 5
        reps[name] = max(1, int((0.05 if quick else 0.2) / dt))
    samples = {k: [] for k in made}
    for _ in range(rounds):
        for name, e in made.items():
            t = time.perf_counter()
            e.run(reps[name])
            samples[name].append((time.perf_counter() - t) / reps[name])
    med = {k: float(np.median(v)) for k, v in samples.items()}
    print(f"pinn-oscillator: us per training step, median of {rounds} interleaved rounds")
    ref = "tg-fit" if "tg-fit" in med else "tg-loop"
    for k, v in sorted(med.items(), key=lambda kv: kv[1]):
        print(f"  {k:<8} {v * 1e6:>10.1f} us   {v / med[ref]:>6.2f}x {ref}")
    return {"median_s": med, "first_losses": first, "instructions": len(tape),
            "by_opcode": tape.stats()["by_opcode"]}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tapegrad.bench.pinn")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated engines to leave out")
    args = ap.parse_args(argv)
    run(args.quick, {s for s in args.skip.split(",") if s})
    return 0


if __name__ == "__main__":
    sys.exit(main())
