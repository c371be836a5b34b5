"""``tg.jvp`` and ``tg.jacfwd``: forward mode on plain functions of arrays, NumPy in and out.

``f`` is recorded on a fresh tape the first time it is called with given argument shapes and
dtypes (the arguments become inputs), and replayed afterwards: a value replay, then the
compiled tangent sweep of ``tapegrad.tangent`` over the same instructions -- forward mode,
not a reverse pass run twice. A replay whose branch guard flips re-records that entry. As
with ``tg.grad``, ``f`` must be a function of its arguments only: anything else it reads is a
constant of the recording.
"""
import weakref
from collections import OrderedDict

import numpy as np

from .errors import BranchChanged, ShapeError, TapegradError, user_site
from .tangent import _mask, _run, directions_per_sweep
from .tape import Tape
from .var import Var

CACHE_SIZE = 8                # recorded tapes kept per function (least recently used dropped)
_jvp_cache = weakref.WeakKeyDictionary()   # f -> OrderedDict(key -> _Entry)


class _Entry:
    """One recording of ``f``: the tape, its input Vars, its output Vars, and the tangent
    masks and arena of the sweeps run on it."""

    def __init__(self, f, arrays, what):
        dtype = (np.float32 if arrays and all(a.dtype == np.float32 for a in arrays)
                 else np.float64)
        self.tape = tape = Tape(dtype)
        tape.planning = "off"  # the tangent sweep reads every value (tapegrad.plan)
        self.ins = [tape.input(f"arg{i}", value=a) for i, a in enumerate(arrays)]
        out = f(*self.ins)
        self.single = isinstance(out, Var)
        outs = [out] if self.single else (list(out) if isinstance(out, (tuple, list)) else None)
        if not outs or any(not isinstance(o, Var) or o.tape is not tape for o in outs):
            raise TapegradError(f"{what}: {_name(f)} must return a Var computed from its "
                                f"arguments (or a tuple of them), got {_describe(out)}")
        self.outs = outs
        self.masks = {}
        self.tan = np.zeros(0, dtype)
        self.tan_state = None     # (layout, D, seeded inputs) of the last sweep

    def replay(self, arrays):
        self.tape.forward(outputs=self.outs, **{f"arg{i}": a for i, a in enumerate(arrays)})

    def sweep(self, seeds, D):
        """One tangent sweep with ``D`` directions; ``seeds``: list of (input index, array of
        shape (size, D)). Returns, per output, its tangents as an array (size, D)."""
        tape = self.tape
        key = (tape._layout, tuple(i for i, _ in seeds))
        mask = self.masks.get(key)
        if mask is None:
            if len(self.masks) > 16:
                self.masks.clear()
            mask = self.masks[key] = _mask(tape, [o._b for o in self.outs],
                                           [self.ins[i]._b for i, _ in seeds])
        L = tape._val.shape[0]
        if self.tan.shape[0] < L * D:
            self.tan = np.zeros(L * D, tape.dtype)
            self.tan_state = None
        tan = self.tan[:L * D]
        # Zeros are needed only where no seed and no instruction of the mask writes. With the
        # same layout, D and mask as the last sweep, that is where nothing was ever written:
        # still zero. (Every instruction of the mask writes all of its output's tangents.)
        state = (tape._layout, D, key)
        if self.tan_state != state:
            tan[:] = 0
            self.tan_state = state
        t2 = tan.reshape(L, D)
        for i, a in seeds:
            o = int(tape._boff[self.ins[i]._b])
            t2[o:o + a.shape[0]] = a
        _run(tape, tan, D, mask)
        res = []
        for o in self.outs:
            off = int(tape._boff[o._b])
            res.append(t2[off:off + o.size])
        return res

    def values(self):
        return [np.array(o.value) for o in self.outs]


def _name(f):
    return getattr(f, "__name__", type(f).__name__)


def _describe(out):
    if isinstance(out, Var):
        return "a Var of another tape"
    return f"{type(out).__name__}"


def _arrays(args, what):
    arrays = []
    for i, a in enumerate(args):
        try:
            arr = np.asarray(a)
        except Exception as e:  # noqa: BLE001 - anything numpy cannot take
            raise TapegradError(f"{what}: argument {i} cannot be converted to an array ({e}) "
                                f"({user_site()})") from None
        if arr.dtype.kind not in "biuf":
            raise TapegradError(f"{what}: argument {i}: expected numbers, got dtype {arr.dtype} "
                                f"({user_site()})")
        arrays.append(arr)
    return arrays


def _entry(cache, f, arrays, what):
    """The recording of ``f`` for these argument shapes and dtypes, replayed at ``arrays``
    (re-recorded when a guard flips)."""
    key = tuple((a.shape, a.dtype.str) for a in arrays)
    entry = cache.get(key)
    if entry is not None:
        cache.move_to_end(key)
        try:
            entry.replay(arrays)
            return entry
        except BranchChanged:
            del cache[key]
    entry = _Entry(f, arrays, what)
    entry.replay(arrays)  # seals; the values are those just recorded
    cache[key] = entry
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return entry


def _jvp_cache_of(f):
    try:
        cache = _jvp_cache.get(f)
        if cache is None:
            cache = _jvp_cache[f] = OrderedDict()
        return cache
    except TypeError:  # not weakly referenceable or not hashable: record every call
        return OrderedDict()


def jvp(f, primals, tangents):
    """Forward mode, as ``jax.jvp``: ``f(*primals)`` and its derivative along ``tangents``.

    ``primals`` and ``tangents`` are tuples (or lists) of arrays of matching shapes; returns
    ``(value, tangent_out)`` as NumPy arrays (tuples of them if ``f`` returns a tuple of
    Vars). One value replay and one tangent sweep per call once ``f`` is recorded.

    >>> tg.jvp(lambda x: tg.sin(x) * x, (np.array([0.0, 1.0]),), (np.ones(2),))
    (array([0.        , 0.84147098]), array([0.        , 1.38177329]))
    """
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise TapegradError(f"jvp: primals and tangents must be tuples (or lists) of arrays, "
                            f"got {type(primals).__name__} and {type(tangents).__name__} "
                            f"({user_site()})")
    if len(primals) != len(tangents):
        raise TapegradError(f"jvp: {len(primals)} primals but {len(tangents)} tangents "
                            f"({user_site()})")
    arrays = _arrays(primals, "jvp")
    seeds = []
    for i, (p, t) in enumerate(zip(arrays, tangents)):
        try:
            ta = np.asarray(t, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TapegradError(f"jvp: tangent {i} is not an array of numbers ({e}) "
                                f"({user_site()})") from None
        if ta.shape != p.shape:
            raise ShapeError(f"jvp: tangent {i} has shape {ta.shape} but primal {i} has shape "
                             f"{p.shape} ({user_site()})")
        seeds.append((i, ta.reshape(-1, 1)))
    entry = _entry(_jvp_cache_of(f), f, arrays, "jvp")
    res = entry.sweep(seeds, 1)
    vals = entry.values()
    tans = [r[:, 0].reshape(o.shape).copy() for r, o in zip(res, entry.outs)]
    if entry.single:
        return vals[0], tans[0]
    return tuple(vals), tuple(tans)


def jacfwd(f, argnums=0):
    """The Jacobian of ``f(*arrays)`` by forward mode, as ``jax.jacfwd``: a function returning
    an array of shape ``out.shape + arg.shape`` (a tuple of them for a tuple ``argnums``;
    for a tuple of outputs, one such entry per output).

    One tangent sweep carries up to 32 directions (unit vectors of the arguments), so a
    Jacobian with n input elements takes ceil(n / 32) sweeps after one value replay.

    >>> tg.jacfwd(lambda x: x ** 2)(np.array([1.0, 3.0]))
    array([[2., 0.],
           [0., 6.]])
    """
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    cache = OrderedDict()

    def jacobian(*args):
        for i in nums:
            if not isinstance(i, int) or not -len(args) <= i < len(args):
                raise TapegradError(f"jacfwd({_name(f)}): argnums {argnums!r} out of range "
                                    f"for {len(args)} arguments ({user_site()})")
        wanted = [i % len(args) for i in nums]
        if len(set(wanted)) != len(wanted):
            raise TapegradError(f"jacfwd({_name(f)}): argnums {argnums!r} repeats an argument "
                                f"({user_site()})")
        arrays = _arrays(args, f"jacfwd({_name(f)})")
        entry = _entry(cache, f, arrays, f"jacfwd({_name(f)})")
        sizes = [arrays[i].size for i in wanted]
        starts = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        total = int(starts[-1])
        cols = [np.empty((o.size, total), entry.tape.dtype) for o in entry.outs]
        D = directions_per_sweep(entry.tape, total)
        for s in range(0, total, D):
            d = min(D, total - s)
            seeds = []  # every argument seeded (zeros where it has no direction): one mask
            for j, i in enumerate(wanted):
                lo, hi = max(s, starts[j]), min(s + d, starts[j + 1])
                a = np.zeros((sizes[j], d))
                if lo < hi:
                    a[np.arange(lo, hi) - starts[j], np.arange(lo, hi) - s] = 1.0
                seeds.append((i, a))
            for c, r in zip(cols, entry.sweep(seeds, d)):
                c[:, s:s + d] = r
        res = []
        for o, c in zip(entry.outs, cols):
            jac = tuple(c[:, starts[j]:starts[j + 1]].reshape(o.shape + arrays[i].shape)
                        for j, i in enumerate(wanted))
            res.append(jac[0] if single else jac)
        return res[0] if entry.single else tuple(res)

    return jacobian
