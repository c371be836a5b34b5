"""Recording: what a fresh tape costs (``python -m tapegrad.bench.recording [--quick]``; also
the last section of ``tapegrad bench``).

Two tables:

* **scaling** -- a chain of scalar instructions (``y = sin(y) * 0.999 + 0.001``, three
  instructions per line) recorded at 10^3 ... 10^6 instructions, each size in a new process:
  microseconds per recorded instruction (the median of up to 9 recordings below 10^6; "first":
  the CPU time of the process's first recording, which runs while its allocator and Python's
  caches are still new -- 10-40 % slower here),
  sealing (layout, validation) per instruction, the first forward + backward (activity
  analysis included), the tape's own bytes per instruction (its arrays, lists and both
  arenas) and the process's peak RSS.
* **fresh tape** -- build the graph, one forward, one backward, every time (what an engine
  whose graph changes every step pays): micrograd's ``test_more_ops`` graph and the 10k-op
  scalar graph of ``tapegrad bench``, in tapegrad (record + ``tape.forward()`` +
  ``backward()``), ``pyobj`` (one Python object per node, the seeds' engine), micrograd and
  PyTorch eager (one thread) when installed; on ``test_more_ops`` also ``tg new graph``, tapegrad
  taking over nothing from the tapes sealed before (``tape._SEALED``: a tape recorded exactly as
  an earlier one reuses its validated arrays), as for a graph that changes every step. Medians
  of interleaved rounds, of the CPU time
  of the calling thread (every engine here computes on it) and of the wall clock: on a
  shared machine the wall clock also counts the time other processes hold the cores.
* **per call** (``--percall`` runs this table alone) -- one recorded tape replayed: forward
  (feeding one input) + backward of a 3-instruction tape, ``loss = sin(w * x) * 2``, what
  each call costs beyond its arithmetic (locks, feed checks, masks, zeroing gradients, two
  compiled calls); PyTorch eager computing the same (its graph is built on every call).
"""
import argparse
import inspect
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np

import tapegrad as tg

# ---------------------------------------------------------------------------- scaling
_CHILD = r"""
import json, resource, sys, time
import numpy as np
import tapegrad as tg

def rss_mb(key="VmHWM"):
    # this process's peak (VmHWM) or current (VmRSS) resident size; getrusage's maximum would
    # include the parent's, inherited across exec
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def chain(n):
    t = tg.Tape()
    x = t.param(np.array([0.5]), name="x")
    y = x
    for _ in range(n // 3):
        y = tg.sin(y) * 0.999 + 0.001
    return t, y

warm, wy = chain(300)            # load the compiled sweeps from numba's cache
warm.forward(); wy.backward()
del warm, wy
n = int(sys.argv[1])
base = rss_mb("VmRSS")
record, record_cpu = [], []
for _ in range(max(1, min(9, 900000 // n))):  # below 10^6: the median of several recordings
    tape = y = None
    c0, t0 = time.thread_time(), time.perf_counter()
    tape, y = chain(n)
    record.append(time.perf_counter() - t0)
    record_cpu.append(time.thread_time() - c0)
first_cpu = record_cpu[0]  # the process's first recording (its memory, lists, caches new)
record.sort()
record_cpu.sort()
t1 = time.perf_counter()
tape._seal()
t2 = time.perf_counter()
tape.forward()
y.backward()
t3 = time.perf_counter()
own = tape._memory_bytes()
print(json.dumps({"n": len(tape), "record_s": record[len(record) // 2],
                  "record_cpu_s": record_cpu[len(record) // 2],
                  "first_cpu_s": first_cpu,
                  "records": len(record), "seal_s": t2 - t1, "replay_s": t3 - t2,
                  "bytes_per_instr": own / len(tape), "rss_base_mb": base,
                  "rss_peak_mb": rss_mb()}))
"""


def scaling(sizes):
    rows = []
    for n in sizes:
        p = subprocess.run([sys.executable, "-c", _CHILD, str(n)], capture_output=True,
                           text=True, timeout=600)
        if p.returncode:
            raise RuntimeError(f"recording child for n={n} failed:\n{p.stderr[-2000:]}")
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return rows


# ---------------------------------------------------------------------------- fresh tapes
def more_ops(ops, a0=-4.0, b0=2.0):
    """micrograd's ``test_more_ops`` graph, written against an ``ops`` adapter:
    ``leaf(v)``, ``relu(v)``, ``cube(v)``, ``div(x, y)``; returns (a, b, g)."""
    a, b = ops.leaf(a0), ops.leaf(b0)
    c = a + b
    d = a * b + ops.cube(b)
    c = c + c + 1
    c = c + 1 + c + (-1.0 * a)
    d = d + d * 2 + ops.relu(b + a)
    d = d + 3 * d + ops.relu(b - a)
    e = c - d
    f = e * e
    g = ops.div(f, 2.0)
    g = g + ops.div(10.0, f)
    return a, b, g


class _TgOps:
    def __init__(self, tape):
        self.tape = tape

    def leaf(self, v):
        return self.tape.param(np.array(v))

    def relu(self, v):
        return tg.relu(v)

    def cube(self, v):
        return v ** 3

    def div(self, x, y):
        return x / y


class _NodeOps:
    def __init__(self, cls, relu):
        self.cls, self._relu = cls, relu

    def leaf(self, v):
        return self.cls(v)

    def relu(self, v):
        return self._relu(v)

    def cube(self, v):
        return v * v * v

    def div(self, x, y):
        # the seeds' Node divides Nodes only; micrograd's Value takes numbers too
        wrap = (lambda v: v if isinstance(v, self.cls) else self.cls(v))
        return wrap(x) / wrap(y)


class _TorchOps:
    def leaf(self, v):
        import torch
        return torch.tensor(v, dtype=torch.float64, requires_grad=True)

    def relu(self, v):
        return v.relu()

    def cube(self, v):
        return v ** 3

    def div(self, x, y):
        return x / y


def _as_user_code(*objs, **names):
    """Functions and classes re-made from their source as code of a file outside the package.
    tapegrad finds the user's source line of each op by walking up past its own frames: a
    workload defined inside the package would pay for frames a user's program does not have.
    ``names`` are the globals the code sees; returns its namespace."""
    ns = dict(names)
    for obj in objs:
        exec(compile(textwrap.dedent(inspect.getsource(obj)), "<user code>", "exec"), ns)
    return ns


def _tg_more_ops():  # run as user code (see _as_user_code)
    tape = tg.Tape()
    a, b, g = more_ops(_TgOps(tape))
    tape.forward()
    g.backward()
    return g.item(), float(a.grad), float(b.grad)


def more_ops_engines():
    """name -> callable doing one fresh build + forward + backward; returns (g, da, db)."""
    from .engines import Node

    user = _as_user_code(more_ops, _TgOps, _tg_more_ops, tg=tg, np=np)

    def node_run():
        a, b, g = more_ops(_NodeOps(Node, lambda v: v.leaky_relu(0.0)))
        g.backward()
        return g.data, a.grad, b.grad

    def tg_not_reused():  # as if the graph were new every time: no sealed tape taken over
        from .. import tape as tape_mod
        keep, tape_mod.SEALED_MAX_ROWS = tape_mod.SEALED_MAX_ROWS, -1
        try:
            return user["_tg_more_ops"]()
        finally:
            tape_mod.SEALED_MAX_ROWS = keep

    out = {"tapegrad": user["_tg_more_ops"], "tg new graph": tg_not_reused, "pyobj": node_run}
    try:
        from micrograd.engine import Value

        def mg_run():
            a, b, g = more_ops(_NodeOps(Value, lambda v: v.relu()))
            g.backward()
            return g.data, a.grad, b.grad
        out["micrograd"] = mg_run
    except ImportError:
        pass
    try:
        import torch  # noqa: F401

        torch.set_num_threads(1)

        def torch_run():
            a, b, g = more_ops(_TorchOps())
            g.backward()
            return g.item(), a.grad.item(), b.grad.item()
        out["torch"] = torch_run
    except ImportError:
        pass
    return out


def scalar_graph_engines(n_ops):
    """name -> callable building the ``n_ops`` scalar graph afresh + forward + backward."""
    import importlib.util
    from .scalar import ScalarNodes, ScalarTg, ScalarTorch
    from .workloads import LEAVES, _wsum, scalar_graph

    user = _as_user_code(scalar_graph, ScalarTg, np=np, time=time, LEAVES=LEAVES, _wsum=_wsum)
    out = {"tapegrad": lambda: user["ScalarTg"](n_ops).run(1, collect=True),
           "pyobj": lambda: ScalarNodes(n_ops).run(1, collect=True)}
    if importlib.util.find_spec("torch") is not None:
        out["torch"] = lambda: ScalarTorch(n_ops).run(1, collect=True)
    return out


def time_interleaved(engines, rounds, reps):
    """Median seconds per call of each engine, ``(cpu, wall)``: the CPU time of this thread
    and the wall clock; rounds interleave the engines."""
    for f in engines.values():  # warm-up (compiled sweeps, torch's first call)
        f()
    cpu, wall = {k: [] for k in engines}, {k: [] for k in engines}
    for _ in range(rounds):
        for k, f in engines.items():
            c, t = time.thread_time(), time.perf_counter()
            for _ in range(reps[k]):
                f()
            wall[k].append((time.perf_counter() - t) / reps[k])
            cpu[k].append((time.thread_time() - c) / reps[k])
    return ({k: float(np.median(v)) for k, v in cpu.items()},
            {k: float(np.median(v)) for k, v in wall.items()})


def _reps(engines, budget=0.05):
    reps = {}
    for k, f in engines.items():
        t = time.perf_counter()
        f()
        dt = max(time.perf_counter() - t, 1e-7)
        reps[k] = max(1, int(budget / dt))
    return reps


# ---------------------------------------------------------------------------- per call
def percall_engines():
    """name -> callable doing one forward (one feed) + backward of ``sin(w * x) * 2``."""
    tape = tg.Tape()
    w = tape.param(np.array([0.5]), name="w")
    x = tape.input("x", shape=(1,))
    loss = tg.sin(w * x) * 2.0
    assert len(tape) == 3
    xv = np.array([1.5])

    def tg_call():
        tape.forward(x=xv)
        loss.backward()

    def tg_read():
        tape.forward(x=xv)
        loss.backward()
        return float(w.grad[0])

    def tg_forward():
        tape.forward(x=xv)

    def tg_backward():
        loss.backward()

    out = {"tapegrad": tg_call, "tg forward": tg_forward, "tg backward": tg_backward,
           "tg + w.grad": tg_read}
    try:
        import torch

        torch.set_num_threads(1)
        tw = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
        tx = torch.tensor([1.5], dtype=torch.float64)

        def torch_call():
            tw.grad = None
            (torch.sin(tw * tx) * 2.0).sum().backward()
            return float(tw.grad[0])
        out["torch"] = torch_call
    except ImportError:
        pass
    return out


def percall(rounds=15):
    """The per-call table: medians of ``rounds`` interleaved rounds (CPU time and wall)."""
    engines = percall_engines()
    ref = engines["tg + w.grad"]()
    diff = {k: abs(f() - ref) / abs(ref) for k, f in engines.items() if k in ("torch",)}
    med, wall = time_interleaved(engines, rounds, _reps(engines, 0.05))
    print(f"per call: forward (one feed) + backward of a 3-instruction tape, medians of "
          f"{rounds} rounds (CPU time; wall clock)")
    for k in engines:
        print(f"  {k:<12} {med[k] * 1e6:>8.2f} us   {med[k] / med['tapegrad']:>6.2f}x tapegrad   "
              f"wall {wall[k] * 1e6:>8.2f} us" + (f"   (grad rel. diff {diff[k]:.1e})"
                                                 if k in diff else ""))
    return {"median_s": med, "wall_median_s": wall, "check_rel_diff": diff}


def run(quick=False):
    """The three tables; returns a dict (also printed)."""
    sizes = [1000, 10000] if quick else [1000, 10000, 100000, 1000000]
    print("recording: chains of scalar instructions, each size in a new process ...",
          flush=True)
    rows = scaling(sizes)
    print(f"{'instructions':>12} {'record us/instr':>16} {'(CPU)':>6} {'first':>6} "
          f"{'seal us/instr':>14} "
          f"{'fwd+bwd ms':>11} {'total s':>8} {'tape B/instr':>13} {'peak RSS MB':>12}")
    for r in rows:
        total = r["record_s"] + r["seal_s"] + r["replay_s"]
        print(f"{r['n']:>12,} {r['record_s'] / r['n'] * 1e6:>16.2f} "
              f"{r['record_cpu_s'] / r['n'] * 1e6:>6.2f} "
              f"{r['first_cpu_s'] / r['n'] * 1e6:>6.2f} "
              f"{r['seal_s'] / r['n'] * 1e6:>14.3f} {r['replay_s'] * 1e3:>11.1f} "
              f"{total:>8.2f} {r['bytes_per_instr']:>13.0f} {r['rss_peak_mb']:>12.0f}")
    fresh = {}
    rounds = 5 if quick else 15
    n_ops = 2000 if quick else 10000
    for name, engines, check in (("test_more_ops", more_ops_engines(), True),
                                 (f"scalar-graph-{n_ops}", scalar_graph_engines(n_ops), False)):
        vals = {k: f() for k, f in engines.items()}
        ref = vals["tapegrad"]
        diff = {k: max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(v, ref))
                for k, v in vals.items()}
        med, wall = time_interleaved(engines, rounds, _reps(engines, 0.02 if quick else 0.1))
        fresh[name] = {"median_s": med, "wall_median_s": wall, "check_rel_diff": diff}
        print(f"fresh tape, {name}: record + forward + backward, medians of {rounds} rounds "
              f"(CPU time; wall clock)")
        for k, v in sorted(med.items(), key=lambda kv: kv[1]):
            print(f"  {k:<12} {v * 1e6:>12.1f} us   {v / med['tapegrad']:>6.2f}x tapegrad   "
                  f"wall {wall[k] * 1e6:>10.1f} us   {wall[k] / wall['tapegrad']:>6.2f}x   "
                  f"(results rel. diff {diff[k]:.1e})")
    calls = percall(5 if quick else 15)
    return {"scaling": rows, "fresh": fresh, "percall": calls}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tapegrad.bench.recording")
    ap.add_argument("--quick", action="store_true", help="up to 10^4 instructions, fewer rounds")
    ap.add_argument("--percall", action="store_true",
                    help="only the per-call table (a 3-instruction tape replayed)")
    ap.add_argument("--out", default=None, help="write recording.json into this directory")
    args = ap.parse_args(argv)
    res = {"percall": percall(5 if args.quick else 15)} if args.percall else run(args.quick)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "recording.json"), "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
