"""``python -m tapegrad.bench.replicas [--quick]``: replicas of one tape in a thread pool.

Workload: an MLP 32 -> 128 (tanh) -> 128 (relu) -> 1, squared error, batch 256, float64;
one forward + backward per batch, over ``--batches`` batches. Engines, interleaved
round-robin over ``--rounds`` rounds (medians, and the interquartile range):

* ``one tape``      -- a Python loop on one thread;
* ``1 replica``     -- the same loop on a replica (what a replica costs by itself);
* ``2 threads, one tape`` -- two threads sharing one tape: the lock serialises them;
* ``2 replicas``    -- two threads, each with its own ``tape.replica()`` and half the
  batches: the sweeps release the GIL, so they run on two cores at once.

Each row also shows the best round and the cores the process kept busy (CPU time / wall
time): on a machine shared with other jobs a parallel speed-up needs the second core free.

Every engine's gradients are checked against the single-thread ones (bit for bit) before
timing. BLAS stays single-threaded (as in ``tapegrad bench``).
"""
import argparse
import os
import threading
import time

import numpy as np

import tapegrad as tg


def build(batch):
    tape = tg.Tape()
    rng = np.random.default_rng(0)
    W1 = tape.param(rng.normal(size=(32, 128)) / 32 ** 0.5, name="W1")
    W2 = tape.param(rng.normal(size=(128, 128)) / 128 ** 0.5, name="W2")
    W3 = tape.param(rng.normal(size=(128, 1)) / 128 ** 0.5, name="W3")
    x = tape.input("x", shape=(batch, 32))
    y = tape.input("y", shape=(batch, 1))
    h = tg.relu(tg.tanh(x @ W1) @ W2)
    loss = tg.mse_loss(h @ W3, y)
    return tape, loss


def step(tape, loss, xb, yb):
    tape.forward(x=xb, y=yb)
    loss.backward()


def in_threads(jobs):
    """Run each job (a list of callables) on its own thread; wait for all."""
    threads = [threading.Thread(target=lambda js=js: [j() for j in js]) for js in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tapegrad.bench.replicas",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="8 batches, 3 rounds")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.rounds = 8, 3
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(1)  # noqa: F841 - keep the limit alive
    except ImportError:
        pass
    batch = 256
    tape, loss = build(batch)
    rng = np.random.default_rng(1)
    data = [(rng.normal(size=(batch, 32)), rng.normal(size=(batch, 1)))
            for _ in range(args.batches)]
    reps = [tape.replica() for _ in range(2)]
    half = args.batches // 2

    def grads(t, v):
        return [t[p].grad.copy() if t is not tape else p.grad.copy() for p in tape.params]

    # correctness first: every engine computes the single-thread gradients
    ref = []
    for xb, yb in data[:2]:
        step(tape, loss, xb, yb)
        ref.append(grads(tape, loss))
    for r in reps:
        for (xb, yb), g in zip(data[:2], ref):
            step(r, r[loss], xb, yb)
            assert all(np.array_equal(a, b) for a, b in zip(grads(r, loss), g))

    def one_tape():
        for xb, yb in data:
            step(tape, loss, xb, yb)

    def one_replica():
        r = reps[0]
        for xb, yb in data:
            step(r, r[loss], xb, yb)

    def shared_tape():
        in_threads([[lambda d=d: step(tape, loss, *d) for d in part]
                    for part in (data[:half], data[half:])])

    def two_replicas():
        in_threads([[lambda d=d, r=r: step(r, r[loss], *d) for d in part]
                    for r, part in zip(reps, (data[:half], data[half:]))])

    engines = {"one tape": one_tape, "1 replica": one_replica,
               "2 threads, one tape": shared_tape, "2 replicas": two_replicas}
    for fn in engines.values():   # warm up
        fn()
    times = {name: [] for name in engines}
    cpu = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, fn in engines.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall = time.perf_counter() - t0
            times[name].append(wall / args.batches)
            cpu[name].append((time.process_time() - c0) / wall)
    base = np.median(times["one tape"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"MLP 32-128-128-1 (tanh, relu), batch {batch}, float64: forward + backward of "
          f"{args.batches} batches, {args.rounds} rounds, {os.cpu_count()} cpus, load "
          f"average {load:.2f} (other processes take cores from the threads)")
    best = np.min(times["one tape"])
    print(f"{'engine':<22}{'median / batch':>15}{'IQR':>22}{'speed-up':>9}{'best':>11}"
          f"{'speed-up':>9}{'cores':>7}")
    for name, ts in times.items():
        q1, med, q3 = np.percentile(ts, [25, 50, 75])
        print(f"{name:<22}{med * 1e3:>12.3f} ms{q1 * 1e3:>11.3f}-{q3 * 1e3:.3f} ms"
              f"{base / med:>8.2f}x{np.min(ts) * 1e3:>8.3f} ms{best / np.min(ts):>8.2f}x"
              f"{np.median(cpu[name]):>7.2f}")
    print("speed-up: one tape's time / the engine's (median, and best round); cores: process "
          "CPU time / wall time (2.0 = both cores busy for this process)")


if __name__ == "__main__":
    main()
