"""Elementwise groups replayed fused against op by op (``python -m tapegrad.bench.fusion``).

Two ten-op chains over n elements, each recorded twice: as recorded (op by op) and after
``tape.optimize()``, which makes the chain one group (``tapegrad/fuse.py``). Per element [ns]:
the forward and the reverse sweep of each (the compiled sweeps called directly, as
``tapegrad.bench.arrays`` times its kernels), and NumPy's ``x * x`` into a preallocated
output (one pass over memory: the issue's "one NumPy op"). Medians of interleaved rounds.
Then ``floor``: the transcendental chain's tanh and sigmoid alone, each in its own loop over
data in the L1 cache, against that one NumPy op.
Arrays smaller than ``fuse.MIN_BYTES`` are fused here too (the table compares the two ways at
every size).
"""
import argparse
import time

import numpy as np

import tapegrad as tg
from tapegrad import fuse
from tapegrad.bench.arrays import _arith, _chain


def arith(x, m):
    """``tapegrad.bench.arrays``'s arith10: ten arithmetic ops."""
    return _arith(x, m)


def transcendental(x, m):
    """``tapegrad.bench.arrays``'s chain10: tanh and a sigmoid among ten ops (``m``: tapegrad,
    or NumPy, whose sigmoid is written out)."""
    return _chain(x, m)


def sweeps(fn, x0, optimize):
    """(forward, reverse) callables of fn's tape, fused when ``optimize``."""
    tape = tg.Tape(x0.dtype.type)
    x = tape.param(x0)
    y = fn(x, tg)
    if optimize:
        tape.optimize()
        assert tape._fused_now is not None, "no group formed"
    tape.forward()
    sw = tape._interpreters()
    fmask = np.ones(len(tape), np.uint8)
    rmask = tape._reverse_mask(y._b)
    tape._grad[:] = 0
    y.grad[...] = 1.0
    args = (tape._instr, tape._imm, tape._low, tape._val)
    return (lambda: sw.forward(*args, fmask, 0)), (lambda: sw.reverse(*args, tape._grad,
                                                                       rmask, 0)), tape


def table(sizes, dtypes, rounds, out=print):
    rows = []
    out(f"{'chain':15s}{'dtype':9s}{'n':>10s}  {'op-by-op fwd':>12s} {'bwd':>7s}  "
        f"{'fused fwd':>10s} {'bwd':>7s}  {'1 numpy op':>10s}  fused fwd / 1 op  "
        f"fused / op-by-op (fwd+bwd)")
    for fn in (arith, transcendental):
        for dtype in dtypes:
            for n in sizes:
                x0 = np.random.default_rng(0).standard_normal(n).astype(dtype)
                f0, b0, t0 = sweeps(fn, x0, False)
                f1, b1, t1 = sweeps(fn, x0, True)
                o = np.empty_like(x0)
                fns = {"f0": f0, "b0": b0, "f1": f1, "b1": b1,
                       "np": lambda: np.multiply(x0, x0, out=o)}
                times = {k: [] for k in fns}
                for _ in range(rounds):
                    for k, f in fns.items():
                        s = time.perf_counter()
                        f()
                        times[k].append(time.perf_counter() - s)
                med = {k: float(np.median(v)) / n * 1e9 for k, v in times.items()}
                r = {"chain": fn.__name__, "dtype": np.dtype(dtype).name, "n": n, **med}
                rows.append(r)
                out(f"{r['chain']:15s}{r['dtype']:9s}{n:>10d}  {med['f0']:12.2f} "
                    f"{med['b0']:7.2f}  {med['f1']:10.2f} {med['b1']:7.2f}  {med['np']:10.2f}"
                    f"  {med['f1'] / med['np']:15.2f}x  "
                    f"{(med['f1'] + med['b1']) / (med['f0'] + med['b0']):10.2f}x")
                del t0, t1
    return rows


def floor(dtypes, rounds, ones, n_cache=4096, out=print):
    """What ``transcendental``'s tanh and sigmoid cost alone: each in a compiled loop of its
    own (the kernels' ``vtanh`` / ``vsigmoid``, 512-bit where the CPU has AVX-512) over
    ``n_cache`` elements that stay in the L1 cache (their arithmetic, no memory traffic),
    per element [ns]. Their sum is a floor under the chain's fused forward; printed against
    ``ones``, the one NumPy op of ``table``'s rows (``{(dtype name, n): ns}``)."""
    import numba

    from tapegrad.ops._vmath import vsigmoid, vtanh, wide

    def loop(fn):
        @numba.njit(error_model="numpy")
        def run(x, o, reps):
            wide()
            for _ in range(reps):
                for i in range(x.shape[0]):
                    o[i] = fn(x[i])
        return run

    loops = {"tanh": loop(vtanh), "sigmoid": loop(vsigmoid)}
    out(f"{'dtype':9s}{'tanh':>8s}{'sigmoid':>9s}{'sum':>8s}   sum / the 1 numpy op above")
    rows = []
    for dtype in dtypes:
        name = np.dtype(dtype).name
        x = np.random.default_rng(1).standard_normal(n_cache).astype(dtype)
        o = np.empty_like(x)
        reps = 250
        for f in loops.values():
            f(x, o, 1)
        times = {k: [] for k in loops}
        for _ in range(rounds):
            for k, f in loops.items():
                s = time.perf_counter()
                f(x, o, reps)
                times[k].append((time.perf_counter() - s) / (n_cache * reps) * 1e9)
        med = {k: float(np.median(v)) for k, v in times.items()}
        total = med["tanh"] + med["sigmoid"]
        rows.append({"dtype": name, **med, "sum": total})
        ratios = ", ".join(f"n={n}: {total / v:.2f}x" for (d, n), v in sorted(ones.items())
                           if d == name)
        out(f"{name:9s}{med['tanh']:8.2f}{med['sigmoid']:9.2f}{total:8.2f}   {ratios}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--float32", action="store_true", help="float32 rows too")
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    fuse.MIN_BYTES = min(fuse.MIN_BYTES, min(sizes) * 4)  # (fused at every size here)
    dtypes = [np.float64] + ([np.float32] if a.float32 else [])
    rows = table(sizes, dtypes, a.rounds)
    print("\nthe transcendental chain's tanh and sigmoid alone, in the L1 cache (fusion.floor)")
    floor(dtypes, a.rounds, {(r["dtype"], r["n"]): r["np"] for r in rows
                             if r["chain"] == "transcendental"})


if __name__ == "__main__":
    main()
