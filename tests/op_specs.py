"""The one table of op specs that the gradient tests (tests/test_ops_grad.py) run over.

Each ``Spec`` names the opcodes of ``tapegrad.opcodes.Op`` it exercises, a function ``f(*vars,
**kw)`` that builds the expression from tapegrad Vars, an independent NumPy/SciPy reference
``ref(*arrays, **kw)`` computing the same value, an input generator (the domain), and a list of
``Case``s: input shapes (one per Var argument) plus static keyword arguments (axis, index
key, labels, ...) passed to both ``f`` and ``ref``.

Rules for adding a spec:

* ``ref`` must never call tapegrad: the finite differences of the tests are taken on it.
* Keep inputs inside the op's smooth domain: ``positive`` for log/sqrt/pow bases,
  ``distinct`` (all values of all inputs pairwise >= 0.15 apart and >= 0.075 away from 0) for
  relu/abs/max/maximum/comparisons, so a finite-difference step never crosses a kink or tie.
* Every opcode needs at least one spec (``test_every_opcode_has_a_spec``); that test also
  checks that every opcode a spec names is really recorded by ``f`` in one of its cases.
"""
from typing import Callable, NamedTuple, Optional

import numpy as np
import scipy.linalg
import scipy.special

import tapegrad as tg
from tapegrad.opcodes import Op
from tapegrad.ops.bcast import bcast


# ---------------------------------------------------------------------------- table types
class Case(NamedTuple):
    shapes: tuple             # one shape per Var argument of f
    kw: dict                  # static keyword arguments for f and ref
    id: Optional[str] = None


def C(*shapes, id=None, **kw):  # noqa: A002
    return Case(tuple(tuple(s) for s in shapes), kw, id)


class Spec(NamedTuple):
    id: str
    ops: tuple                # opcodes this spec exercises (checked against the tape)
    f: Callable               # f(*vars, **kw) -> Var, built with tapegrad
    ref: Callable             # ref(*arrays, **kw) -> ndarray, NumPy/SciPy only
    cases: list
    gen: Callable = None      # gen(rng, shapes) -> list of float64 arrays (default: normal)
    zero_grad: bool = False   # the output has no gradient path: grads must be exactly 0


def case_id(case):
    if case.id is not None:
        return case.id
    return "_".join("x".join(map(str, s)) if s else "s" for s in case.shapes)


# ---------------------------------------------------------------------------- generators
def _size(shape):
    return int(np.prod(shape, dtype=np.int64))


def normal(rng, shapes):
    return [rng.standard_normal(s) for s in shapes]


def wide(rng, shapes):
    """Normal with std 2: softmax-like ops see a real spread of logits."""
    return [2.0 * rng.standard_normal(s) for s in shapes]


def small(rng, shapes):
    """Normal with std 0.3: sums of many products (a convolution's gradients) stay near 1,
    where central differences are accurate."""
    return [0.3 * rng.standard_normal(s) for s in shapes]


def positive(rng, shapes):
    return [rng.uniform(0.5, 2.0, s) for s in shapes]


def distinct(rng, shapes):
    """All values of all inputs pairwise >= 0.15 apart and >= 0.075 away from zero."""
    sizes = [_size(s) for s in shapes]
    n = sum(sizes)
    vals = (rng.permutation(n) - n // 2) * 0.25 + 0.125 + rng.uniform(-0.05, 0.05, n)
    out, start = [], 0
    for s, k in zip(shapes, sizes):
        out.append(vals[start:start + k].reshape(s))
        start += k
    return out


def ties(rng, shapes):
    """Values in {-0.5, 0, 0.5}: many exact ties for ``==`` / ``!=`` (a central difference
    moves off a tie both ways, so it still sees a zero gradient)."""
    return [0.5 * rng.integers(-1, 2, s).astype(float) for s in shapes]


def each(*gens):
    """Generator i for input i (e.g. a positive base and a normal exponent)."""
    def gen(rng, shapes):
        return [g(rng, [s])[0] for g, s in zip(gens, shapes)]
    return gen


def spd(rng, shapes):
    """Symmetric positive definite matrices (..., n, n), eigenvalues in about [1, 5]."""
    out = []
    for s in shapes:
        r = rng.standard_normal(s)
        out.append(r @ np.swapaxes(r, -1, -2) / s[-1] + np.eye(s[-1]))
    return out


def well_conditioned(rng, shapes):
    """Square matrices (..., n, n) near 2 I: invertible, every triangle too."""
    return [0.5 * rng.standard_normal(s) + 2.0 * np.eye(s[-1]) for s in shapes]


# ---------------------------------------------------------------------------- references
def np_sigmoid(x):
    return scipy.special.expit(x)


def np_leaky_relu(x, slope=0.01):
    return np.where(x > 0, x, slope * x)


def np_relu(x):
    return np.where(x > 0, x, 0.0)


def np_cross_entropy(x, labels, reduction="mean"):
    x2 = np.atleast_2d(x)
    lab = np.atleast_1d(np.asarray(labels))
    losses = scipy.special.logsumexp(x2, axis=1) - x2[np.arange(x2.shape[0]), lab]
    if x.ndim == 1:
        losses = losses[0]
    if reduction == "mean":
        return np.mean(losses)
    if reduction == "sum":
        return np.sum(losses)
    return losses


def np_mse(p, t, reduction="mean"):
    d = (p - t) ** 2
    return {"mean": np.mean, "sum": np.sum, "none": np.asarray}[reduction](d)


def checker(shape):
    """A fixed 0/1 pattern of ``shape`` (a non-trivial constant condition for where)."""
    return (np.arange(_size(shape)).reshape(shape) % 3 != 1).astype(float)


def _np_unslice(x):
    g = np.zeros_like(x)
    g[1:, ::-2] = 3 * x[1:, ::-2] ** 2
    return g


def np_sym(a):
    return (a + np.swapaxes(a, -1, -2)) / 2


def np_solve_triangular(a, b, lower=True, trans=0, unit_diagonal=False):
    """scipy.linalg.solve_triangular over broadcast stacks (b (M,) or (..., M, K))."""
    if b.ndim == 1:
        return np_solve_triangular(a, b[:, None], lower, trans, unit_diagonal)[..., 0]
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = np.broadcast_to(a, batch + a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b = np.broadcast_to(b, batch + b.shape[-2:]).reshape(-1, *b.shape[-2:])
    x = [scipy.linalg.solve_triangular(m, r, lower=lower, trans=trans,
                                       unit_diagonal=unit_diagonal) for m, r in zip(a, b)]
    return np.stack(x).reshape(batch + b.shape[-2:])


def np_gp_nll(x, y):
    """A Gaussian-process negative log marginal likelihood (up to a constant)."""
    L = np.linalg.cholesky(x @ x.T + np.eye(x.shape[0]))
    alpha = scipy.linalg.solve_triangular(L, y, lower=True)
    return 0.5 * np.sum(alpha ** 2) + np.sum(np.log(np.diag(L)))


def _tg_gp_nll(x, y):
    L = tg.linalg.cholesky(x @ x.T + np.eye(x.shape[0]))
    alpha = tg.linalg.solve_triangular(L, y, lower=True)
    return 0.5 * (alpha ** 2).sum() + tg.log(L * np.eye(x.shape[0]) + (1 - np.eye(
        x.shape[0]))).sum()
# ---------------------------------------------------------------------------- conv references
def _pair(v):
    return (v, v) if np.isscalar(v) else tuple(v)


def _windows(xp, a, b, Ho, Wo, sh, sw):
    """xp[..., a + i*sh, b + j*sw] for i < Ho, j < Wo (a strided view)."""
    return xp[..., a:a + sh * (Ho - 1) + 1:sh, b:b + sw * (Wo - 1) + 1:sw]


def _geometry(x, kh, kw, stride, padding):
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    H, W = x.shape[-2:]
    return sh, sw, ph, pw, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1


def np_conv2d(x, w, b=None, stride=1, padding=0):
    """torch.nn.functional.conv2d by sums over the kernel offsets of padded windows."""
    if x.ndim == 3:
        return np_conv2d(x[None], w, b, stride, padding)[0]
    O, C, kh, kw = w.shape
    sh, sw, ph, pw, Ho, Wo = _geometry(x, kh, kw, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((x.shape[0], O, Ho, Wo))
    for a in range(kh):
        for c in range(kw):
            out += np.einsum("nchw,oc->nohw", _windows(xp, a, c, Ho, Wo, sh, sw), w[:, :, a, c])
    return out if b is None else out + b[None, :, None, None]


def np_conv2d_grads(x, w, stride=1, padding=0):
    """(d/dx, d/dw) of 0.5 * sum(conv2d(x, w)**2), flattened and concatenated."""
    O, C, kh, kw = w.shape
    sh, sw, ph, pw, Ho, Wo = _geometry(x, kh, kw, stride, padding)
    G = np_conv2d(x, w, None, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    gxp, gw = np.zeros_like(xp), np.zeros_like(w)
    for a in range(kh):
        for c in range(kw):
            _windows(gxp, a, c, Ho, Wo, sh, sw)[...] += np.einsum("nohw,oc->nchw", G,
                                                                   w[:, :, a, c])
            gw[:, :, a, c] = np.einsum("nohw,nchw->oc", G, _windows(xp, a, c, Ho, Wo, sh, sw))
    gx = gxp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]
    return np.concatenate([gx.reshape(-1), gw.reshape(-1)])


def np_conv1d(x, w, b=None, stride=1, padding=0):
    out = np_conv2d(x[..., None, :], w[:, :, None, :], b, (1, stride), (0, padding))
    return out[..., 0, :]


def _pool_windows(x, k, stride, padding, fill):
    (kh, kw) = _pair(k)
    sh, sw, ph, pw, Ho, Wo = _geometry(x, kh, kw, stride if stride is not None else k, padding)
    pad = [(0, 0)] * (x.ndim - 2) + [(ph, ph), (pw, pw)]
    xp = np.pad(x, pad, constant_values=fill)
    return np.stack([_windows(xp, a, c, Ho, Wo, sh, sw) for a in range(kh) for c in range(kw)])


def np_max_pool2d(x, k, stride=None, padding=0):
    return _pool_windows(x, k, stride, padding, -np.inf).max(axis=0)


def np_avg_pool2d(x, k, stride=None, padding=0):
    return _pool_windows(x, k, stride, padding, 0.0).mean(axis=0)


def np_max_pool2d_grad(x, k, stride=None, padding=0):
    """d/dx of 0.5 * sum(max_pool2d(x)**2): each window's maximum added at its argmax."""
    (kh, kw) = _pair(k)
    sh, sw, ph, pw, Ho, Wo = _geometry(x, kh, kw, stride if stride is not None else k, padding)
    g = np.zeros_like(x).reshape(-1, *x.shape[-2:])
    for p, plane in enumerate(x.reshape(-1, *x.shape[-2:])):
        for i in range(Ho):
            for j in range(Wo):
                r0, c0 = i * sh - ph, j * sw - pw
                win = plane[max(r0, 0):r0 + kh, max(c0, 0):c0 + kw]
                r, c = np.unravel_index(np.argmax(win), win.shape)
                g[p, max(r0, 0) + r, max(c0, 0) + c] += win[r, c]
    return g.reshape(x.shape)


# ---------------------------------------------------------------------------- guard helpers
def _guard_branch(x):
    # `if` on a comparison Var records a GUARD; inputs are positive so the branch is stable
    if x.sum() > 0:
        return x * 2.0
    return x * -3.0


def _guard_param(x, y):
    # bool() directly on a size-1 parameter
    return y * x if x else y


def _guard_value(x):
    # the guarded Var must keep its value and receive no extra gradient
    s = tg.sum(x * x)
    assert bool(s)
    return s * 1.5


# ---------------------------------------------------------------------------- the table
UNARY_CASES = [C((2, 3)), C(()), C((2, 3, 2))]

BINARY_CASES = [
    C((2, 3), (2, 3), id="same"),
    C((), (2, 3), id="scalar_left"),
    C((2, 3), (), id="scalar_right"),
    C((3,), (2, 3), id="row"),
    C((2, 3), (3,), id="row_right"),
    C((2, 1), (2, 3), id="col"),
    C((2, 1), (1, 3), id="both"),
    C((1,), (2, 3), id="one_elem"),
    C((2, 3, 4), (3, 1), id="3d"),
    C((4, 1, 3), (2, 1), id="3d_both"),
]

_AX3 = [  # (axis, keepdims) cases on a (2, 3, 4) input
    dict(axis=None, keepdims=False), dict(axis=0, keepdims=False), dict(axis=1, keepdims=False),
    dict(axis=-1, keepdims=False), dict(axis=(0, 2), keepdims=False),
    dict(axis=(0, 1), keepdims=False), dict(axis=(1, 2), keepdims=True),
    dict(axis=None, keepdims=True), dict(axis=1, keepdims=True),
]


def _reduce_cases():
    cases = [C((2, 3, 4), id=f"ax{kw['axis']}_keep{int(kw['keepdims'])}".replace(" ", ""),
               **kw) for kw in _AX3]
    cases += [C((), id="0d", axis=None, keepdims=False),
              C((5,), id="1d", axis=0, keepdims=False),
              C((3, 4), id="2d_neg", axis=(-2,), keepdims=True)]
    return cases


def _softmax_cases():
    return [C((2, 3, 4), id="ax-1", axis=-1), C((2, 3, 4), id="ax0", axis=0),
            C((2, 3, 4), id="ax1", axis=1), C((5,), id="1d", axis=0),
            C((3, 4), id="axNone", axis=None),
            # rows of 2 to 4: the written-out one-row path (ops/reduce.py softmax_row)
            C((4,), id="row4", axis=0), C((3,), id="row3", axis=0), C((2,), id="row2", axis=0),
            C((2, 3), id="rows3", axis=-1)]



_S = slice
INDEX_CASES = [
    C((4, 5), id="int", key=1),
    C((4, 5), id="neg_int", key=-1),
    C((4,), id="int_of_vector", key=-3),
    C((4, 5), id="two_ints", key=(1, 2)),
    C((4, 5), id="slice", key=_S(1, 3)),
    C((4, 5), id="step2", key=(_S(None, None, 2), _S(1, None))),
    C((4, 5), id="step3_int", key=(_S(0, 4, 3), -2)),
    C((4, 5), id="empty", key=_S(2, 2)),
    C((4, 5), id="ellipsis_int", key=(Ellipsis, 2)),
    C((4, 5), id="none_int_ellipsis", key=(None, 1, Ellipsis)),
    C((4, 5), id="none_middle", key=(_S(None), None, 2)),
    C((4, 5), id="slice_none", key=(_S(1, 4, 2), None)),
    C((2, 3, 4), id="3d_int_ellipsis_int", key=(0, Ellipsis, 1)),
    C((2, 3, 4), id="3d_mid", key=(_S(None), 1)),
    C((2, 3, 4), id="3d_mixed", key=(1, _S(0, 3, 2), -1)),
    C((6,), id="1d_to_0d", key=3),
    C((6,), id="1d_step", key=_S(1, 6, 3)),
    # negative steps
    C((4, 5), id="rev", key=_S(None, None, -1)),
    C((4, 5), id="rev2_rev", key=(_S(None, None, -2), _S(3, 0, -1))),
    C((2, 3, 4), id="3d_ellipsis_rev", key=(Ellipsis, _S(None, None, -1))),
    C((6,), id="1d_rev3", key=_S(5, None, -3)),
]

MATMUL_CASES = [
    C((3,), (3,), id="1d@1d"),
    C((3,), (3, 4), id="1d@2d"),
    C((2, 3), (3,), id="2d@1d"),
    C((2, 3), (3, 4), id="2d@2d"),
    C((5, 2, 3), (5, 3, 4), id="3d@3d"),
    C((5, 2, 3), (3, 4), id="3d@2d"),
    C((4, 2, 3), (3,), id="3d@1d"),
    C((3,), (4, 3, 5), id="1d@3d"),
    C((2, 3), (4, 3, 5), id="2d@3d"),
    C((1, 2, 3), (4, 3, 5), id="bcast_1"),
    C((2, 1, 2, 3), (3, 3, 2), id="bcast_both"),
    C((40, 30), (30, 30), id="blas_2d"),
    C((2, 40, 30), (2, 30, 30), id="blas_3d@3d"),
    C((2, 40, 30), (30, 30), id="blas_3d@2d"),
    C((40, 30), (2, 30, 30), id="blas_shared_left"),
]

BCAST_CASES = [
    C((3, 1, 4), (1, 2, 4), id="outer_rows"),     # gmm's x - mu: x lacks axis 1, y axis 0
    C((3, 2, 4), (2, 1), id="y_lacks_last"),      # y one value per contiguous row
    C((3, 2, 1), (3, 1, 4), id="x_lacks_last"),
    C((2, 3), (3,), id="row_vector"),
    C((), (2, 3), id="scalar_x"),
    C((2, 1, 3), (2, 3), id="both_broadcast"),
    C((4, 1, 3, 1), (4, 5, 1, 2), id="four_runs"),  # not 3-D: the EXPAND path
]

SPECS = [
    # ------------------------------------------------------------------ unary
    Spec("neg", (Op.NEG,), lambda x: tg.neg(x), np.negative, UNARY_CASES),
    Spec("neg_operator", (Op.NEG,), lambda x: -x, np.negative, [C((3,))]),
    Spec("exp", (Op.EXP,), lambda x: tg.exp(x), np.exp, UNARY_CASES),
    Spec("log", (Op.LOG,), lambda x: tg.log(x), np.log, UNARY_CASES, positive),
    Spec("sqrt", (Op.SQRT,), lambda x: tg.sqrt(x), np.sqrt, UNARY_CASES, positive),
    Spec("sin", (Op.SIN,), lambda x: tg.sin(x), np.sin, UNARY_CASES, wide),
    Spec("cos", (Op.COS,), lambda x: tg.cos(x), np.cos, UNARY_CASES, wide),
    Spec("tanh", (Op.TANH,), lambda x: tg.tanh(x), np.tanh, UNARY_CASES),
    Spec("sigmoid", (Op.SIGMOID,), lambda x: tg.sigmoid(x), np_sigmoid, UNARY_CASES, wide),
    Spec("relu", (Op.RELU,), lambda x: tg.relu(x), np_relu, UNARY_CASES, distinct),
    Spec("leaky_relu_default", (Op.LEAKY_RELU,), lambda x: tg.leaky_relu(x),
         lambda x: np_leaky_relu(x, 0.01), UNARY_CASES, distinct),
    Spec("leaky_relu_slope", (Op.LEAKY_RELU,), lambda x: tg.leaky_relu(x, negative_slope=0.2),
         lambda x: np_leaky_relu(x, 0.2), UNARY_CASES, distinct),
    Spec("abs", (Op.ABS,), lambda x: tg.abs(x), np.abs, UNARY_CASES, distinct),
    Spec("abs_builtin", (Op.ABS,), lambda x: abs(x), np.abs, [C((2, 3))], distinct),
    Spec("square", (Op.SQUARE,), lambda x: tg.square(x), np.square, UNARY_CASES),
    Spec("powc_int", (Op.POWC,), lambda x: x ** 3, lambda x: x ** 3.0, UNARY_CASES),
    Spec("powc_frac", (Op.POWC,), lambda x: tg.pow(x, 2.5), lambda x: np.power(x, 2.5),
         UNARY_CASES, positive),
    Spec("powc_neg", (Op.POWC,), lambda x: x ** -1.5, lambda x: np.power(x, -1.5),
         UNARY_CASES, positive),
    Spec("powc_zero", (Op.POWC,), lambda x: x ** 0, lambda x: np.ones_like(x), [C((2, 3))]),
    # ------------------------------------------------------------------ binary
    Spec("add", (Op.ADD,), lambda x, y: tg.add(x, y), np.add, BINARY_CASES),
    Spec("add_operator", (Op.ADD,), lambda x, y: x + y, np.add, [C((2, 3), (3,))]),
    Spec("sub", (Op.SUB,), lambda x, y: tg.sub(x, y), np.subtract, BINARY_CASES),
    Spec("mul", (Op.MUL,), lambda x, y: tg.mul(x, y), np.multiply, BINARY_CASES),
    Spec("div", (Op.DIV,), lambda x, y: tg.div(x, y), np.divide, BINARY_CASES,
         each(normal, positive)),
    Spec("div_operator", (Op.DIV,), lambda x, y: x / y, np.divide, [C((2, 1), (1, 3))],
         each(normal, positive)),
    Spec("pow", (Op.POW,), lambda x, y: tg.pow(x, y), np.power, BINARY_CASES,
         each(positive, normal)),
    Spec("pow_operator", (Op.POW,), lambda x, y: x ** y, np.power, [C((3,), (2, 3))],
         each(positive, normal)),
    Spec("maximum", (Op.MAXIMUM,), lambda x, y: tg.maximum(x, y), np.maximum, BINARY_CASES,
         distinct),
    Spec("minimum", (Op.MINIMUM,), lambda x, y: tg.minimum(x, y), np.minimum,
         BINARY_CASES, distinct),
    Spec("minimum_const", (Op.MINIMUM,), lambda x: tg.minimum(x, 0.0),
         lambda x: np.minimum(x, 0.0), [C((2, 3))], distinct),
    Spec("maximum_const", (Op.MAXIMUM,), lambda x: tg.maximum(x, 0.0),
         lambda x: np.maximum(x, 0.0), [C((2, 3))], distinct),
    # BCAST: add sub mul div of broadcast operands as one instruction (tapegrad/ops/bcast.py;
    # the operators record it from bcast.MIN_SIZE output elements, bcast() at any size)
    *[Spec(f"bcast_{name}", (Op.BCAST,), (lambda o: lambda x, y: bcast(o, x, y))(op), ref,
           BCAST_CASES, gen)
      for name, op, ref, gen in (("add", Op.ADD, np.add, None),
                                 ("sub", Op.SUB, np.subtract, None),
                                 ("mul", Op.MUL, np.multiply, None),
                                 ("div", Op.DIV, np.divide, each(normal, positive)))],
    Spec("bcast_operator", (Op.BCAST,), lambda x, y: (x - y) * y, lambda x, y: (x - y) * y,
         [C((16, 1, 8), (1, 8, 8), id="gmm_like")]),  # 1024 elements: MIN_SIZE
    # ndarrays on either side of an operator become constant buffers (broadcast by EXPAND)
    Spec("const_operands", (Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.POW),
         lambda x: (x * np.full(3, 2.0) - np.full(3, 1.5)) / np.full(3, 3.0) + np.arange(3.0)
         - np.full(3, 1.0) / x + np.full(3, 2.0) ** x - np.ones((2, 1)) * x,
         lambda x: (x * np.full(3, 2.0) - np.full(3, 1.5)) / np.full(3, 3.0) + np.arange(3.0)
         - np.full(3, 1.0) / x + np.full(3, 2.0) ** x - np.ones((2, 1)) * x,
         [C((2, 3)), C((3,)), C(())], positive),
    # Python and NumPy numbers are immediates: one instruction, no buffer (ops/immediate.py)
    Spec("immediates", (Op.ADDC, Op.MULC, Op.RSUBC, Op.DIVC, Op.RDIVC, Op.RPOWC),
         lambda x: ((x + 1) * 0.5 - 3) / 7.0 + (2 - x) * (1.5 / x) + 0.5 ** x
         + np.float32(2.5) * x + x * np.int64(3) - True + 2.0 ** x,
         lambda x: ((x + 1) * 0.5 - 3) / 7.0 + (2 - x) * (1.5 / x) + 0.5 ** x
         + np.float32(2.5) * x + x * np.int64(3) - True + 2.0 ** x,
         [C((2, 3)), C((3,)), C(())], positive),
    # a Var used several times: gradients accumulate
    Spec("reuse", (Op.MUL, Op.ADD, Op.EXP, Op.SUB, Op.DIVC),
         lambda x: x * x + tg.exp(x) * x - x / 2.0,
         lambda x: x * x + np.exp(x) * x - x / 2.0, [C((2, 3))]),
    # ------------------------------------------------------------------ comparisons
    Spec("gt", (Op.GT,), lambda x, y: x > y, np.greater, BINARY_CASES[:6], distinct,
         zero_grad=True),
    Spec("ge", (Op.GE,), lambda x, y: x >= y, np.greater_equal, BINARY_CASES[:6], distinct,
         zero_grad=True),
    Spec("lt", (Op.LT,), lambda x, y: x < y, np.less, BINARY_CASES[:6], distinct,
         zero_grad=True),
    Spec("le", (Op.LE,), lambda x, y: x <= y, np.less_equal, BINARY_CASES[:6], distinct,
         zero_grad=True),
    Spec("eq", (Op.EQ,), lambda x, y: x == y, np.equal, BINARY_CASES[:6], ties,
         zero_grad=True),
    Spec("ne", (Op.NE,), lambda x, y: x != y, np.not_equal, BINARY_CASES[:6], ties,
         zero_grad=True),
    Spec("eq_ne_functions", (Op.EQ, Op.NE), lambda x, y: tg.ops.eq(x, y) + 2 * tg.ops.ne(y, x),
         lambda x, y: np.equal(x, y) + 2 * np.not_equal(y, x), [C((2, 3), (3,))], ties,
         zero_grad=True),
    # (a condition on the inputs themselves would jump at the ties finite differences sit on)
    Spec("where_eq_const", (Op.WHERE, Op.EQ, Op.NE),
         lambda x: tg.where(x.tape.input("c", value=checker(x.shape)) == 1.0, 10.0 * x, x)
         + (100.0 != x),
         lambda x: np.where(checker(x.shape) == 1.0, 10.0 * x, x) + (100.0 != x),
         [C((3, 4))]),
    Spec("compare_number", (Op.GT, Op.LT), lambda x: tg.stack([0.0 < x, x < 0.0]),
         lambda x: np.stack([0.0 < x, x < 0.0]), [C((2, 3))], distinct, zero_grad=True),
    Spec("compare_ties", (Op.GT, Op.GE, Op.LT, Op.LE, Op.EQ, Op.NE),
         lambda x: tg.stack([x > x, x >= x, x < x, x <= x, x == x, x != x]),
         lambda x: np.stack([x > x, x >= x, x < x, x <= x, x == x, x != x]), [C((2, 3))],
         zero_grad=True),
    Spec("mask_mul", (Op.GT, Op.MUL), lambda x, y: x * (x > y),
         lambda x, y: x * (x > y), [C((2, 3), (3,)), C((2, 1), (1, 3))], distinct),
    # ------------------------------------------------------------------ where
    Spec("where_cmp", (Op.WHERE, Op.GT), lambda x, y: tg.where(x > y, x, y),
         lambda x, y: np.where(x > y, x, y), BINARY_CASES, distinct),
    Spec("where_const_cond", (Op.WHERE,),
         lambda x, y, cshape: tg.where(checker(cshape), x, y),
         lambda x, y, cshape: np.where(checker(cshape) != 0, x, y),
         [C((2, 3), (2, 3), id="same", cshape=(2, 3)),
          C((2, 3), (3,), id="cond_col", cshape=(2, 1)),
          C((), (2, 1), id="scalar_x", cshape=(1, 3)),
          C((3, 1, 4), (2, 1), id="3d", cshape=(3, 2, 1))]),
    Spec("where_number", (Op.WHERE, Op.GT, Op.MULC),
         lambda x: tg.where(x > 0, x, 0.1 * x) + tg.where(x < 0, 0.5, x),
         lambda x: np.where(x > 0, x, 0.1 * x) + np.where(x < 0, 0.5, x),
         [C((2, 3))], distinct),
    Spec("clip", (Op.WHERE, Op.LT, Op.GT), lambda x: tg.clip(x, -0.5, 0.5),
         lambda x: np.clip(x, -0.5, 0.5), [C((2, 3)), C((4,))], distinct),
    # ------------------------------------------------------------------ expand
    Spec("expand", (Op.EXPAND, Op.MUL),
         lambda x, shape: x * np.ones(shape), lambda x, shape: x * np.ones(shape),
         [C((2, 1, 4), id="middle", shape=(2, 3, 4)),
          C((1, 3, 1), id="two_runs", shape=(2, 3, 4)),
          C((4,), id="leading", shape=(2, 3, 4)),
          C((3, 1), id="new_and_last", shape=(2, 3, 4))]),
    # ------------------------------------------------------------------ indexing (SLICE)
    Spec("index", (Op.SLICE,), lambda x, key: x[key], lambda x, key: np.asarray(x[key]),
         INDEX_CASES),
    # overlapping slices of one Var: their gradients must accumulate
    Spec("index_slices", (Op.SLICE, Op.MUL, Op.ADD),
         lambda x: x[1:, ::2] * x[:-1, 1::2] + x[:-1, ::2],
         lambda x: x[1:, ::2] * x[:-1, 1::2] + x[:-1, ::2], [C((3, 4))]),
    # the reverse rule of a slice records its transpose (UNSLICE): a gradient as the value
    Spec("unslice", (Op.UNSLICE, Op.SLICE),
         lambda x: tg.gradients((x[1:, ::-2] ** 3).sum(), [x])[0],
         lambda x: _np_unslice(x), [C((3, 4)), C((2, 5))]),
    # ------------------------------------------------------------------ concatenate / stack (PLACE)
    Spec("concatenate", (Op.PLACE,), lambda *xs, axis: tg.concatenate(list(xs), axis=axis),
         lambda *xs, axis: np.concatenate(xs, axis=axis),
         [C((2, 3), (4, 3), id="ax0", axis=0),
          C((2, 3), (2, 2), id="ax1", axis=1),
          C((2, 3, 1), (2, 3, 4), id="3d_ax-1", axis=-1),
          C((2, 1, 3), (2, 2, 3), (2, 3, 3), id="3d_ax1_three", axis=1),
          C((3,), (4,), id="1d", axis=0)]),
    Spec("concatenate_const_and_repeat", (Op.PLACE,),
         lambda x: tg.concatenate([x, np.ones((1, 3)), x], axis=0),
         lambda x: np.concatenate([x, np.ones((1, 3)), x], axis=0), [C((2, 3))]),
    Spec("stack", (Op.PLACE,), lambda *xs, axis: tg.stack(list(xs), axis=axis),
         lambda *xs, axis: np.stack(xs, axis=axis),
         [C((2, 3), (2, 3), id="ax0", axis=0),
          C((2, 3), (2, 3), (2, 3), id="ax1", axis=1),
          C((2, 3), (2, 3), id="ax-1", axis=-1),
          C((), (), (), id="scalars", axis=0)]),
    # ------------------------------------------------------------------ transpose
    Spec("transpose_T", (Op.TRANSPOSE,), lambda x: x.T, lambda x: x.T, [C((2, 3))]),
    Spec("transpose", (Op.TRANSPOSE,), lambda x, axes: tg.transpose(x, axes),
         lambda x, axes: np.transpose(x, axes),
         [C((2, 3), id="2d", axes=None),
          C((2, 3, 4), id="rev", axes=None),
          C((2, 3, 4), id="021", axes=(0, 2, 1)),
          C((2, 3, 4), id="102", axes=(1, 0, 2)),
          C((2, 3, 4), id="201", axes=(2, 0, 1)),
          C((2, 3, 4), id="120", axes=(1, 2, 0)),
          C((2, 3, 4), id="neg", axes=(-1, 0, 1)),
          C((2, 1, 3), id="unit_axis", axes=(2, 1, 0)),
          C((2, 3, 4, 2), id="4d", axes=(3, 1, 0, 2))]),
    # ------------------------------------------------------------------ reshape (no opcode)
    Spec("reshape", (), lambda x, shape: tg.reshape(x, shape),
         lambda x, shape: np.reshape(x, shape),
         [C((2, 3), id="3x2", shape=(3, 2)), C((2, 3), id="flat", shape=(-1,)),
          C((2, 3, 4), id="infer", shape=(4, -1)), C((1,), id="to_0d", shape=())]),
    Spec("reshape_chain", (Op.EXP, Op.SLICE, Op.MUL),
         lambda x: tg.exp(x).reshape(3, -1)[1] * x.reshape(6)[::3],
         lambda x: np.exp(x).reshape(3, -1)[1] * x.reshape(6)[::3], [C((2, 3))]),
    # ------------------------------------------------------------------ reductions
    Spec("sum", (Op.SUM,), lambda x, axis, keepdims: tg.sum(x, axis=axis, keepdims=keepdims),
         lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims), _reduce_cases()),
    Spec("mean", (Op.SUM, Op.MULC),
         lambda x, axis, keepdims: tg.mean(x, axis=axis, keepdims=keepdims),
         lambda x, axis, keepdims: np.mean(x, axis=axis, keepdims=keepdims), _reduce_cases()),
    Spec("max", (Op.MAX,), lambda x, axis, keepdims: tg.max(x, axis=axis, keepdims=keepdims),
         lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims), _reduce_cases(),
         distinct),
    Spec("reduce_methods", (Op.SUM, Op.MAX, Op.MULC, Op.ADD),
         lambda x: x.sum(axis=1) + x.mean(axis=0, keepdims=True).reshape(3, 1) + x.max(),
         lambda x: x.sum(axis=1) + x.mean(axis=0, keepdims=True).reshape(3, 1) + x.max(),
         [C((3, 3))], distinct),
    Spec("logsumexp", (Op.LOGSUMEXP,),
         lambda x, axis, keepdims: tg.logsumexp(x, axis=axis, keepdims=keepdims),
         lambda x, axis, keepdims: scipy.special.logsumexp(x, axis=axis, keepdims=keepdims),
         [C((2, 3, 4), id="ax-1", axis=-1, keepdims=False),
          C((2, 3, 4), id="ax0", axis=0, keepdims=False),
          C((2, 3, 4), id="ax1_keep", axis=1, keepdims=True),
          C((2, 3, 4), id="ax12", axis=(1, 2), keepdims=False),
          C((2, 3, 4), id="axNone", axis=None, keepdims=False),
          C((5,), id="1d", axis=-1, keepdims=False),
          C((), id="0d", axis=None, keepdims=False)], wide),
    Spec("logsumexp_default_axis", (Op.LOGSUMEXP,), lambda x: tg.logsumexp(x),
         lambda x: scipy.special.logsumexp(x, axis=-1), [C((3, 4))], wide),
    Spec("softmax", (Op.SOFTMAX,), lambda x, axis: tg.softmax(x, axis=axis),
         lambda x, axis: scipy.special.softmax(x, axis=axis), _softmax_cases(), wide),
    Spec("log_softmax", (Op.LOG_SOFTMAX,), lambda x, axis: tg.log_softmax(x, axis=axis),
         lambda x, axis: scipy.special.log_softmax(x, axis=axis), _softmax_cases(), wide),
    Spec("softmax_default_axis", (Op.SOFTMAX, Op.LOG_SOFTMAX),
         lambda x: tg.softmax(x) * tg.log_softmax(x),
         lambda x: scipy.special.softmax(x, axis=-1) * scipy.special.log_softmax(x, axis=-1),
         [C((3, 4))], wide),
    # large logits: the max-shift must keep these finite and exact
    Spec("softmax_large", (Op.SOFTMAX, Op.LOG_SOFTMAX, Op.ADDC),
         lambda x: tg.softmax(x + 800.0, axis=1) + tg.log_softmax(x - 800.0, axis=0),
         lambda x: scipy.special.softmax(x + 800.0, axis=1)
         + scipy.special.log_softmax(x - 800.0, axis=0), [C((3, 4))], wide),
    # ------------------------------------------------------------------ matmul
    Spec("matmul", (Op.MATMUL,), lambda x, y: tg.matmul(x, y), np.matmul, MATMUL_CASES),
    Spec("matmul_operator_const", (Op.MATMUL,),
         lambda x: (np.arange(6.0).reshape(2, 3) - 2.5) @ x @ np.ones((4, 2)),
         lambda x: (np.arange(6.0).reshape(2, 3) - 2.5) @ x @ np.ones((4, 2)), [C((3, 4))]),
    Spec("matmul_self", (Op.MATMUL,), lambda x: x @ x, lambda x: x @ x,
         [C((3, 3), id="small"), C((33, 33), id="blas")]),
    # ------------------------------------------------------------------ tg.linalg (ops/factor.py)
    Spec("solve", (Op.SOLVE,), lambda a, b: tg.linalg.solve(a, b), np.linalg.solve,
         [C((3, 3), (3,), id="vec"), C((3, 3), (3, 2), id="mat"),
          C((2, 3, 3), (2, 3, 2), id="stack"), C((2, 3, 3), (3,), id="stack_vec"),
          C((3, 3), (2, 3, 2), id="shared_a"), C((2, 1, 3, 3), (4, 3, 1), id="bcast"),
          C((1, 1), (1,), id="1x1"), C((12, 12), (12, 3), id="12x12")],
         each(well_conditioned, normal)),
    Spec("inv", (Op.SOLVE,), lambda a: tg.linalg.inv(a), np.linalg.inv,
         [C((3, 3)), C((2, 4, 4))], well_conditioned),
    # only the lower triangle is read, and the gradient is that of a symmetric input: the
    # same as cholesky((a + a^T) / 2)'s, whose finite differences the reference gives
    Spec("cholesky", (Op.CHOLESKY,), lambda a: tg.linalg.cholesky(a),
         lambda a: np.linalg.cholesky(np_sym(a)),
         [C((3, 3)), C((2, 4, 4)), C((1, 1)), C((10, 10))], spd),
    Spec("solve_triangular", (Op.TRISOLVE,),
         lambda a, b, **kw: tg.linalg.solve_triangular(a, b, **kw), np_solve_triangular,
         [C((3, 3), (3,), id="lower_vec", lower=True, trans=0, unit_diagonal=False),
          C((3, 3), (3, 2), id="upper", lower=False, trans=0, unit_diagonal=False),
          C((3, 3), (3, 2), id="lower_T", lower=True, trans=1, unit_diagonal=False),
          C((3, 3), (3, 2), id="upper_T_unit", lower=False, trans="T", unit_diagonal=True),
          C((4, 4), (4, 1), id="lower_unit", lower=True, trans=0, unit_diagonal=True),
          C((2, 3, 3), (2, 3, 2), id="stack", lower=True, trans=0, unit_diagonal=False),
          C((3, 3), (2, 3, 2), id="shared_a", lower=False, trans=1, unit_diagonal=False)],
         each(well_conditioned, normal)),
    Spec("triangular_solve_right_upper", (Op.TRISOLVE, Op.TRANSPOSE),
         lambda a, b: tg.linalg.triangular_solve(a, b, upper=True, left=False),
         lambda a, b: np.swapaxes(np.linalg.solve(np.swapaxes(np.triu(a), -1, -2),
                                                  np.swapaxes(b, -1, -2)), -1, -2),
         [C((3, 3), (2, 3)), C((2, 3, 3), (2, 4, 3))], each(well_conditioned, normal)),
    Spec("triangular_solve_left", (Op.TRISOLVE,),
         lambda a, b: tg.linalg.triangular_solve(a, b, unitriangular=True),
         lambda a, b: np.linalg.solve(np.tril(a, -1) + np.eye(3), b),
         [C((3, 3), (3, 2))], each(well_conditioned, normal)),
    Spec("slogdet", (Op.SLOGDET, Op.SLICE), lambda a: tg.linalg.slogdet(a).logabsdet,
         lambda a: np.linalg.slogdet(a).logabsdet,
         [C((3, 3)), C((2, 3, 3)), C((1, 1)), C((8, 8))], well_conditioned),
    Spec("slogdet_negative", (Op.SLOGDET, Op.SLICE), lambda a: tg.linalg.slogdet(a).logabsdet,
         lambda a: np.linalg.slogdet(a).logabsdet, [C((3, 3))],
         lambda rng, shapes: [-m for m in well_conditioned(rng, shapes)]),
    Spec("slogdet_sign", (Op.SLOGDET, Op.SLICE), lambda a: tg.linalg.slogdet(a).sign,
         lambda a: np.linalg.slogdet(a).sign, [C((3, 3)), C((2, 4, 4))],
         lambda rng, shapes: [m * np.where(np.arange(m.shape[-1]) == 0, -1.0, 1.0)
                              for m in well_conditioned(rng, shapes)], zero_grad=True),
    Spec("logdet", (Op.SLOGDET,), lambda a: tg.linalg.logdet(a),
         lambda a: np.linalg.slogdet(a).logabsdet, [C((3, 3)), C((2, 4, 4))], spd),
    Spec("gp_nll", (Op.CHOLESKY, Op.TRISOLVE, Op.MATMUL), _tg_gp_nll, np_gp_nll,
         [C((5, 2), (5,))]),
    # ------------------------------------------------------------------ losses
    Spec("cross_entropy", (Op.CROSS_ENTROPY,),
         lambda x, labels, reduction: tg.cross_entropy(x, labels, reduction=reduction),
         np_cross_entropy,
         [C((4, 5), id="2d_mean", labels=np.array([3, 0, 4, 1]), reduction="mean"),
          C((4, 5), id="2d_sum", labels=np.array([2, 2, 0, 4]), reduction="sum"),
          C((4, 5), id="2d_none", labels=np.array([1, 3, 3, 0]), reduction="none"),
          C((5,), id="1d_mean", labels=np.array(2), reduction="mean"),
          C((5,), id="1d_sum", labels=4, reduction="sum"),
          C((5,), id="1d_none", labels=np.int64(0), reduction="none"),
          C((1, 3), id="one_row", labels=np.array([2], np.int32), reduction="mean")], wide),
    # cross_entropy's reverse rule records softmax minus a one-hot row (ONEHOT)
    Spec("cross_entropy_grad", (Op.ONEHOT, Op.SOFTMAX),
         lambda x: tg.gradients(tg.cross_entropy(
             x, x.tape.input("labels", value=np.array([0.0, 2.0, 1.0]))), [x])[0],
         lambda x: (scipy.special.softmax(x, axis=1) - np.eye(3)[[0, 2, 1]]) / 3,
         [C((3, 3))], wide),
    Spec("cross_entropy_default", (Op.CROSS_ENTROPY, Op.SUM, Op.MULC),
         lambda x: tg.cross_entropy(x, np.array([0, 2, 1])),
         lambda x: np_cross_entropy(x, np.array([0, 2, 1])), [C((3, 3))], wide),
    Spec("mse_loss", (Op.SUB, Op.SQUARE, Op.SUM),
         lambda p, t, reduction: tg.mse_loss(p, t, reduction=reduction), np_mse,
         [C((4, 3), (4, 3), id="mean", reduction="mean"),
          C((4, 3), (4, 3), id="sum", reduction="sum"),
          C((4, 3), (4, 3), id="none", reduction="none"),
          C((5,), (5,), id="1d_default", reduction="mean")]),
    # ------------------------------------------------------------------ convolution, pooling
    Spec("conv2d", (Op.CONV2D,),
         lambda x, w, stride, padding: tg.conv2d(x, w, stride=stride, padding=padding),
         lambda x, w, stride, padding: np_conv2d(x, w, None, stride, padding),
         [C((2, 3, 5, 6), (4, 3, 3, 3), id="pad1", stride=1, padding=1),
          C((2, 2, 7, 6), (3, 2, 3, 2), id="stride21_pad12", stride=(2, 1), padding=(1, 2)),
          C((1, 1, 4, 4), (2, 1, 4, 4), id="full_kernel", stride=1, padding=0),
          C((2, 3, 5, 5), (2, 3, 1, 1), id="1x1_stride2", stride=2, padding=0),
          C((3, 5, 6), (2, 3, 3, 3), id="unbatched", stride=1, padding=1),
          C((2, 8, 9, 9), (16, 8, 3, 3), id="blas", stride=1, padding=1)]),
    Spec("conv2d_bias", (Op.CONV2D, Op.ADD),
         lambda x, w, b, padding: tg.conv2d(x, w, b, padding=padding),
         lambda x, w, b, padding: np_conv2d(x, w, b, 1, {"same": 1, "valid": 0}[padding]),
         [C((2, 2, 4, 5), (3, 2, 3, 3), (3,), id="same", padding="same"),
          C((2, 4, 4), (3, 2, 3, 3), (3,), id="unbatched_valid", padding="valid")]),
    # the reverse rule records both transposes: a gradient as the value
    Spec("conv2d_grads", (Op.CONV2D_GRAD_X, Op.CONV2D_GRAD_W),
         lambda x, w, stride, padding: tg.concatenate([g.reshape(-1) for g in tg.gradients(
             0.5 * (tg.conv2d(x, w, stride=stride, padding=padding) ** 2).sum(), [x, w])]),
         np_conv2d_grads,
         [C((2, 2, 5, 4), (3, 2, 3, 2), id="pad1", stride=1, padding=1),
          C((1, 2, 6, 7), (2, 2, 2, 3), id="stride2", stride=2, padding=(0, 1)),
          C((2, 8, 8, 9), (16, 8, 3, 3), id="blas", stride=1, padding=1)], small),
    Spec("conv1d", (Op.CONV2D,),
         lambda x, w, stride, padding: tg.conv1d(x, w, stride=stride, padding=padding),
         lambda x, w, stride, padding: np_conv1d(x, w, None, stride, padding),
         [C((2, 3, 9), (4, 3, 3), id="pad1", stride=1, padding=1),
          C((3, 8), (2, 3, 4), id="unbatched_stride2", stride=2, padding=2)]),
    Spec("conv1d_bias", (Op.CONV2D, Op.ADD), lambda x, w, b: tg.conv1d(x, w, b),
         lambda x, w, b: np_conv1d(x, w, b), [C((2, 2, 6), (3, 2, 3), (3,))]),
    Spec("avg_pool2d", (Op.CONV2D,),
         lambda x, k, stride, padding: tg.avg_pool2d(x, k, stride=stride, padding=padding),
         np_avg_pool2d,
         [C((2, 3, 4, 6), id="k2", k=2, stride=None, padding=0),
          C((2, 2, 5, 5), id="k3_s2_p1", k=3, stride=2, padding=1),
          C((3, 5, 4), id="unbatched_k21", k=(2, 1), stride=(1, 2), padding=(1, 0))]),
    Spec("max_pool2d", (Op.MAX_POOL2D,),
         lambda x, k, stride, padding: tg.max_pool2d(x, k, stride=stride, padding=padding),
         np_max_pool2d,
         [C((2, 3, 4, 6), id="k2", k=2, stride=None, padding=0),
          C((2, 2, 5, 5), id="k3_s2_p1", k=3, stride=2, padding=1),
          C((2, 2, 5, 6), id="overlap", k=(3, 2), stride=1, padding=(1, 1)),
          C((3, 5, 4), id="unbatched", k=2, stride=(1, 2), padding=0)], distinct),
    # max_pool2d's reverse rule records MAX_UNPOOL2D, and that one's MAX_POOL2D of a cotangent
    Spec("max_pool2d_grad", (Op.MAX_UNPOOL2D, Op.MAX_POOL2D),
         lambda x, k, stride, padding: tg.gradients(
             0.5 * (tg.max_pool2d(x, k, stride=stride, padding=padding) ** 2).sum(), [x])[0],
         np_max_pool2d_grad,
         [C((2, 2, 4, 4), id="k2", k=2, stride=None, padding=0),
          C((1, 2, 5, 5), id="k3_s2_p1", k=3, stride=2, padding=1),
          C((1, 1, 4, 5), id="overlap", k=2, stride=1, padding=0)], distinct),
    # ------------------------------------------------------------------ guard
    Spec("guard_branch", (Op.GUARD, Op.GT, Op.SUM, Op.MULC), _guard_branch,
         lambda x: np.where(x.sum() > 0, 2.0 * x, -3.0 * x), [C((2, 3)), C((4,))], positive),
    Spec("guard_param", (Op.GUARD, Op.MUL), _guard_param,
         lambda x, y: y * x if x.reshape(-1)[0] != 0 else y,
         [C((), (2, 3), id="0d"), C((1,), (3,), id="1elem")], positive),
    Spec("guard_value", (Op.GUARD, Op.MUL, Op.SUM), _guard_value,
         lambda x: 1.5 * np.sum(x * x), [C((2, 3))]),
]


# ------------------------------------------------------------------ gather (GATHER, SCATTER_ADD)
def _ids(x, name, values):
    """An index input on x's tape: integer values stored as floats (token ids fed as data)."""
    return x.tape.input(name, value=np.asarray(values, dtype=float))


def _np_scatter_grad(x, idx):
    """d/dx of sum(x[idx] ** 3): 3 x[idx]**2 scatter-added back (duplicates accumulate)."""
    g = np.zeros_like(x)
    np.add.at(g, idx, 3 * x[idx] ** 2)
    return g


_LAB = np.array([2, 0, 3, 3])
_MASK = np.array([[True, False, True, True], [False, False, False, True],
                  [True, True, False, False]])
GATHER_INDEX_CASES = [
    C((4, 5), id="rows_dup", key=np.array([0, 2, 2, -1])),
    C((4, 5), id="list", key=[3, 1]),
    C((4, 5), id="cols", key=(_S(None), np.array([4, 0, 4]))),
    C((4, 5), id="pick", key=(np.arange(4), _LAB)),
    C((4, 5), id="pick_2d_idx", key=(np.array([[0, 1], [3, 3]]), np.array([[1, -1], [0, 0]]))),
    C((4, 5), id="bcast", key=(np.array([[0], [3]]), np.array([1, 2, 4]))),
    C((4, 5), id="empty", key=np.array([], dtype=np.int64)),
    C((2, 3, 4), id="3d_mid", key=(_S(None), np.array([2, 0, 2]))),
    C((2, 3, 4), id="3d_last_ellipsis", key=(Ellipsis, np.array([[3, 0], [1, 1]]))),
    C((2, 3, 4), id="3d_int_arr_adjacent", key=(_S(None), 1, np.array([0, 3]))),
    C((2, 3, 4), id="3d_separated_front", key=(np.array([1, 0]), _S(None), np.array([3, 2]))),
    C((2, 3, 4), id="3d_int_slice_arr", key=(0, _S(1, 3), np.array([0, 0, 2]))),
    C((2, 3, 4), id="3d_none", key=(None, _S(None), np.array([2, 1]), None)),
    C((2, 3, 4), id="3d_slice_step", key=(np.array([1, 1, 0]), _S(None, None, -2))),
    C((3, 4), id="mask_2d", key=_MASK),
    C((3, 4), id="mask_rows", key=np.array([True, False, True])),
    C((3, 4), id="mask_cols_slice", key=(_S(1, None), np.array([False, True, True, True]))),
    C((2, 3, 4), id="mask_3d_trailing", key=(1, _MASK)),
    C((6,), id="1d_0d_index", key=np.array(4)),
]

SPECS.extend([
    Spec("gather_index", (Op.GATHER,), lambda x, key: x[key], lambda x, key: np.asarray(x[key]),
         GATHER_INDEX_CASES),
    # index Vars (integer values held as floats): one alone, broadcast with an array, two
    Spec("gather_var_index", (Op.GATHER,),
         lambda x, ids, key: x[key(_ids(x, "ids", ids))],
         lambda x, ids, key: np.asarray(x[key(np.asarray(ids))]),
         [C((5, 3), id="embedding", ids=[[1, 4, 4], [0, -1, 2]], key=lambda i: i),
          C((4, 5), id="cols", ids=[4, 0, 4, -5], key=lambda i: (_S(None), i)),
          C((4, 5), id="pick_labels", ids=[2, 0, 4, 4], key=lambda i: (np.arange(4), i)),
          C((4, 5), id="pick_both_vars", ids=[[3, 1, -1], [0, 4, 4]],
            key=lambda i: (i[0], i[1])),
          C((2, 3, 4), id="3d_separated", ids=[1, -2],
            key=lambda i: (i, _S(None), np.array([3, 2]))),
          C((6,), id="0d", ids=3, key=lambda i: i)]),
    Spec("take", (Op.GATHER,), lambda x, idx, axis: tg.take(x, idx, axis=axis),
         lambda x, idx, axis: np.take(x, idx, axis=axis),
         [C((3, 4), id="flat", idx=np.array([[0, 11], [5, 5]]), axis=None),
          C((3, 4), id="ax0", idx=np.array([2, 2, -3]), axis=0),
          C((3, 4), id="ax-1", idx=[3, 1], axis=-1),
          C((2, 3, 4), id="3d_ax1_scalar", idx=1, axis=1)]),
    Spec("take_var_method", (Op.GATHER,), lambda x: x.take(_ids(x, "ids", [1, 1, 0]), axis=0)
         + np.take(x, [2, 0, 2], axis=0),
         lambda x: np.take(x, [1, 1, 0], axis=0) + np.take(x, [2, 0, 2], axis=0), [C((3, 2))]),
    Spec("repeat", (Op.EXPAND, Op.GATHER),
         lambda x, r, axis: tg.repeat(x, r, axis=axis), lambda x, r, axis: np.repeat(x, r, axis),
         [C((2, 3), id="int_flat", r=2, axis=None),
          C((2, 3), id="int_ax0", r=3, axis=0),
          C((2, 3), id="int_ax1", r=np.array([2]), axis=1),
          C((2, 3), id="counts_ax1", r=np.array([1, 0, 3]), axis=1),
          C((2, 3), id="counts_ax-2", r=[2, 1], axis=-2),
          C((4,), id="counts_flat_1d", r=np.array([0, 2, 1, 2]), axis=None)]),
    Spec("repeat_methods", (Op.EXPAND, Op.GATHER),
         lambda x: x.repeat(2, axis=0) * np.repeat(x, [1, 2, 0], axis=1).repeat(2, axis=0),
         lambda x: x.repeat(2, axis=0) * np.repeat(x, [1, 2, 0], axis=1).repeat(2, axis=0),
         [C((3, 3))]),
    Spec("expand_dims_squeeze", (Op.MUL,),
         lambda x, ax, sq: tg.squeeze(tg.expand_dims(x, ax), sq) * tg.expand_dims(x, ax).squeeze(),
         lambda x, ax, sq: np.squeeze(np.expand_dims(x, ax), sq) * np.expand_dims(x, ax).squeeze(),
         [C((2, 3), id="front", ax=0, sq=None),
          C((2, 3), id="tuple", ax=(0, -1), sq=(0, 3)),
          C((2, 1, 3), id="middle_neg", ax=-2, sq=-2),
          C((), id="0d", ax=(0, 1), sq=1)]),
    Spec("expand_dims_squeeze_numpy", (Op.SUM,),
         lambda x: np.squeeze(np.expand_dims(x, 1), axis=1).sum(axis=0),
         lambda x: np.squeeze(np.expand_dims(x, 1), axis=1).sum(axis=0), [C((3, 2))]),
    # the reverse rule of a gather records its transpose (SCATTER_ADD): a gradient as the value
    Spec("scatter_add", (Op.SCATTER_ADD, Op.GATHER),
         lambda x, idx: tg.gradients((x[idx] ** 3).sum(), [x])[0], _np_scatter_grad,
         [C((5,), id="dup", idx=np.array([0, 3, 3, -1, 3])),
          C((4, 3), id="rows", idx=np.array([[1, 1], [2, 0]])),
          C((4, 3), id="pick", idx=(np.array([0, 0, 3]), np.array([2, 2, 1])))]),
])

# ---------------------------------------------------------------------------- fused (ops/fused.py)
# the recorded reverse rule of tanh emits TANH_GRAD, whose own rule emits MUL3
from tapegrad.ops.fused import add3, mul3, softplus, tanh_grad  # noqa: E402


def _np_d2tanh(x):
    t = np.tanh(x)
    return -2.0 * t * (1.0 - t * t)


SPECS.extend([
    Spec("tanh_grad", (Op.TANH_GRAD,), lambda x, y: tanh_grad(x, y),
         lambda x, y: x * (1.0 - y * y), BINARY_CASES),
    Spec("mul3", (Op.MUL3,), lambda x, y, z, c: mul3(x, y, z, c),
         lambda x, y, z, c: x * y * z * c,
         [C((2, 3), (2, 3), (2, 3), id="same", c=-2.0),
          C((), (2, 3), (3,), id="broadcast", c=0.5),
          C((2, 1), (1, 3), (2, 3), id="both", c=1.0),
          C((4,), (4,), (4,), id="self_c3", c=3.0)]),
    Spec("softplus", (Op.SOFTPLUS,), lambda x, c: softplus(x, c),
         lambda x, c: np.log(np.exp(x) + c),
         [C((2, 3), c=1.0), C((), id="scalar_c05", c=0.5), C((5,), id="c2", c=2.0)]),
    Spec("add3", (Op.ADD3,), lambda x, y, z: add3(x, y, z), lambda x, y, z: x + y + z,
         [C((2, 3), (2, 3), (2, 3)), C((), (2, 3), (3,), id="broadcast"),
          C((4,), (4,), (4,), id="vec")]),
    Spec("add3_reuse", (Op.ADD3,), lambda x, y: add3(x, y, x), lambda x, y: x + y + x,
         [C((3,), (3,))]),
    Spec("mul3_reuse", (Op.MUL3,), lambda x, y: mul3(x, x, y, -2.0),
         lambda x, y: -2.0 * x * x * y, [C((2, 3), (2, 3))]),
    # tanh's second derivative, recorded: TANH_GRAD of TANH_GRAD's rule, and MUL3
    Spec("tanh_second_derivative", (Op.TANH, Op.TANH_GRAD, Op.MUL3),
         lambda x: tg.gradients(tg.gradients(tg.tanh(x).sum(), [x])[0].sum(), [x])[0],
         _np_d2tanh, [C((2, 3)), C((5,))]),
])

# ---------------------------------------------------------------------------- long rows (issue 17)
# Shapes that take the vectorised paths of ops/reduce.py, ops/shape.py, ops/gather.py and the
# matrix-vector loops of ops/linalg.py: reductions over the last axis (B == 1: runs longer
# than their unrolling by 4), over the first and a middle axis (B > 1: a scratch row per
# column), size-1 axes, a scalar broadcast to many elements, slices and concatenations of
# contiguous runs, gathers of single elements, and products with a vector operand on either
# side (K not a multiple of 4: the unrolled loops' remainders too).
_LONG_AXES = [C((37,), id="full37", axis=None), C((3, 19), id="ax-1", axis=-1),
              C((19, 3), id="ax0", axis=0), C((2, 9, 3), id="mid", axis=1),
              C((5, 1), id="size1_last", axis=-1), C((1, 23), id="size1_first", axis=0)]


def _keep(cases):
    return [Case(c.shapes, dict(c.kw, keepdims=False), c.id) for c in cases]


SPECS.extend([
    Spec("sum_long", (Op.SUM,), lambda x, axis, keepdims: tg.sum(x, axis=axis, keepdims=keepdims),
         lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims), _keep(_LONG_AXES)),
    Spec("max_long", (Op.MAX,), lambda x, axis, keepdims: tg.max(x, axis=axis, keepdims=keepdims),
         lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims), _keep(_LONG_AXES),
         distinct),
    Spec("logsumexp_long", (Op.LOGSUMEXP,),
         lambda x, axis, keepdims: tg.logsumexp(x, axis=axis, keepdims=keepdims),
         lambda x, axis, keepdims: scipy.special.logsumexp(x, axis=axis, keepdims=keepdims),
         _keep(_LONG_AXES), wide),
    Spec("softmax_long", (Op.SOFTMAX,), lambda x, axis: tg.softmax(x, axis=axis),
         lambda x, axis: scipy.special.softmax(x, axis=axis), _LONG_AXES, wide),
    Spec("log_softmax_long", (Op.LOG_SOFTMAX,), lambda x, axis: tg.log_softmax(x, axis=axis),
         lambda x, axis: scipy.special.log_softmax(x, axis=axis), _LONG_AXES, wide),
    Spec("expand_long", (Op.EXPAND, Op.MUL),
         lambda x, shape: x * np.linspace(0.5, 1.5, int(np.prod(shape))).reshape(shape),
         lambda x, shape: x * np.linspace(0.5, 1.5, int(np.prod(shape))).reshape(shape),
         [C((), id="scalar", shape=(41,)), C((5, 1), id="column", shape=(5, 23)),
          C((1,), id="one_to_2d", shape=(3, 29)), C((23,), id="row", shape=(4, 23))]),
    Spec("slice_long", (Op.SLICE,), lambda x, key: x[key], lambda x, key: np.asarray(x[key]),
         [C((3, 23), id="last_axis", key=(_S(None), _S(1, None))),
          C((29,), id="head", key=_S(None, 28)),
          C((3, 23), id="last_axis_step", key=(_S(None), _S(None, None, -3))),
          C((5, 7, 3), id="middle", key=(_S(None), _S(2, 6)))]),
    Spec("concatenate_long", (Op.PLACE,),
         lambda *xs, axis: tg.concatenate(list(xs), axis=axis),
         lambda *xs, axis: np.concatenate(xs, axis=axis),
         [C((3, 13), (3, 11), id="ax1", axis=1), C((1,), (23,), id="1d", axis=0)]),
    Spec("gather_long", (Op.GATHER,), lambda x, key: x[key], lambda x, key: np.asarray(x[key]),
         [C((3, 19), id="last_axis", key=(_S(None), np.array([18, 0, -1, 5, 5, 7]))),
          C((23,), id="1d", key=np.array([3, 22, 3, 0, 11]))]),
    Spec("matmul_vector", (Op.MATMUL,), lambda x, y: tg.matmul(x, y), np.matmul,
         [C((9, 13), (13,), id="matvec"), C((13,), (13, 9), id="vecmat"),
          C((13,), (13,), id="dot"), C((9, 13), (13, 1), id="column"),
          C((1, 13), (13, 9), id="row"), C((3, 5, 13), (3, 13, 1), id="batched_column"),
          C((5, 13), (3, 13, 1), id="shared_matrix"), C((1, 13), (3, 13, 6), id="shared_row"),
          C((2, 1, 13), (13, 6), id="batched_rows")], small),
])
