"""The hand-fused numba training steps (``numba-fused``): forward, backward and AdamW in one
compiled function per workload -- the physical limit the tapegrad engines are measured against."""
import math

import numpy as np

from .workloads import (DIG_BETAS, DIG_EPS, DIG_LR, DIG_WD, SEED_BETAS, SEED_EPS, SEED_LR,
                        SEED_WD)


def _njit(fn):
    from .._jit import cached   # tapegrad's cache location (outside site-packages)
    return cached(fn, error_model="numpy")


def _seed_fused_impl(p, g, m, v, X, Y, s0, n, t0, hyper, losses):
    """n AdamW steps of seed-mlp, params flat in tape order W1 b1 W2 b2 W3 b3."""
    H = 64
    lr, b1, b2, eps, wd, slope = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
    o_b1, o_W2 = H, 2 * H
    o_b2 = o_W2 + H * H
    o_W3 = o_b2 + H
    o_b3 = o_W3 + H
    P = o_b3 + 1
    h1 = np.empty(H)
    a1 = np.empty(H)
    h2 = np.empty(H)
    a2 = np.empty(H)
    d1 = np.empty(H)
    d2 = np.empty(H)
    for s in range(n):
        i = (s0 + s) % X.shape[0]
        x, y = X[i, 0], Y[i, 0]
        for j in range(H):
            h1[j] = x * p[j] + p[o_b1 + j]
            a1[j] = h1[j] if h1[j] > 0 else slope * h1[j]
        for j in range(H):
            h2[j] = p[o_b2 + j]
        for k in range(H):
            ak = a1[k]
            for j in range(H):
                h2[j] += ak * p[o_W2 + k * H + j]
        out = p[o_b3]
        for j in range(H):
            a2[j] = h2[j] if h2[j] > 0 else slope * h2[j]
            out += a2[j] * p[o_W3 + j]
        r = out - y
        losses[s] = r * r
        do = 2 * r
        g[o_b3] = do
        for j in range(H):
            g[o_W3 + j] = a2[j] * do
            d2[j] = p[o_W3 + j] * do * (1.0 if h2[j] > 0 else slope)
            g[o_b2 + j] = d2[j]
        for k in range(H):
            ak = a1[k]
            acc = 0.0
            for j in range(H):
                g[o_W2 + k * H + j] = ak * d2[j]
                acc += p[o_W2 + k * H + j] * d2[j]
            d1[k] = acc * (1.0 if h1[k] > 0 else slope)
        for j in range(H):
            g[j] = x * d1[j]
            g[o_b1 + j] = d1[j]
        t = t0 + s + 1
        bc1 = 1.0 - b1 ** t
        bc2s = math.sqrt(1.0 - b2 ** t)
        step = lr / bc1
        decay = 1.0 - lr * wd
        for q in range(P):
            gq = g[q]
            m[q] = b1 * m[q] + (1 - b1) * gq
            v[q] = b2 * v[q] + (1 - b2) * gq * gq
            p[q] = p[q] * decay - step * (m[q] / (math.sqrt(v[q]) / bc2s + eps))


def _digits_fused_impl(W1, b1, W2, b2, m, v, X, Yl, s0, n, t0, hyper, losses):
    """n AdamW steps of digits-mlp (float32; batches of 128 rows of X in order)."""
    lr, be1, be2, eps, wd = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    B, D = 128, W1.shape[0]
    Hd, C = W1.shape[1], W2.shape[1]
    nb = X.shape[0] // B
    H = np.empty((B, Hd), np.float32)
    L = np.empty((B, C), np.float32)
    dL = np.empty((B, C), np.float32)
    dA = np.empty((B, Hd), np.float32)
    gW1 = np.empty_like(W1)
    gW2 = np.empty_like(W2)
    gb1 = np.empty_like(b1)
    gb2 = np.empty_like(b2)
    for s in range(n):
        bi = (s0 + s) % nb
        Xb = X[bi * B:(bi + 1) * B]
        np.dot(Xb, W1, H)
        for r in range(B):
            for j in range(Hd):
                h = H[r, j] + b1[j]
                H[r, j] = h if h > 0 else np.float32(0)
        np.dot(H, W2, L)
        tot = 0.0
        for r in range(B):
            mx = -np.inf
            for c in range(C):
                L[r, c] += b2[c]
                mx = max(mx, L[r, c])
            se = 0.0
            for c in range(C):
                e = math.exp(L[r, c] - mx)
                dL[r, c] = e
                se += e
            lab = Yl[bi * B + r]
            tot += math.log(se) + mx - L[r, lab]
            for c in range(C):
                dL[r, c] = dL[r, c] / se / B
            dL[r, lab] -= np.float32(1.0 / B)
        losses[s] = tot / B
        np.dot(H.T, dL, gW2)
        for c in range(C):
            acc = np.float32(0)
            for r in range(B):
                acc += dL[r, c]
            gb2[c] = acc
        np.dot(dL, W2.T, dA)
        for j in range(Hd):
            gb1[j] = 0
        for r in range(B):
            for j in range(Hd):
                if H[r, j] <= 0:
                    dA[r, j] = 0
                gb1[j] += dA[r, j]
        np.dot(Xb.T, dA, gW1)
        t = t0 + s + 1
        bc1 = 1.0 - be1 ** t
        bc2s = math.sqrt(1.0 - be2 ** t)
        step = lr / bc1
        decay = 1.0 - lr * wd
        q = 0
        for arr, gr in ((W1.ravel(), gW1.ravel()), (b1, gb1), (W2.ravel(), gW2.ravel()),
                        (b2, gb2)):
            for i in range(arr.size):
                gq = gr[i]
                m[q] = be1 * m[q] + (1 - be1) * gq
                v[q] = be2 * v[q] + (1 - be2) * gq * gq
                arr[i] = arr[i] * decay - step * (m[q] / (math.sqrt(v[q]) / bc2s + eps))
                q += 1


_KERNELS = {}


def _kernel(name):
    if name not in _KERNELS:
        impl = {"seed": _seed_fused_impl, "digits": _digits_fused_impl}[name]
        _KERNELS[name] = _njit(impl)
    return _KERNELS[name]


class SeedFused:
    def __init__(self, params, X, Y):
        self.p = np.concatenate([a.ravel() for a in params]).astype(np.float64)
        self.g = np.zeros_like(self.p)
        self.m = np.zeros_like(self.p)
        self.v = np.zeros_like(self.p)
        self.X, self.Y, self.s = X, Y, 0
        self.hyper = np.array([SEED_LR, SEED_BETAS[0], SEED_BETAS[1], SEED_EPS, SEED_WD, 0.1])
        self.k = _kernel("seed")

    def run(self, n, collect=False):
        losses = np.empty(n)
        self.k(self.p, self.g, self.m, self.v, self.X, self.Y, self.s, n, self.s, self.hyper,
               losses)
        self.s += n
        return list(losses) if collect else None


class DigitsFused:
    def __init__(self, params, X, Y):
        self.W1, self.b1, self.W2, self.b2 = [np.array(a, np.float32, order="C")  # copies
                                              for a in params]
        P = sum(a.size for a in params)
        self.m = np.zeros(P, np.float32)
        self.v = np.zeros(P, np.float32)
        self.X, self.Y, self.s = X, Y, 0
        self.hyper = np.array([DIG_LR, DIG_BETAS[0], DIG_BETAS[1], DIG_EPS, DIG_WD])
        self.k = _kernel("digits")

    def run(self, n, collect=False):
        losses = np.empty(n)
        self.k(self.W1, self.b1, self.W2, self.b2, self.m, self.v, self.X, self.Y, self.s, n,
               self.s, self.hyper, losses)
        self.s += n
        return list(losses) if collect else None
