"""``python -m tapegrad.bench.mpi``: data-parallel scaling of ``tg.fit(..., comm=...)``.

Launches itself as ``mpiexec -n R python -m mpi4py -m tapegrad.bench.mpi --ranks OUT`` for
R = 1 and 2 (the ``mpiexec`` beside ``sys.executable``), and prints, for MLPs of about 4k, 100k
and 1M float64 parameters (tanh, batch 32 per rank, so 2 ranks train on twice the samples per
step): the time of one training step and of the one in-place ``MPI_Allreduce`` over the
gradient prefix that each step makes on 2 ranks, called from compiled code as ``tg.fit`` does.

Step time = time of a ``fit`` call of K steps (about half a second) / K, of the slowest
rank; medians (and best) over rounds.
Needs mpi4py and an MPI (``pip install mpi4py mpich``).
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np

from ..fit import allreduce_prefix

MODELS = {"4k": [1, 64, 64, 1], "100k": [64, 256, 256, 64], "1M": [64, 1024, 960, 1]}
BATCH = 32


@numba.njit(cache=True)
def allreduce_loop(allreduce, handles, grad, n, reps):
    """``reps`` Allreduces of ``grad[0:n]``, made as ``tg.fit``'s compiled loop makes them."""
    err = 0
    for _ in range(reps):
        err |= allreduce_prefix(allreduce, handles, grad, n)
    return err


def ranks(out, rounds):
    import mpi4py
    mpi4py.rc.thread_level = "funneled"
    from mpi4py import MPI

    import tapegrad as tg
    from tapegrad.dist import Link

    comm = MPI.COMM_WORLD
    res = {}
    for name, sizes in MODELS.items():
        tape = tg.Tape()
        mlp = tg.nn.MLP(tape, sizes, activation=tg.tanh, rng=0)
        loss = tg.mse_loss(mlp(tape.input("x", shape=(BATCH, sizes[0]))),
                           tape.input("y", shape=(BATCH, sizes[-1])))
        rng = np.random.default_rng(0)
        X, Y = rng.normal(size=(4096, sizes[0])), rng.normal(size=(4096, sizes[-1]))
        opt = tg.optim.AdamW(tape.params, lr=1e-4)
        tape._seal()
        P = tape._n_params
        # K steps take about half a second, the once-per-call cost (checks, agreement) < 1 %
        t = time.perf_counter()
        tg.fit(loss, opt, {"x": X, "y": Y}, steps=3, comm=comm, progress=False)
        K = comm.bcast(max(4, int(0.5 / ((time.perf_counter() - t) / 3))))
        steps = []
        for _ in range(rounds):
            comm.Barrier()
            t = time.perf_counter()
            tg.fit(loss, opt, {"x": X, "y": Y}, steps=K, comm=comm, progress=False)
            steps.append(comm.allreduce((time.perf_counter() - t) / K, op=MPI.MAX))
        link = Link(comm, tape.dtype)
        reps = max(10, int(2e8 / max(P, 1) / 8 / 50))
        ar = []
        for _ in range(rounds if comm.Get_size() > 1 else 0):
            comm.Barrier()
            t = time.perf_counter()
            allreduce_loop(link.allreduce, link.handles, tape._grad, P, reps)
            ar.append(comm.allreduce((time.perf_counter() - t) / reps, op=MPI.MAX))
        res[name] = {"params": int(P), "step_s": float(np.median(steps)),
                     "step_best_s": float(np.min(steps)),
                     "allreduce_s": float(np.median(ar)) if ar else None,
                     "allreduce_best_s": float(np.min(ar)) if ar else None}
    if comm.Get_rank() == 0:
        pathlib.Path(out).write_text(json.dumps(res))


def control(n_params=98_880, work_s=0.0025, reps=100):
    """No tapegrad: each rank does ``work_s`` of NumPy work, then mpi4py's Allreduce of
    ``n_params`` doubles -- separately and together -- to show what the machine gives."""
    import mpi4py
    mpi4py.rc.thread_level = "funneled"
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    g, a = np.ones(n_params), np.random.default_rng(0).random((200, 200))

    def work():
        t = time.perf_counter()
        while time.perf_counter() - t < work_s:
            a @ a

    for mode in ("work", "Allreduce", "work + Allreduce"):
        comm.Barrier()
        t = time.perf_counter()
        for _ in range(reps):
            if "work" in mode:
                work()
            if "Allreduce" in mode:
                comm.Allreduce(MPI.IN_PLACE, g)
        dt = comm.allreduce((time.perf_counter() - t) / reps, op=MPI.MAX)
        if comm.Get_rank() == 0:
            print(f"control, {comm.Get_size()} ranks: {mode:17} {_fmt(dt)} per step")


def _fmt(s):
    return "-" if s is None else (f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--control", action="store_true",
                    help="also run the control without tapegrad (NumPy work + mpi4py Allreduce "
                         "of 98,880 doubles, on 2 ranks)")
    ap.add_argument("--ranks", metavar="OUT", help=argparse.SUPPRESS)
    ap.add_argument("--control-ranks", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ranks:
        return ranks(args.ranks, args.rounds)
    if args.control_ranks:
        return control()
    exe = pathlib.Path(sys.executable).parent / "mpiexec"
    exe = str(exe) if exe.exists() else "mpiexec"
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for n in (1, 2):
            out = os.path.join(d, f"{n}.json")
            subprocess.run([exe, "-n", str(n), sys.executable, "-m", "mpi4py", "-m",
                            "tapegrad.bench.mpi", "--ranks", out, "--rounds", str(args.rounds)],
                           check=True, timeout=1800)
            results[n] = json.loads(pathlib.Path(out).read_text())
    for key, what in (("", "median"), ("_best", "best")):
        print(f"{what} of {args.rounds} rounds (slowest rank):")
        print(f"{'model':6} {'params':>9} {'step, 1 rank':>13} {'step, 2 ranks':>14} "
              f"{'Allreduce, 2 ranks':>19} {'Allreduce share':>16} {'samples/s 2 vs 1':>17}")
        for name in MODELS:
            a, b = results[1][name], results[2][name]
            t1, t2, ar = a[f"step{key}_s"], b[f"step{key}_s"], b[f"allreduce{key}_s"]
            print(f"{name:6} {a['params']:>9,} {_fmt(t1):>13} {_fmt(t2):>14} {_fmt(ar):>19} "
                  f"{ar / t2:>15.0%} {2 * t1 / t2:>16.2f}x")
    if args.control:
        subprocess.run([exe, "-n", "2", sys.executable, "-m", "mpi4py", "-m",
                        "tapegrad.bench.mpi", "--control-ranks"], check=True, timeout=600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
