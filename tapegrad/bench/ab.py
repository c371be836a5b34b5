"""``python -m tapegrad.bench.ab OTHER_TREE``: the training-step time of two source trees
side by side.

Times ``tg-fit`` and ``tg-loop`` on seed-mlp and digits-mlp (the workloads of
``tapegrad bench``) in this tree and in ``OTHER_TREE`` (another checkout, e.g.
``git worktree add /tmp/before main``). One server process per tree loads its own tapegrad
(each tree compiles its own kernels once: the numba cache sits beside the sources) and
builds the four engines; then the two processes run timed blocks in turn -- other, this,
this, other, ... -- so machine noise hits both alike, and each pair of neighbouring blocks
gives one ratio. Printed per case: the median step time of each tree, the median of the
paired ratios this/other and their interquartile range. ``--clock cpu`` times the process's
CPU time instead of wall time (on a machine shared with other jobs it leaves out the time
spent waiting for a core).
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASES = ["seed-mlp tg-fit", "seed-mlp tg-loop", "digits-mlp tg-fit", "digits-mlp tg-loop"]


def _serve(clock):
    """In the tree on PYTHONPATH: read "CASE N" lines, run N steps, print the seconds taken."""
    from tapegrad.bench import _limit_blas
    from tapegrad.bench.engines import TgFit, TgLoop
    from tapegrad.bench.workloads import (DIG_BATCH, build_digits_tg, build_seed_tg,
                                          digits_data, seed_data)
    limits = _limit_blas()  # noqa: F841 - one BLAS thread, as tapegrad bench
    X, Y = seed_data()
    Xd, Yd, _ = digits_data()
    Yd = Yd.astype(np.float32)
    engines = dict(zip(CASES, [
        TgFit(build_seed_tg, {"x": X, "y": Y}, 1),
        TgLoop(build_seed_tg, [(X[i:i + 1], Y[i:i + 1]) for i in range(len(X))]),
        TgFit(build_digits_tg, {"x": Xd, "y": Yd}, DIG_BATCH),
        TgLoop(build_digits_tg, [(Xd[i:i + DIG_BATCH], Yd[i:i + DIG_BATCH])
                                 for i in range(0, len(Xd), DIG_BATCH)]),
    ]))
    for eng in engines.values():
        eng.run(3)  # first calls: load or compile the kernels
    print("ready", flush=True)
    for line in sys.stdin:
        case, n = line.rsplit(" ", 1)
        t = clock()
        engines[case].run(int(n))
        print(clock() - t, flush=True)


class _Server:
    def __init__(self, tree, clock):
        env = dict(os.environ, PYTHONPATH=tree)
        # this file as a script: the other tree need not have it; `tapegrad` comes from PYTHONPATH
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve",
                                      "--clock", clock], env=env, cwd=tree, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"{tree}: the timing server did not start")

    def run(self, case, n):
        self.proc.stdin.write(f"{case} {n}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline()) / n

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _fmt(s):
    return f"{s * 1e6:.2f} us"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tapegrad.bench.ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("other", nargs="?", help="the other source tree (the 'before')")
    ap.add_argument("--pairs", type=int, default=30, help="timed block pairs per case")
    ap.add_argument("--block", type=float, default=0.1, help="seconds per timed block")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter (default); cpu: time.process_time")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.serve:
        return _serve(clock)
    if not args.other:
        ap.error("give the other source tree")
    print("starting the servers (each loads or compiles its tree's kernels) ...", flush=True)
    servers = {"other": _Server(os.path.abspath(args.other), args.clock),
               "this": _Server(HERE, args.clock)}
    rows = []
    try:
        for case in CASES:
            n = max(1, int(args.block / max(servers["this"].run(case, 20), 1e-7)))
            times = {"other": [], "this": []}
            for p in range(args.pairs):
                for name in (("other", "this") if p % 2 == 0 else ("this", "other")):
                    times[name].append(servers[name].run(case, n))
            ratios = np.array(times["this"]) / np.array(times["other"])
            rows.append((case, np.median(times["other"]), np.median(times["this"]),
                         *np.percentile(ratios, [50, 25, 75]), min(times["other"]),
                         min(times["this"])))
            print(f"{case}: done", flush=True)
    finally:
        for s in servers.values():
            s.close()
    print(f"\n{'case':20s} {'other (before)':>15s} {'this (after)':>13s}   this/other [IQR]"
          f"   {'fastest block: other':>21s} {'this':>9s}  ratio")
    for case, a, b, med, q1, q3, fa, fb in rows:
        print(f"{case:20s} {_fmt(a):>15s} {_fmt(b):>13s}   {med:.3f} [{q1:.3f}, {q3:.3f}]"
              f"   {_fmt(fa):>21s} {_fmt(fb):>9s}  {fb / fa:.3f}")
    print(f"({args.clock} clock; {args.pairs} pairs of ~{args.block} s blocks per case, "
          f"alternating; step time = median over blocks; ratio = median of the pairs' ratios; "
          f"fastest block: the least disturbed block of each)")


if __name__ == "__main__":
    sys.exit(main())
