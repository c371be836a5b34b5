"""Gaussian-process regression: fit the hyperparameters by maximising the log marginal
likelihood with SciPy, then predict (HIPS autograd's Gaussian-process example, with
``tg.linalg``).

    python examples/gaussian_process.py            # writes gaussian_process.png
    python examples/gaussian_process.py --maxiter 10 --n 12   # a quick run

The data: noisy cos(x) on two intervals with a gap between them, as in autograd's example.
The model: constant mean m, RBF covariance s^2 exp(-|x - x'|^2 / (2 l^2)), noise variance
exp(p) + 1e-4; the four parameters are ``[m, p, log s^2, log l]``. The log marginal
likelihood of the targets y is

    log N(y | m, K) = -1/2 (y - m)^T K^-1 (y - m) - 1/2 log det K - n/2 log(2 pi)

computed through the Cholesky factor L of K (the quadratic form by one triangular solve, the
log-determinant as 2 sum log diag L). ``tg.value_and_grad`` records it once and replays it
for every call SciPy's conjugate-gradient method makes. When HIPS ``autograd`` is installed,
its value and gradient of the same likelihood (its own ``multivariate_normal.logpdf``) are
compared at the start and at the optimum.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

try:
    import tapegrad as tg
except ImportError:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tapegrad as tg


def toy_data(n=20, noise_std=0.1, seed=0):
    """Two clusters of inputs with a gap, targets a noisy cos, both rescaled."""
    rs = np.random.RandomState(seed)
    x = np.concatenate([np.linspace(0, 3, n // 2), np.linspace(6, 8, n - n // 2)])
    y = (np.cos(x) + noise_std * rs.randn(n)) / 2.0
    return ((x - 4.0) / 2.0).reshape(n, 1), y


def rbf(log_scale, log_lengths, a, b):
    """s^2 exp(-|a_i - b_j|^2 / 2 l^2): ``a`` (n, D) and ``b`` (m, D) arrays, the two
    hyperparameters Vars. Works on tapegrad Vars and on (autograd) NumPy arrays alike."""
    lengths = np.exp(log_lengths)
    d = (a / lengths)[:, None, :] - (b / lengths)[None, :, :]
    return np.exp(log_scale) * np.exp(-0.5 * (d ** 2).sum(axis=2))


def unpack(params):
    return params[0], np.exp(params[1]) + 1e-4, params[2], params[3:]


def log_marginal_likelihood(params, x, y):
    """log N(y | m, K(x, x) + noise I) with tg.linalg: one Cholesky factor, one solve."""
    mean, noise, log_scale, log_lengths = unpack(params)
    n = len(y)
    K = rbf(log_scale, log_lengths, x, x) + noise * np.eye(n)
    L = tg.linalg.cholesky(K)
    alpha = tg.linalg.solve_triangular(L, y - mean, lower=True)  # L^-1 (y - m)
    log_det = 2.0 * np.log(L.reshape(n * n)[::n + 1]).sum()     # diag L: every (n+1)-th
    return -0.5 * (alpha ** 2).sum() - 0.5 * log_det - 0.5 * n * np.log(2 * np.pi)


def predict(params, x, y, xs):
    """Posterior mean and covariance at ``xs`` (plain NumPy values, computed with tg.linalg
    on a tape of their own)."""
    with tg.Tape() as tape:
        p = tape.const(params)
        mean, noise, log_scale, log_lengths = unpack(p)
        K = rbf(log_scale, log_lengths, x, x) + noise * np.eye(len(y))
        Ks = rbf(log_scale, log_lengths, x, xs)                   # (n, m)
        A = tg.linalg.solve(K, Ks)                                # K^-1 Ks
        mu = mean + A.T @ (y - mean)
        cov = rbf(log_scale, log_lengths, xs, xs) - A.T @ Ks
        return mu.numpy(), cov.numpy()


def autograd_check(params_list, x, y):
    """HIPS autograd's value and gradient of the same likelihood, against tapegrad's."""
    try:
        import autograd
        import autograd.numpy as anp
        from autograd.scipy.stats import multivariate_normal as mvn
    except ImportError:
        print("autograd is not installed: no comparison")
        return

    def ag_lml(params):
        mean, noise = params[0], anp.exp(params[1]) + 1e-4
        lengths = anp.exp(params[3:])
        d = anp.expand_dims(x / lengths, 1) - anp.expand_dims(x / lengths, 0)
        K = anp.exp(params[2]) * anp.exp(-0.5 * anp.sum(d ** 2, axis=2)) + noise * anp.eye(len(y))
        return mvn.logpdf(y, mean * anp.ones(len(y)), K)

    ag = autograd.value_and_grad(ag_lml)
    tgv = tg.value_and_grad(lambda p: log_marginal_likelihood(p, x, y))
    dv = dg = 0.0
    for params in params_list:
        (v1, g1), (v2, g2) = ag(params), tgv(params)
        dv = max(dv, abs(v1 - v2) / max(1.0, abs(v1)))
        dg = max(dg, float(np.max(np.abs(g1 - g2)) / max(1.0, np.max(np.abs(g1)))))
    print(f"autograd: max rel. difference of the likelihood {dv:.1e}, of its gradient {dg:.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20, help="data points (default 20)")
    ap.add_argument("--maxiter", type=int, default=200, help="CG iterations (default 200)")
    args = ap.parse_args()

    x, y = toy_data(args.n)
    init = 0.1 * np.random.RandomState(0).randn(4)       # [m, p, log s^2, log l]
    objective = tg.value_and_grad(lambda p: -log_marginal_likelihood(p, x, y))
    start = objective(init)[0]
    res = minimize(objective, init, jac=True, method="CG", options={"maxiter": args.maxiter})
    print(f"negative log marginal likelihood {start:.6f} -> {res.fun:.6f} "
          f"({res.nit} CG iterations, {res.nfev} evaluations)")
    mean, noise, log_scale, log_lengths = unpack(res.x)
    print(f"mean {mean:.4f}, noise variance {noise:.4g}, signal variance "
          f"{np.exp(log_scale):.4g}, length scale {np.exp(log_lengths[0]):.4g}")
    autograd_check([init, res.x], x, y)

    xs = np.linspace(-7, 7, 300).reshape(-1, 1)
    mu, cov = predict(res.x, x, y, xs)
    sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
    at_data = np.sqrt(np.maximum(np.diag(predict(res.x, x, y, x)[1]), 0.0)).max()
    gap = sd[np.argmin(np.abs(xs[:, 0] - 0.25))]  # x = 0.25: the middle of the gap
    print(f"posterior std: at most {at_data:.3f} at the data, {gap:.3f} in the gap")
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(xs[:, 0], mu - 1.96 * sd, mu + 1.96 * sd, color="C0", alpha=0.2,
                    label="95% band")
    ax.plot(xs[:, 0], mu, "C0", label="posterior mean")
    draws = np.random.RandomState(1).multivariate_normal(mu, cov + 1e-8 * np.eye(len(mu)), 5)
    ax.plot(xs[:, 0], draws.T, "C0", lw=0.5, alpha=0.6)
    ax.plot(x[:, 0], y, "kx", label="data")
    ax.set_ylim(-1.5, 1.5)
    ax.legend(fontsize=8)
    ax.set_title("Gaussian process, hyperparameters by tg.value_and_grad + scipy CG")
    fig.savefig("gaussian_process.png", dpi=120, bbox_inches="tight")
    print("wrote gaussian_process.png")


if __name__ == "__main__":
    main()
