"""Pytrees in the functional API (tapegrad/tree.py, functional.py, higher.py): gradients of
nested lists / tuples / dicts of arrays come back in the same structure and equal central
finite differences of an independent NumPy function; keyword arguments pass through (arrays
fed, other values re-recorded when they change); the cache keys on the structure; nesting,
vjp, jacobian, hessian and hvp take pytrees; an Adam step over a dict of arrays trains."""
import collections

import numpy as np
import pytest

import tapegrad as tg

rng = np.random.default_rng(7)
X = rng.standard_normal((6, 3))
Y = rng.standard_normal((6, 2))
PARAMS = {"layers": [{"W": rng.standard_normal((3, 4)) * 0.5, "b": rng.standard_normal(4) * 0.1},
                     {"W": rng.standard_normal((4, 2)) * 0.5, "b": np.zeros(2)}],
          "scale": 0.7}
Pair = collections.namedtuple("Pair", "a b")


def mlp_loss(p, x, y):
    """Works on Vars (tapegrad) and on arrays (NumPy) alike."""
    h = x
    for i, layer in enumerate(p["layers"]):
        h = h @ layer["W"] + layer["b"]
        if i == 0:
            h = np.tanh(h)
    return (((h * p["scale"]) - y) ** 2).mean()


def fd_tree(f, tree, eps=1e-6):
    """Central finite differences of scalar ``f`` w.r.t. every leaf of ``tree``, same structure."""
    leaves, td = tg.tree_flatten(tree)
    leaves = [np.array(a, dtype=float) for a in leaves]
    grads = []
    for k, a in enumerate(leaves):
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + eps
            up = f(tg.tree_unflatten(td, leaves))
            a[i] = old - eps
            down = f(tg.tree_unflatten(td, leaves))
            a[i] = old
            g[i] = (up - down) / (2 * eps)
        grads.append(g)
    return tg.tree_unflatten(td, grads)


def assert_tree_close(got, want, rtol=1e-6, atol=1e-9):
    gl, gtd = tg.tree_flatten(got)
    wl, wtd = tg.tree_flatten(want)
    assert gtd == wtd, (gtd, wtd)
    for g, w in zip(gl, wl):
        assert isinstance(g, np.ndarray) and g.shape == np.shape(w)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------- tree helpers
def test_flatten_unflatten_round_trip_and_structure():
    tree = {"a": [1.0, (np.ones(2), None)], "b": Pair(np.zeros(3), {"c": 2}), "d": ()}
    leaves, td = tg.tree_flatten(tree)
    assert len(leaves) == td.num_leaves == 4
    assert leaves[0] == 1.0 and leaves[3] == 2
    back = tg.tree_unflatten(td, leaves)
    assert back.keys() == tree.keys() and isinstance(back["b"], Pair)
    assert back["a"][1][1] is None and back["d"] == ()
    assert tg.tree_structure(back) == td and hash(tg.tree_structure(back)) == hash(td)
    assert tg.tree_leaves(tree)[1] is leaves[1]
    # structures that differ: key order, list vs tuple, a leaf vs a node, namedtuple type
    for other in ({"b": 1, "a": 1}, [1, 2], (1, 2, 3), {"a": [1]}):
        assert tg.tree_structure(other) != tg.tree_structure({"a": 1, "b": 1})
    assert tg.tree_structure([1, 2]) != tg.tree_structure((1, 2))
    assert tg.tree_structure(Pair(1, 2)) != tg.tree_structure((1, 2))
    assert "W" in repr(tg.tree_structure({"W": 1, "b": (2,)}))
    with pytest.raises(tg.TapegradError, match="3 leaves for a structure with 4"):
        tg.tree_unflatten(td, leaves[:3])


def test_tree_map_several_trees_and_mismatch():
    a = {"w": np.ones(2), "b": [1.0, 2.0]}
    b = {"w": np.full(2, 3.0), "b": [10.0, 20.0]}
    out = tg.tree_map(lambda x, y: x + 2 * y, a, b)
    np.testing.assert_array_equal(out["w"], [7.0, 7.0])
    assert out["b"] == [21.0, 42.0]
    with pytest.raises(tg.TapegradError, match="structure"):
        tg.tree_map(lambda x, y: x, a, {"w": 1.0, "b": [1.0]})


# ---------------------------------------------------------------------------- tg.grad
def test_grad_of_nested_params_equals_finite_differences():
    g = tg.grad(mlp_loss)(PARAMS, X, Y)
    want = fd_tree(lambda p: mlp_loss(p, X, Y), PARAMS)
    assert_tree_close(g, want)
    assert g["scale"].shape == ()  # a scalar leaf: a 0-d gradient


def test_value_and_grad_argnums_and_replay_with_new_values():
    vg = tg.value_and_grad(mlp_loss, argnums=(0, 1))
    v, (gp, gx) = vg(PARAMS, X, Y)
    assert v == pytest.approx(float(mlp_loss(PARAMS, X, Y)), rel=1e-13)
    assert_tree_close(gp, fd_tree(lambda p: mlp_loss(p, X, Y), PARAMS))
    np.testing.assert_allclose(gx, fd_tree(lambda x: mlp_loss(PARAMS, x, Y), X), rtol=1e-6,
                               atol=1e-9)
    p2 = tg.tree_map(lambda a: np.asarray(a) * 1.1, PARAMS)
    v2, (gp2, _) = vg(p2, X, Y)  # same structure and shapes: a replay
    assert vg.cache_info().hits == 1 and vg.cache_info().misses == 1
    assert v2 == pytest.approx(float(mlp_loss(p2, X, Y)), rel=1e-13)
    assert_tree_close(gp2, fd_tree(lambda p: mlp_loss(p, X, Y), p2))


def test_the_cache_keys_on_the_structure():
    def f(p):
        leaves = tg.tree_leaves(p)
        return (leaves[0] * 2.0 + leaves[1] * 3.0).sum()
    df = tg.grad(f)
    r1 = df({"a": np.ones(2), "b": np.ones(2)})
    r2 = df({"b": np.ones(2), "a": np.ones(2)})   # same shapes, other key order
    r3 = df([np.ones(2), np.ones(2)])
    r4 = df((np.ones(2), np.ones(2)))
    assert df.cache_info().misses == 4 and df.cache_info().hits == 0
    np.testing.assert_array_equal(r1["a"], [2.0, 2.0])
    np.testing.assert_array_equal(r2["b"], [2.0, 2.0])
    assert isinstance(r3, list) and isinstance(r4, tuple)
    df({"a": np.zeros(2), "b": np.ones(2)})
    assert df.cache_info().hits == 1


def test_keyword_arguments_pass_through_fed_or_rerecorded():
    recordings = []

    def f(p, x=None, power=2, mode="sum"):
        recordings.append((power, mode))
        r = (x @ p["w"] - 1.0) ** power
        return r.sum() if mode == "sum" else r.mean()

    p = {"w": np.array([0.5, -0.25, 1.0])}
    vg = tg.value_and_grad(f)
    for xb in (X, X * 2.0, X[::-1].copy()):   # arrays: fed, one recording
        v, g = vg(p, x=xb)
        assert v == pytest.approx(float(((xb @ p["w"] - 1.0) ** 2).sum()), rel=1e-13)
        np.testing.assert_allclose(g["w"], 2 * xb.T @ (xb @ p["w"] - 1.0), rtol=1e-12)
    assert len(recordings) == 1
    v, g = vg(p, x=X, power=3)                # a static value changed: recorded again
    assert v == pytest.approx(float(((X @ p["w"] - 1.0) ** 3).sum()), rel=1e-13)
    np.testing.assert_allclose(g["w"], 3 * X.T @ (X @ p["w"] - 1.0) ** 2, rtol=1e-12)
    vg(p, x=X, power=3, mode="mean")
    vg(p, x=X * 3.0, power=3)                 # seen before: replayed, not recorded
    vg(p, x=X)
    assert recordings == [(2, "sum"), (3, "sum"), (3, "mean")]
    assert vg(p, x=X, power=3.0)[0] == pytest.approx(v)  # 3.0 is not 3: its own recording
    assert len(recordings) == 4
    with pytest.raises(tg.TapegradError, match="neither an array"):
        vg(p, x=X, power={1, 2})
    # a pytree of arrays as a keyword argument: fed leaf by leaf
    g2 = tg.grad(lambda p, data: ((data["x"] @ p["w"] - data["y"]) ** 2).sum())(
        p, data={"x": X, "y": Y[:, 0]})
    np.testing.assert_allclose(g2["w"], 2 * X.T @ (X @ p["w"] - Y[:, 0]), rtol=1e-12)


def test_nested_grad_of_a_pytree():
    def f(p):
        return (tg.tanh(p["w"]) ** 2).sum() * p["c"]

    def outer(p):  # |d f / d w|^2: a second derivative of f
        return (tg.grad(f)(p)["w"] ** 2).sum()

    p = {"w": np.array([0.3, -0.8, 1.1]), "c": 1.5}

    def np_outer(q):
        t = np.tanh(q["w"])
        return float(((2 * t * (1 - t ** 2) * q["c"]) ** 2).sum())
    assert_tree_close(tg.grad(outer)(p), fd_tree(np_outer, p))


def test_empty_and_scalar_trees():
    g = tg.grad(lambda p, q: p[0] * 3.0 + (p[1] ** 2).sum(), argnums=(0, 1))(
        (2.0, np.ones(2)), {})
    assert g[1] == {} and float(g[0][0]) == 3.0
    np.testing.assert_array_equal(g[0][1], [2.0, 2.0])
    with pytest.raises(tg.TapegradError, match="expected numbers"):
        tg.grad(lambda p: p["a"].sum())({"a": np.array(["x"])})


# ------------------------------------------------------------------ vjp, jacobian, hessian, hvp
def _quad(p):
    return (p["a"] ** 2 * p["b"][0]).sum() + (p["b"][1] ** 3).sum() * 0.5


P2 = {"a": np.array([0.5, -1.0]), "b": [np.array(0.8), np.array([1.5, 2.0, -0.5])]}


def _np_quad(p):
    return float((p["a"] ** 2 * p["b"][0]).sum() + (p["b"][1] ** 3).sum() * 0.5)


def test_vjp_jacobian_hessian_hvp_take_pytrees():
    value, back = tg.vjp(_quad, P2)
    assert float(value) == pytest.approx(_np_quad(P2))
    (ct,) = back(np.array(2.0))
    assert_tree_close(ct, tg.tree_map(lambda g: 2 * g, fd_tree(_np_quad, P2)))
    J = tg.jacobian(lambda p: p["a"] * p["b"][1][:2])(P2)
    np.testing.assert_allclose(J["a"], np.diag(P2["b"][1][:2]))
    np.testing.assert_allclose(J["b"][1], np.hstack([np.diag(P2["a"]), np.zeros((2, 1))]))
    assert J["b"][0].shape == (2,) and not J["b"][0].any()
    H = tg.hessian(_quad)(P2)  # P2's structure, each leaf holding a tree of P2's structure
    leaves, td = tg.tree_flatten(P2)
    B = [tg.tree_leaves(inner) for inner in _outer(H, td)]  # B[i][j]: leaf_i x leaf_j block
    grad_f = tg.grad(_quad)
    for i, a in enumerate(leaves):  # rows of H against central differences of the gradient
        for idx in np.ndindex(np.shape(a)):
            up = [np.array(x, float) for x in leaves]
            down = [np.array(x, float) for x in leaves]
            up[i][idx] += 1e-6
            down[i][idx] -= 1e-6
            col = tg.tree_map(lambda u, d: (u - d) / 2e-6, grad_f(tg.tree_unflatten(td, up)),
                              grad_f(tg.tree_unflatten(td, down)))
            for j, c in enumerate(tg.tree_leaves(col)):
                assert B[i][j].shape == np.shape(a) + np.shape(leaves[j])
                np.testing.assert_allclose(B[i][j][idx], c, rtol=1e-6, atol=1e-8)
    v = tg.tree_map(lambda x: np.full(np.shape(x), 0.5), P2)
    hv = tg.hvp(_quad, (P2,), (v,))
    assert tg.tree_structure(hv) == td
    lv = tg.tree_leaves(v)
    for i, got in enumerate(tg.tree_leaves(hv)):
        want = sum(np.tensordot(B[i][j], lv[j], axes=np.ndim(lv[j])) for j in range(len(lv)))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(tg.ShapeError, match="structure"):
        tg.hvp(_quad, (P2,), ([1.0],))


def _outer(H, td):
    """The outer level of a tree-of-trees Hessian: one inner tree per leaf of ``td``."""
    out = []

    def walk(h, t):
        if t.kind == "leaf":
            out.append(h)
        elif t.kind == "dict":
            for k, c in zip(t.meta, t.children):
                walk(h[k], c)
        elif t.kind != "none":
            for hh, c in zip(h, t.children):
                walk(hh, c)
    walk(H, td)
    return out


# ---------------------------------------------------------------------------- the optimizer recipe
def test_adam_recipe_over_a_dict_of_arrays_fits_least_squares():
    """The README's recipe: value_and_grad + tree_map Adam on {"w", "b"}; it reaches the
    least-squares solution computed by NumPy."""
    A = rng.standard_normal((40, 3))
    t = A @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.01 * rng.standard_normal(40)

    def loss(p, x, y):
        return ((x @ p["w"] + p["b"] - y) ** 2).mean()

    params = {"w": np.zeros(3), "b": np.zeros(())}
    m = tg.tree_map(np.zeros_like, params)
    v = tg.tree_map(np.zeros_like, params)
    vg = tg.value_and_grad(loss)
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
    for step in range(1, 1501):
        L, g = vg(params, A, t)
        m = tg.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = tg.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        params = tg.tree_map(lambda p, m, v: p - lr * (m / (1 - b1 ** step))
                             / (np.sqrt(v / (1 - b2 ** step)) + eps), params, m, v)
    sol = np.linalg.lstsq(np.hstack([A, np.ones((40, 1))]), t, rcond=None)[0]
    np.testing.assert_allclose(params["w"], sol[:3], atol=1e-4)
    assert float(params["b"]) == pytest.approx(sol[3], abs=1e-4)
    assert vg.cache_info().misses == 1
