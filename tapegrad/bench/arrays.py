"""Array kernels and four array workloads side by side (issue 17): tapegrad's compiled sweeps
against NumPy, PyTorch eager and JAX jit (each when installed), one thread per engine.

    python -m tapegrad.bench.arrays              # the table of BENCHMARKS.md (~10 min)
    python -m tapegrad.bench.arrays --quick      # a smoke run: small sizes, 2 rounds (seconds)

Kernels, per element of the input, forward and reverse (``fwd`` / ``bwd``):

* ``tapegrad``: the compiled forward / reverse sweep over the tape of the kernel alone (a
  parameter, the op's instructions) -- the kernels plus one interpreter dispatch each;
* ``numpy``: the same computation as NumPy calls into preallocated outputs, and its reverse
  rule written the same way (``gx += g[:, None]`` for a row sum, ...);
* ``torch``: the op under ``no_grad`` / ``torch.autograd.grad`` of a graph recorded once;
* ``jax``: ``jax.jit`` of the op / of its ``jax.vjp`` function.
Kernels: ``sum`` (all axes), ``sum0`` / ``sum-1`` (axis 0 / -1 of a 2-D array with rows :
columns about 5 : 8), ``bcast-row`` (a row (c,) broadcast to (r, c): the reverse is a
column sum), ``bcast-scalar`` (a scalar to n elements: the reverse is a full sum), ``exp
tanh sigmoid log``, ``slice`` (``x[:, 1:]``), ``concat`` (two (r, c/2) halves along axis 1),
``matvec`` ((n/128, 128) @ (128,)), ``vecmat`` ((128,) @ (128, n/128)), and two chains of ten
elementwise ops, replayed as one fused group (``tape.optimize()``): ``chain10`` (a tanh and a
sigmoid among them) and ``arith10`` (``* + - /`` only); ``numpy`` there is the ten NumPy
calls, ``1op`` a single ``np.multiply``, the chains' target.

Workloads (value and gradient per call, every engine from the same inputs; ``check`` is the
largest relative difference of their gradients from tapegrad's):

* ``logsumexp``: d/dx logsumexp(x), n = 10^6;
* ``lstsq``: d/dw sum((A w - b)^2), A 16384 x 128;
* ``rk4``: an RK4 integrator of dy/dt = b tanh(y shifted by one) - a y over 10^4 states,
  100 steps, gradient of sum(y_T^2) in a, b and y_0 (unrolled on the tape and in PyTorch;
  JAX runs one traced step in ``lax.fori_loop``: XLA took over 7 minutes to compile the
  unrolled 100 steps here);
* ``gmm``: the log-likelihood of n = 1000 points under a diagonal Gaussian mixture (d = 32,
  K = 50), gradient in the weights, means and log-scales.
Peak memory: each (workload, engine) in a child process, the peak resident size (VmHWM)
minus the resident size after imports and data (``--no-memory`` skips it); for tapegrad also
the arena bytes, planned (``tapegrad.plan``, on by default for large arenas) and without
planning, and after ``tape.optimize()`` (engine ``tg-optimized``).

Blocks of calls are timed in interleaved rounds (CPU time by default: the calling
thread's, the process's for JAX, whose pool threads spin on after a call), medians
reported. BLAS, torch and XLA run one thread (``tapegrad.bench`` sets XLA_FLAGS and the
thread variables; threadpoolctl limits BLAS; the BLAS core type is printed).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

import tapegrad as tg
from tapegrad.ops._record import broadcast_to

from . import _limit_blas
from . import transcendental as _tr
from .engines import _import_jax

SIZES = (1_000, 100_000, 10_000_000)
QUICK_SIZES = (1_000, 20_000)
MV_K = 128  # the inner dimension of matvec / vecmat


def rss_mb(key="VmHWM"):
    """This process's peak (VmHWM) or current (VmRSS) resident size in MB (Linux; else the
    peak from getrusage)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _have(mod):
    import importlib.util
    return importlib.util.find_spec(mod) is not None


def _shape2(n):
    """A 2-D shape of about n elements, rows : columns about 5 : 8."""
    c = max(2, int(round(math.sqrt(n * 1.6))))
    return (max(1, n // c), c)


# ------------------------------------------------------------------ the kernels
def _chain(x, m):
    """Ten elementwise ops; ``m`` has tanh and sigmoid (tapegrad, numpy, torch, jax.numpy)."""
    t = x * 2.0
    t = t + 1.0
    t = t * x
    t = m.tanh(t)
    t = t - x
    t = t * t
    t = t + x
    t = t * 0.5
    t = 1 / (1 + m.exp(-t)) if m is np else m.sigmoid(t)
    return t * x


def _arith(x, m):
    """Ten arithmetic ops (``m`` unused: the same text for every engine)."""
    t = x * 2.0
    t = t + 1.0
    t = t * x
    t = t - 0.5
    t = t - x
    t = t * t
    t = t + x
    t = t * 0.5
    t = t / 3.0
    return t * x


CHAINS = ("chain10", "arith10")  # judged against one NumPy op (tg.fuse makes each one loop)


def _inputs(name, n, dtype, rng):
    """The kernel's inputs (list of arrays) and the tapegrad / array-API function of them."""
    r, c = _shape2(n)
    if name in ("sum", "bcast-scalar") + _tr.KERNELS + CHAINS:
        x = rng.standard_normal(n)
        if name == "log":
            x = np.abs(x) + 1e-3
        if name == "bcast-scalar":
            x = np.array(rng.standard_normal())
        return [x.astype(dtype)]
    if name in ("sum0", "sum-1", "slice"):
        return [rng.standard_normal((r, c)).astype(dtype)]
    if name == "bcast-row":
        return [rng.standard_normal(c).astype(dtype)]
    if name == "concat":
        return [rng.standard_normal((r, c // 2)).astype(dtype) for _ in range(2)]
    rows = max(1, n // MV_K)
    if name == "matvec":
        return [rng.standard_normal((rows, MV_K)).astype(dtype),
                rng.standard_normal(MV_K).astype(dtype)]
    if name == "vecmat":
        return [rng.standard_normal(MV_K).astype(dtype),
                rng.standard_normal((MV_K, rows)).astype(dtype)]
    raise ValueError(name)


def _fn(name, n, lib):
    """The kernel as a function of its inputs for ``lib`` in ("tg", "torch", "jax")."""
    r, c = _shape2(n)
    if lib == "tg":
        m = tg
    elif lib == "torch":
        import torch as m
    else:
        import jax.numpy as m
    cat = {"tg": lambda xs: tg.concatenate(xs, axis=1),
           "torch": lambda xs: m.cat(xs, dim=1),
           "jax": lambda xs: m.concatenate(xs, axis=1)}[lib]
    bcast = {"tg": broadcast_to, "torch": lambda x, s: x.expand(*s),
             "jax": lambda x, s: m.broadcast_to(x, s)}[lib]
    if lib == "jax":
        import jax
        sig = jax.nn.sigmoid
    else:
        sig = m.sigmoid
    return {
        "sum": lambda x: x.sum(),
        "sum0": lambda x: x.sum(0) if lib == "torch" else x.sum(axis=0),
        "sum-1": lambda x: x.sum(-1) if lib == "torch" else x.sum(axis=-1),
        "bcast-row": lambda x: bcast(x, (r, c)),
        "bcast-scalar": lambda x: bcast(x, (n,)),
        "exp": m.exp, "log": m.log, "tanh": m.tanh, "sigmoid": sig,
        "slice": lambda x: x[:, 1:],
        "concat": lambda a, b: cat([a, b]),
        "matvec": lambda a, b: a @ b,
        "vecmat": lambda a, b: a @ b,
        "chain10": lambda x: _chain(x, m if lib != "jax" else _JaxM(m, sig)),
        "arith10": lambda x: _arith(x, m),
    }[name]


class _JaxM:
    def __init__(self, m, sig):
        self.tanh, self.exp, self.sigmoid = m.tanh, m.exp, sig


def _tg_kernel(name, n, xs):
    """(forward, reverse) sweeps of the tape of the kernel alone."""
    tape = tg.Tape(xs[0].dtype.type)
    ps = [tape.param(x) for x in xs]
    y = _fn(name, n, "tg")(*ps)
    if name in CHAINS:  # its ten ops one group (tapegrad/fuse.py), from fuse.MIN_BYTES up
        tape.optimize()
    tape.forward()
    fmask = np.ones(len(tape), np.uint8)
    rmask = tape._reverse_mask(y._b)
    tape._grad[:] = 0
    y.grad[...] = 1.0
    args = (tape._instr, tape._imm, tape._low, tape._val)
    sweep = tape._interpreters()
    grad = tape._grad

    def fwd():
        sweep.forward(*args, fmask, 0)

    def bwd():
        sweep.reverse(*args, grad, rmask, 0)
    return fwd, bwd, tape


def _np_kernel(name, n, xs):
    """(forward, reverse) in NumPy calls into preallocated arrays."""
    if name in _tr.KERNELS:
        f, b, _ = _tr._np_kernel(name, xs[0])
        return f, b
    x = xs[0]
    if name == "sum":
        gx = np.zeros_like(x)
        return (lambda: np.sum(x)), (lambda: np.add(gx, x.dtype.type(1), out=gx))
    if name in ("sum0", "sum-1"):
        ax = 0 if name == "sum0" else 1
        out = np.sum(x, axis=ax)
        g, gx = np.ones_like(out), np.zeros_like(x)
        gb = g[None, :] if ax == 0 else g[:, None]
        return (lambda: np.sum(x, axis=ax, out=out)), (lambda: np.add(gx, gb, out=gx))
    if name in ("bcast-row", "bcast-scalar"):
        shape = _shape2(n) if name == "bcast-row" else (n,)
        out, g, gx = np.empty(shape, x.dtype), np.ones(shape, x.dtype), np.zeros_like(x)
        acc = np.zeros(x.shape, x.dtype)

        def bwd():
            np.sum(g, axis=0, out=acc)
            np.add(gx, acc, out=gx)
        return (lambda: np.copyto(out, x)), bwd
    if name == "slice":
        out = np.empty_like(x[:, 1:])
        g, gx = np.ones_like(out), np.zeros_like(x)
        gv = gx[:, 1:]
        return (lambda: np.copyto(out, x[:, 1:])), (lambda: np.add(gv, g, out=gv))
    if name == "concat":
        a, b = xs
        h = a.shape[1]
        out = np.concatenate([a, b], axis=1)
        g, ga, gb = np.ones_like(out), np.zeros_like(a), np.zeros_like(b)

        def bwd():
            np.add(ga, g[:, :h], out=ga)
            np.add(gb, g[:, h:], out=gb)
        return (lambda: np.concatenate([a, b], axis=1, out=out)), bwd
    if name in ("matvec", "vecmat"):
        a, b = xs
        out = a @ b
        g, ga, gb = np.ones_like(out), np.zeros_like(a), np.zeros_like(b)
        if name == "matvec":  # ga += outer(g, b), gb += a.T @ g
            t = np.empty_like(a)

            def bwd():
                np.multiply(g[:, None], b[None, :], out=t)
                np.add(ga, t, out=ga)
                np.add(gb, g @ a, out=gb)
        else:  # ga += b @ g, gb += outer(a, g)
            t = np.empty_like(b)

            def bwd():
                np.add(ga, b @ g, out=ga)
                np.multiply(a[:, None], g[None, :], out=t)
                np.add(gb, t, out=gb)
        return (lambda: np.dot(a, b, out=out)), bwd
    if name in CHAINS:
        fn = _chain if name == "chain10" else _arith
        return (lambda: fn(x, np)), None
    raise ValueError(name)


def _np_one_op(x):
    out = np.empty_like(x)
    return lambda: np.multiply(x, x, out=out)


def _torch_kernel(torch, name, n, xs):
    ts = [torch.from_numpy(np.array(x)) for x in xs]
    f = _fn(name, n, "torch")
    if name in ("slice", "bcast-row", "bcast-scalar"):  # torch makes a view: copy it
        view = f
        f = lambda x: view(x).contiguous()  # noqa: E731

    def fwd():
        with torch.no_grad():
            f(*ts)
    req = [t.clone().requires_grad_(True) for t in ts]
    y = f(*req)
    g = torch.ones_like(y)

    def bwd():
        torch.autograd.grad(y, req, g, retain_graph=True)
    return fwd, bwd


def _jax_kernel(name, n, xs):
    jax = _import_jax()
    import jax.numpy as jnp
    js = [jnp.asarray(x) for x in xs]
    f = _fn(name, n, "jax")
    jf = jax.jit(f)
    y, vjp = jax.vjp(f, *js)
    g = jnp.ones_like(y)
    jb = jax.jit(lambda vjp, g: vjp(g))
    jf(*js).block_until_ready()
    jax.block_until_ready(jb(vjp, g))

    def fwd():
        jf(*js).block_until_ready()

    def bwd():
        jax.block_until_ready(jb(vjp, g))
    return fwd, bwd


KERNEL_NAMES = ("sum", "sum0", "sum-1", "bcast-row", "bcast-scalar") + _tr.KERNELS + (
    "slice", "concat", "matvec", "vecmat") + CHAINS


CHAIN_N = 10 ** 6  # the chains are judged at this size only (the "over 10^6 elements")


def kernel_table(sizes, dtypes, rounds, engines, names=KERNEL_NAMES, out=print):
    """Per element [ns] of every kernel at every size; a list of row dicts."""
    rng = np.random.default_rng(0)
    rows = []
    extra = (CHAIN_N not in sizes and max(sizes) >= CHAIN_N
             and any(c in names for c in CHAINS))  # a size for the chains alone
    for dtype in dtypes:
        for n in sorted(set(sizes) | ({CHAIN_N} if extra else set())):
            for name in names:
                if extra and n == CHAIN_N and name not in CHAINS:
                    continue
                xs = _inputs(name, n, dtype, rng)
                el = max(x.size for x in xs)
                if name == "concat":
                    el = sum(x.size for x in xs)
                elif name == "bcast-row":
                    el = int(np.prod(_shape2(n)))
                elif name == "bcast-scalar":
                    el = n
                fns = {}
                tf, tb, _tape = _tg_kernel(name, n, xs)
                fns["tg fwd"], fns["tg bwd"] = tf, tb
                nf, nb = _np_kernel(name, n, xs)
                fns["numpy fwd"] = nf
                if nb is not None:
                    fns["numpy bwd"] = nb
                if name in CHAINS:
                    fns["1op fwd"] = _np_one_op(xs[0])
                if "torch" in engines:
                    fns["torch fwd"], fns["torch bwd"] = _torch_kernel(engines["torch"], name,
                                                                       n, xs)
                if "jax" in engines:
                    fns["jax fwd"], fns["jax bwd"] = _jax_kernel(name, n, xs)
                med = _tr._time_rounds(fns, rounds)
                for swp in ("fwd", "bwd"):
                    row = {"dtype": np.dtype(dtype).name, "n": el, "kernel": name, "sweep": swp}
                    for eng in ("tg", "numpy", "torch", "jax", "1op"):
                        key = f"{eng} {swp}"
                        row[eng] = med[key] / el * 1e9 if key in med else None
                    rows.append(row)
                    out(_kernel_line(row))
                del _tape, fns
    return rows


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fmt(v, w=9, p=3):
    return f"{v:{w}.{p}f}" if v is not None else " " * (w - 1) + "-"


def _fmtx(v, w=8):
    return f"{v:{w - 1}.2f}x" if v is not None else " " * (w - 1) + "-"


KERNEL_HEADER = ("dtype         n kernel       swp  tapegrad     numpy     torch       jax"
                 "    /numpy   /torch     /jax  target")


def _kernel_line(r):
    target = 1.5 if r["sweep"] == "fwd" else 2.0
    base = r["numpy"]  # (a chain's: its ten NumPy calls; no NumPy reverse)
    if r["kernel"] in CHAINS and r["n"] == CHAIN_N:  # the line for the chain
        base, target = r["1op"], 2.0
    rn = _ratio(r["tg"], base)
    ok = "" if rn is None else ("ok" if rn <= target else "MISS")
    extra = f"  (vs 1 numpy op {_fmtx(_ratio(r['tg'], r['1op']))})" if r["1op"] else ""
    return (f"{r['dtype']:8s}{r['n']:>10d} {r['kernel']:12s} {r['sweep']}  {_fmt(r['tg'])} "
            f"{_fmt(r['numpy'])} {_fmt(r['torch'])} {_fmt(r['jax'])} "
            f"{_fmtx(_ratio(r['tg'], r['numpy']))} {_fmtx(_ratio(r['tg'], r['torch']))} "
            f"{_fmtx(_ratio(r['tg'], r['jax']))}  {ok}{extra}")


# ------------------------------------------------------------------ the workloads
RK4_DT = 0.01


def workload_data(name, quick=False):
    rng = np.random.default_rng(1)
    if name == "logsumexp":
        return {"x": rng.standard_normal(20_000 if quick else 1_000_000)}
    if name == "lstsq":
        m = 2048 if quick else 16384
        return {"A": rng.standard_normal((m, 128)), "b": rng.standard_normal(m),
                "w": 0.1 * rng.standard_normal(128)}
    if name == "rk4":
        n, steps = (1000, 10) if quick else (10_000, 100)
        return {"y0": rng.uniform(-1, 1, n), "a": np.array(0.7), "b": np.array(1.3),
                "steps": steps}
    if name == "gmm":
        n, d, K = (100, 8, 5) if quick else (1000, 32, 50)
        return {"x": rng.standard_normal((n, d)), "alpha": rng.standard_normal(K),
                "mu": rng.standard_normal((K, d)), "logs": 0.1 * rng.standard_normal((K, d))}
    raise ValueError(name)


WORKLOADS = ("logsumexp", "lstsq", "rk4", "gmm")
WRT = {"logsumexp": ("x",), "lstsq": ("w",), "rk4": ("a", "b", "y0"),
       "gmm": ("alpha", "mu", "logs")}


def _loss(name, m, D, P, cat=None, lse=None):
    """The workload's loss written once for tapegrad, torch and jax.numpy (``m``): ``D`` the
    constant data, ``P`` the differentiated inputs by name."""
    if name == "logsumexp":
        return lse(P["x"], 0)
    if name == "lstsq":
        r = D["A"] @ P["w"] - D["b"]
        return (r * r).sum()
    if name == "rk4":
        a, b, y = P["a"], P["b"], P["y0"]
        zero = D["zero1"]
        n = D["n"]

        def f(y):
            prev = cat([zero, y[:n - 1]])
            return b * m.tanh(prev) - a * y
        h = RK4_DT

        def step(y):
            k1 = f(y)
            k2 = f(y + (h / 2) * k1)
            k3 = f(y + (h / 2) * k2)
            k4 = f(y + h * k3)
            return y + (h / 6) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        if "fori_loop" in D:  # JAX: one traced step in a loop (unrolled, XLA compiled for
            y = D["fori_loop"](0, D["steps"], lambda i, y: step(y), y)  # many minutes)
        else:
            for _ in range(D["steps"]):
                y = step(y)
        return (y * y).sum()
    if name == "gmm":
        x, alpha, mu, logs = D["x"], P["alpha"], P["mu"], P["logs"]
        n, d = D["x"].shape
        K = D["K"]
        z = (x.reshape(n, 1, d) - mu.reshape(1, K, d)) * m.exp(-logs).reshape(1, K, d)
        q = (z * z).sum(2)                                       # (n, K)
        logw = alpha - lse(alpha, 0)
        comp = logw.reshape(1, K) - logs.sum(1).reshape(1, K) - 0.5 * q
        return -(lse(comp, 1).sum()) + 0.5 * n * d * math.log(2 * math.pi)
    raise ValueError(name)


class _TgWorkload:
    optimize = False  # _TgOptimized: tape.optimize() after recording

    def __init__(self, name, data):
        tape = self.tape = tg.Tape()
        D = {k: v for k, v in data.items() if k not in WRT[name]}
        if name == "lstsq":
            D = {"A": tape.const(data["A"]), "b": tape.const(data["b"])}
        if name == "rk4":
            D = {"zero1": tape.const(np.zeros(1)), "n": data["y0"].size, "steps": data["steps"]}
        if name == "gmm":
            D = {"x": tape.const(data["x"]), "K": data["alpha"].size}
        self.ps = [tape.param(np.array(data[k], dtype=np.float64)) for k in WRT[name]]
        P = dict(zip(WRT[name], self.ps))
        self.loss = _loss(name, tg, D, P, cat=lambda xs: tg.concatenate(xs),
                          lse=lambda v, ax: tg.logsumexp(v, axis=ax))
        if self.optimize:
            tape.optimize()
        self.instructions = len(tape)

    def arena_bytes(self):
        """(planned, without planning) bytes of both arenas, once sealed (tapegrad.plan)."""
        st = self.tape.stats()
        return st["arena_bytes"], st["arena_bytes_unplanned"]

    def __call__(self):
        self.tape.forward()
        self.loss.backward()

    def grads(self):
        self()
        return [p.grad.copy() for p in self.ps]


class _TgSweeps(_TgWorkload):
    """The compiled work alone: the forward sweep and a reverse sweep that zeroes each
    gradient it has consumed (``clear``, as ``tg.fit``'s steps), zeroing before each call only
    the parameters' gradients and the outputs of PLACE (which ``clear`` leaves). What
    ``loss.backward()`` adds is its Python work and its own zeroing (``Tape._zero_grads``:
    since session 14 about the same ranges, held intermediates' gradients kept)."""

    def __init__(self, name, data):
        super().__init__(name, data)
        from tapegrad.opcodes import OP, OUT, Op
        tape = self.tape
        tape.forward()
        self.loss.backward()
        self.sweep = tape._interpreters()
        self.fmask = np.ones(len(tape), np.uint8)
        self.rmask = tape._reverse_mask(self.loss._b)
        self.args = (tape._instr, tape._imm, tape._low, tape._val)
        place = np.unique(tape._instr[tape._instr[:, OP] == Op.PLACE, OUT])
        self.zero = [(0, tape._n_params)] + [
            (int(tape._boff[b]), int(tape._boff[b] + tape._bsize[b])) for b in place]
        self.seed = int(tape._boff[self.loss._b])
        tape._grad[:] = 0

    def __call__(self):
        grad = self.tape._grad
        self.sweep.forward(*self.args, self.fmask, 0)
        for a, b in self.zero:
            grad[a:b] = 0
        grad[self.seed] = 1.0
        self.sweep.reverse(*self.args, grad, self.rmask, 1)


class _TgOptimized(_TgWorkload):
    """The tape after ``tape.optimize()`` (equal broadcasts merged, chains fused), planned."""
    optimize = True


class _TorchWorkload:
    def __init__(self, name, data):
        import torch
        torch.set_num_threads(1)
        self.torch = torch
        t = lambda a: torch.from_numpy(np.array(a, dtype=np.float64))  # noqa: E731
        D = {"A": t(data["A"]), "b": t(data["b"])} if name == "lstsq" else {}
        if name == "rk4":
            D = {"zero1": torch.zeros(1, dtype=torch.float64), "n": data["y0"].size,
                 "steps": data["steps"]}
        if name == "gmm":
            D = {"x": t(data["x"]), "K": data["alpha"].size}
        self.ps = [t(data[k]).requires_grad_(True) for k in WRT[name]]
        P = dict(zip(WRT[name], self.ps))
        self.f = lambda: _loss(name, torch, D, P, cat=lambda xs: torch.cat(xs),  # noqa: E731
                               lse=lambda v, ax: torch.logsumexp(v, ax))

    def __call__(self):
        for p in self.ps:
            p.grad = None
        self.f().backward()

    def grads(self):
        self()
        return [p.grad.numpy().copy() for p in self.ps]


class _JaxWorkload:
    def __init__(self, name, data):
        jax = _import_jax()
        import jax.numpy as jnp
        from jax.scipy.special import logsumexp
        self.jax = jax
        D = {"A": jnp.asarray(data["A"]), "b": jnp.asarray(data["b"])} if name == "lstsq" else {}
        if name == "rk4":
            D = {"zero1": jnp.zeros(1), "n": data["y0"].size, "steps": data["steps"],
                 "fori_loop": jax.lax.fori_loop}
        if name == "gmm":
            D = {"x": jnp.asarray(data["x"]), "K": data["alpha"].size}
        self.ps = [jnp.asarray(np.array(data[k], dtype=np.float64)) for k in WRT[name]]

        def loss(ps):
            P = dict(zip(WRT[name], ps))
            return _loss(name, jnp, D, P, cat=lambda xs: jnp.concatenate(xs),
                         lse=lambda v, ax: logsumexp(v, axis=ax))
        self.step = jax.jit(jax.value_and_grad(loss))
        jax.block_until_ready(self.step(self.ps))

    def __call__(self):
        self.jax.block_until_ready(self.step(self.ps))

    def grads(self):
        return [np.asarray(g) for g in self.step(self.ps)[1]]


ENGINES = {"tapegrad": _TgWorkload, "tg-optimized": _TgOptimized, "tg-sweeps": _TgSweeps,
           "torch": _TorchWorkload,
           "jax": _JaxWorkload}


def _memory(name, engine, quick):
    """Peak resident MB of one engine running one workload, in a child process."""
    p = subprocess.run([sys.executable, "-m", "tapegrad.bench.arrays", "--mem", name, engine]
                       + (["--quick"] if quick else []), capture_output=True, text=True,
                       timeout=900)
    if p.returncode:
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def _mem_child(name, engine, quick):
    data = workload_data(name, quick)
    if engine == "torch":
        import torch  # noqa: F401
    if engine == "jax":
        _import_jax()
    base = rss_mb("VmRSS")
    w = ENGINES[engine](name, data)
    for _ in range(3):
        w()
    print(json.dumps({"peak_mb": rss_mb("VmHWM"), "base_mb": base,
                      "delta_mb": rss_mb("VmHWM") - base}))


def workload_table(rounds, engines, quick, memory, names=WORKLOADS, out=print):
    rows = []
    for name in names:
        data = workload_data(name, quick)
        ws = {e: ENGINES[e](name, data) for e in ENGINES if e in engines}
        ref = ws["tapegrad"].grads()
        check = {}
        for e, w in ws.items():
            g = w.grads()
            check[e] = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-300))
                           for a, b in zip(ref, g))
        med = _tr._time_rounds(ws, rounds, target_s=0.02)
        planned, dense = ws["tapegrad"].arena_bytes()
        row = {"workload": name, "median_s": med, "check": check,
               "instructions": ws["tapegrad"].instructions,
               "arena_mb": planned / 2 ** 20, "arena_unplanned_mb": dense / 2 ** 20}
        if "tg-optimized" in ws:
            row["arena_optimized_mb"] = ws["tg-optimized"].arena_bytes()[0] / 2 ** 20
        if memory:
            row["memory"] = {e: _memory(name, e, quick) for e in ws if e != "tg-sweeps"}
        rows.append(row)
        for line in _workload_lines(row):
            out(line)
        del ws
    return rows


WORKLOAD_HEADER = ("workload   engine        time/call   x tapegrad  peak MB (over base)  "
                   "check")


def _workload_lines(r):
    lines = []
    tgt = r["median_s"]["tapegrad"]
    for e, t in r["median_s"].items():
        mem = (r.get("memory") or {}).get(e)
        ms = f"{mem['peak_mb']:8.0f} ({mem['delta_mb']:7.0f})" if mem else " " * 18
        lines.append(f"{r['workload']:10s} {e:10s} {t * 1e3:10.3f} ms  {t / tgt:9.2f}x  "
                     f"{ms}  {r['check'][e]:.1e}")
    pt = r["median_s"].get("torch")
    pj = r["median_s"].get("jax")
    verdict = []
    if pt:
        verdict.append(f"tapegrad/torch {tgt / pt:.2f} ({'ok' if tgt <= pt else 'MISS'})")
    if pj:
        verdict.append(f"tapegrad/jax {tgt / pj:.2f} ({'ok' if tgt <= 1.5 * pj else 'MISS'})")
    opt = r.get("arena_optimized_mb")
    lines.append(f"{'':10s} {r['instructions']} instructions, arenas {r['arena_mb']:.0f} MB "
                 f"planned ({r.get('arena_unplanned_mb', r['arena_mb']):.0f} MB without"
                 + (f", {opt:.0f} MB after optimize()" if opt is not None else "") + "); "
                 + ", ".join(verdict))
    return lines


# ------------------------------------------------------------------ main
def _blas_info():
    try:
        from threadpoolctl import threadpool_info
        return "; ".join(f"{i.get('internal_api')} {i.get('version')} "
                         f"{i.get('architecture')} x{i.get('num_threads')}"
                         for i in threadpool_info())
    except ImportError:
        return "threadpoolctl not installed"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 rounds (a smoke run)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; quick 2)")
    ap.add_argument("--max-size", type=int, default=None,
                    help="largest kernel size (default 10^7; 10^6 if memory or time forces)")
    ap.add_argument("--no-kernels", action="store_true")
    ap.add_argument("--no-workloads", action="store_true")
    ap.add_argument("--no-memory", action="store_true", help="skip the child processes")
    ap.add_argument("--float32", action="store_true", help="the kernels in float32 too")
    ap.add_argument("--skip", default="", help="comma-separated engines to leave out")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--kernels", default=",".join(KERNEL_NAMES),
                    help="comma-separated kernels (default: all)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help="comma-separated workloads (default: all)")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    ap.add_argument("--mem", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    limits = _limit_blas()  # noqa: F841 - keep the limit alive
    if args.mem:
        _mem_child(args.mem[0], args.mem[1], args.quick)
        return 0
    _tr.CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    engines = {}
    if _have("torch") and "torch" not in skip:
        import torch
        torch.set_num_threads(1)
        engines["torch"] = torch
    if _have("jax") and "jax" not in skip:
        engines["jax"] = _import_jax()
    rounds = args.rounds or (2 if args.quick else 7)
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.max_size:
        sizes = tuple(s for s in sizes if s <= args.max_size)
    env = {k: os.environ.get(k, "(unset)") for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    versions = {e: engines[e].__version__ if e in engines else "-" for e in ("torch", "jax")}
    print(f"numpy {np.__version__}, torch {versions['torch']}, jax {versions['jax']}; medians "
          f"of {rounds} interleaved rounds, {args.clock} time; one thread per engine")
    print(f"BLAS: {_blas_info()}; " + ", ".join(f"{k}={v}" for k, v in env.items()))
    report = {"rounds": rounds, "clock": args.clock, "env": env}
    if not args.no_kernels:
        print("\nkernels: per element [ns]; target tapegrad/numpy <= 1.5x forward, <= 2x "
              "reverse (chain10, arith10 at 10^6: forward <= 2x one numpy op)")
        print(KERNEL_HEADER)
        dtypes = (np.float64, np.float32) if args.float32 else (np.float64,)
        report["kernels"] = kernel_table(sizes, dtypes, rounds, engines,
                                         [k for k in args.kernels.split(",") if k])
    if not args.no_workloads:
        print("\nworkloads: value and gradient per call; target tapegrad <= torch and "
              "<= 1.5x jax")
        print(WORKLOAD_HEADER)
        report["workloads"] = workload_table(
            rounds, {"tapegrad", "tg-optimized", "tg-sweeps"} | set(engines), args.quick,
            not args.no_memory and not args.quick, [w for w in args.workloads.split(",") if w])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
