"""Elementwise groups replayed fused against op by op (``python -m tapegrad.bench.fusion``).

Two ten-op chains over n elements, each recorded twice: as recorded (op by op) and after
``tape.optimize()``, which makes the chain one group (``tapegrad/fuse.py``). Per element [ns]:
the forward and the reverse sweep of each (the compiled sweeps called directly, as
``tapegrad.bench.arrays`` times its kernels), and NumPy's ``x * x`` into a preallocated
output (one pass over memory: the issue's "one NumPy op"). Medians of interleaved rounds.
Arrays smaller than ``fuse.MIN_BYTES`` are fused here too (the table compares the two ways at
every size).
"""
import argparse
import time

import numpy as np

import tapegrad as tg
from tapegrad import fuse
from tapegrad.bench.arrays import _chain


def arith(x, m):
    """Ten arithmetic ops."""
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--float32", action="store_true", help="float32 rows too")
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    fuse.MIN_BYTES = min(fuse.MIN_BYTES, min(sizes) * 4)  # (fused at every size here)
    table(sizes, [np.float64] + ([np.float32] if a.float32 else []), a.rounds)


if __name__ == "__main__":
    main()
