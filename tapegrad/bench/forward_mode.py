"""Forward mode side by side: ``tg.jvp`` / ``tg.jacfwd`` of a small tanh MLP against
``torch.func`` (dual numbers), ``torch.autograd.functional.jvp`` (a double reverse pass) and
``jax.jvp`` / ``jax.jacfwd`` under ``jax.jit``, whichever are installed.

    python -m tapegrad.bench.forward_mode          # prints medians (µs per call)

Every engine is single-threaded, the calls are timed in interleaved rounds and the results
are checked against tapegrad's first.
"""
import os
import time

import numpy as np

import tapegrad as tg

from .workloads import tanh_mlp

ROUNDS, CALLS = 9, 50


def _weights(seed=0, sizes=(8, 64, 64, 4)):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((a, b)) / np.sqrt(a), rng.standard_normal(b) * 0.1)
            for a, b in zip(sizes[:-1], sizes[1:])]




def engines(x, u):
    ws = _weights()
    f_tg = tanh_mlp(tg, ws)
    jac_tg = tg.jacfwd(f_tg)
    out = {"jvp": {"tapegrad": lambda: tg.jvp(f_tg, (x,), (u,))[1]},
           "jacfwd": {"tapegrad": lambda: jac_tg(x)}}
    try:
        import torch
        torch.set_num_threads(1)
        tws = [(torch.tensor(W), torch.tensor(b)) for W, b in ws]
        f_t = tanh_mlp(torch, tws)
        xt, ut = torch.tensor(x), torch.tensor(u)
        out["jvp"]["torch.func.jvp"] = lambda: torch.func.jvp(f_t, (xt,), (ut,))[1].numpy()
        out["jvp"]["torch.autograd.functional.jvp"] = lambda: torch.autograd.functional.jvp(
            f_t, (xt,), (ut,))[1].numpy()
        out["jacfwd"]["torch.func.jacfwd"] = lambda: torch.func.jacfwd(f_t)(xt).numpy()
    except ImportError:
        pass
    try:
        os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                              "intra_op_parallelism_threads=1")
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        jws = [(jnp.asarray(W), jnp.asarray(b)) for W, b in ws]
        f_j = tanh_mlp(jnp, jws)
        jvp_j = jax.jit(lambda x, u: jax.jvp(f_j, (x,), (u,))[1])
        jac_j = jax.jit(jax.jacfwd(f_j))
        xj, uj = jnp.asarray(x), jnp.asarray(u)
        out["jvp"]["jax.jit(jvp)"] = lambda: np.asarray(jvp_j(xj, uj).block_until_ready())
        out["jacfwd"]["jax.jit(jacfwd)"] = lambda: np.asarray(jac_j(xj).block_until_ready())
    except ImportError:
        pass
    return out


def main():
    rng = np.random.default_rng(1)
    x, u = rng.standard_normal((16, 8)), rng.standard_normal((16, 8))
    table = engines(x, u)
    for task, engs in table.items():
        ref = engs["tapegrad"]()
        for name, fn in engs.items():
            np.testing.assert_allclose(fn(), ref, rtol=1e-9, atol=1e-12, err_msg=name)
        times = {name: [] for name in engs}
        for _ in range(ROUNDS):
            for name, fn in engs.items():
                t0 = time.perf_counter()
                for _ in range(CALLS):
                    fn()
                times[name].append((time.perf_counter() - t0) / CALLS * 1e6)
        base = float(np.median(times["tapegrad"]))
        print(f"{task} of an MLP 8-64-64-4 (tanh) at a (16, 8) input, float64")
        for name, ts in times.items():
            med = float(np.median(ts))
            print(f"  {name:32s} {med:9.1f} µs   {med / base:6.2f} x tapegrad")


if __name__ == "__main__":
    main()
