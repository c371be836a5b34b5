"""Pytrees: nested lists, tuples (namedtuples too), dicts and None holding leaves (arrays,
numbers, Vars), as the functional API takes them (``tg.grad(f)(params)`` with ``params`` a
dict of arrays returns a dict of gradients).

``tree_flatten(tree) -> (leaves, treedef)`` lists the leaves depth first (dict entries in
their insertion order, None holding no leaf); ``tree_unflatten(treedef, leaves)`` builds the
same structure around new leaves; ``tree_map(f, tree, *rest)`` applies ``f`` leaf by leaf to
trees of one structure. A ``TreeDef`` is hashable and compares equal for equal structures
(types, dict keys and their order, lengths), so it can key a cache.

>>> leaves, td = tg.tree_flatten({"W": np.ones((2, 2)), "b": [0.0, 1.0]})
>>> len(leaves), td.num_leaves
(3, 3)
>>> tg.tree_map(lambda a: a * 2, {"W": 1.0, "b": (2.0, None)})
{'W': 2.0, 'b': (4.0, None)}
"""
from .errors import TapegradError, user_site

_LEAF, _NONE, _LIST, _TUPLE, _DICT = "leaf", "none", "list", "tuple", "dict"


class TreeDef:
    """The structure of a pytree without its leaves (see the module docstring)."""

    __slots__ = ("kind", "meta", "children", "num_leaves", "_hash")

    def __init__(self, kind, meta, children):
        self.kind, self.meta, self.children = kind, meta, tuple(children)
        self.num_leaves = 1 if kind == _LEAF else sum(c.num_leaves for c in self.children)
        self._hash = None

    def _key(self):
        return (self.kind, self.meta, self.children)

    def __eq__(self, other):
        return isinstance(other, TreeDef) and self._key() == other._key()

    def __hash__(self):
        if self._hash is None:
            self._hash = hash(self._key())
        return self._hash

    def __repr__(self):
        if self.kind == _LEAF:
            return "*"
        if self.kind == _NONE:
            return "None"
        inner = ", ".join(map(repr, self.children))
        if self.kind == _LIST:
            return f"[{inner}]"
        if self.kind == _DICT:
            return "{" + ", ".join(f"{k!r}: {c!r}" for k, c in zip(self.meta, self.children)) + "}"
        name = "" if self.meta is tuple else self.meta.__name__
        return f"{name}({inner}{',' if len(self.children) == 1 and not name else ''})"


LEAF = TreeDef(_LEAF, None, ())


def _is_namedtuple(t):
    return isinstance(t, tuple) and type(t) is not tuple and hasattr(type(t), "_fields")


def tree_flatten(tree):
    """``(leaves, treedef)``: the leaves depth first, and the structure around them."""
    leaves = []
    return leaves, _flatten(tree, leaves)


def _flatten(t, leaves):
    if t is None:
        return TreeDef(_NONE, None, ())
    if isinstance(t, list):
        return TreeDef(_LIST, None, [_flatten(c, leaves) for c in t])
    if type(t) is tuple or _is_namedtuple(t):
        return TreeDef(_TUPLE, type(t), [_flatten(c, leaves) for c in t])
    if isinstance(t, dict):
        keys = tuple(t)
        try:
            hash(keys)
        except TypeError:
            raise TapegradError(f"tree_flatten: dict keys must be hashable ({user_site()})") \
                from None
        return TreeDef(_DICT, keys, [_flatten(t[k], leaves) for k in keys])
    leaves.append(t)
    return LEAF


def tree_unflatten(treedef, leaves):
    """The tree of structure ``treedef`` holding ``leaves`` (in ``tree_flatten``'s order)."""
    leaves = list(leaves)
    if len(leaves) != treedef.num_leaves:
        raise TapegradError(f"tree_unflatten: {len(leaves)} leaves for a structure with "
                            f"{treedef.num_leaves} ({user_site()})")
    it = iter(leaves)
    return _build(treedef, it)


def _build(td, it):
    if td.kind == _LEAF:
        return next(it)
    if td.kind == _NONE:
        return None
    kids = [_build(c, it) for c in td.children]
    if td.kind == _LIST:
        return kids
    if td.kind == _DICT:
        return dict(zip(td.meta, kids))
    return td.meta(*kids) if td.meta is not tuple else tuple(kids)


def tree_leaves(tree):
    """The leaves of ``tree``, depth first."""
    return tree_flatten(tree)[0]


def tree_structure(tree):
    """The ``TreeDef`` of ``tree``."""
    return tree_flatten(tree)[1]


def tree_map(f, tree, *rest):
    """``f`` applied leaf by leaf: ``tree_map(lambda p, g: p - 0.1 * g, params, grads)``.
    Every tree of ``rest`` must have the structure of ``tree``."""
    leaves, td = tree_flatten(tree)
    others = []
    for i, r in enumerate(rest):
        lv, tdr = tree_flatten(r)
        if tdr != td:
            raise TapegradError(f"tree_map: tree {i + 1} has structure {tdr!r}, tree 0 has "
                                f"{td!r} ({user_site()})")
        others.append(lv)
    return tree_unflatten(td, [f(*xs) for xs in zip(leaves, *others)])
