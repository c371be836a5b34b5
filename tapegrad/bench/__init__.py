"""``tapegrad bench`` / ``python -m tapegrad.bench [--quick] [--out DIR]``.

Times the reference workloads of DESIGN.md in tapegrad and in every other engine that is
installed, side by side in one process:

* **seed-mlp** -- MLP 1->64->64->1, LeakyReLU(0.1), squared error, AdamW(lr 1e-3, betas
  (0.9, 0.9), weight decay 1e-3), float64, one sample per step. Time per training step.
* **digits-mlp** -- MLP 64->128->10, ReLU, softmax cross-entropy, batch 128, AdamW (torch
  defaults, lr 1e-3), float32, on scikit-learn's digits (synthetic data of the same shape when
  scikit-learn is missing). Time per training step.
* **recording** -- what a fresh tape costs (``tapegrad.bench.recording``): microseconds per
  recorded instruction, sealing, bytes per instruction at 10^3 ... 10^6 instructions, and
  record + forward + backward of a fresh tape against micrograd, ``pyobj`` and PyTorch on
  micrograd's ``test_more_ops`` graph and on the scalar graph.
* **pinn-oscillator** -- the damped-oscillator PINN (``tapegrad.bench.pinn``): a training step
  needs u', u'' and the weight gradient of their residual (third-order mixed derivatives);
  ``tg.fit`` and the Python loop against PyTorch (``create_graph=True``) and JAX jit.
* **scalar-graph** -- the graph of ``shared/anchors/scalar_graph_tape.c``: 100 leaves i/100,
  then operations cycling through softplus(node[-10]), sum(nodes[-30:-10:5]),
  node[-20]*node[-10] and softmax(nodes[-4:]) (4 new nodes); one forward and one reverse
  sweep from the last node. Time per *anchor* operation (ns).

Engines: ``tg-loop`` (Python loop of tape.forward / backward / opt.step), ``tg-fit``
(``tg.fit``: the steps run in compiled code), ``pyobj`` (one Python object per scalar node,
the seeds' micrograd style, written below), ``numba-fused`` (a hand-written numba training
step: forward, backward and AdamW in one function -- the physical limit), ``c-anchor`` (the C
switch interpreter, compiled with ``gcc -O2``) and, when installed, ``micrograd``,
``autograd`` (HIPS), ``torch`` (eager) and ``jax-jit``.

Every engine starts from the same initial weights and sees the same data; the losses of the
first steps are compared (printed as "check"). Timed blocks are interleaved round-robin, so
machine noise hits every engine alike; medians, quartiles, ratios to tapegrad and compile /
first-call times (separately) are printed and written to ``bench.json`` and ``bench.png``.
All engines run single-threaded (BLAS, torch, XLA) -- tapegrad's replay is single-threaded.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time

# one thread everywhere (must be set before jax / BLAS start their pools)
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1")
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
# benchmarks time compiled code: with the Python tier on (tapegrad/tier.py) a cold module's
# first rounds would time Python while workers compile. coldcompile measures the tier: it
# passes the user's setting (USER_TIER) on to its child.
USER_TIER = os.environ.get("TAPEGRAD_TIER")
os.environ.setdefault("TAPEGRAD_TIER", "off")

import numpy as np  # noqa: E402

from .engines import (AutogradEngine, JaxEngine, SeedNodes, TgFit, TgLoop,  # noqa: E402
                      TorchEngine)
from .fused import DigitsFused, SeedFused  # noqa: E402
from .report import Bench, _check_line, _plot, _report, first_step_subprocess  # noqa: E402
from .scalar import (CAnchor, ScalarAutograd, ScalarNodes, ScalarTg, ScalarTorch,  # noqa: E402
                     compile_anchor)
from .workloads import (DIG_BATCH, build_digits_tg, build_seed_tg, digits_data,  # noqa: E402
                        seed_data, tg_params)


# =============================================================================== main
def _installed(mod):
    import importlib.util
    return importlib.util.find_spec(mod) is not None


def _versions():
    v = {"python": platform.python_version(), "machine": platform.machine(),
         "platform": platform.platform(), "cpus": os.cpu_count()}
    for mod in ("numpy", "numba", "scipy", "torch", "jax", "jaxlib", "autograd", "micrograd",
                "sklearn"):
        if _installed(mod):
            try:
                from importlib.metadata import version
                name = {"sklearn": "scikit-learn"}.get(mod, mod)
                v[mod] = version(name)
            except Exception:  # noqa: BLE001
                v[mod] = "?"
    if shutil.which("gcc"):
        v["gcc"] = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True,
                                  text=True).stdout.strip()
    return v


def _limit_blas():
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(1)
    except ImportError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(prog="tapegrad bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer repeats, smaller blocks, no cold-compile subprocess (< 1 min)")
    ap.add_argument("--out", default="bench-results", help="directory for bench.json, bench.png")
    ap.add_argument("--skip", default="", help="comma-separated engines to leave out")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    t_start = time.time()
    _limits = _limit_blas()  # noqa: F841 - keep the limit alive
    versions = _versions()
    print(f"tapegrad bench{' --quick' if args.quick else ''}: python {versions['python']}, "
          + ", ".join(f"{k} {versions[k]}" for k in ("numpy", "numba", "torch", "jax",
                                                     "autograd", "micrograd") if k in versions)
          + f"; {versions['cpus']} cpus; every engine single-threaded")
    B = Bench(args.quick)
    have = {m: _installed(m) and m not in skip for m in ("torch", "jax", "autograd",
                                                         "micrograd")}
    K = 3
    info = {}

    def want(name):
        return name not in skip

    def add_frameworks(workload, params, batches, kind):
        """The installed graph-object frameworks on one MLP workload."""
        for module, label, engine in (("autograd", "autograd", AutogradEngine),
                                      ("torch", "torch", TorchEngine),
                                      ("jax", "jax-jit", JaxEngine)):
            if have[module]:
                B.add(workload, label, engine(params, batches, kind), K)

    # ------------------------------------------------------------------ seed-mlp
    t_setup = time.perf_counter()
    X, Y = seed_data()
    params = tg_params(build_seed_tg)
    batches = [(X[i:i + 1], Y[i:i + 1]) for i in range(len(X))]
    B.add("seed-mlp", "tg-loop", TgLoop(build_seed_tg, batches), K)
    B.add("seed-mlp", "tg-fit", TgFit(build_seed_tg, {"x": X, "y": Y}, 1), K)
    if want("numba-fused"):
        B.add("seed-mlp", "numba-fused", SeedFused(params, X, Y), K)
    if want("pyobj"):
        B.add("seed-mlp", "pyobj", SeedNodes(params, X, Y, "pyobj"), K)
    if have["micrograd"]:
        B.add("seed-mlp", "micrograd", SeedNodes(params, X, Y, "micrograd"), K)
    add_frameworks("seed-mlp", params, batches, "seed")
    info["seed-mlp"] = {"check_ok": _check_line("seed-mlp", B.results["seed-mlp"], "tg-loop",
                                                1e-6)}

    # ------------------------------------------------------------------ digits-mlp
    Xd, Yd, src = digits_data()
    params = tg_params(build_digits_tg)
    nb = len(Xd) // DIG_BATCH
    dbatches = [(Xd[i * DIG_BATCH:(i + 1) * DIG_BATCH], Yd[i * DIG_BATCH:(i + 1) * DIG_BATCH])
                for i in range(nb)]
    tg_batches = [(x, y.astype(np.float32)) for x, y in dbatches]
    B.add("digits-mlp", "tg-loop", TgLoop(build_digits_tg, tg_batches), K)
    B.add("digits-mlp", "tg-fit", TgFit(build_digits_tg, {"x": Xd, "y": Yd.astype(np.float32)},
                                        DIG_BATCH), K)
    if want("numba-fused"):
        B.add("digits-mlp", "numba-fused", DigitsFused(params, Xd, Yd), K)
    add_frameworks("digits-mlp", params, dbatches, "digits")
    info["digits-mlp"] = {"data": src, "check_ok": _check_line(
        "digits-mlp", B.results["digits-mlp"], "tg-loop", 1e-4)}

    # ------------------------------------------------------------------ scalar graph
    n_big, n_small = 10000, (1000 if args.quick else 2000)
    sg = ScalarTg(n_big)
    info["scalar-graph"] = {"n_ops": n_big, "n_ops_python_engines": n_small,
                            "tg_record_s": sg.record_s, "tg_instructions": sg.n_instr,
                            "tg_instructions_per_anchor_op": sg.n_instr / n_big}
    print(f"scalar-graph: tapegrad recorded {n_big} anchor ops as {sg.n_instr} instructions "
          f"({sg.n_instr / n_big:.2f} per op) in {sg.record_s:.2f} s")
    B.add("scalar-graph", "tg-replay", sg, 1, unit_div=n_big)
    B.add("scalar-graph", "tg-optimized", ScalarTg(n_big, optimize=True), 1, unit_div=n_big)
    small = ScalarTg(n_small)
    checks = {"tg-replay": small.run(1, collect=True)}
    for name, cls, ok in (("pyobj", ScalarNodes, want("pyobj")),
                          ("autograd", ScalarAutograd, have["autograd"]),
                          ("torch", ScalarTorch, have["torch"])):
        if ok:
            B.add("scalar-graph", name, cls(n_small), 1, unit_div=n_small)
            checks[name] = B.results["scalar-graph"][name]["check"]
    exe_dir = tempfile.mkdtemp(prefix="tg-anchor-")
    exe = compile_anchor(exe_dir) if want("c-anchor") else None
    c_check = None
    if exe:
        ca = CAnchor(exe, n_big, 300 if args.quick else 2000)
        t = time.perf_counter()
        _, sink = ca.ns_per_op(iters=1)
        B.results["scalar-graph"]["c-anchor"] = {"engine": ca, "samples": [],
                                                 "first_call_s": time.perf_counter() - t,
                                                 "check": [], "unit_div": 1}
        big = B.results["scalar-graph"]["tg-replay"]["check"]
        c_check = abs(sink - big[2])
        print(f"check scalar-graph ({n_big} ops, float32): plain sum of leaf gradients "
              f"(what the anchor prints) tapegrad {big[2]:.3g}, C anchor {sink:.3g} "
              f"(absolute difference {c_check:.1e})")
    else:
        print("scalar-graph: no gcc or no anchor source: C anchor skipped")
    base = checks["tg-replay"]
    print(f"check scalar-graph ({n_small} ops): tapegrad output {base[0]:.6g}, sum (i+1)*grad "
          f"of leaf i {base[1]:.6g}; " + "; ".join(
              f"{k} rel. diff {max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(v, base)):.1e}"
              for k, v in checks.items() if k != "tg-replay"))
    info["scalar-graph"]["check_c_rel_err"] = c_check
    # small graphs: checks ran on a 2000-op graph; tapegrad's own check is the 10k-op one
    B.results["scalar-graph"]["tg-replay"]["check"] = base
    for k in checks:
        if k != "tg-replay":
            B.results["scalar-graph"][k]["check"] = checks[k]
    print(f"setup and checks took {time.perf_counter() - t_setup:.1f} s; timing "
          f"{B.repeats} interleaved rounds per workload ...")

    # ------------------------------------------------------------------ time
    for wl in ("seed-mlp", "digits-mlp", "scalar-graph"):
        t = time.perf_counter()
        B.calibrate(wl)
        B.time(wl)
        print(f"  {wl}: {time.perf_counter() - t:.1f} s", flush=True)
    refs = {"seed-mlp": "tg-fit", "digits-mlp": "tg-fit", "scalar-graph": "tg-replay"}
    for wl, ref in refs.items():
        B.summary(wl, ref)

    # ------------------------------------------------------------------ first step / compile
    print("new process with a warm numba cache: time to its first replayed step ...")
    warm = first_step_subprocess(cold=False)
    cold = None
    if not args.quick:
        print("new process with an empty NUMBA_CACHE_DIR (cold compile) ...")
        cold = first_step_subprocess(cold=True)
    shutil.rmtree(exe_dir, ignore_errors=True)

    # ------------------------------------------------------------------ recording, pinn
    from .pinn import run as run_pinn
    from .recording import run as run_recording
    recording = run_recording(args.quick)
    pinn = run_pinn(args.quick, skip)

    report = _report(B, refs, info, warm, cold, versions, args, time.time() - t_start)
    report["recording"] = recording
    report["pinn-oscillator"] = pinn
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(report, f, indent=1)
    png = _plot(report, os.path.join(args.out, "bench.png"))
    print(f"wrote {os.path.join(args.out, 'bench.json')}"
          + (f" and {png}" if png else " (matplotlib missing: no chart)")
          + f"  [{time.time() - t_start:.0f} s]")
    return 0
