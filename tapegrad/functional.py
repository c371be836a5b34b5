"""``tg.grad`` / ``tg.value_and_grad``: gradients of plain functions of arrays.

The function is recorded on the first call for each combination of argument shapes and
dtypes (arguments become inputs with ``requires_grad``) and replayed afterwards. A replay
whose branch guard flips re-records that entry, so the caller never sees a stale branch.
A function that raises while being recorded leaves the cache as it was; a replay holds its
tape's lock, so threads may share one ``tg.grad`` function.

The recorded tapes are kept in a least-recently-used cache of ``cache_size`` entries per
wrapped function (default ``CACHE_SIZE`` = 64, read when the function is wrapped): a caller
that sees many shapes re-records the oldest instead of holding every tape forever.
``wrapped.cache_info()`` reports hits, misses, the bound and the current size.
"""
import collections
import numbers

import numpy as np

from .errors import BranchChanged, TapegradError, user_site
from .tape import Tape
from .var import Var


CACHE_SIZE = 64

CacheInfo = collections.namedtuple("CacheInfo", "hits misses maxsize currsize")


def _cache_size(cache_size):
    size = CACHE_SIZE if cache_size is None else cache_size
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
        raise TapegradError(f"cache_size must be an integer >= 0 (0: record every call), got "
                            f"{size!r} ({user_site()})")
    return int(size)


def value_and_grad(f, argnums=0, cache_size=None):
    """``f(*arrays) -> scalar Var`` to ``(value, gradient(s))`` with NumPy results.

    Called with Vars (inside another transform, or on a tape of your own) it records instead:
    ``f`` and its gradient go onto the Vars' tape and come back as Vars, so ``tg.grad``
    nests (``tg.grad(tg.grad(f))(x)``).

    One recorded tape per argument shapes is kept, at most ``cache_size`` of them (default
    ``tapegrad.functional.CACHE_SIZE``, 64), the least recently used dropped first.

    >>> vg = tg.value_and_grad(lambda a, b: (a * b).sum(), argnums=(0, 1))
    >>> vg(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    (11.0, (array([3., 4.]), array([1., 2.])))
    """
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    maxsize = _cache_size(cache_size)
    cache = collections.OrderedDict()  # key -> (tape, inputs, output), most recent last
    counts = {"hits": 0, "misses": 0}

    def wrapped(*args):
        if any(isinstance(a, Var) for a in args):  # nested: record onto the Vars' tape
            return _on_tape(f, args, nums, single)
        for i in nums:
            if not -len(args) <= i < len(args):
                raise TapegradError(f"{getattr(f, '__name__', 'f')}: argnums {argnums!r} out "
                                    f"of range for {len(args)} arguments")
        wanted = {i % len(args) for i in nums}
        arrays = [np.asarray(a) for a in args]
        for i, a in enumerate(arrays):
            if a.dtype.kind not in "biuf":
                raise TapegradError(f"argument {i}: expected numbers, got dtype {a.dtype}")
        key = tuple((a.shape, a.dtype.str) for a in arrays)
        feeds = {f"arg{i}": a for i, a in enumerate(arrays)}
        entry = cache.get(key)
        if entry is not None:
            cache.move_to_end(key)
            with entry[0].lock:  # another thread may be replaying the same entry
                try:
                    entry[0].forward(**feeds)
                except BranchChanged:
                    pass
                else:
                    counts["hits"] += 1
                    return _results(entry, nums, single)
        # a new tape, stored only once recorded and differentiated: a function that raises
        # leaves the cache as it was
        counts["misses"] += 1
        entry = _record(f, arrays, wanted)
        results = _results(entry, nums, single)
        if maxsize:
            cache[key] = entry
            cache.move_to_end(key)
            while len(cache) > maxsize:
                cache.popitem(last=False)
        return results

    def cache_info():
        """``CacheInfo(hits, misses, maxsize, currsize)`` of the recorded tapes."""
        return CacheInfo(counts["hits"], counts["misses"], maxsize, len(cache))

    def cache_clear():
        """Drop every recorded tape."""
        cache.clear()

    wrapped.cache_info, wrapped.cache_clear = cache_info, cache_clear
    return wrapped


def grad(f, argnums=0, cache_size=None):
    """The gradient of ``f(*arrays) -> scalar Var`` as a function returning NumPy arrays.
    ``cache_size``: as ``value_and_grad``.

    >>> df = tg.grad(lambda x: (x ** 3).sum())
    >>> df(np.array([1.0, 2.0]))
    array([ 3., 12.])
    """
    vg = value_and_grad(f, argnums, cache_size=cache_size)

    def wrapped(*args):
        return vg(*args)[1]

    wrapped.cache_info, wrapped.cache_clear = vg.cache_info, vg.cache_clear
    return wrapped


def _results(entry, nums, single):
    tape, ins, out = entry
    out.backward()
    grads = tuple(ins[i % len(ins)].grad.copy() for i in nums)
    return out.item(), grads[0] if single else grads


def _on_tape(f, args, nums, single):
    """``value_and_grad`` called with Vars: ``f`` records onto their tape and the gradients
    are recorded too (``tg.gradients``), so they can be differentiated again."""
    from .higher import gradients
    from .ops._record import tape_of, as_var
    tape = tape_of(args, getattr(f, "__name__", "f"))
    args = [as_var(a, tape, "grad") for a in args]
    out = f(*args)
    if not isinstance(out, Var) or out.tape is not tape or out.size != 1:
        raise TapegradError(f"{getattr(f, '__name__', 'f')} must return a size-1 Var computed "
                            f"from its arguments, got {out!r}")
    grads = gradients(out, [args[i % len(args)] for i in nums])
    return out, grads[0] if single else tuple(grads)


def _record(f, arrays, wanted):
    dtype = np.float32 if arrays and all(a.dtype == np.float32 for a in arrays) else np.float64
    tape = Tape(dtype)
    ins = [tape.input(f"arg{i}", value=a, requires_grad=i in wanted)
           for i, a in enumerate(arrays)]
    out = f(*ins)
    if not isinstance(out, Var) or out.tape is not tape or out.size != 1:
        raise TapegradError(f"{getattr(f, '__name__', 'f')} must return a size-1 Var computed "
                            f"from its arguments, got {out!r}")
    return tape, ins, out
