"""``python -m tapegrad.bench.mlp [--rounds N] [--only seed,digits] [--skip ENGINES]``: the seed-mlp and
digits-mlp rows of ``tapegrad bench`` alone -- ``numba-fused``, ``tg-fit`` (fused optimizer),
``tg-fit-unfused`` (``tg.fit(..., fuse_optimizer=False)``), ``tg-loop`` and ``jax-jit`` when
installed -- timed the same way (blocks of ~0.15 s, interleaved round-robin, medians), with the
ratios to the reference of issue 11's targets (the hand-fused step; JAX for digits), in CPU
time and wall clock (on a shared machine the CPU time is the steadier). A minute or two
instead of the full run's several."""
import argparse
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1")
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

from .engines import JaxEngine, TgFit, TgLoop  # noqa: E402
from .fused import DigitsFused, SeedFused  # noqa: E402
from .report import Bench, _fmt_t  # noqa: E402
from .workloads import (DIG_BATCH, build_digits_tg, build_seed_tg, digits_data,  # noqa: E402
                        seed_data, tg_params)


class TgFitUnfused(TgFit):
    """``tg.fit`` with the optimizer as a separate pass after each reverse sweep."""

    def run(self, n, collect=False):
        import tapegrad as tg
        o = (self.s % self.nb) * self.batch
        self.s += n
        h = tg.fit(self.loss, self.opt, {k: v[o:] for k, v in self.data.items()},
                   batch_size=self.batch, steps=n, shuffle=False, progress=False,
                   fuse_optimizer=False)
        return list(h) if collect else None


def _have_jax():
    try:
        import jax  # noqa: F401
        return True
    except ImportError:
        return False


def _can_unfuse():
    import inspect

    import tapegrad as tg
    return "fuse_optimizer" in inspect.signature(tg.fit).parameters


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--only", default="seed,digits")
    ap.add_argument("--skip", default="", help="engines to leave out, e.g. jax-jit,tg-loop")
    args = ap.parse_args(argv)
    try:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(1)  # noqa: F841 - keep it alive
    except ImportError:
        pass
    B = Bench(False)
    jax = _have_jax()
    only = args.only.split(",")
    wls = []
    if "seed" in only:
        X, Y = seed_data()
        params = tg_params(build_seed_tg)
        batches = [(X[i:i + 1], Y[i:i + 1]) for i in range(len(X))]
        B.add("seed-mlp", "numba-fused", SeedFused(params, X, Y), 3)
        B.add("seed-mlp", "tg-fit", TgFit(build_seed_tg, {"x": X, "y": Y}, 1), 3)
        if _can_unfuse():
            B.add("seed-mlp", "tg-fit-unfused", TgFitUnfused(build_seed_tg, {"x": X, "y": Y}, 1),
                  3)
        B.add("seed-mlp", "tg-loop", TgLoop(build_seed_tg, batches), 3)
        if jax:
            B.add("seed-mlp", "jax-jit", JaxEngine(params, batches, "seed"), 3)
        wls.append(("seed-mlp", "numba-fused"))
    if "digits" in only:
        Xd, Yd, _ = digits_data()
        params = tg_params(build_digits_tg)
        nb = len(Xd) // DIG_BATCH
        dbatches = [(Xd[i * DIG_BATCH:(i + 1) * DIG_BATCH], Yd[i * DIG_BATCH:(i + 1) * DIG_BATCH])
                    for i in range(nb)]
        data = {"x": Xd, "y": Yd.astype(np.float32)}
        if jax:
            B.add("digits-mlp", "jax-jit", JaxEngine(params, dbatches, "digits"), 3)
        B.add("digits-mlp", "numba-fused", DigitsFused(params, Xd, Yd), 3)
        B.add("digits-mlp", "tg-fit", TgFit(build_digits_tg, data, DIG_BATCH), 3)
        if _can_unfuse():
            B.add("digits-mlp", "tg-fit-unfused", TgFitUnfused(build_digits_tg, data, DIG_BATCH),
                  3)
        B.add("digits-mlp", "tg-loop", TgLoop(build_digits_tg, [(x, y.astype(np.float32))
                                                                for x, y in dbatches]), 3)
        wls.append(("digits-mlp", "jax-jit" if jax else "numba-fused"))
    for wl, ref in wls:
        res = B.results[wl]
        for name in args.skip.split(","):
            if name != ref:
                res.pop(name, None)
        base = res["tg-fit"]["check"]
        err = max(max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(r["check"], base))
                  for r in res.values())
        B.calibrate(wl)
        cpu = {name: [] for name in res}
        wall = {name: [] for name in res}
        names = list(res)
        for rep in range(args.rounds):  # interleaved, starting from a different engine
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                n = res[name]["block"]
                c, t = time.process_time(), time.perf_counter()
                res[name]["engine"].run(n)
                wall[name].append((time.perf_counter() - t) / n)
                cpu[name].append((time.process_time() - c) / n)
        print(f"{wl} ({args.rounds} interleaved rounds of ~0.15 s blocks; first 3 losses agree "
              f"to {err:.1e}); medians, IQR, ratio to {ref}:")
        for label, clock in (("CPU time", cpu), ("wall clock", wall)):
            ref_med = np.median(clock[ref])
            print(f"  {label}:")
            for name in names:
                q1, m, q3 = np.percentile(clock[name], [25, 50, 75])
                print(f"    {name:15} {_fmt_t(m):>10}   IQR {_fmt_t(q1)}-{_fmt_t(q3)}   "
                      f"{m / ref_med:.2f}x")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
