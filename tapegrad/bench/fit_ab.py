"""``python -m tapegrad.bench.fit_ab TREE_A TREE_B``: ``tg.fit`` step time of the seed-mlp and
digits-mlp workloads, tapegrad imported from two source trees (e.g. a ``git worktree`` of
main and of a branch), measured side by side: the trees take turns, one subprocess each per
round, and every subprocess times blocks of steps after a warm-up. Prints the medians over
all blocks with their interquartile ranges, and the ratio B / A.

``--cold N``: instead, N rounds of a cold compile in each tree (an empty ``NUMBA_CACHE_DIR``):
the CPU seconds of the first float64 ``tg.fit`` call, after the sweeps are compiled.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

_CHILD = r"""
import json, sys, time
import numpy as np
import tapegrad as tg
from tapegrad.bench.workloads import build_digits_tg, build_seed_tg, digits_data, seed_data
X, Y = seed_data()
Xd, yd, _ = digits_data()
Yd = yd.astype(np.float32)
out = {}
for name, build, data, batch, k in (("seed-mlp", build_seed_tg, {"x": X, "y": Y}, 1, 1000),
                                    ("digits-mlp", build_digits_tg, {"x": Xd, "y": Yd}, 128, 20)):
    tape, loss, opt = build()
    tg.fit(loss, opt, data, batch_size=batch, steps=k, shuffle=False, progress=False)
    times = []
    for _ in range(int(sys.argv[1])):
        t = time.perf_counter()
        tg.fit(loss, opt, data, batch_size=batch, steps=k, shuffle=False, progress=False)
        times.append((time.perf_counter() - t) / k)
    out[name] = times
print(json.dumps(out))
"""

_COLD = r"""
import time
import numpy as np
import tapegrad as tg
tape = tg.Tape()
mlp = tg.nn.MLP(tape, [1, 64, 64, 1], activation=tg.tanh, rng=0)
x, y = tape.input("x", shape=(4, 1)), tape.input("y", shape=(4, 1))
loss = tg.mse_loss(mlp(x), y)
tape.forward(x=np.ones((4, 1)), y=np.ones((4, 1)))
loss.backward()
t = time.process_time()
tg.fit(loss, tg.optim.AdamW(tape.params), {"x": np.ones((8, 1)), "y": np.ones((8, 1))},
       steps=3, progress=False)
print(time.process_time() - t)
"""


def cold(a, b, rounds):
    secs = {a: [], b: []}
    for _ in range(rounds):
        for tree in (a, b):
            with tempfile.TemporaryDirectory() as d:
                env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), NUMBA_CACHE_DIR=d)
                res = subprocess.run([sys.executable, "-c", _COLD], env=env, check=True,
                                     capture_output=True, text=True, timeout=900)
                secs[tree].append(float(res.stdout.split()[-1]))
    for tree in (a, b):
        print(f"cold first fit {tree:30} CPU s: " + ", ".join(f"{t:.1f}" for t in secs[tree]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--cold", type=int, metavar="N", default=0)
    args = ap.parse_args(argv)
    if args.cold:
        return cold(args.a, args.b, args.cold)
    times = {args.a: {}, args.b: {}}
    for _ in range(args.rounds):
        for tree in (args.a, args.b):
            env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
            res = subprocess.run([sys.executable, "-c", _CHILD, str(args.blocks)], env=env,
                                 capture_output=True, text=True, check=True, timeout=900)
            for name, t in json.loads(res.stdout.strip().splitlines()[-1]).items():
                times[tree].setdefault(name, []).extend(t)
    for name in times[args.a]:
        med = {}
        for tree in (args.a, args.b):
            q1, m, q3 = np.percentile(times[tree][name], [25, 50, 75]) * 1e6
            med[tree] = m
            print(f"{name:11} {tree:30} median {m:8.2f} us  IQR {q1:.2f}-{q3:.2f} us")
        print(f"{name:11} B / A = {med[args.b] / med[args.a]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
