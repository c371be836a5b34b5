"""Convolutions and max pooling on NCHW arrays, with PyTorch's layouts and conventions.

``conv2d(x, w)`` is a cross-correlation: ``out[n, o, i, j] = sum_{c,a,b} w[o, c, a, b] *
x[n, c, i*sh + a - ph, j*sw + b - pw]`` (zero outside ``x``). It is trilinear in ``(x, w, g)``
through ``<g, conv2d(x, w)>``, so its two transposes close the family under
differentiation: ``CONV2D_GRAD_X(g, w)`` (the gradient in x) and ``CONV2D_GRAD_W(x, g)``
(in w); the reverse rule of each of the three is two of the three (see the ``@vjp`` rules).
``conv1d`` is ``conv2d`` with H = 1, ``avg_pool2d`` a ``conv2d`` of each plane with a constant
``1 / (kh*kw)`` kernel (zero padding counted, as torch's ``count_include_pad=True``).

Max pooling is ``MAX_POOL2D(x, h)``: ``h`` read at the argmax of each window of ``x``
(``max_pool2d(x)`` records it with ``h = x``; the first maximum of a window wins, as in
torch; padding is -inf). It is linear in ``h`` and locally constant in ``x`` (no gradient
through the choice of the argmax); its transpose ``MAX_UNPOOL2D(x, g)`` adds ``g`` at those
argmaxes, and each is the other's reverse rule.

Attributes (int32): conv ``C, O, (H,W), (kh,kw), (sh,sw), (ph,pw)``; pool ``H, W, kh, kw,
(sh,sw), (ph,pw)``; a pair is packed as ``h | w << 15`` (each < 32768). The batch (or the
number of planes) is the x-shaped buffer's size over ``C*H*W`` (``H*W``); ``validate.py``
checks all sizes before any kernel runs.

Kernels: per sample, the input's windows are copied into a ``(C*kh*kw, Ho*Wo)`` matrix
(im2col) and multiplied by the weights: by SciPy's BLAS ``gemm`` from ``BLAS_MIN``
multiply-adds per sample, below that by loops that run along the ``Ho*Wo`` axis (vectorised)
with float64 sums in either arena dtype. They are compiled functions called by the sweeps
(not inlined: the sweeps' compile time grows faster than their size); each takes its
operands as (arena, int64 offset) pairs, so one function serves every arena combination the
forward, reverse and tangent rules need. ``acc`` adds into the output instead of writing it.
"""
import numbers
import os

import numpy as np

from .._jit import drop_stale_cache, jit, kernel
from ..errors import ShapeError, TapegradError, user_site
from ..opcodes import Op
from ..var import Var
from ._record import as_var, prod, reshape_var, vars_of
from ._vjp import vjp
from .linalg import BLAS_MIN, _N, _T, gemm

PAIR_MAX = 1 << 15  # each half of a packed pair attribute is below this


def _pack(p):
    return int(p[0]) | (int(p[1]) << 15)


@kernel
def _unpack(a):
    return a & (PAIR_MAX - 1), a >> 15


@kernel
def out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def _out_size(n, k, s, p):  # the same, in Python
    return (n + 2 * p - k) // s + 1


# ---------------------------------------------------------------------------- shape rules
def _pair(v, what, opname, low):
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        v = (v, v)
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or not all(isinstance(e, numbers.Integral) and not isinstance(e, bool) for e in v)):
        raise TapegradError(f"{opname}: {what} must be an int or a pair of ints, got {v!r} "
                            f"({user_site()})")
    v = (int(v[0]), int(v[1]))
    if min(v) < low or max(v) >= PAIR_MAX:
        raise ShapeError(f"{opname}: {what} {v} must be in [{low}, {PAIR_MAX}) "
                         f"({user_site()})")
    return v


def _unsupported(opname, **given):
    for name, (value, default) in given.items():
        if value != default and value != (default, default):
            raise TapegradError(f"{opname}: {name}={value!r} is not supported (only "
                                f"{name}={default!r}) ({user_site()})")


def _out_hw(opname, hw, k, s, p):
    o = (_out_size(hw[0], k[0], s[0], p[0]), _out_size(hw[1], k[1], s[1], p[1]))
    if min(o) < 1 or hw[0] + 2 * p[0] < k[0] or hw[1] + 2 * p[1] < k[1]:
        raise ShapeError(f"{opname}: kernel {k} is larger than the padded input "
                         f"{(hw[0] + 2 * p[0], hw[1] + 2 * p[1])} ({user_site()})")
    return o


def _emit(op, a, b, shape, attrs):
    return Var(a.tape, a.tape._emit(op, [a._b, b._b], tuple(shape), attrs))


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation as ``torch.nn.functional.conv2d``: ``x`` (N, C, H, W) or unbatched
    (C, H, W), ``w`` (O, C, kh, kw), optional bias ``b`` (O,); ``stride`` and ``padding`` an int
    or a pair (``padding="valid"`` is 0, ``"same"`` keeps H and W for odd kernels, stride 1).

    ``tg.conv2d(x, w, b, padding=1)``"""
    tape, (x, w) = vars_of([x, w], "conv2d")
    _unsupported("conv2d", dilation=(dilation, 1), groups=(groups, 1))
    if x.ndim not in (3, 4) or w.ndim != 4:
        raise ShapeError(f"conv2d: expected input (N, C, H, W) or (C, H, W) and weight "
                         f"(O, C, kh, kw), got {x.shape} and {w.shape} ({user_site()})")
    batched = x.ndim == 4
    N, C, H, W = x.shape if batched else (1,) + x.shape
    O, C2, kh, kw = w.shape
    if C2 != C or C == 0 or O == 0:
        raise ShapeError(f"conv2d: input {x.shape} has {C} channels, weight {w.shape} expects "
                         f"{C2} ({user_site()})" if C2 != C else
                         f"conv2d: zero channels in input {x.shape} / weight {w.shape} "
                         f"({user_site()})")
    stride = _pair(stride, "stride", "conv2d", 1)
    k = _pair((kh, kw), "kernel size", "conv2d", 1)
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif padding == "same" and stride == (1, 1) and kh % 2 == 1 and kw % 2 == 1:
            padding = ((kh - 1) // 2, (kw - 1) // 2)
        else:
            raise TapegradError(f"conv2d: padding={padding!r} is supported as 'valid', and as "
                                f"'same' with stride 1 and an odd kernel (here stride "
                                f"{stride}, kernel {k}) ({user_site()})")
    padding = _pair(padding, "padding", "conv2d", 0)
    hw = _pair((H, W), "input size", "conv2d", 1)
    Ho, Wo = _out_hw("conv2d", hw, k, stride, padding)
    bias = None
    if b is not None:
        bias = as_var(b, tape, "conv2d")
        if bias.shape != (O,):
            raise ShapeError(f"conv2d: bias must have shape ({O},) for weight {w.shape}, got "
                             f"{bias.shape} ({user_site()})")
    attrs = (C, O, _pack(hw), _pack(k), _pack(stride), _pack(padding))
    out = _emit(Op.CONV2D, reshape_var(x, (N, C, H, W)), w, (N, O, Ho, Wo), attrs)
    if bias is not None:
        out = out + reshape_var(bias, (O, 1, 1))
    return out if batched else reshape_var(out, (O, Ho, Wo))


def conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D cross-correlation as ``torch.nn.functional.conv1d``: ``x`` (N, C, L) or (C, L),
    ``w`` (O, C, k), optional bias (O,); ``stride``, ``padding`` ints (or "valid"/"same").

    ``tg.conv1d(x, w, padding=2)``"""
    tape, (x, w) = vars_of([x, w], "conv1d")
    _unsupported("conv1d", dilation=(dilation, 1), groups=(groups, 1))
    if x.ndim not in (2, 3) or w.ndim != 3:
        raise ShapeError(f"conv1d: expected input (N, C, L) or (C, L) and weight (O, C, k), "
                         f"got {x.shape} and {w.shape} ({user_site()})")
    for what, v in (("stride", stride), ("padding", padding)):
        if isinstance(v, (tuple, list)) and len(v) == 1:
            v = v[0]
        if not isinstance(v, (numbers.Integral, str)) or isinstance(v, bool):
            raise TapegradError(f"conv1d: {what} must be an int, got {v!r} ({user_site()})")
    stride = stride[0] if isinstance(stride, (tuple, list)) else stride
    padding = padding[0] if isinstance(padding, (tuple, list)) else padding
    pad = padding if isinstance(padding, str) else (0, padding)
    x4 = reshape_var(x, x.shape[:-1] + (1, x.shape[-1]))
    w4 = reshape_var(w, w.shape[:2] + (1, w.shape[2]))
    out = conv2d(x4, w4, b, stride=(1, stride), padding=pad)
    return reshape_var(out, out.shape[:-2] + (out.shape[-1],))


def _pool_args(opname, x, kernel_size, stride, padding):
    tape, (x,) = vars_of([x], opname)
    if x.ndim not in (3, 4):
        raise ShapeError(f"{opname}: expected input (N, C, H, W) or (C, H, W), got {x.shape} "
                         f"({user_site()})")
    k = _pair(kernel_size, "kernel_size", opname, 1)
    s = k if stride is None or stride == () else _pair(stride, "stride", opname, 1)
    p = _pair(padding, "padding", opname, 0)
    if 2 * p[0] > k[0] or 2 * p[1] > k[1]:
        raise ShapeError(f"{opname}: padding {p} must be at most half of kernel_size {k} "
                         f"({user_site()})")
    H, W = x.shape[-2:]
    hw = _pair((H, W), "input size", opname, 1)
    return tape, x, k, s, p, hw, _out_hw(opname, hw, k, s, p)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max pooling as ``torch.nn.functional.max_pool2d`` (NCHW or CHW; stride defaults to
    kernel_size; padding, at most half the kernel, is -inf). The gradient goes to the first
    maximum of each window.  ``tg.max_pool2d(x, 2)``"""
    _unsupported("max_pool2d", dilation=(dilation, 1), ceil_mode=(ceil_mode, False),
                 return_indices=(return_indices, False))
    tape, x, k, s, p, (H, W), (Ho, Wo) = _pool_args("max_pool2d", x, kernel_size, stride,
                                                    padding)
    planes = prod(x.shape[:-2])
    xv = reshape_var(x, (planes, H, W))
    out = _emit(Op.MAX_POOL2D, xv, xv, (planes, Ho, Wo), (H, W, k[0], k[1], _pack(s),
                                                         _pack(p)))
    return reshape_var(out, x.shape[:-2] + (Ho, Wo))


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """Average pooling as ``torch.nn.functional.avg_pool2d`` (NCHW or CHW; stride defaults to
    kernel_size; zero padding counts in the average): a conv2d of each plane with a constant
    kernel.  ``tg.avg_pool2d(x, 2)``"""
    _unsupported("avg_pool2d", ceil_mode=(ceil_mode, False),
                 count_include_pad=(count_include_pad, True),
                 divisor_override=(divisor_override, None))
    tape, x, k, s, p, (H, W), (Ho, Wo) = _pool_args("avg_pool2d", x, kernel_size, stride,
                                                    padding)
    planes = prod(x.shape[:-2])
    ones = tape.const(np.full((1, 1) + k, 1.0 / (k[0] * k[1])))
    out = conv2d(reshape_var(x, (planes, 1, H, W)), ones, stride=s, padding=p)
    return reshape_var(out, x.shape[:-2] + (Ho, Wo))


# ---------------------------------------------------------------------------- recorded VJPs
# <g, conv2d(x, w)> is trilinear: each op's cotangents are the other two ops (module docstring)
@vjp(Op.CONV2D)
def conv2d_vjp(r, g):  # x, w -> out
    return (_emit(Op.CONV2D_GRAD_X, g, r.y, r.x.shape, r.a) if r.need[0] else None,
            _emit(Op.CONV2D_GRAD_W, r.x, g, r.y.shape, r.a) if r.need[1] else None)


@vjp(Op.CONV2D_GRAD_X)
def conv2d_grad_x_vjp(r, g):  # g_out, w -> x-shaped
    return (_emit(Op.CONV2D, g, r.y, r.x.shape, r.a) if r.need[0] else None,
            _emit(Op.CONV2D_GRAD_W, g, r.x, r.y.shape, r.a) if r.need[1] else None)


@vjp(Op.CONV2D_GRAD_W)
def conv2d_grad_w_vjp(r, g):  # x, g_out -> w-shaped
    return (_emit(Op.CONV2D_GRAD_X, r.y, g, r.x.shape, r.a) if r.need[0] else None,
            _emit(Op.CONV2D, r.x, g, r.y.shape, r.a) if r.need[1] else None)


@vjp(Op.MAX_POOL2D)
def max_pool2d_vjp(r, g):  # x (chooses), h (read) -> pooled; no gradient through the choice
    return None, (_emit(Op.MAX_UNPOOL2D, r.x, g, r.x.shape, r.a) if r.need[1] else None)


@vjp(Op.MAX_UNPOOL2D)
def max_unpool2d_vjp(r, g):  # x (chooses), g (pooled-shaped) -> x-shaped
    return None, (_emit(Op.MAX_POOL2D, r.x, g, r.y.shape, r.a) if r.need[1] else None)


# ---------------------------------------------------------------------------- kernels
@kernel
def _ceil_div(a, b):
    return -((-a) // b)


# col (C*kh*kw, Ho*Wo) <- the windows of one sample x (C, H, W) at offset xo of v (zeros
# outside): row q = (c, a, b), column p = (i, j) holds x[c, i*sh + a - ph, j*sw + b - pw]
@jit
def _im2col(v, xo, col, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo):
    P = Ho * Wo
    for c in range(C):
        for a in range(kh):
            for b in range(kw):
                q = (c * kh + a) * kw + b
                j0 = min(max(0, _ceil_div(pw - b, sw)), Wo)     # columns inside x: [j0, j1)
                j1 = max(min(Wo, (W - 1 + pw - b) // sw + 1), j0)
                for i in range(Ho):
                    h = i * sh + a - ph
                    dst = np.uint64(q * P + i * Wo)
                    if h < 0 or h >= H:
                        for j in range(np.uint64(Wo)):
                            col[dst + j] = 0
                        continue
                    src = xo + (c * H + h) * W + b - pw
                    for j in range(j0):
                        col[dst + np.uint64(j)] = 0
                    if sw == 1:
                        s0, d0 = np.uint64(src + j0), dst + np.uint64(j0)
                        for j in range(np.uint64(j1 - j0)):
                            col[d0 + j] = v[s0 + j]
                    else:
                        for j in range(j0, j1):
                            col[dst + np.uint64(j)] = v[np.uint64(src + j * sw)]
                    for j in range(j1, Wo):
                        col[dst + np.uint64(j)] = 0


# out (C, H, W) at offset xo of v += col (C*kh*kw, Ho*Wo): the transpose of _im2col
@jit
def _col2im(col, v, xo, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo):
    P = Ho * Wo
    for c in range(C):
        for a in range(kh):
            for b in range(kw):
                q = (c * kh + a) * kw + b
                j0 = min(max(0, _ceil_div(pw - b, sw)), Wo)
                j1 = max(min(Wo, (W - 1 + pw - b) // sw + 1), j0)
                for i in range(Ho):
                    h = i * sh + a - ph
                    if h < 0 or h >= H:
                        continue
                    src = np.uint64(q * P + i * Wo)
                    dst = xo + (c * H + h) * W + b - pw
                    if sw == 1:
                        d0, s0 = np.uint64(dst + j0), src + np.uint64(j0)
                        for j in range(np.uint64(j1 - j0)):
                            v[d0 + j] += col[s0 + j]
                    else:
                        for j in range(j0, j1):
                            v[np.uint64(dst + j * sw)] += col[src + np.uint64(j)]


@jit
def conv_xw(vx, x, vw, w, vo, o, acc, N, C, H, W, O, kh, kw, sh, sw, ph, pw):
    """out (N, O, Ho, Wo) (+)= conv2d(x (N, C, H, W), w (O, C, kh, kw)): per sample
    out (O, P) = w (O, Q) @ col (Q, P)."""
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    P, Q = Ho * Wo, C * kh * kw
    col = np.empty(Q * P, vx.dtype)
    blas = O * P * Q >= BLAS_MIN
    s = np.empty(0 if blas else P)
    for n in range(N):
        _im2col(vx, x + n * C * H * W, col, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)
        if blas:  # out.T (P x O) = col.T (P x Q) @ w.T (Q x O), column-major
            gemm(_N, _N, P, O, Q, col, 0, P, vw, w, Q, 1.0 if acc else 0.0, vo, o + n * O * P)
            continue
        for oo in range(O):
            for p in range(P):
                s[p] = 0
            wr = np.uint64(w + oo * Q)
            for q in range(0, Q - Q % 3, 3):  # three rows per pass: s stays in registers
                w0, w1, w2 = (np.float64(vw[wr + np.uint64(q)]),
                              np.float64(vw[wr + np.uint64(q + 1)]),
                              np.float64(vw[wr + np.uint64(q + 2)]))
                c0, c1, c2 = np.uint64(q * P), np.uint64((q + 1) * P), np.uint64((q + 2) * P)
                for p in range(np.uint64(P)):
                    s[p] = ((s[p] + w0 * col[c0 + p]) + w1 * col[c1 + p]) + w2 * col[c2 + p]
            for q in range(Q - Q % 3, Q):
                wv = np.float64(vw[wr + np.uint64(q)])
                cq = np.uint64(q * P)
                for p in range(np.uint64(P)):
                    s[p] += wv * col[cq + p]
            out = np.uint64(o + (n * O + oo) * P)
            if acc:
                for p in range(np.uint64(P)):
                    vo[out + p] = vo[out + p] + s[p]
            else:
                for p in range(np.uint64(P)):
                    vo[out + p] = s[p]


@jit
def conv_gx(vg, g, vw, w, vo, o, acc, N, C, H, W, O, kh, kw, sh, sw, ph, pw):
    """out (N, C, H, W) (+)= the x-gradient of conv2d for output cotangent g (N, O, Ho, Wo):
    per sample col (Q, P) = w.T (Q, O) @ g (O, P), added back into place (col2im)."""
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    P, Q = Ho * Wo, C * kh * kw
    if not acc:
        for i in range(np.uint64(N * C * H * W)):
            vo[np.uint64(o) + i] = 0
    if O * P * Q >= BLAS_MIN:
        col = np.empty(Q * P, vo.dtype)
        for n in range(N):  # col.T (P x Q) = g.T (P x O) @ w (O x Q), column-major
            gemm(_N, _T, P, Q, O, vg, g + n * O * P, P, vw, w, Q, 0.0, col, 0)
            _col2im(col, vo, o + n * C * H * W, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)
        return
    c64 = np.empty(Q * P)
    for n in range(N):
        c64[:] = 0
        for oo in range(O):
            grow = np.uint64(g + (n * O + oo) * P)
            for q in range(Q):
                wv = np.float64(vw[np.uint64(w + oo * Q + q)])
                cq = np.uint64(q * P)
                for p in range(np.uint64(P)):
                    c64[cq + p] += wv * vg[grow + p]
        _col2im(c64, vo, o + n * C * H * W, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)


@jit
def conv_gw(vx, x, vg, g, vo, o, acc, N, C, H, W, O, kh, kw, sh, sw, ph, pw):
    """out (O, C, kh, kw) (+)= the w-gradient of conv2d at x (N, C, H, W) for output
    cotangent g (N, O, Ho, Wo): sum over samples of g (O, P) @ col.T (P, Q)."""
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    P, Q = Ho * Wo, C * kh * kw
    col = np.empty(Q * P, vx.dtype)
    if O * P * Q >= BLAS_MIN:
        if N == 0 and not acc:
            for i in range(np.uint64(O * Q)):
                vo[np.uint64(o) + i] = 0
        for n in range(N):  # out.T (Q x O) (+)= col (Q x P) @ g.T (P x O), column-major
            _im2col(vx, x + n * C * H * W, col, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)
            beta = 1.0 if acc != 0 or n > 0 else 0.0
            gemm(_T, _N, Q, O, P, col, 0, P, vg, g + n * O * P, P, beta, vo, o)
        return
    # products summed over samples along p (vectorised), then over p once
    prods = np.zeros(O * Q * P)
    for n in range(N):
        _im2col(vx, x + n * C * H * W, col, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)
        for oo in range(O):
            grow = np.uint64(g + (n * O + oo) * P)
            for q in range(Q):
                r, cq = np.uint64((oo * Q + q) * P), np.uint64(q * P)
                for p in range(np.uint64(P)):
                    prods[r + p] += np.float64(vg[grow + p]) * col[cq + p]
    for e in range(O * Q):
        r = np.uint64(e * P)
        s0 = s1 = s2 = s3 = 0.0
        for p in range(np.uint64(P // 4)):
            i = r + np.uint64(4) * p
            s0 += prods[i]
            s1 += prods[i + np.uint64(1)]
            s2 += prods[i + np.uint64(2)]
            s3 += prods[i + np.uint64(3)]
        for p in range(np.uint64(P - P % 4), np.uint64(P)):
            s0 += prods[r + p]
        out = np.uint64(o + e)
        total = (s0 + s1) + (s2 + s3)
        vo[out] = vo[out] + total if acc else total


# max pooling of planes (NP, H, W): for each window of x (clipped to the plane: padding is
# -inf and never wins), the flat index in the plane of its first maximum (a NaN wins)
@kernel
def _argmax(vx, xo, W, r0, r1, c0, c1):
    best = r0 * W + c0
    m = vx[np.uint64(xo + best)]
    for r in range(r0, r1):
        for c in range(c0, c1):
            e = vx[np.uint64(xo + r * W + c)]
            if e > m or e != e:
                m = e
                best = r * W + c
    return best


@jit
def pool_gather(vx, x, vh, h, vo, o, acc, NP, H, W, kh, kw, sh, sw, ph, pw):
    """out (NP, Ho, Wo) (+)= h (NP, H, W) at the argmax of each window of x (NP, H, W)."""
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    for pl in range(NP):
        xo, ho = x + pl * H * W, h + pl * H * W
        for i in range(Ho):
            r0, r1 = max(i * sh - ph, 0), min(i * sh - ph + kh, H)
            for j in range(Wo):
                c0, c1 = max(j * sw - pw, 0), min(j * sw - pw + kw, W)
                val = vh[np.uint64(ho + _argmax(vx, xo, W, r0, r1, c0, c1))]
                out = np.uint64(o + (pl * Ho + i) * Wo + j)
                vo[out] = vo[out] + val if acc else val


@jit
def pool_scatter(vx, x, vg, g, vo, o, acc, NP, H, W, kh, kw, sh, sw, ph, pw):
    """out (NP, H, W) (+)= g (NP, Ho, Wo) added at the argmax of each window of x."""
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    if not acc:
        for i in range(np.uint64(NP * H * W)):
            vo[np.uint64(o) + i] = 0
    for pl in range(NP):
        xo, oo = x + pl * H * W, o + pl * H * W
        for i in range(Ho):
            r0, r1 = max(i * sh - ph, 0), min(i * sh - ph + kh, H)
            for j in range(Wo):
                c0, c1 = max(j * sw - pw, 0), min(j * sw - pw + kw, W)
                dst = np.uint64(oo + _argmax(vx, xo, W, r0, r1, c0, c1))
                vo[dst] += vg[np.uint64(g + (pl * Ho + i) * Wo + j)]


# ---------------------------------------------------------------------------- sweep rules
# op, arenas, uint64 offsets of the inputs x, y and the output ans, nx = the size of input x,
# the six attributes. Every rule is one or two ops of the family run through ``_run``.
@jit
def batch_of(op, nx, a0, a1, a2, a3, a4, a5):
    """The batch N (conv) or number of planes (pool) of an instruction whose input x has
    ``nx`` elements (for CONV2D_GRAD_X, x is the output cotangent (N, O, Ho, Wo))."""
    if op == Op.MAX_POOL2D or op == Op.MAX_UNPOOL2D:
        return nx // (a0 * a1)
    (H, W), (kh, kw), (sh, sw), (ph, pw) = _unpack(a2), _unpack(a3), _unpack(a4), _unpack(a5)
    if op == Op.CONV2D_GRAD_X:
        return nx // (a1 * out_size(H, kh, sh, ph) * out_size(W, kw, sw, pw))
    return nx // (a0 * H * W)


@jit
def _run(op, va, a, vb, b, vo, o, acc, N, a0, a1, a2, a3, a4, a5):
    """The forward rule of ``op`` on operands (va at a, vb at b) into vo at o (int64s), for
    batch (or planes) N."""
    if op == Op.MAX_POOL2D or op == Op.MAX_UNPOOL2D:
        (sh, sw), (ph, pw) = _unpack(a4), _unpack(a5)
        if op == Op.MAX_POOL2D:
            pool_gather(va, a, vb, b, vo, o, acc, N, a0, a1, a2, a3, sh, sw, ph, pw)
        else:
            pool_scatter(va, a, vb, b, vo, o, acc, N, a0, a1, a2, a3, sh, sw, ph, pw)
        return
    C, O = a0, a1
    (H, W), (kh, kw), (sh, sw), (ph, pw) = _unpack(a2), _unpack(a3), _unpack(a4), _unpack(a5)
    if op == Op.CONV2D:
        conv_xw(va, a, vb, b, vo, o, acc, N, C, H, W, O, kh, kw, sh, sw, ph, pw)
    elif op == Op.CONV2D_GRAD_X:
        conv_gx(va, a, vb, b, vo, o, acc, N, C, H, W, O, kh, kw, sh, sw, ph, pw)
    else:
        conv_gw(va, a, vb, b, vo, o, acc, N, C, H, W, O, kh, kw, sh, sw, ph, pw)


# (every argument of the compiled functions is a runtime int64, never a literal or an enum
# member: numba compiles one specialisation per distinct argument type, literals included)
@kernel
def conv_fwd(op, v, x, y, ans, nx, a0, a1, a2, a3, a4, a5):
    op = np.int64(op)
    N = batch_of(op, nx, a0, a1, a2, a3, a4, a5)
    _run(op, v, np.int64(x), v, np.int64(y), v, np.int64(ans), np.int64(0), N, a0, a1, a2, a3,
         a4, a5)


# the reverse rules: the cotangent G = g at ans; each input's gradient is one op of the family
# (as the @vjp rules above), accumulated into g
@kernel
def conv_bwd(op, v, g, x, y, ans, nx, a0, a1, a2, a3, a4, a5, dx, dy):
    N = batch_of(np.int64(op), nx, a0, a1, a2, a3, a4, a5)
    x, y, ans, acc = np.int64(x), np.int64(y), np.int64(ans), np.int64(1)
    conv, grad_x = np.int64(Op.CONV2D), np.int64(Op.CONV2D_GRAD_X)
    grad_w = np.int64(Op.CONV2D_GRAD_W)
    pool, unpool = np.int64(Op.MAX_POOL2D), np.int64(Op.MAX_UNPOOL2D)
    if op == Op.CONV2D:             # x, w:  gx += GRAD_X(G, w),  gw += GRAD_W(x, G)
        if dx:
            _run(grad_x, g, ans, v, y, g, x, acc, N, a0, a1, a2, a3, a4, a5)
        if dy:
            _run(grad_w, v, x, g, ans, g, y, acc, N, a0, a1, a2, a3, a4, a5)
    elif op == Op.CONV2D_GRAD_X:    # g, w:  gg += CONV2D(G, w),  gw += GRAD_W(G, g)
        if dx:
            _run(conv, g, ans, v, y, g, x, acc, N, a0, a1, a2, a3, a4, a5)
        if dy:
            _run(grad_w, g, ans, v, x, g, y, acc, N, a0, a1, a2, a3, a4, a5)
    elif op == Op.CONV2D_GRAD_W:    # x, g:  gx += GRAD_X(g, G),  gg += CONV2D(x, G)
        if dx:
            _run(grad_x, v, y, g, ans, g, x, acc, N, a0, a1, a2, a3, a4, a5)
        if dy:
            _run(conv, v, x, g, ans, g, y, acc, N, a0, a1, a2, a3, a4, a5)
    elif op == Op.MAX_POOL2D:       # x, h:  gh += UNPOOL(x, G)
        if dy:
            _run(unpool, v, x, g, ans, g, y, acc, N, a0, a1, a2, a3, a4, a5)
    elif dy:                        # MAX_UNPOOL2D x, g:  gg += POOL(x, G)
        _run(pool, v, x, g, ans, g, y, acc, N, a0, a1, a2, a3, a4, a5)


# the tangent rule (tapegrad.ops.tangents): every op is linear in each input, so for each of
# the D directions (innermost in t) the inputs' tangents are copied out, the op runs on
# (tangent x, value y) + (value x, tangent y) -- pools: on the tangent of y alone -- and the
# result is copied back. ny, nout: the sizes of input y and of the output.
@jit
def conv_tangent(op, v, t, x, y, ans, D, nx, ny, nout, a0, a1, a2, a3, a4, a5, dx, dy):
    op = np.int64(op)
    N = batch_of(op, nx, a0, a1, a2, a3, a4, a5)
    pool = op == Op.MAX_POOL2D or op == Op.MAX_UNPOOL2D
    dx = dx and not pool
    x, y, ans, D = np.int64(x), np.int64(y), np.int64(ans), np.int64(D)
    zero = np.int64(0)
    acc = np.int64(1) if dx else zero
    tx, ty, to = np.empty(nx if dx else 0, t.dtype), np.empty(ny, t.dtype), np.empty(nout, t.dtype)
    for d in range(D):
        for i in range(tx.size):
            tx[i] = t[(x + i) * D + d]
        for i in range(ny if dy else 0):
            ty[i] = t[(y + i) * D + d]
        if dx:
            _run(op, tx, zero, v, y, to, zero, zero, N, a0, a1, a2, a3, a4, a5)
        if dy:
            _run(op, v, x, ty, zero, to, zero, acc, N, a0, a1, a2, a3, a4, a5)
        if not dx and not dy:
            to[:] = 0
        for i in range(nout):
            t[(ans + i) * D + d] = to[i]


_HERE = os.path.dirname(os.path.abspath(__file__))
for _f in (_im2col, _col2im, conv_xw, conv_gx, conv_gw, pool_gather, pool_scatter, batch_of, _run,
           conv_tangent):
    drop_stale_cache(_f, [os.path.join(_HERE, "conv.py"), os.path.join(_HERE, "linalg.py"),
                          os.path.join(_HERE, "..", "_jit.py"),
                          os.path.join(_HERE, "..", "opcodes.py")])
