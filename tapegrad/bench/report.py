"""Timing (interleaved rounds, first-step subprocesses), the checks, and the report: table,
targets, ``bench.json`` and ``bench.png``."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from .scalar import CAnchor
from .workloads import HERE


# =============================================================================== timing
class Bench:
    def __init__(self, quick):
        self.quick = quick
        self.repeats = 3 if quick else 11
        self.block_s = 0.03 if quick else 0.15
        self.results = {}     # workload -> engine -> dict

    def add(self, wl, name, eng, k_check, unit_div=1.0):
        """Create-time check run: first call timed separately, then k_check - 1 steps."""
        t = time.perf_counter()
        first = eng.run(1, collect=True)
        first_s = time.perf_counter() - t
        rest = eng.run(k_check - 1, collect=True) if k_check > 1 else []
        if os.environ.get("TG_BENCH_VERBOSE"):
            print(f"  [{wl} {name}: first {first_s:.2f} s, total "
                  f"{time.perf_counter() - t:.2f} s]", flush=True)
        self.results.setdefault(wl, {})[name] = {
            "engine": eng, "first_call_s": first_s, "check": (first or []) + (rest or []),
            "samples": [], "unit_div": unit_div}

    def calibrate(self, wl):
        for name, r in self.results[wl].items():
            eng = r["engine"]
            if isinstance(eng, CAnchor):
                continue
            t = time.perf_counter()
            eng.run(1)
            dt = time.perf_counter() - t
            if dt < self.block_s:
                t = time.perf_counter()
                eng.run(2)
                dt = min(dt, (time.perf_counter() - t) / 2)
            r["block"] = int(max(1, min(20000, self.block_s / max(dt, 1e-7))))

    def time(self, wl):
        engines = list(self.results[wl].items())
        for rep in range(self.repeats):
            order = engines[rep % len(engines):] + engines[:rep % len(engines)]
            for name, r in order:
                eng = r["engine"]
                if isinstance(eng, CAnchor):
                    r["samples"].append(eng.ns_per_op()[0] * 1e-9)
                    continue
                n = r["block"]
                t = time.perf_counter()
                eng.run(n)
                r["samples"].append((time.perf_counter() - t) / n / r["unit_div"])

    def summary(self, wl, ref):
        rows = []
        res = self.results[wl]
        ref_med = float(np.median(res[ref]["samples"])) if ref in res else None
        for name, r in res.items():
            s = np.array(r["samples"])
            med = float(np.median(s))
            q1, q3 = (float(v) for v in np.percentile(s, [25, 75]))
            r.update(median=med, q1=q1, q3=q3, min=float(s.min()), max=float(s.max()),
                     ratio=med / ref_med if ref_med else None)
            rows.append(name)
        return rows


def _fmt_t(s):
    if s >= 1e-1:
        return f"{s:.3g} s"
    if s >= 1e-4:
        return f"{s * 1e3:.3g} ms"
    if s >= 1e-7:
        return f"{s * 1e6:.3g} us"
    return f"{s * 1e9:.3g} ns"


def _check_line(wl, res, ref, rtol):
    base = res[ref]["check"]
    parts, ok_all = [], True
    for name, r in res.items():
        c = r["check"]
        if name == ref or not c:
            continue
        k = min(len(c), len(base))
        err = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(c[:k], base[:k]))
        ok = err <= rtol
        ok_all &= ok
        parts.append(f"{name} {err:.1e}{'' if ok else ' MISMATCH'}")
        r["check_rel_err"] = err
    head = ", ".join(f"{v:.6g}" for v in base)
    print(f"check {wl}: {ref} gives [{head}]; max relative difference (tol {rtol:g}): "
          + "; ".join(parts))
    return bool(ok_all)


# =============================================================================== subprocess timings
_FIRST_STEP_SCRIPT = r"""
import json, os, sys, time
t0 = time.perf_counter()
import numpy as np
import tapegrad as tg
from tapegrad import bench
t_import = time.perf_counter() - t0
t = time.perf_counter()
tape, loss, opt = bench.build_seed_tg()
t_record = time.perf_counter() - t
t = time.perf_counter()
tape.forward(x=np.array([[0.3]]), y=np.array([[0.5]])); loss.backward(); opt.step()
t_step = time.perf_counter() - t
wall_first_step = time.time()
out = dict(import_s=t_import, record_s=t_record, first_step_s=t_step,
           wall_first_step=wall_first_step)
if "--all" in sys.argv:
    X = np.zeros((8, 1))
    t = time.perf_counter()
    tg.fit(loss, opt, {"x": X, "y": X}, batch_size=1, steps=4, progress=False)
    out["fit_first_s"] = time.perf_counter() - t
    t = time.perf_counter()
    tape, loss, opt = bench.build_digits_tg()
    tape.forward(x=np.zeros((128, 64), np.float32), y=np.zeros(128)); loss.backward(); opt.step()
    out["f32_first_step_s"] = time.perf_counter() - t
    t = time.perf_counter()
    X = np.zeros((128, 64), np.float32)
    tg.fit(loss, opt, {"x": X, "y": np.zeros(128)}, batch_size=128, steps=2, progress=False)
    out["f32_fit_first_s"] = time.perf_counter() - t
print("RESULT " + json.dumps(out))
"""


def first_step_subprocess(cold):
    env = dict(os.environ)
    tmp = None
    if cold:
        tmp = tempfile.mkdtemp(prefix="tg-cold-numba-")
        env["NUMBA_CACHE_DIR"] = tmp
    root = os.path.dirname(HERE)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, "-c", _FIRST_STEP_SCRIPT] + (["--all"] if cold else [])
    t0 = time.time()
    p = subprocess.run(args, capture_output=True, text=True, env=env, cwd=root)
    wall = time.time() - t0
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    m = re.search(r"RESULT (.*)", p.stdout)
    if p.returncode != 0 or not m:
        return {"error": (p.stderr or p.stdout)[-2000:]}
    r = json.loads(m.group(1))
    r["process_start_to_first_step_s"] = r.pop("wall_first_step") - t0
    r["process_wall_s"] = wall
    return r


def _report(B, refs, info, warm, cold, versions, args, elapsed):
    units = {"seed-mlp": "per step", "digits-mlp": "per step", "scalar-graph": "per anchor op"}
    print()
    hdr = f"{'workload':<13} {'engine':<12} {'median':>10} {'IQR':>21} {'x tapegrad':>10} " \
          f"{'first call':>10}"
    print(hdr)
    print("-" * len(hdr))
    out = {"command": "python -m tapegrad.bench" + (" --quick" if args.quick else ""),
           "versions": versions, "repeats": B.repeats, "elapsed_s": elapsed,
           "workloads": {}, "info": info, "warm_first_step": warm, "cold_compile": cold}
    for wl, ref in refs.items():
        res = B.results[wl]
        wd = out["workloads"][wl] = {"unit": "seconds " + units[wl], "reference": ref,
                                     "engines": {}}
        for name, r in sorted(res.items(), key=lambda kv: kv[1]["median"]):
            iqr = f"{_fmt_t(r['q1'])}-{_fmt_t(r['q3'])}"
            print(f"{wl:<13} {name:<12} {_fmt_t(r['median']):>10} {iqr:>21} "
                  f"{r['ratio']:>9.2f}x {_fmt_t(r['first_call_s']):>10}")
            wd["engines"][name] = {k: r.get(k) for k in (
                "median", "q1", "q3", "min", "max", "ratio", "first_call_s", "samples", "block",
                "check", "check_rel_err")}
            wd["engines"][name]["check"] = [float(v) for v in r["check"]]
        print(f"{'':<13} ({units[wl]}; x tapegrad = median / median of {ref})")
    print()
    # ---------------------------------------------------------------- targets
    E = {wl: out["workloads"][wl]["engines"] for wl in refs}
    med = lambda wl, e: E[wl][e]["median"] if e in E[wl] else None  # noqa: E731
    targets = []

    def target(name, value, goal, ok, note=""):
        targets.append({"target": name, "measured": value, "goal": goal,
                        "met": None if ok is None else bool(ok),
                        "note": note})
        val = "n/a" if value is None else f"{value:.3g}"
        status = "n/a" if ok is None else ("MET" if ok else "MISSED")
        print(f"  {name:<54} {val:>8}  (goal {goal})  {status} {note}")

    print("targets (one run, side by side):")
    fit, fused = med("seed-mlp", "tg-fit"), med("seed-mlp", "numba-fused")
    loop = med("seed-mlp", "tg-loop")
    r = fit / fused if fused else None
    target("seed-mlp: tg-fit / numba-fused", r, "<= 1.3", None if r is None else r <= 1.3)
    r = loop / fused if fused else None
    target("seed-mlp: tg-loop / numba-fused (info)", r, "-", None)
    jx = med("seed-mlp", "jax-jit")
    r = jx / fit if jx else None
    target("seed-mlp: jax-jit / tg-fit (speedup over JAX)", r, ">= 4",
           None if r is None else r >= 4)
    jx = med("digits-mlp", "jax-jit")
    dfit = med("digits-mlp", "tg-fit")
    r = dfit / jx if jx else None
    target("digits-mlp f32: tg-fit / jax-jit", r, "<= 1.0", None if r is None else r <= 1.0)
    c = med("scalar-graph", "c-anchor")
    sgm = med("scalar-graph", "tg-replay")
    r = sgm / c if c else None
    target("scalar-graph: tg-replay / C anchor", r, "<= 2",
           None if r is None else r <= 2,
           f"({sgm * 1e9:.1f} vs {c * 1e9:.1f} ns/op)" if c else "")
    sgo = med("scalar-graph", "tg-optimized")
    r = sgo / c if c and sgo else None
    target("scalar-graph: tg-optimized / C anchor", r, "<= 2",
           None if r is None else r <= 2,
           f"({sgo * 1e9:.1f} vs {c * 1e9:.1f} ns/op)" if r else "")
    w = warm.get("process_start_to_first_step_s") if warm else None
    target("new process, warm cache -> first replayed step [s]", w, "<= 1.5",
           None if w is None else w <= 1.5,
           f"(import {warm['import_s']:.2f} s, first step {warm['first_step_s']:.2f} s)"
           if w is not None else str(warm.get("error", ""))[:200])
    cc = cold.get("process_start_to_first_step_s") if cold else None
    target("cold compile -> first replayed step f64 [s]", cc, "<= 10",
           None if cc is None else cc <= 10, "" if cold else "(skipped with --quick)")
    if cold and "fit_first_s" in cold:
        tot = cc + cold["fit_first_s"] + cold["f32_first_step_s"] + cold["f32_fit_first_s"]
        target("cold compile, all kernels (f64+fit+f32+fit32) [s]", tot, "info", None,
               f"(fit {cold['fit_first_s']:.1f}, f32 step {cold['f32_first_step_s']:.1f}, "
               f"f32 fit {cold['f32_fit_first_s']:.1f})")
    out["targets"] = targets
    return out


def _plot(report, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    wls = list(report["workloads"])
    fig, axes = plt.subplots(len(wls), 1, figsize=(8, 2.2 + 2.6 * len(wls)))
    for ax, wl in zip(axes, wls):
        eng = report["workloads"][wl]["engines"]
        names = sorted(eng, key=lambda n: eng[n]["median"])
        scale = 1e9 if wl == "scalar-graph" else 1e6
        meds = [eng[n]["median"] * scale for n in names]
        lo = [max(eng[n]["median"] - eng[n]["q1"], 0) * scale for n in names]
        hi = [max(eng[n]["q3"] - eng[n]["median"], 0) * scale for n in names]
        colors = ["tab:blue" if n.startswith("tg") else
                  ("tab:green" if n in ("numba-fused", "c-anchor") else "tab:gray")
                  for n in names]
        ax.barh(names, meds, xerr=[lo, hi], color=colors)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("ns per anchor op" if wl == "scalar-graph" else "us per training step")
        ax.set_title(wl)
        for i, m in enumerate(meds):
            ax.text(m, i, f" {m:.3g}", va="center", fontsize=8)
    fig.suptitle("tapegrad bench (log scale; blue tapegrad, green physical limits)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
