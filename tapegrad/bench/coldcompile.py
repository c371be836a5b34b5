"""``python -m tapegrad.bench.coldcompile [TREE]``: what a cold first gradient compiles, and for
how long.

Copies the tapegrad package of ``TREE`` (default: this one) into a temporary directory -- so
numba's cache, which sits beside the sources, starts empty -- and, in a new process, records
a tiny tanh MLP and takes its first float64 gradient, with numba's compile events recorded.
Printed: the seconds from start to that gradient, and the compile time of each compiled
function, exclusive of the functions it compiled in turn (an interpreter's own time includes
the kernels inlined into it and the called functions whose code numba links into it).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import time
t0 = time.perf_counter()
from numba.core import event
with event.install_recorder("numba:compile") as rec:
    import numpy as np, tapegrad as tg
    tape = tg.Tape()
    mlp = tg.nn.MLP(tape, [2, 16, 1], activation=tg.tanh, rng=0)
    x = tape.input("x", value=np.ones((4, 2)))
    loss = (mlp(x) ** 2).mean()
    tape.forward()
    loss.backward()
total = time.perf_counter() - t0
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
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(a.tree, "tapegrad"), os.path.join(tmp, "tapegrad"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        env = dict(os.environ, PYTHONPATH=tmp)
        env.pop("NUMBA_CACHE_DIR", None)
        p = subprocess.run([sys.executable, "-c", CHILD.replace("TOP", str(a.top))], env=env,
                           cwd=tmp, capture_output=True, text=True, timeout=1800)
        sys.stdout.write(p.stdout)
        if p.returncode:
            sys.stderr.write(p.stderr)
            return p.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
