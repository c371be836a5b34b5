"""``tg.grad`` / ``tg.value_and_grad``: gradients of plain functions of arrays.

The function is recorded on the first call for each combination of argument structures (a
positional argument may be a pytree: nested lists, tuples, dicts of arrays, ``tapegrad.tree``),
shapes and dtypes, and static keyword values (the leaves of the arguments become inputs with
``requires_grad``; array leaves of keyword arguments are inputs fed on every call) and
replayed afterwards. A replay
whose branch guard flips re-records that entry, so the caller never sees a stale branch.
A function that raises while being recorded leaves the cache as it was; a replay holds its
tape's lock, so threads may share one ``tg.grad`` function.

The recorded tapes are kept in a least-recently-used cache of ``cache_size`` entries per
wrapped function (default ``CACHE_SIZE`` = 64, read when the function is wrapped): a caller
that sees many shapes re-records the oldest instead of holding every tape forever.
``wrapped.cache_info()`` reports hits, misses, the bound and the current size.

A tape replayed a second time is optimized (``tape.optimize()``: dead code, common
subexpressions, fused chains, scalar copies in place) before its third replay -- safe here, as
the tape is this module's own: no Var of it is held but its inputs and output (and whatever
``f`` kept, which the optimizer sees and leaves alone). ``OPTIMIZE_AFTER`` (default 2) sets
after how many replays; 0 turns it off.
"""
import collections
import numbers

import numpy as np

from .errors import BranchChanged, TapegradError, user_site
from .tape import Tape
from .tree import tree_flatten, tree_leaves, tree_unflatten
from .var import Var


CACHE_SIZE = 64
OPTIMIZE_AFTER = 2   # replays of a cached tape before tape.optimize() runs on it (0: never)

CacheInfo = collections.namedtuple("CacheInfo", "hits misses maxsize currsize")


def _cache_size(cache_size):
    size = CACHE_SIZE if cache_size is None else cache_size
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
        raise TapegradError(f"cache_size must be an integer >= 0 (0: record every call), got "
                            f"{size!r} ({user_site()})")
    return int(size)


def value_and_grad(f, argnums=0, cache_size=None):
    """``f(*args, **kwargs) -> scalar Var`` to ``(value, gradient(s))`` with NumPy results.

    Each positional argument is an array (or number) or a pytree of them -- nested lists,
    tuples, dicts (``tapegrad.tree``) -- and its gradient comes back in the same structure.
    Keyword arguments pass through to ``f`` and are not differentiated: their array leaves
    are fed to the recorded tape on every call, their other values (numbers, strings, ...;
    they must be hashable) are part of the cache key, so a call with a different value
    records again instead of replaying a tape recorded for the old one.

    Called with Vars (inside another transform, or on a tape of your own) it records instead:
    ``f`` and its gradient go onto the Vars' tape and come back as Vars, so ``tg.grad``
    nests (``tg.grad(tg.grad(f))(x)``).

    One recorded tape per argument structure, shapes and dtypes (and static keyword values)
    is kept, at most ``cache_size`` of them (default ``tapegrad.functional.CACHE_SIZE``,
    64), the least recently used dropped first.

    >>> vg = tg.value_and_grad(lambda a, b: (a * b).sum(), argnums=(0, 1))
    >>> vg(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    (11.0, (array([3., 4.]), array([1., 2.])))
    >>> df = tg.grad(lambda p, x: (p["w"] * x).sum() + p["b"])
    >>> df({"w": np.ones(2), "b": 0.5}, np.arange(2.0))
    {'w': array([0., 1.]), 'b': array(1.)}
    """
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    maxsize = _cache_size(cache_size)
    cache = collections.OrderedDict()  # key -> (tape, inputs, output, treedefs), most recent last
    counts = {"hits": 0, "misses": 0}

    def wrapped(*args, **kwargs):
        flat = [tree_flatten(a) for a in args]
        if (any(isinstance(v, Var) for leaves, _ in flat for v in leaves)
                or any(isinstance(v, Var) for v in tree_leaves(list(kwargs.values())))):
            return _on_tape(f, flat, kwargs, nums, single)  # nested: record onto the Vars' tape
        for i in nums:
            if not -len(args) <= i < len(args):
                raise TapegradError(f"{getattr(f, '__name__', 'f')}: argnums {argnums!r} out "
                                    f"of range for {len(args)} arguments")
        wanted = {i % len(args) for i in nums}
        arrays = [[_leaf_array(v, f"argument {i}") for v in leaves]
                  for i, (leaves, _) in enumerate(flat)]
        kw = _keywords(kwargs)
        key = (tuple(td for _, td in flat),
               tuple((a.shape, a.dtype.str) for leaves in arrays for a in leaves), kw.key)
        feeds = {name: a for names, leaves in zip(_names(flat), arrays)
                 for name, a in zip(names, leaves)}
        feeds.update(kw.feeds)
        entry = cache.get(key)
        if entry is not None:
            cache.move_to_end(key)
            with entry[0].lock:  # another thread may be replaying the same entry
                _maybe_optimize(entry[0])
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
        entry = _record(f, flat, arrays, kw, wanted)
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

    def wrapped(*args, **kwargs):
        return vg(*args, **kwargs)[1]

    wrapped.cache_info, wrapped.cache_clear = vg.cache_info, vg.cache_clear
    return wrapped


def _maybe_optimize(tape):
    """Count a replay of a cached tape; optimize it once it has had ``OPTIMIZE_AFTER``."""
    n = tape.__dict__.get("_replays", 0) + 1
    tape._replays = n
    if OPTIMIZE_AFTER and n == OPTIMIZE_AFTER + 1:
        tape.optimize()


def _results(entry, nums, single):
    tape, ins, out, tds = entry
    out.backward()
    grads = tuple(tree_unflatten(tds[i % len(ins)], [v.grad.copy() for v in ins[i % len(ins)]])
                  for i in nums)
    return out.item(), grads[0] if single else grads


def _leaf_array(v, what):
    a = np.asarray(v)
    if a.dtype.kind not in "biuf":
        raise TapegradError(f"{what}: expected numbers, got dtype {a.dtype}")
    return a


def _names(flat):
    """Input names of the leaves of each positional argument: ``arg{i}`` for an array,
    ``arg{i}_{j}`` for leaf j of a pytree."""
    return [[f"arg{i}"] if td.kind == "leaf" else [f"arg{i}_{j}" for j in range(len(leaves))]
            for i, (leaves, td) in enumerate(flat)]


class _Keywords:
    """Keyword arguments split into fed array leaves and static values (a cache key)."""

    def __init__(self, items, key, feeds):
        self.items, self.key, self.feeds = items, key, feeds


def _keywords(kwargs):
    """Array leaves (ndarrays, NumPy scalars) of the keyword arguments are inputs fed on every
    call (named ``kw_{name}_{j}``); every other leaf is static: hashed into the cache key."""
    items, key, feeds = [], [], {}
    for n, (name, value) in enumerate(sorted(kwargs.items())):
        leaves, td = tree_flatten(value)
        base = f"kw_{name}" if name.isidentifier() else f"kw{n}"
        parts = []
        for j, v in enumerate(leaves):
            if isinstance(v, (np.ndarray, np.generic)):
                a = _leaf_array(v, f"keyword argument {name!r}")
                feeds[f"{base}_{j}"] = a
                parts.append(("fed", a.shape, a.dtype.str))
            else:
                try:
                    hash(v)
                except TypeError:
                    raise TapegradError(f"keyword argument {name!r}: {type(v).__name__} is "
                                        f"neither an array (fed on every call) nor hashable "
                                        f"(recorded per value) ({user_site()})") from None
                parts.append(("static", type(v), v))
        items.append((name, base, leaves, td))
        key.append((name, td, tuple(parts)))
    return _Keywords(items, tuple(key), feeds)


def _on_tape(f, flat, kwargs, nums, single):
    """``value_and_grad`` called with Vars: ``f`` records onto their tape and the gradients
    are recorded too (``tg.gradients``), so they can be differentiated again."""
    from .higher import gradients
    from .ops._record import tape_of, as_var
    leaves_all = [v for leaves, _ in flat for v in leaves]
    leaves_all += [v for v in tree_leaves(list(kwargs.values())) if isinstance(v, Var)]
    tape = tape_of(leaves_all, getattr(f, "__name__", "f"))
    ins = [[as_var(v, tape, "grad") for v in leaves] for leaves, _ in flat]
    out = f(*[tree_unflatten(td, vs) for vs, (_, td) in zip(ins, flat)], **kwargs)
    if not isinstance(out, Var) or out.tape is not tape or out.size != 1:
        raise TapegradError(f"{getattr(f, '__name__', 'f')} must return a size-1 Var computed "
                            f"from its arguments, got {out!r}")
    n = len(ins)
    grads = tuple(tree_unflatten(flat[i % n][1], gradients(out, ins[i % n])) if ins[i % n]
                  else tree_unflatten(flat[i % n][1], []) for i in nums)
    return out, grads[0] if single else grads


def _record(f, flat, arrays, kw, wanted):
    leaves = [a for group in arrays for a in group] + list(kw.feeds.values())
    dtype = np.float32 if leaves and all(a.dtype == np.float32 for a in leaves) else np.float64
    tape = Tape(dtype)
    ins = [[tape.input(name, value=a, requires_grad=i in wanted)
            for name, a in zip(names, group)]
           for i, (names, group) in enumerate(zip(_names(flat), arrays))]
    kwargs = {}
    for name, base, kleaves, td in kw.items:
        vals = [tape.input(f"{base}_{j}", value=kw.feeds[f"{base}_{j}"])
                if f"{base}_{j}" in kw.feeds else v for j, v in enumerate(kleaves)]
        kwargs[name] = tree_unflatten(td, vals)
    out = f(*[tree_unflatten(td, vs) for vs, (_, td) in zip(ins, flat)], **kwargs)
    if not isinstance(out, Var) or out.tape is not tape or out.size != 1:
        raise TapegradError(f"{getattr(f, '__name__', 'f')} must return a size-1 Var computed "
                            f"from its arguments, got {out!r}")
    return tape, ins, out, [td for _, td in flat]
