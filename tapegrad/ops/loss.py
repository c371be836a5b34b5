"""Losses: ``mse_loss`` (composed of sub, square and a reduction) and ``cross_entropy``
(one fused, numerically stable instruction per batch of rows).

Labels are class indices. The arenas hold floats, so a label input is stored as a float and
read back as an index; the kernel checks every label against ``[0, C)`` before using it.
"""
import math

import numpy as np

from .._jit import jit, kernel
from ..errors import FeedError, ShapeError, TapegradError, user_site
from ..opcodes import Op
from ..var import Var
from ._precision import is_f32
from ._record import reshape_var, vars_of
from ._vjp import vjp
from .elementwise import square, sub
from .reduce import mean, sum

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction, name):
    if reduction not in _REDUCTIONS:
        raise TapegradError(f"{name}: reduction must be one of {_REDUCTIONS}, got "
                            f"{reduction!r} ({user_site()})")


def _reduce(x, reduction):
    if reduction == "mean":
        return mean(x)
    return sum(x) if reduction == "sum" else x


def mse_loss(pred, target, reduction="mean"):
    """Mean (or sum, or none) of squared differences of two operands of the same shape.
    ``tg.mse_loss(pred, y)``. Different shapes are a ShapeError: a prediction (N, 1) against
    targets (N,) would otherwise broadcast to (N, N) and train silently on the wrong loss."""
    _check_reduction(reduction, "mse_loss")
    tape, (pred, target) = vars_of([pred, target], "mse_loss")
    if pred.shape != target.shape:
        raise ShapeError(f"mse_loss: prediction of shape {pred.shape} and target of shape "
                         f"{target.shape} differ (reshape one of them) ({user_site()})")
    return _reduce(square(sub(pred, target)), reduction)


def cross_entropy(logits, labels, reduction="mean"):
    """Softmax cross-entropy of ``logits`` (N, C) or (C,) with integer class ``labels``
    (N,) or () -- an int ndarray, or an input Var fed with integer values.

    ``tg.cross_entropy(logits, np.array([3, 0, 1]))``"""
    tape, (logits,) = vars_of([logits], "cross_entropy")
    _check_reduction(reduction, "cross_entropy")
    if logits.ndim not in (1, 2):
        raise ShapeError(f"cross_entropy: logits must be (N, C) or (C,), got {logits.shape} "
                         f"({user_site()})")
    N, C = (1, logits.shape[0]) if logits.ndim == 1 else logits.shape
    want = () if logits.ndim == 1 else (N,)
    if isinstance(labels, Var):
        if labels.tape is not tape:
            raise TapegradError(f"cross_entropy: logits and labels are Vars of two different "
                                f"tapes ({user_site()})")
        if labels.shape != want:
            raise ShapeError(f"cross_entropy: labels must have shape {want} for logits "
                             f"{logits.shape}, got {labels.shape} ({user_site()})")
        _check_labels(labels.value, C, FeedError)
        base = tape._base_of(labels._b)
        if tape._kind[base] == 1:  # an input: its feeds are checked against C
            tape._labels[base] = min(C, tape._labels.get(base, C))
        lab = labels
    else:
        arr = np.asarray(labels)
        if arr.dtype.kind not in "iu":
            raise TapegradError(f"cross_entropy: labels must be integer class indices, got "
                                f"dtype {arr.dtype} ({user_site()})")
        if arr.shape != want:
            raise ShapeError(f"cross_entropy: labels must have shape {want} for logits "
                             f"{logits.shape}, got {arr.shape} ({user_site()})")
        _check_labels(arr, C, ShapeError)
        lab = tape.const(arr)
    x = reshape_var(logits, (N, C))
    y = reshape_var(lab, (N,))
    out = Var(tape, tape._emit(Op.CROSS_ENTROPY, [x._b, y._b], (N,), (N, C)))
    if logits.ndim == 1:
        out = reshape_var(out, ())
    return _reduce(out, reduction)


def _check_labels(a, C, err):
    a = np.asarray(a)
    bad = ~((a >= 0) & (a < C) & (a == np.floor(a)))
    if bad.any():
        i = tuple(int(j) for j in np.argwhere(bad)[0])
        raise err(f"cross_entropy: label {a[i].item()!r} at index {i} is not a class in [0, {C}) "
                  f"({user_site()})")


# ans[r] = logsumexp(x[r, :]) - x[r, label_r];  gx[r, j] += g[r] * (softmax(x[r])_j - [j == label_r])
# (x: logits at a uint64 offset, y: labels, ans: losses; every label is checked before use)
@kernel
def _row_logsumexp(v, row, C):
    """log(sum_j exp(x[j])) of the C logits at ``row``, in float64, shifted by their max."""
    m = -math.inf
    for j in range(np.uint64(C)):
        if v[row + j] > m or v[row + j] != v[row + j]:
            m = v[row + j]
    s = 0.0
    for j in range(np.uint64(C)):
        s += math.exp(v[row + j] - m)
    return m + math.log(s)


@kernel
def cross_entropy_fwd(v, x, y, ans, N, C):
    for r in range(N):
        lab = v[y + np.uint64(r)]
        if not (lab >= 0 and lab < C and lab == math.floor(lab)):
            return False
        row = x + np.uint64(r * C)
        v[ans + np.uint64(r)] = _row_logsumexp(v, row, C) - v[row + np.uint64(int(lab))]
    return True


# The reverse rule reads logsumexp back as loss + x[label], in float64, and takes the exps at
# the arena's precision (float32's expf is ~1.5x faster than exp: as fast as before this
# rule was made exact). Rows where that is not good enough go to ``_row_grad_exact``: a
# logsumexp that is not finite (a target logit of -inf: torch's finite gradient, softmax -
# onehot) and, in a float32 arena, a loss above 4: the float32 loss carries an absolute
# error of |loss| * 2^-24 into every exponent (3e-4 relative at logits of +-1e4; < 3e-7
# below 4). Rows with |logsumexp| < 8 (the usual ones) take the exps of float32 differences
# (float64 ones cost digits-mlp's reverse rule 15 %).
@kernel
def cross_entropy_bwd(v, g, x, y, ans, N, C):
    f32 = is_f32(v)
    for r in range(N):
        lab = v[y + np.uint64(r)]  # checked again: the arena may have been written since
        if not (lab >= 0 and lab < C):
            return False
        row = x + np.uint64(r * C)
        c = np.uint64(int(lab))
        out = ans + np.uint64(r)
        lse = np.float64(v[out]) + v[row + c]
        if not math.isfinite(lse) or (f32 and abs(v[out]) > 4.0):
            _row_grad_exact(v, g, row, out, C)
        elif f32 and abs(lse) < 8.0:  # lse rounded to float32: < 4.8e-7 off in each exponent
            lse32 = np.float32(lse)
            for j in range(np.uint64(C)):
                g[row + j] += g[out] * math.exp(v[row + j] - lse32)
        elif f32:
            for j in range(np.uint64(C)):
                g[row + j] += g[out] * math.exp(np.float32(v[row + j] - lse))
        else:
            for j in range(np.uint64(C)):
                g[row + j] += g[out] * math.exp(v[row + j] - lse)
        g[row + c] -= g[out]
    return True


@vjp(Op.CROSS_ENTROPY)
def cross_entropy_vjp(r, g):
    from .reduce import softmax
    N, C = r.a[:2]
    tape = g.tape
    hot = Var(tape, tape._emit(Op.ONEHOT, [r.y._b], (N, C), (N, C)))
    return (softmax(reshape_var(r.x, (N, C)), axis=1) - hot) * reshape_var(g, (N, 1)), None


# ans[r, j] = 1 if j == label_r else 0 (the labels of cross_entropy's reverse rule); labels are
# checked before use, as in cross_entropy_fwd; no gradient
@kernel
def onehot_fwd(v, y, ans, N, C):
    for r in range(N):
        lab = v[y + np.uint64(r)]
        if not (lab >= 0 and lab < C and lab == math.floor(lab)):
            return False
        row = ans + np.uint64(r * C)
        for j in range(np.uint64(C)):
            v[row + j] = 0
        v[row + np.uint64(int(lab))] = 1
    return True


# g[row + j] += g[out] * softmax(x[row])_j with logsumexp recomputed in float64 (rare rows:
# called, not inlined, so the sweeps compile faster)
@jit
def _row_grad_exact(v, g, row, out, C):
    lse = _row_logsumexp(v, row, C)
    for j in range(np.uint64(C)):
        g[row + j] += g[out] * math.exp(v[row + j] - lse)
