"""``python -m tapegrad.bench.coldcompile [TREE]``: what a cold first gradient compiles, and for
how long.

Copies the tapegrad package of ``TREE`` (default: this one) into a temporary directory -- so
numba's cache, which sits beside the sources, starts empty -- and, in a new process, records
a tiny tanh MLP and takes its first float64 gradient, with numba's compile events recorded.
Printed: the seconds from start to that gradient, and the compile time of each compiled
function, exclusive of the functions it compiled in turn (an interpreter's own time includes
the kernels inlined into it and the called functions whose code numba links into it).

``--all`` goes on, in the same process, through what issue 11 calls "all kernels": ``tg.fit``
with SGD, Adam and AdamW, the same model on a float32 tape (sweeps and fit), the tangent sweep
(``tg.jvp``) and recorded gradients (``tg.gradients``, then a replay), printing the seconds
each stage took and the total; then a new process does the same from the warm cache.

``--warm N`` (issue 11's "warm new process"): after the cold process (which waits for the
Python tier's workers), N new processes take the same first float64 gradient from the filled
cache; printed are each one's seconds from start to that gradient (of which ``import numpy,
tapegrad``; and its CPU seconds, steadier on a shared machine) and the medians. The copy's processes write their ``.pyc`` files, as an installed
package has them (``PYTHONDONTWRITEBYTECODE`` is dropped from their environment).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from . import USER_TIER

CHILD = r"""
import time
t0, c0 = time.perf_counter(), time.process_time()
from numba.core import event
with event.install_recorder("numba:compile") as rec:
    import numpy as np, tapegrad as tg
    t_import = time.perf_counter() - t0
    tape = tg.Tape()
    mlp = tg.nn.MLP(tape, [2, 16, 1], activation=tg.tanh, rng=0)
    x = tape.input("x", value=np.ones((4, 2)))
    loss = (mlp(x) ** 2).mean()
    tape.forward()
    loss.backward()
total = time.perf_counter() - t0
tier = getattr(tape._interp, "forward", None)
tier = "Python tier" if getattr(tier, "tier", None) else "compiled"
if WARM:
    print(f"{total:.3f} {t_import:.3f} {time.process_time() - c0:.3f} "
          f"{sum(ev.is_start for _, ev in rec.buffer)} "
          f"{'tier' if 'tier' in tier else 'compiled'}")
    raise SystemExit
if hasattr(tape._interp, "settle"):  # the Python tier's workers: until their code is in
    t = time.perf_counter()
    tape._interp.settle(); tape.forward(); loss.backward()
    print(f"  first gradient from the {tier}; compiled sweeps in use "
          f"{time.perf_counter() - t0:.1f} s after start")
if ALL:
    stages = [(f"first float64 gradient ({tier})", total)]
    def stage(name, fn):
        t = time.perf_counter()
        fn()
        stages.append((name, time.perf_counter() - t))
    for opt in (tg.optim.SGD, tg.optim.Adam, tg.optim.AdamW):
        stage("tg.fit " + opt.__name__, lambda: tg.fit(loss, opt(tape.params, lr=1e-3), steps=3))
    def f32():
        t32 = tg.Tape(dtype=np.float32)
        m32 = tg.nn.MLP(t32, [2, 16, 1], activation=tg.tanh, rng=0)
        x32 = t32.input("x", value=np.ones((4, 2)))
        l32 = (m32(x32) ** 2).mean()
        t32.forward(); l32.backward()
        tg.fit(l32, tg.optim.Adam(t32.params, lr=1e-3), steps=3)
    stage("float32 sweeps + fit", f32)
    stage("tangent sweep (tg.jvp)", lambda: tg.jvp(
        lambda v: tg.tanh(v @ np.ones((2, 3))).sum(), (np.ones((4, 2)),), (np.ones((4, 2)),)))
    def recorded():
        g = tg.gradients(loss, tape.params)
        pen = sum((gi * gi).sum() for gi in g)
        tape.forward(); pen.backward()
    stage("recorded gradients", recorded)
    for name, dt in stages:
        print(f"  {dt:7.2f} s  {name}")
    print(f"every stage's results: {time.perf_counter() - t0:.1f} s after start")
    import sys as _sys
    _tier = _sys.modules.get("tapegrad.tier")
    for p in getattr(_tier, "_procs", ()):  # Python-tier workers still compiling
        p.wait()
    print(f"all kernels: {time.perf_counter() - t0:.1f} s after start (compiled, in the cache)")
    raise SystemExit
stack, excl = [], {}
for ts, ev in rec.buffer:
    d = ev.data.get("dispatcher")
    name = (d.py_func.__module__.split(".")[-1] + "." + d.py_func.__qualname__
            if d is not None else "?")
    if ev.is_start:
        stack.append([name, ts, 0.0])
    else:
        nm, start, child = stack.pop()
        excl[nm] = excl.get(nm, 0.0) + (ts - start) - child
        if stack:
            stack[-1][2] += ts - start
print(f"first float64 gradient {total:.1f} s after start; compiling {sum(excl.values()):.1f} s")
for name, dt in sorted(excl.items(), key=lambda kv: -kv[1])[:TOP]:
    print(f"  {dt:7.2f} s  {name}")
"""


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tapegrad.bench.coldcompile")
    ap.add_argument("tree", nargs="?", default=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))), help="a checkout holding tapegrad/")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--all", action="store_true", help="every kernel, stage by stage, then warm")
    ap.add_argument("--warm", type=int, default=0, metavar="N",
                    help="then N new processes' first gradient from the filled cache")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(a.tree, "tapegrad"), os.path.join(tmp, "tapegrad"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        env = dict(os.environ, PYTHONPATH=tmp)
        env.pop("NUMBA_CACHE_DIR", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its .pyc files
        env.pop("TAPEGRAD_TIER", None)  # (set off by tapegrad.bench for the other benchmarks)
        if USER_TIER is not None:
            env["TAPEGRAD_TIER"] = USER_TIER
        child = CHILD.replace("TOP", str(a.top)).replace("if ALL:", f"if {a.all}:")
        warm = child.replace("if WARM:", "if True:")
        child = child.replace("if WARM:", "if False:")
        for run in ("cold", "warm") if a.all else ("cold",):
            if a.all:
                print(f"{run} process (cache {'empty' if run == 'cold' else 'filled'}):")
            p = subprocess.run([sys.executable, "-c", child], env=env, cwd=tmp,
                               capture_output=True, text=True, timeout=1800)
            sys.stdout.write(p.stdout)
            if p.returncode:
                sys.stderr.write(p.stderr)
                return p.returncode
        runs = []
        for i in range(a.warm):
            p = subprocess.run([sys.executable, "-c", warm], env=env, cwd=tmp,
                               capture_output=True, text=True, timeout=600)
            if p.returncode:
                sys.stderr.write(p.stderr)
                return p.returncode
            total, imp, cpu, compiles, tier = p.stdout.split()[-5:]
            runs.append((float(total), float(cpu)))
            print(f"warm process {i + 1}: first float64 gradient {float(total):.2f} s after "
                  f"start (import {float(imp):.2f} s; CPU {float(cpu):.2f} s; {compiles} "
                  f"compiles; sweeps {tier})")
        if runs:
            wall, cpu = sorted(r[0] for r in runs), sorted(r[1] for r in runs)
            print(f"warm: median {wall[len(wall) // 2]:.2f} s of {len(runs)} (min {wall[0]:.2f}, "
                  f"max {wall[-1]:.2f}); CPU median {cpu[len(cpu) // 2]:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
