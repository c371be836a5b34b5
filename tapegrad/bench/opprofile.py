"""``python -m tapegrad.bench.opprofile [pinn|digits|seed]``: where a training step's time goes,
per opcode.

For each opcode on the tape, the forward and the reverse sweep are run over only that
opcode's instructions (the sweeps' masks select them; the values and gradients they read are
those of a full step, so each instruction does its real work) and timed in CPU time, minus
the time of a sweep that runs nothing. Printed per opcode: instruction count, microseconds in
the forward and the reverse sweep, and the share of the whole. Shapes of the matrix products
are listed too (attributes batch, M, K, N).
"""
import argparse
import time
from collections import Counter

import numpy as np


def _cpu_us(f, reps, rounds=5):
    ts = []
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(reps):
            f()
        ts.append((time.process_time() - t) / reps)
    return float(np.median(ts)) * 1e6


def op_profile(tape, loss, reps=200):
    """Rows ``(name, count, fwd_us, rev_us, note)`` per opcode of ``tape``, largest first,
    and the whole sweeps' ``(fwd_us, rev_us)``."""
    from tapegrad.opcodes import A0, OP, Op
    tape.forward()
    loss.backward()
    fm, rm = tape._forward_mask([loss._b]), tape._reverse_mask(loss._b)
    args = (tape._instr, tape._imm, tape._low, tape._val)
    sweep = tape._interpreters()

    def fwd(mask):
        return lambda: sweep.forward(*args, mask, 0)

    def rev(mask):
        return lambda: sweep.reverse(*args, tape._grad, mask, 0)

    empty = np.zeros_like(fm)
    base = _cpu_us(fwd(empty), reps)
    whole = (_cpu_us(fwd(fm), reps) - base, _cpu_us(rev(rm), reps) - base)
    ops = tape._instr[:, OP]
    rows = []
    for op in np.unique(ops):
        sel = ops == op
        tf = _cpu_us(fwd((fm * sel).astype(np.uint8)), reps) - base
        tr = _cpu_us(rev((rm * sel).astype(np.uint8)), reps) - base
        note = ""
        if op == Op.MATMUL:
            shapes = Counter(tuple(int(a) for a in r[A0:A0 + 4]) for r in tape._instr[sel])
            note = ", ".join(f"{n}x {s}" for s, n in shapes.most_common(4))
        rows.append((Op(op).name.lower(), int(sel.sum()), max(tf, 0.0), max(tr, 0.0), note))
    rows.sort(key=lambda r: -(r[2] + r[3]))
    return rows, whole


def _workload(name):
    if name == "pinn":
        from . import pinn
        eng = pinn.TgFit(pinn.init_params(0))
        return eng.tape, eng.loss
    from .workloads import build_digits_tg, build_seed_tg, digits_data, seed_data
    if name == "digits":
        tape, loss, _ = build_digits_tg()
        X, Y, _ = digits_data()
        n = tape["x"].shape[0]
        tape.forward(x=X[:n].astype(np.float32), y=Y[:n].astype(np.float32))
        return tape, loss
    tape, loss, _ = build_seed_tg()
    X, Y = seed_data()
    tape.forward(x=X[:1], y=Y[:1])
    return tape, loss


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tapegrad.bench.opprofile")
    ap.add_argument("workload", nargs="?", default="pinn", choices=["pinn", "digits", "seed"])
    ap.add_argument("--reps", type=int, default=200)
    a = ap.parse_args(argv)
    from . import _limit_blas
    limits = _limit_blas()  # noqa: F841 - one BLAS thread, as tapegrad bench
    tape, loss = _workload(a.workload)
    rows, (wf, wr) = op_profile(tape, loss, a.reps)
    print(f"{a.workload}: {len(tape)} instructions; forward sweep {wf:.1f} us, reverse sweep "
          f"{wr:.1f} us (CPU time, median of 5 rounds of {a.reps})")
    print(f"{'opcode':<14} {'count':>5} {'forward us':>11} {'reverse us':>11} {'share':>6}")
    total = sum(r[2] + r[3] for r in rows) or 1.0
    for name, n, tf, tr, note in rows:
        print(f"{name:<14} {n:>5} {tf:>11.1f} {tr:>11.1f} {(tf + tr) / total:>6.0%}  {note}")


if __name__ == "__main__":
    main()
