"""Higher order: the reverse pass recorded as instructions (``tg.gradients``).

``gradients(y, xs)`` walks the tape backwards from ``y`` (the instructions with a gradient
path from some ``x`` to ``y``, found by the same compiled activity analysis as a replay's
reverse sweep) and calls each instruction's recorded reverse rule (``tapegrad.ops._vjp``):
the cotangents are new Vars on the same tape. They replay with it (``tape.forward`` computes
them), are read like any Var, and can be differentiated again -- by ``backward()``,
``tg.fit`` or another ``gradients``.

Cotangents are kept per *root* buffer (a reshape shares its root's memory): a rule's result
for an input that is a reshape is reshaped to the root's shape before it is added in.
"""
import numpy as np

from . import activity
from .errors import ShapeError, TapegradError, user_site
from .opcodes import DIFFERENTIABLE, N_IN, OP, OUT, X
from .ops._record import as_var, reshape_var
from .ops._vjp import VJP, Rule
from .var import Var


def gradients(y, xs, grad_output=None):
    """d(y)/d(x) for each x of ``xs`` as Vars on ``y``'s tape (shapes of ``xs``): the reverse
    pass recorded as instructions, so the result replays with the tape and can be
    differentiated again.

    ``y`` must have size 1 unless ``grad_output`` (an array or a Var of ``y``'s shape, the
    cotangent) is given. ``xs`` may be params, inputs or any Var recorded before ``y``; a Var
    with no path to ``y`` gets zeros.

    >>> gx, = tg.gradients((x ** 3).sum(), [x])     # 3 x**2, recorded   # doctest: +SKIP
    """
    if not isinstance(y, Var):
        raise TapegradError(f"gradients(): y must be a Var, got {type(y).__name__} "
                            f"({user_site()})")
    single = isinstance(xs, Var)
    xs = [xs] if single else list(xs)
    tape = y.tape
    for i, x in enumerate(xs):
        if not isinstance(x, Var) or x.tape is not tape:
            raise TapegradError(f"gradients(): xs[{i}] is not a Var of y's tape ({user_site()})")
    if grad_output is None:
        if y.size != 1:
            raise TapegradError(f"gradients() of {y._describe()} needs grad_output: only a Var "
                                f"of size 1 has an implicit gradient of 1 ({user_site()})")
        seed = tape.const(np.ones(y.shape))
    else:
        seed = as_var(grad_output, tape, "gradients")
        if seed.shape != y.shape:
            raise ShapeError(f"gradients(): grad_output has shape {seed.shape}, "
                             f"{y._describe()} ({user_site()})")
    tape._flush()
    n, nb = len(tape), tape._nbuf
    instr = tape._instr[:n].copy()
    imm = tape._imm[:n].copy()
    base = np.arange(nb, dtype=np.int64)
    for b, r in tape._alias.items():
        base[b] = r
    varied = np.zeros(max(nb, 1), np.uint8)
    varied[base[[x._b for x in xs]]] = 1
    mask = activity.reverse_mask(instr, N_IN, DIFFERENTIABLE, base, varied, y._b)
    root_shape = {}

    def add_to(b, ct):
        r = int(base[b])
        shape = root_shape.setdefault(r, tape._shape[r])
        ct = reshape_var(ct, shape) if ct.shape != shape else ct
        old = adj.get(r)
        adj[r] = ct if old is None else old + ct

    adj = {}
    add_to(y._b, seed)
    for k in np.flatnonzero(mask & 1)[::-1]:
        row = instr[k]
        out = int(row[OUT])
        g = adj.get(int(base[out]))
        if g is None:
            continue
        if g.shape != tape._shape[out]:
            g = reshape_var(g, tape._shape[out])
        op = int(row[OP])
        n_in = int(N_IN[op])
        need = tuple(bool(mask[k] & (2 << j)) for j in range(n_in))
        cts = VJP[op](Rule(tape, row, imm[k], n_in, need), g)
        for j in range(n_in):
            if need[j] and cts[j] is not None:
                add_to(int(row[X + j]), cts[j])
    out = []
    for x in xs:
        ct = adj.get(int(base[x._b]))
        if ct is None:
            out.append(tape.const(np.zeros(x.shape)))
        else:
            out.append(reshape_var(ct, x.shape) if ct.shape != x.shape else ct)
    return out[0] if single else out


# ---------------------------------------------------------------------------- transforms
class _Traced:
    """``f`` recorded once per argument structures, shapes and dtypes (a positional argument
    may be a pytree; its leaves are inputs named as ``tg.grad`` names them: ``arg{i}``, or
    ``arg{i}_{j}`` for leaf j of a tree), replayed after; ``build(tape, ins, out)`` adds what
    a transform needs (recorded gradients, cotangent inputs) and returns an entry; ``ins``
    holds one list of leaf inputs per argument, ``entry["tds"]`` their structures. A replay
    whose guard flips re-records. At most ``cache_size`` recordings are kept (least recently
    used)."""

    def __init__(self, f, wanted, build, cache_size=64):
        self.f, self.wanted, self.build, self.cache_size = f, wanted, build, cache_size
        self.cache = {}

    def __call__(self, args, feeds=None):
        from .errors import BranchChanged
        from .functional import _leaf_array, _names
        from .tape import Tape
        from .tree import tree_flatten, tree_unflatten
        name = getattr(self.f, "__name__", "f")
        flat = [tree_flatten(a) for a in args]
        arrays = [[_leaf_array(v, f"{name}: argument {i}") for v in leaves]
                  for i, (leaves, _) in enumerate(flat)]
        names = _names(flat)
        key = (tuple(td for _, td in flat),
               tuple((a.shape, a.dtype.str) for group in arrays for a in group))
        fed = {n: a for ns, group in zip(names, arrays) for n, a in zip(ns, group)}
        entry = self.cache.pop(key, None)
        if entry is not None:
            try:
                entry["tape"].forward(**fed, **(feeds or {}))
            except BranchChanged:
                entry = None
        if entry is None:
            leaves = [a for group in arrays for a in group]
            f64 = not leaves or any(a.dtype != np.float32 for a in leaves)
            tape = Tape(np.float64 if f64 else np.float32)
            ins = [[tape.input(n, value=a, requires_grad=i in self.wanted)
                    for n, a in zip(ns, group)]
                   for i, (ns, group) in enumerate(zip(names, arrays))]
            out = self.f(*[tree_unflatten(td, vs) for vs, (_, td) in zip(ins, flat)])
            if not isinstance(out, Var) or out.tape is not tape:
                raise TapegradError(f"{name} must return a Var computed from its arguments, "
                                    f"got {out!r}")
            entry = self.build(tape, ins, out)
            entry["tape"], entry["ins"], entry["out"] = tape, ins, out
            entry["tds"] = [td for _, td in flat]
            if feeds:
                tape.forward(**feeds)
        self.cache[key] = entry
        while len(self.cache) > self.cache_size:
            del self.cache[next(iter(self.cache))]
        return entry


def _argnums(argnums, n, name):
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    for i in nums:
        if not -n <= i < n:
            raise TapegradError(f"{name}: argnums {argnums!r} out of range for {n} arguments")
    return single, tuple(i % n for i in nums)


def vjp(f, *primals):
    """``(value, vjp_fn)`` as ``jax.vjp``: ``vjp_fn(cotangent)`` returns a tuple with the
    gradient of ``sum(cotangent * f(*primals))`` for every primal (NumPy arrays; a primal
    that is a pytree gets a gradient of its structure).

    >>> y, back = tg.vjp(lambda x: tg.sin(x), np.array([0.0, 1.0]))  # doctest: +SKIP
    >>> back(np.ones(2))                                              # (cos(x),)
    """
    tr = _Traced(f, set(range(len(primals))), lambda tape, ins, out: {})
    entry = tr(primals)
    tape, ins, out, tds = entry["tape"], entry["ins"], entry["out"], entry["tds"]
    value = out.numpy()

    def vjp_fn(cotangent):
        ct = np.asarray(cotangent, dtype=tape.dtype)
        if ct.shape != out.shape:
            raise ShapeError(f"vjp: cotangent has shape {ct.shape}, the output has shape "
                             f"{out.shape} ({user_site()})")
        out.backward(grad_output=ct)
        return tuple(_tree(td, [x.grad.copy() for x in group]) for td, group in zip(tds, ins))
    return value, vjp_fn


def _tree(td, leaves):
    from .tree import tree_unflatten
    return tree_unflatten(td, leaves)


def jacobian(f, argnums=0):
    """Reverse-mode Jacobian (``jax.jacrev``): ``jacobian(f)(*args)`` has shape
    ``out.shape + args[argnums].shape`` (a tuple of them for a tuple ``argnums``; for a
    pytree argument, its structure holding ``out.shape + leaf.shape`` per leaf): one
    compiled reverse sweep per output element, on a tape recorded once per shapes."""
    cache = {}

    def jac(*args):
        single, nums = _argnums(argnums, len(args), "jacobian")
        tr = cache.get(nums)
        if tr is None:
            tr = cache[nums] = _Traced(f, set(nums), lambda tape, ins, out: {})
        entry = tr(args)
        ins, tds = entry["ins"], entry["tds"]
        leaves = [x for i in nums for x in ins[i]]
        rows = iter(_reverse_rows(entry["out"], leaves))
        res = [_tree(tds[i], [next(rows) for _ in ins[i]]) for i in nums]
        return res[0] if single else tuple(res)
    return jac


jacrev = jacobian


def _reverse_rows(y, xs):
    """d y / d x for each x of ``xs``, shaped ``y.shape + x.shape``: one compiled reverse
    sweep per element of ``y`` (a unit cotangent)."""
    rows = [np.zeros((y.size,) + x.shape, x.dtype) for x in xs]
    seed = np.zeros(y.size, y.dtype)
    for m in range(y.size):
        seed[:] = 0
        seed[m] = 1
        y.backward(grad_output=seed.reshape(y.shape))
        for r, x in zip(rows, xs):
            r[m] = x.grad
    return [r.reshape(y.shape + x.shape) for r, x in zip(rows, xs)]


def hessian(f, argnums=0):
    """``hessian(f)(*args)`` of a scalar ``f``: shape ``arg.shape + arg.shape`` (for a tuple
    ``argnums``, a tuple of tuples of blocks, as ``jax.hessian``; for a pytree argument, its
    structure nested in itself: ``H[k1][k2]`` of shape ``leaf1.shape + leaf2.shape``). The
    gradient is recorded once (``gradients``); each row is one compiled reverse sweep
    through it."""
    cache = {}

    def build(nums):
        def b(tape, ins, out):
            if out.size != 1:
                raise TapegradError(f"hessian: {getattr(f, '__name__', 'f')} must return a "
                                    f"size-1 Var, got shape {out.shape}")
            return {"grads": [gradients(out, ins[i]) if ins[i] else [] for i in nums]}
        return b

    def hess(*args):
        single, nums = _argnums(argnums, len(args), "hessian")
        tr = cache.get(nums)
        if tr is None:
            tr = cache[nums] = _Traced(f, set(nums), build(nums))
        entry = tr(args)
        ins, grads, tds = entry["ins"], entry["grads"], entry["tds"]
        blocks = [tuple(_tree(tds[i], [_tree(tds[j], _reverse_rows(g, ins[j])) for g in gi])
                        for j in nums) for i, gi in zip(nums, grads)]
        return blocks[0][0] if single else tuple(blocks)
    return hess


def hvp(f, primals, tangents):
    """``H(x) v`` of a scalar ``f`` at ``x = primals[0]`` along ``v = tangents[0]`` without
    forming ``H``: the gradient is recorded once, then one compiled reverse sweep of
    ``sum(grad * v)``. Returns an array shaped like ``primals[0]`` (a pytree primal: a tree
    of its structure, its tangent a tree of the same structure)."""
    from .tree import tree_flatten
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise TapegradError(f"hvp: {len(primals)} primals but {len(tangents)} tangents")
    feeds = {}
    for i, (p, t) in enumerate(zip(primals, tangents)):
        (pl, ptd), (tl, ttd) = tree_flatten(p), tree_flatten(t)
        if ptd != ttd:
            raise ShapeError(f"hvp: tangent {i} has structure {ttd!r}, primal {ptd!r} "
                             f"({user_site()})")
        for j, (a, b) in enumerate(zip(pl, tl)):
            if np.shape(a) != np.shape(b):
                raise ShapeError(f"hvp: tangent {i} has shape {np.shape(b)}, primal "
                                 f"{np.shape(a)} ({user_site()})")
            feeds[f"tangent{i}_{j}"] = b
    key = id(f)
    tr = _HVP.get(key)
    if tr is None or tr.f is not f:
        def build(tape, ins, out):
            if out.size != 1:
                raise TapegradError(f"hvp: {getattr(f, '__name__', 'f')} must return a size-1 "
                                    f"Var, got shape {out.shape}")
            leaves = [x for group in ins for x in group]
            vs = [tape.input(f"tangent{i}_{j}", shape=x.shape)
                  for i, group in enumerate(ins) for j, x in enumerate(group)]
            gs = gradients(out, leaves) if leaves else []
            dot = tape.const(np.zeros(()))
            for g, v in zip(gs, vs):
                dot = dot + (g * v).sum()
            return {"dot": dot}
        tr = _HVP[key] = _Traced(f, set(range(len(primals))), build)
        while len(_HVP) > 64:  # the recordings of the functions seen last
            del _HVP[next(iter(_HVP))]
    entry = tr(primals, feeds=feeds)
    entry["dot"].backward()
    return _tree(entry["tds"][0], [x.grad.copy() for x in entry["ins"][0]])


_HVP = {}  # id(f) -> its recordings (checked against f itself: ids are reused)
