"""Optimizers as compiled kernels over the parameter prefix of the arenas.

Every optimizer is the same fused loop, ``step_kernel``, over the element ranges of its
parameters (one range ``[0, P)`` when it owns every parameter of the tape), with its kind,
hyper-parameters and state passed as arrays. ``tg.fit`` calls the same kernel between the
sweeps of each step, inside compiled code.

Update rules and defaults are those of ``torch.optim`` of the same name (see each class).
State: ``state`` is float64 ``(2, n)`` -- row 0 the momentum buffer or first moment ``m``,
row 1 the second moment ``v`` -- where ``n`` is the number of parameter elements, in the
order of the ``params`` list.

Hyper-parameters are validated as ``torch.optim``'s constructors validate them (and, beyond
torch, must be finite), in the constructor, in the ``lr`` setter and in ``load_state_dict``:
``lr, eps, weight_decay, momentum >= 0``, ``0 <= beta < 1``, nesterov needs ``momentum > 0``
and ``dampening == 0``.
"""
import math
import numbers

import numpy as np

from ._jit import jit, kernel
from .errors import TapegradError, user_site

SGD_KIND, ADAM_KIND, ADAMW_KIND = 0, 1, 2
# hyper-parameter vector layout, shared with tg.fit
LR, B1, B2, EPS, WD, MOMENTUM, DAMPENING, NESTEROV, BIAS_CORRECTION, CENTERED = range(10)


# Each update also returns whether every gradient it read was finite (``tg.fit``'s fused
# steps check that way; x - x is NaN for NaN and +-Inf, 0 otherwise).
@kernel
def sgd_update(p, g, buf, t, lr, wd, mom, damp, nesterov):
    bad = False
    for i in range(p.size):
        bad |= g[i] - g[i] != 0
        d = g[i] + wd * p[i]
        if mom != 0:
            buf[i] = d if t == 1 else mom * buf[i] + (1 - damp) * d
            d = d + mom * buf[i] if nesterov else buf[i]
        p[i] -= lr * d
    return not bad


@kernel
def adam_update(p, g, m, v, lr, b1, b2, eps, wd, bc1, bc2_sqrt, decoupled):
    step = lr / bc1
    shrink = 1 - lr * wd if decoupled else 1.0   # AdamW: decoupled decay, before the update
    l2 = 0.0 if decoupled else wd                # Adam: L2 penalty added to the gradient
    bad = False
    for i in range(p.size):
        bad |= g[i] - g[i] != 0
        d = g[i] + l2 * p[i]
        m[i] = b1 * m[i] + (1 - b1) * d
        v[i] = b2 * v[i] + (1 - b2) * d * d
        p[i] = p[i] * shrink - step * (m[i] / (math.sqrt(v[i]) / bc2_sqrt + eps))
    return not bad


@kernel
def centered_update(p, g, m, v, lr, b1, b2, eps, wd, bc1, bc2):
    # the seed post's AdamW: centred second moment, decay after the update
    bad = False
    for i in range(p.size):
        bad |= g[i] - g[i] != 0
        m[i] = b1 * m[i] + (1 - b1) * g[i]
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
        mh, vh = m[i] / bc1, v[i] / bc2
        q = p[i] - lr * mh / (math.sqrt(max(vh - mh * mh, 0.0)) + eps)
        p[i] = q - lr * wd * q
    return not bad


@jit
def update_range(kind, val, grad, a, b, state, j, hyper, t):
    """One optimizer step (``t`` counts from 1) of the parameter elements ``val[a:b]``, whose
    state is ``state[:, j:j + b - a]``. Every element's update depends only on its own
    element, so any partition of the parameters into ranges gives the same bits: ``tg.fit``
    updates each parameter as soon as its gradient is final (``tapegrad.fit``), ``step()``
    all of them after the reverse sweep, both through this function. Returns whether every
    gradient it read was finite (the update is applied either way)."""
    lr, b1, b2, eps, wd = hyper[LR], hyper[B1], hyper[B2], hyper[EPS], hyper[WD]
    bc1 = 1.0 - b1 ** t if hyper[BIAS_CORRECTION] != 0 else 1.0
    bc2 = 1.0 - b2 ** t if hyper[BIAS_CORRECTION] != 0 else 1.0
    p, g = val[a:b], grad[a:b]
    m, v = state[0, j:j + b - a], state[1, j:j + b - a]
    if kind == SGD_KIND:
        return sgd_update(p, g, m, t, lr, wd, hyper[MOMENTUM], hyper[DAMPENING],
                          hyper[NESTEROV] != 0)
    if kind == ADAM_KIND or hyper[CENTERED] == 0:
        return adam_update(p, g, m, v, lr, b1, b2, eps, wd, bc1, math.sqrt(bc2),
                           kind == ADAMW_KIND)
    return centered_update(p, g, m, v, lr, b1, b2, eps, wd, bc1, bc2)


@jit
def step_kernel(kind, val, grad, starts, stops, state, hyper, t):
    """One optimizer step (``t`` counts from 1) over ``val[starts[r]:stops[r]]`` for all r."""
    j = np.int64(0)  # (a literal 0 compiled update_range a second time, for Literal[int](0))
    for r in range(starts.shape[0]):
        update_range(kind, val, grad, starts[r], stops[r], state, j, hyper, t)
        j += stops[r] - starts[r]


_HYPER_NAMES = ("lr", "betas[0]", "betas[1]", "eps", "weight_decay", "momentum", "dampening",
                "nesterov", "bias_correction", "centered")
_FLAGS = (NESTEROV, BIAS_CORRECTION, CENTERED)


class Optimizer:
    """Base: holds the parameters, the hyper-parameter vector and the state arrays."""

    kind = -1
    # hyper-parameter index -> (lowest value, upper bound (exclusive) or None); the rest of
    # the vector must be finite (and the flags 0 or 1)
    _bounds = {LR: (0.0, None)}

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
        self._check_hyper(self.hyper)
        self.n = sum(p.size for p in params)
        self.state = np.zeros((2, self.n))
        self.t = 0
        self._ranges_key, self._ranges = None, None

    @property
    def lr(self):
        """The learning rate; settable (``opt.lr = 1e-4``), validated as in the constructor."""
        return float(self.hyper[LR])

    @lr.setter
    def lr(self, value):
        self.hyper[LR] = _check_number(type(self).__name__, "lr", value, 0.0, None)

    @classmethod
    def _check_hyper(cls, hyper, what=None):
        """Raise TapegradError unless the hyper-parameter vector is valid for this class."""
        what = what or cls.__name__
        for i, value in enumerate(hyper):
            name = _HYPER_NAMES[i]
            if i in _FLAGS:
                if value not in (0.0, 1.0):
                    raise TapegradError(f"{what}: {name} must be True or False, got {value!r} "
                                        f"({user_site()})")
                continue
            lo, hi = cls._bounds.get(i, (None, None))
            _check_number(what, name, float(value), lo, hi)
        if hyper[NESTEROV] and (hyper[MOMENTUM] <= 0 or hyper[DAMPENING] != 0):
            raise TapegradError(f"{what}: nesterov needs momentum > 0 and dampening = 0 "
                                f"(got momentum={hyper[MOMENTUM]!r}, dampening="
                                f"{hyper[DAMPENING]!r}) ({user_site()})")

    def zero_grad(self):
        """Set the gradients of this optimizer's parameters to zero (``loss.backward()``
        overwrites them anyway; this is for code written the torch way)."""
        starts, stops = self.ranges()
        for a, b in zip(starts, stops):
            self.tape._grad[a:b] = 0

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
        """Resume from ``state_dict()``; everything is checked before anything is changed."""
        what = f"{type(self).__name__}.load_state_dict"
        keys = ("kind", "t", "hyper", "state")
        if not isinstance(sd, dict) or any(k not in sd for k in keys):
            got = sorted(sd) if isinstance(sd, dict) else type(sd).__name__
            raise TapegradError(f"{what}: expected a dict with keys {keys} (from state_dict()), "
                                f"got {got} ({user_site()})")
        if sd["kind"] != type(self).__name__:
            raise TapegradError(f"{what}: state of {sd['kind']!r}, not {type(self).__name__} "
                                f"({user_site()})")
        t = sd["t"]
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
            raise TapegradError(f"{what}: step count 't' must be an integer >= 0, got {t!r} "
                                f"({user_site()})")
        arrays = {}
        for key, want in (("hyper", self.hyper.shape), ("state", self.state.shape)):
            try:
                a = np.asarray(sd[key], np.float64)
            except (TypeError, ValueError) as e:
                raise TapegradError(f"{what}: {key!r} is not an array of numbers ({e}) "
                                    f"({user_site()})") from None
            if a.shape != want:
                raise TapegradError(f"{what}: {key!r} has shape {a.shape}, this optimizer needs "
                                    f"{want} (state: 2 rows of {self.n} parameter elements) "
                                    f"({user_site()})")
            arrays[key] = a
        self._check_hyper(arrays["hyper"], what)
        state = arrays["state"]
        if not np.isfinite(state).all() or (self.kind != SGD_KIND and (state[1] < 0).any()):
            raise TapegradError(f"{what}: 'state' holds non-finite values or negative second "
                                f"moments ({user_site()})")
        self.t = int(t)
        self.hyper[:] = arrays["hyper"]
        self.state[:] = state


def _check_number(owner, name, value, lo, hi):
    """``value`` as a float, or TapegradError unless it is a finite real number in [lo, hi)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (lo is None or value >= lo) and (hi is None or value < hi)
    if not ok:
        want = ("a finite number" + ("" if lo is None else f" >= {lo:g}") if hi is None
                else f"a number in [{lo:g}, {hi:g})")
        raise TapegradError(f"{owner}: {name} must be {want}, got {value!r} ({user_site()})")
    return value


def _betas(owner, betas):
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise TapegradError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r} "
                            f"({user_site()})") from None
    return (_check_number(owner, "betas[0]", b1, 0.0, 1.0),
            _check_number(owner, "betas[1]", b2, 0.0, 1.0))


class SGD(Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD``: ``g += wd*p``; with momentum
    ``buf = g`` at the first step, then ``buf = momentum*buf + (1-dampening)*g``;
    ``g = g + momentum*buf`` (nesterov) or ``buf``; ``p -= lr*g``.

    >>> opt = tg.optim.SGD(tape.params, lr=0.1, momentum=0.9)   # doctest: +SKIP
    """

    kind = SGD_KIND
    _bounds = {LR: (0.0, None), MOMENTUM: (0.0, None), WD: (0.0, None)}

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        c = _check_number
        super().__init__(params, {LR: c("SGD", "lr", lr, 0.0, None),
                                  MOMENTUM: c("SGD", "momentum", momentum, 0.0, None),
                                  DAMPENING: c("SGD", "dampening", dampening, None, None),
                                  WD: c("SGD", "weight_decay", weight_decay, 0.0, None),
                                  NESTEROV: bool(nesterov)})


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient).

    >>> opt = tg.optim.Adam(tape.params, lr=1e-3)   # doctest: +SKIP
    """

    kind = ADAM_KIND
    _bounds = {LR: (0.0, None), B1: (0.0, 1.0), B2: (0.0, 1.0), EPS: (0.0, None),
               WD: (0.0, None)}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        c = _check_number
        b1, b2 = _betas("Adam", betas)
        super().__init__(params, {LR: c("Adam", "lr", lr, 0.0, None), B1: b1, B2: b2,
                                  EPS: c("Adam", "eps", eps, 0.0, None),
                                  WD: c("Adam", "weight_decay", weight_decay, 0.0, None),
                                  BIAS_CORRECTION: 1})


class AdamW(Optimizer):
    """AdamW as ``torch.optim.AdamW``: ``p *= 1 - lr*wd`` then the Adam update.

    ``bias_correction=False`` uses the raw moments. ``centered=True`` divides by
    ``sqrt(max(v - m**2, 0)) + eps`` and applies the decay after the update, as the seed
    post "Adding MLP support to AutoGrad" does (with ``bias_correction=False``, exactly).

    >>> opt = tg.optim.AdamW(tape.params, lr=1e-3, betas=(0.9, 0.9), weight_decay=1e-3)  # doctest: +SKIP
    """

    kind = ADAMW_KIND
    _bounds = Adam._bounds

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 bias_correction=True, centered=False):
        c = _check_number
        b1, b2 = _betas("AdamW", betas)
        super().__init__(params, {LR: c("AdamW", "lr", lr, 0.0, None), B1: b1, B2: b2,
                                  EPS: c("AdamW", "eps", eps, 0.0, None),
                                  WD: c("AdamW", "weight_decay", weight_decay, 0.0, None),
                                  BIAS_CORRECTION: bool(bias_correction),
                                  CENTERED: bool(centered)})
