"""``python -m tapegrad.bench.zeroing [lstsq] [gmm] [rk4] [--rounds N]``: what ``backward()``'s
zeroing costs on the workloads of ``tapegrad.bench.arrays`` (issue 17 item 4), measured in
one process on one tape, so the noise of a shared machine hits both variants alike.

Per round (interleaved, order alternating), ``tape.forward()`` + ``loss.backward()`` in
process CPU time under two settings of the same sealed tape:

* ``before``: the reverse sweep clears only the outputs whose slots arena planning shares,
  and ``backward()`` zeroes the whole gradient arena -- what session 13's code did on these
  tapes (its ranges filled more than half of each arena, so it took one memset);
* ``after``: the clear flags ``tapegrad.plan.clear_flags`` sets and the ranges
  ``Tape._zero_grads`` keeps now.

The gradients of both are checked equal bit for bit every round.
"""
import argparse
import sys
import time

import numpy as np


def compare(name, rounds, quick=False):
    from tapegrad import tape as tape_mod
    from tapegrad.bench import arrays
    from tapegrad.lower import CLEAR
    from tapegrad.opcodes import OP, OUT, Op
    w = arrays._TgWorkload(name, arrays.workload_data(name, quick))
    if quick:
        w.tape.planning = "always"  # (the small arenas would not be looked at)
    w()
    w()
    t = w.tape
    flags = {"after": t._low[:, CLEAR].copy()}
    if t._plan is not None:
        before = t._plan.shared[t._base[t._instr[:, OUT]]].astype(np.int64)
        before[t._instr[:, OP] == Op.PLACE] = 0
    else:
        before = np.zeros_like(flags["after"])
    flags["before"] = before
    zero = {"after": t._zero, "before": tape_mod._ZERO_ALL}
    kept = zero["after"]
    kept = t._grad.size if isinstance(kept, str) else int((kept[:, 1] - kept[:, 0]).sum())
    times = {"before": [], "after": []}
    parts = {"before": [], "after": []}
    for r in range(rounds):
        grads = {}
        for v in ("before", "after") if r % 2 == 0 else ("after", "before"):
            t._low[:, CLEAR] = flags[v]
            t._zero = zero[v]
            w()
            c0 = time.process_time()
            t.forward()
            c1 = time.process_time()
            w.loss.backward()
            c2 = time.process_time()
            times[v].append(c2 - c0)
            parts[v].append((c1 - c0, c2 - c1))
            grads[v] = [p.grad.copy() for p in w.ps]
        assert all(np.array_equal(a, b) for a, b in zip(grads["before"], grads["after"]))
    t._low[:, CLEAR] = flags["after"]
    t._zero = zero["after"]
    print(f"{name}: {len(t)} instructions, gradient arena {t._grad.size:,} elements; clear "
          f"flags {int(flags['before'].sum())} -> {int(flags['after'].sum())}; zeroed before "
          f"backward's sweep {t._grad.size:,} -> {kept:,} elements")
    for v in ("before", "after"):
        f, b = np.median(np.array(parts[v]), axis=0) * 1e3
        print(f"  {v:6s} call {np.median(times[v]) * 1e3:9.2f} ms  (forward {f:8.2f}, "
              f"backward {b:8.2f})")
    ratio = np.median(np.array(times["after"]) / np.array(times["before"]))
    print(f"  after/before, median of the rounds' ratios: {ratio:.2f}")
    return ratio


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workloads", nargs="*", default=["lstsq", "gmm", "rk4"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="the small sizes (a smoke run)")
    a = ap.parse_args(argv)
    for name in a.workloads:
        compare(name, a.rounds, a.quick)


if __name__ == "__main__":
    sys.exit(main())
