"""The ``tapegrad`` command line (``python -m tapegrad`` is the same)."""
import argparse
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its options are the benchmark module's own
        from .bench import main as bench_main
        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="tapegrad", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="train the seed MLP, print loss and speed, write plots")
    demo.add_argument("--steps", type=int, default=30000)
    demo.add_argument("--out", default=".", help="directory for the PNG plots")
    sub.add_parser("bench", help="time the reference workloads against other engines "
                                 "(options: tapegrad bench --help)")
    show = sub.add_parser("show", help="print the listing and stats of a saved tape")
    show.add_argument("file", help="a tape saved with tape.save (.npz)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "demo":
            from .demo import run
            return run(steps=args.steps, out=args.out)
        if args.cmd == "show":
            from .tape import Tape
            from .tools import listing, stats
            tape = Tape.load(args.file)
            print(listing(tape))
            print()
            print(stats(tape))
    except Exception as e:  # noqa: BLE001 - one line, no traceback, exit 1
        msg = " ".join(str(e).split())
        print(f"tapegrad {args.cmd}: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    return 0
