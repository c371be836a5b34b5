"""Elementwise transcendentals side by side: tapegrad's compiled kernels against NumPy and
PyTorch, per element, and two small training workloads where they (or ``x ** k``) dominate.

    python -m tapegrad.bench.transcendental            # full table (~2-3 min)
    python -m tapegrad.bench.transcendental --quick    # fewer rounds, smaller sizes

Kernels (``exp log tanh sigmoid``, float64 and float32, 76,800 and 10^6 elements):

* ``tapegrad fwd`` / ``bwd``: the compiled forward / reverse sweep running the op's one
  instruction (``tapegrad.sweep.forward`` / ``reverse`` with a mask selecting it) -- the
  kernel plus one interpreter dispatch;
* ``numpy``: the ufunc into a preallocated output (``np.tanh(x, out=y)``); sigmoid, which
  NumPy lacks, as ``1 / (1 + exp(-x))`` in three in-place ufunc calls. The reverse rules as
  NumPy expressions into preallocated buffers (``gx += gy * (1 - y * y)`` etc.);
* ``torch``: ``torch.tanh(x, out=y)`` etc., and the reverse rules autograd runs
  (``tanh_backward``, ``sigmoid_backward``, ``addcmul_``, ``addcdiv_``), one thread.
``ulp tg`` / ``ulp np``: the largest forward error of tapegrad and of NumPy (for sigmoid its
three-ufunc formula) against a long-double reference, in units in the last place.

Workloads (per training step, all engines starting from the same weights, one thread):

* ``tanh-mlp``: MLP 16 -> 300 -> 300 -> 1 (tanh on 76,800 elements per layer: most of the
  time goes to the 300 x 300 matrix products), and ``tanh-mlp-64``: 1 -> 64 -> 64 -> 64 -> 1
  (tanh a large share); both batch 256, float64, mean squared error, SGD(lr=0.01); ``tg.fit`` (many steps per compiled call), a Python loop of
  ``tape.forward`` / ``loss.backward`` / ``opt.step``, HIPS autograd (``grad`` + NumPy
  update), PyTorch eager (``backward`` + ``optim.SGD``);
* ``polyfit-f32``: PyTorch's "warm-up" fit of ``sin(x)`` on 2000 points of ``[-pi, pi]`` by
  ``a + b x + c x**2 + d x**3``, float32, loss ``sum((y_pred - y)**2)``, SGD(lr=1e-6).

Blocks of calls are timed in interleaved rounds, medians reported; ratios within one run are
the figures to read on a shared machine.
"""
import argparse
import math
import time

import numpy as np

import tapegrad as tg

KERNELS = ("exp", "log", "tanh", "sigmoid")


def _median(xs):
    return float(np.median(xs))


CLOCK = time.process_time


def _clock(name):
    """The clock of the engine ``name``'s blocks. With the CPU clock, every engine but JAX
    is timed by its thread's CPU time: it computes on the calling thread (one BLAS thread),
    and JAX's pool threads keep spinning after a JAX call, which the process's CPU time
    charged to the block timed next (session 17: tapegrad's forward at 10^3, timed right
    after JAX's reverse, measured 1.8-2.1 us by the process's clock, 1.4-1.6 us by the
    wall clock or without JAX). JAX's blocks keep the process's CPU time: its pool's work
    is its own."""
    if CLOCK is time.process_time and not name.startswith("jax"):
        return time.thread_time
    return CLOCK


def _time_rounds(fns, rounds, target_s=0.004):
    """{name: median seconds per call} of zero-argument callables, timed in interleaved
    rounds of blocks of calls (the block size chosen once so a block takes ~target_s)."""
    reps = {}
    for name, fn in fns.items():
        fn()
        t = time.perf_counter()
        fn()
        dt = max(time.perf_counter() - t, 1e-7)
        reps[name] = max(1, int(target_s / dt))
    times = {name: [] for name in fns}
    clocks = {name: _clock(name) for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            r, clock = reps[name], clocks[name]
            t = clock()
            for _ in range(r):
                fn()
            times[name].append((clock() - t) / r)
    return {name: _median(ts) for name, ts in times.items()}


# ------------------------------------------------------------------ kernels
def _data(name, n, dtype, rng):
    x = rng.standard_normal(n) * 3
    if name == "log":
        x = np.abs(x) + 1e-3
    return x.astype(dtype)


def _tg_kernel(name, x):
    """(forward, backward) callables running the one instruction of ``tg.<name>(x)``."""
    tape = tg.Tape(x.dtype.type)
    xv = tape.param(x)
    y = getattr(tg, name)(xv)
    tape.forward()
    k = len(tape) - 1
    fmask = np.zeros(len(tape), np.uint8)
    fmask[k] = 1
    rmask = fmask * np.uint8(3)
    tape._grad[:] = 0
    y.grad[...] = 1.0
    args = (tape._instr, tape._imm, tape._low, tape._val)
    sweep = tape._interpreters()
    fwd = lambda: sweep.forward(*args, fmask, 0)  # noqa: E731
    bwd = lambda: sweep.reverse(*args, tape._grad, rmask, 0)  # noqa: E731
    return fwd, bwd, y


def _np_kernel(name, x):
    y, t = np.empty_like(x), np.empty_like(x)
    gy, gx = np.ones_like(x), np.zeros_like(x)
    one = x.dtype.type(1)
    if name == "sigmoid":
        def fwd():
            np.negative(x, out=y)
            np.exp(y, out=y)
            np.add(y, one, out=y)
            np.divide(one, y, out=y)
    else:
        f = getattr(np, name)
        fwd = lambda: f(x, out=y)  # noqa: E731
    fwd()

    def bwd():
        if name == "exp":
            np.multiply(gy, y, out=t)
        elif name == "log":
            np.divide(gy, x, out=t)
        elif name == "tanh":
            np.multiply(y, y, out=t)
            np.subtract(one, t, out=t)
            np.multiply(gy, t, out=t)
        else:
            np.subtract(one, y, out=t)
            np.multiply(t, y, out=t)
            np.multiply(gy, t, out=t)
        np.add(gx, t, out=gx)
    return fwd, bwd, y


def _torch_kernel(torch, name, x):
    tx = torch.from_numpy(x)
    ty, tt = torch.empty_like(tx), torch.empty_like(tx)
    gy, gx = torch.ones_like(tx), torch.zeros_like(tx)
    f = getattr(torch, name)
    fwd = lambda: f(tx, out=ty)  # noqa: E731
    fwd()
    aten = torch.ops.aten
    if name == "exp":
        bwd = lambda: gx.addcmul_(gy, ty)  # noqa: E731
    elif name == "log":
        bwd = lambda: gx.addcdiv_(gy, tx)  # noqa: E731
    else:
        back = aten.tanh_backward.grad_input if name == "tanh" else \
            aten.sigmoid_backward.grad_input

        def bwd():
            back(gy, ty, grad_input=tt)
            gx.add_(tt)
    return fwd, bwd


def _ulp(got, x, name):
    """Largest error of ``got`` = name(x) in ulp, against long double (x86: 64-bit mantissa)."""
    xl = x.astype(np.longdouble)
    want = 1 / (1 + np.exp(-xl)) if name == "sigmoid" else getattr(np, name)(xl)
    w = want.astype(got.dtype)
    both = np.isfinite(w) & np.isfinite(got)
    d = np.abs(got[both] - want[both]) / np.spacing(np.abs(w[both])).astype(np.longdouble)
    same_special = np.array_equal(got[~both], w[~both], equal_nan=True)
    return float(d.max(initial=0.0)) if same_special else math.inf


def kernel_table(sizes, rounds, torch):
    rng = np.random.default_rng(0)
    rows = []
    for dtype in (np.float64, np.float32):
        for n in sizes:
            for name in KERNELS:
                x = _data(name, n, dtype, rng)
                tf, tb, ty = _tg_kernel(name, x)
                nf, nb, ny = _np_kernel(name, x)
                fns = {"tg fwd": tf, "np fwd": nf, "tg bwd": tb, "np bwd": nb}
                if torch is not None:
                    of, ob = _torch_kernel(torch, name, x)
                    fns.update({"torch fwd": of, "torch bwd": ob})
                tf()
                ulp = (_ulp(ty.value, x, name), _ulp(ny, x, name))
                t = _time_rounds(fns, rounds)
                for sweep_ in ("fwd", "bwd"):
                    rows.append((np.dtype(dtype).name, n, name, sweep_,
                                 t[f"tg {sweep_}"] / n * 1e9, t[f"np {sweep_}"] / n * 1e9,
                                 t.get(f"torch {sweep_}", math.nan) / n * 1e9,
                                 ulp if sweep_ == "fwd" else None))
                    _print_row(rows[-1])
    return rows


def _print_row(r):
    dt, n, name, sw, a, b, c, ulp = r
    u = "" if ulp is None else f"{ulp[0]:6.2f} {ulp[1]:6.2f}"
    print(f"{dt:8} {n:>8} {name:8} {sw:4} {a:9.3f} {b:9.3f} {c:9.3f} {a / b:8.2f}x "
          f"{a / c:8.2f}x {u:>6}", flush=True)


# ------------------------------------------------------------------ workloads
MLP_SIZES = {"tanh-mlp": (16, 300, 300, 1), "tanh-mlp-64": (1, 64, 64, 64, 1)}
MLP_BATCH, MLP_LR = 256, 0.01
POLY_N, POLY_LR = 2000, 1e-6


def _mlp_data(sizes):
    rng = np.random.default_rng(3)
    ws = [(rng.standard_normal((a, b)) / math.sqrt(a), rng.standard_normal(b) * 0.1)
          for a, b in zip(sizes[:-1], sizes[1:])]
    X = rng.standard_normal((MLP_BATCH, sizes[0]))
    Y = np.sin(X[:, :1]) * np.cos(X[:, -1:])
    return ws, X, Y


def _mlp_engines(torch, autograd, sizes):
    ws, X, Y = _mlp_data(sizes)
    out, first = {}, {}
    tape = tg.Tape()
    params = [(tape.param(W.copy()), tape.param(b.copy())) for W, b in ws]
    x, y = tape.input("x", value=X), tape.input("y", value=Y)
    h = x
    for i, (W, b) in enumerate(params):
        h = h @ W + b
        if i < len(params) - 1:
            h = tg.tanh(h)
    loss = tg.mean((h - y) ** 2)
    opt = tg.optim.SGD(tape.params, lr=MLP_LR)
    first["tapegrad"] = float(loss.value)
    K = 20
    out["tg-fit"] = (lambda: tg.fit(loss, opt, steps=K, progress=False), K)

    def tg_loop():
        tape.forward()
        loss.backward()
        opt.step()
    out["tg-loop"] = (tg_loop, 1)

    if autograd is not None:
        anp, agrad = autograd
        aws = [[W.copy(), b.copy()] for W, b in ws]

        def aloss(p):
            h = X
            for i, (W, b) in enumerate(p):
                h = anp.dot(h, W) + b
                if i < len(p) - 1:
                    h = anp.tanh(h)
            return anp.mean((h - Y) ** 2)
        g = agrad(aloss)
        first["autograd"] = float(aloss(aws))

        def ag_step():
            for (W, b), (gW, gb) in zip(aws, g(aws)):
                W -= MLP_LR * gW
                b -= MLP_LR * gb
        out["autograd"] = (ag_step, 1)

    if torch is not None:
        tws = [(torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True))
               for W, b in ws]
        tX, tY = torch.tensor(X), torch.tensor(Y)
        topt = torch.optim.SGD([p for wb in tws for p in wb], lr=MLP_LR)

        def tloss():
            h = tX
            for i, (W, b) in enumerate(tws):
                h = h @ W + b
                if i < len(tws) - 1:
                    h = torch.tanh(h)
            return ((h - tY) ** 2).mean()
        first["torch"] = float(tloss().detach())

        def t_step():
            topt.zero_grad()
            tloss().backward()
            topt.step()
        out["torch"] = (t_step, 1)
    return out, first


def _poly_engines(torch, autograd):
    f32 = np.float32
    xs = np.linspace(-math.pi, math.pi, POLY_N, dtype=f32)
    ys = np.sin(xs).astype(f32)
    init = np.random.default_rng(4).standard_normal(4).astype(f32)
    out, first = {}, {}
    tape = tg.Tape(f32)
    a, b, c, d = (tape.param(np.array(v, f32)) for v in init)
    x, y = tape.input("x", value=xs), tape.input("y", value=ys)
    loss = ((a + b * x + c * x ** 2 + d * x ** 3 - y) ** 2).sum()
    opt = tg.optim.SGD(tape.params, lr=POLY_LR)
    first["tapegrad"] = float(loss.value)
    K = 100
    out["tg-fit"] = (lambda: tg.fit(loss, opt, steps=K, progress=False), K)

    def tg_loop():
        tape.forward()
        loss.backward()
        opt.step()
    out["tg-loop"] = (tg_loop, 1)

    if autograd is not None:
        anp, agrad = autograd
        p = [f32(v) for v in init]

        def aloss(p):
            return anp.sum((p[0] + p[1] * xs + p[2] * xs ** 2 + p[3] * xs ** 3 - ys) ** 2)
        g = agrad(aloss)
        first["autograd"] = float(aloss(p))

        def ag_step():
            gs = g(p)
            for i in range(4):
                p[i] = f32(p[i] - f32(POLY_LR) * gs[i])
        out["autograd"] = (ag_step, 1)

    if torch is not None:
        tp = [torch.tensor(v, requires_grad=True) for v in init]
        tx, ty = torch.from_numpy(xs), torch.from_numpy(ys)
        topt = torch.optim.SGD(tp, lr=POLY_LR)

        def tloss():
            return (tp[0] + tp[1] * tx + tp[2] * tx ** 2 + tp[3] * tx ** 3 - ty).pow(2).sum()
        first["torch"] = float(tloss().detach())

        def t_step():
            topt.zero_grad()
            tloss().backward()
            topt.step()
        out["torch"] = (t_step, 1)
    return out, first


def workload_table(rounds, torch, autograd):
    rows = []
    builds = [(name, lambda t, a, s=s: _mlp_engines(t, a, s)) for name, s in MLP_SIZES.items()]
    for wl, build in builds + [("polyfit-f32", _poly_engines)]:
        engines, first = build(torch, autograd)
        ref = first["tapegrad"]
        for name, v in first.items():  # same start: the first loss agrees
            assert abs(v - ref) <= 1e-5 * abs(ref), (wl, name, v, ref)
        t = _time_rounds({k: fn for k, (fn, _) in engines.items()}, rounds, target_s=0.02)
        per = {k: t[k] / engines[k][1] for k in engines}
        for name in sorted(per, key=per.get):
            rows.append((wl, name, per[name], per[name] / per["tg-fit"]))
            print(f"{wl:12} {name:10} {per[name] * 1e6:10.1f} us {per[name] / per['tg-fit']:8.2f}x",
                  flush=True)
    return rows


def _single_threaded():
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(1)
    except ImportError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds, 76,800 elements only")
    ap.add_argument("--no-kernels", action="store_true", help="the workloads only")
    ap.add_argument("--no-workloads", action="store_true", help="the kernels only")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="time with the process's CPU time (default: steadier on a shared "
                         "machine) or wall time")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    limits = _single_threaded()  # noqa: F841 - keep the limit alive
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    try:
        import autograd
        import autograd.numpy as anp
        autograd = (anp, autograd.grad)
    except ImportError:
        autograd = None
    rounds = 3 if args.quick else 11
    sizes = (76_800,) if args.quick else (76_800, 1_000_000)
    print(f"numpy {np.__version__}, torch {torch.__version__ if torch else '-'}, "
          f"autograd {'yes' if autograd else '-'}; medians of {rounds} interleaved rounds, "
          f"{args.clock} time")
    if not args.no_kernels:
        print("\nper element [ns]; ratios tapegrad / numpy and tapegrad / torch; forward "
              "errors in ulp")
        print(f"{'dtype':8} {'n':>8} {'op':8} {'swp':4} {'tapegrad':>9} {'numpy':>9} "
              f"{'torch':>9} {'/numpy':>9} {'/torch':>9} {'ulp tg':>6} {'ulp np':>6}")
        kernel_table(sizes, rounds, torch)
    if not args.no_workloads:
        print("\nper training step; x tg-fit")
        workload_table(rounds, torch, autograd)


if __name__ == "__main__":
    main()
