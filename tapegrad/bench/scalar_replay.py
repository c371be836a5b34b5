"""The scalar graph (issue 11, item 1) side by side with the C anchor, in one process:
``python -m tapegrad.bench.scalar_replay [--rounds R] [--ops N]``.

Rounds are interleaved (C anchor, tapegrad as recorded, tapegrad after ``tape.optimize()``),
each a forward + reverse replay timed over many iterations; the table gives medians of the
per-round ns per anchor op and the median of the per-round ratios to the C anchor (the
machine is shared: ratios within a round are steadier than absolute times)."""
import argparse
import statistics
import tempfile
import time

from .scalar import CAnchor, ScalarTg, compile_anchor


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--ops", type=int, default=10000)
    args = ap.parse_args(argv)
    exe = compile_anchor(tempfile.mkdtemp())
    if exe is None:
        raise SystemExit("scalar_replay: needs gcc and ../shared/anchors/scalar_graph_tape.c")
    anchor = CAnchor(exe, args.ops, 2000)
    engines = {"tg-replay": ScalarTg(args.ops), "tg-optimized": ScalarTg(args.ops, optimize=True)}
    checks = {k: e.run(2, collect=True) for k, e in engines.items()}
    assert abs(checks["tg-replay"][0] - checks["tg-optimized"][0]) <= 1e-6, checks
    reps = max(1, 2_000_000 // args.ops)
    ns = {"c-anchor": [], **{k: [] for k in engines}}
    for _ in range(args.rounds):
        ns["c-anchor"].append(anchor.ns_per_op()[0])
        for k, e in engines.items():
            t = time.perf_counter()
            e.run(reps)
            ns[k].append((time.perf_counter() - t) / reps / args.ops * 1e9)
    print(f"scalar graph, {args.ops} anchor ops, float32, forward + reverse, "
          f"{args.rounds} interleaved rounds")
    print(f"{'engine':<14}{'instr/op':>9}{'ns/op (median)':>16}{'range':>16}{'x C (median)':>14}")
    for k, v in ns.items():
        per = ("-" if k == "c-anchor" else f"{engines[k].n_instr / args.ops:.2f}")
        ratio = statistics.median(a / c for a, c in zip(v, ns["c-anchor"]))
        print(f"{k:<14}{per:>9}{statistics.median(v):>16.1f}{min(v):>8.1f}-{max(v):<7.1f}"
              f"{ratio:>14.2f}")


if __name__ == "__main__":
    main()
