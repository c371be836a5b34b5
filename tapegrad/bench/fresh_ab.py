"""``python -m tapegrad.bench.fresh_ab OTHER_TREE``: a fresh ``test_more_ops`` tape (record +
``tape.forward()`` + ``backward()`` + reading the three results) with this tree's ``Tape``
and with the ``Tape`` of ``OTHER_TREE/tapegrad/tape.py`` (e.g. ``git worktree add /tmp/before
main``), and micrograd, in one process.

The other tree's ``tape.py`` is executed as a module of this package (it uses this tree's
other modules: meant for comparing changes of the recorder, sealing and replay paths, which
live in tape.py), so the three engines run in turn in one process -- rounds of 20 calls
each, interleaved -- and machine noise hits them alike: printed are the 25th percentiles of
the time per call and the medians of the per-round ratios. ``--new-graph``: this tree's
tapes take over nothing from the tapes sealed before (``tape._SEALED``), as for a graph that
changes every step. Wall clock (``time.perf_counter``): on a shared machine the ratios are
what to read.
"""
import argparse
import os
import sys
import time
import types

import numpy as np

import tapegrad as tg
from tapegrad import tape as this_tape
from tapegrad.bench.recording import _as_user_code, _TgOps, more_ops, more_ops_engines

_RUN = '''
def run(Tape):
    tape = Tape()
    a, b, g = more_ops(_TgOps(tape))
    tape.forward()
    g.backward()
    return g.item(), float(a.grad), float(b.grad)
'''


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tapegrad.bench.fresh_ab")
    ap.add_argument("other", help="another source tree (its tapegrad/tape.py is compared)")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--new-graph", action="store_true",
                    help="this tree's tapes reuse no sealed tape (tape.SEALED_MAX_ROWS = -1)")
    args = ap.parse_args(argv)
    path = os.path.join(os.path.abspath(args.other), "tapegrad", "tape.py")
    other = types.ModuleType("tapegrad._other_tape")
    other.__package__, other.__file__ = "tapegrad", path
    sys.modules[other.__name__] = other
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), other.__dict__)
    if args.new_graph:
        this_tape.SEALED_MAX_ROWS = -1
    ns = _as_user_code(more_ops, _TgOps, tg=tg, np=np)
    exec(compile(_RUN, "<user code>", "exec"), ns)
    run = ns["run"]
    eng = {"other": lambda: run(other.Tape), "this": lambda: run(this_tape.Tape)}
    mg = more_ops_engines().get("micrograd")
    if mg is not None:
        eng["micrograd"] = mg
    ref = eng["this"]()
    for k, f in eng.items():
        assert np.allclose(f(), ref, rtol=1e-12), (k, f(), ref)
    for _ in range(200):
        for f in eng.values():
            f()
    times = {k: [] for k in eng}
    for _ in range(args.rounds):
        for k, f in eng.items():
            t = time.perf_counter()
            for _ in range(20):
                f()
            times[k].append((time.perf_counter() - t) / 20 * 1e6)
    t = {k: np.array(v) for k, v in times.items()}
    print("  ".join(f"{k} {np.percentile(v, 25):.1f} us" for k, v in t.items()))
    print(f"this/other {np.median(t['this'] / t['other']):.3f}", end="")
    if "micrograd" in t:
        print(f"   this/micrograd {np.median(t['this'] / t['micrograd']):.3f}"
              f"   other/micrograd {np.median(t['other'] / t['micrograd']):.3f}", end="")
    print(" (medians of per-round ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
