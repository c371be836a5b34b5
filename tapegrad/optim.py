"""Optimizers as compiled kernels over the parameter prefix of the arenas.

Every optimizer is the same fused loop, ``step_kernel``, over the element ranges of its
parameters (one range ``[0, P)`` when it owns every parameter of the tape), with its kind,
hyper-parameters and state passed as arrays. ``tg.fit`` calls the same kernel between the
sweeps of each step, inside compiled code.

Update rules and defaults are those of ``torch.optim`` of the same name (see each class).
State: ``state`` is float64 ``(2, n)`` -- row 0 the momentum buffer or first moment ``m``,
row 1 the second moment ``v`` -- where ``n`` is the number of parameter elements, in the
order of the ``params`` list.
"""
import math

import numpy as np

from ._jit import jit, kernel
from .errors import TapegradError

SGD_KIND, ADAM_KIND, ADAMW_KIND = 0, 1, 2
# hyper-parameter vector layout, shared with tg.fit
LR, B1, B2, EPS, WD, MOMENTUM, DAMPENING, NESTEROV, BIAS_CORRECTION, CENTERED = range(10)


@kernel
def sgd_update(p, g, buf, t, lr, wd, mom, damp, nesterov):
    for i in range(p.size):
        d = g[i] + wd * p[i]
        if mom != 0:
            buf[i] = d if t == 1 else mom * buf[i] + (1 - damp) * d
            d = d + mom * buf[i] if nesterov else buf[i]
        p[i] -= lr * d


@kernel
def adam_update(p, g, m, v, lr, b1, b2, eps, wd, bc1, bc2_sqrt, decoupled):
    step = lr / bc1
    shrink = 1 - lr * wd if decoupled else 1.0   # AdamW: decoupled decay, before the update
    l2 = 0.0 if decoupled else wd                # Adam: L2 penalty added to the gradient
    for i in range(p.size):
        d = g[i] + l2 * p[i]
        m[i] = b1 * m[i] + (1 - b1) * d
        v[i] = b2 * v[i] + (1 - b2) * d * d
        p[i] = p[i] * shrink - step * (m[i] / (math.sqrt(v[i]) / bc2_sqrt + eps))


@kernel
def centered_update(p, g, m, v, lr, b1, b2, eps, wd, bc1, bc2):
    # the seed post's AdamW: centred second moment, decay after the update
    for i in range(p.size):
        m[i] = b1 * m[i] + (1 - b1) * g[i]
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
        mh, vh = m[i] / bc1, v[i] / bc2
        q = p[i] - lr * mh / (math.sqrt(max(vh - mh * mh, 0.0)) + eps)
        p[i] = q - lr * wd * q


@jit
def step_kernel(kind, val, grad, starts, stops, state, hyper, t):
    """One optimizer step (``t`` counts from 1) over ``val[starts[r]:stops[r]]`` for all r."""
    lr, b1, b2, eps, wd = hyper[LR], hyper[B1], hyper[B2], hyper[EPS], hyper[WD]
    bc1 = 1.0 - b1 ** t if hyper[BIAS_CORRECTION] != 0 else 1.0
    bc2 = 1.0 - b2 ** t if hyper[BIAS_CORRECTION] != 0 else 1.0
    j = 0
    for r in range(starts.shape[0]):
        a, b = starts[r], stops[r]
        p, g = val[a:b], grad[a:b]
        m, v = state[0, j:j + b - a], state[1, j:j + b - a]
        if kind == SGD_KIND:
            sgd_update(p, g, m, t, lr, wd, hyper[MOMENTUM], hyper[DAMPENING],
                       hyper[NESTEROV] != 0)
        elif kind == ADAM_KIND or hyper[CENTERED] == 0:
            adam_update(p, g, m, v, lr, b1, b2, eps, wd, bc1, math.sqrt(bc2),
                        kind == ADAMW_KIND)
        else:
            centered_update(p, g, m, v, lr, b1, b2, eps, wd, bc1, bc2)
        j += b - a


class Optimizer:
    """Base: holds the parameters, the hyper-parameter vector and the state arrays."""

    kind = -1

    def __init__(self, params, hyper):
        from .var import Var
        params = list(params)
        if not params:
            raise TapegradError(f"{type(self).__name__}: got an empty parameter list")
        tape = params[0].tape if isinstance(params[0], Var) else None
        for p in params:
            if not isinstance(p, Var) or p.tape is not tape or p._b not in tape._params:
                raise TapegradError(f"{type(self).__name__}: every entry must be a parameter "
                                    f"Var of one tape (from tape.param), got {p!r}")
        if len({p._b for p in params}) != len(params):
            raise TapegradError(f"{type(self).__name__}: a parameter is listed twice")
        self.tape = tape
        self.params = params
        self.hyper = np.zeros(10)
        for k, v in hyper.items():
            self.hyper[k] = v
        self.n = sum(p.size for p in params)
        self.state = np.zeros((2, self.n))
        self.t = 0
        self._ranges_key, self._ranges = None, None

    @property
    def lr(self):
        return float(self.hyper[LR])

    @lr.setter
    def lr(self, value):
        self.hyper[LR] = value

    def ranges(self):
        """``(starts, stops)`` of the parameters' elements in the arenas, merged when
        adjacent (all parameters of a tape give the single range ``[0, P)``)."""
        tape = self.tape
        tape._seal()
        if self._ranges_key == tape._layout:
            return self._ranges
        starts, stops = [], []
        for p in self.params:
            o = int(tape._boff[p._b])
            if stops and stops[-1] == o:
                stops[-1] = o + p.size
            else:
                starts.append(o)
                stops.append(o + p.size)
        self._ranges_key = tape._layout
        self._ranges = np.array(starts, np.int64), np.array(stops, np.int64)
        return self._ranges

    def step(self):
        """Update the parameters in place from the gradients of the last ``backward()``
        (holding the tape's lock; ``t`` counts the steps applied)."""
        tape = self.tape
        with tape.lock:
            if tape._broken:
                tape._check_intact("grads", f"{type(self).__name__}.step()", "backward()")
            starts, stops = self.ranges()
            step_kernel(self.kind, tape._val, tape._grad, starts, stops, self.state,
                        self.hyper, self.t + 1)
            self.t += 1

    def state_dict(self):
        """Everything needed to resume: kind, step count, hyper-parameters, state arrays."""
        return {"kind": type(self).__name__, "t": self.t, "hyper": self.hyper.copy(),
                "state": self.state.copy()}

    def load_state_dict(self, sd):
        if sd.get("kind") != type(self).__name__:
            raise TapegradError(f"load_state_dict: state of {sd.get('kind')!r}, not "
                                f"{type(self).__name__}")
        state = np.asarray(sd["state"], np.float64)
        if state.shape != self.state.shape:
            raise TapegradError(f"load_state_dict: state has shape {state.shape}, this "
                                f"optimizer's parameters need {self.state.shape}")
        self.t = int(sd["t"])
        self.hyper[:] = np.asarray(sd["hyper"], np.float64)
        self.state[:] = state


def _check(name, **values):
    for k, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise TapegradError(f"{name}: {k} must be a finite number >= 0, got {v!r}")


class SGD(Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD``: ``g += wd*p``; with momentum
    ``buf = g`` at the first step, then ``buf = momentum*buf + (1-dampening)*g``;
    ``g = g + momentum*buf`` (nesterov) or ``buf``; ``p -= lr*g``.

    >>> opt = tg.optim.SGD(tape.params, lr=0.1, momentum=0.9)   # doctest: +SKIP
    """

    kind = SGD_KIND

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        _check("SGD", lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise TapegradError("SGD: nesterov needs momentum > 0 and dampening = 0")
        super().__init__(params, {LR: lr, MOMENTUM: momentum, DAMPENING: dampening,
                                  WD: weight_decay, NESTEROV: nesterov})


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient).

    >>> opt = tg.optim.Adam(tape.params, lr=1e-3)   # doctest: +SKIP
    """

    kind = ADAM_KIND

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        _check("Adam", lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay)
        super().__init__(params, {LR: lr, B1: betas[0], B2: betas[1], EPS: eps,
                                  WD: weight_decay, BIAS_CORRECTION: 1})


class AdamW(Optimizer):
    """AdamW as ``torch.optim.AdamW``: ``p *= 1 - lr*wd`` then the Adam update.

    ``bias_correction=False`` uses the raw moments. ``centered=True`` divides by
    ``sqrt(max(v - m**2, 0)) + eps`` and applies the decay after the update, as the seed
    post "Adding MLP support to AutoGrad" does (with ``bias_correction=False``, exactly).

    >>> opt = tg.optim.AdamW(tape.params, lr=1e-3, betas=(0.9, 0.9), weight_decay=1e-3)  # doctest: +SKIP
    """

    kind = ADAMW_KIND

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 bias_correction=True, centered=False):
        _check("AdamW", lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay)
        super().__init__(params, {LR: lr, B1: betas[0], B2: betas[1], EPS: eps,
                                  WD: weight_decay, BIAS_CORRECTION: bool(bias_correction),
                                  CENTERED: bool(centered)})
