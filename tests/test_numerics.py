"""Numerics that must not silently differ from PyTorch (issue 16, items 1-4).

1. float32 sums accumulate in float64: relative error <= 1e-6 against a float64 reference at
   10^7 elements, in the forward sweep (SUM, mean, mse_loss, the hand-written matmul loop)
   and in the reverse sweep (the reverse of a broadcast is a sum too).
2. NaN in gives NaN out, with torch's gradients (the expected values below were read off
   torch 2.13; ``test_nan_matches_torch`` re-checks them when torch is installed).
3. Finite limits as torch: cross_entropy with the target logit at -inf, d pow(0, -1) / d y,
   float32 cross_entropy gradients at logits of +-1e4.
4. ``==`` and ``!=`` on Vars are elementwise 0/1 Vars; Vars stay hashable by identity.
"""
import math

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.ops import linalg

nan, inf = math.nan, math.inf
BIG = 10 ** 7


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


# ---------------------------------------------------------------------------- 1. float32 sums
def test_float32_sum_of_1e7_forward_replay_and_reverse():
    rng = np.random.default_rng(0)
    data = np.full(BIG, 0.1, np.float32)
    data[::3] = rng.uniform(0, 1, data[::3].size)
    want = np.sum(data.astype(np.float64))
    tape = tg.Tape(np.float32)
    x = tape.param(data)
    s = x.sum()
    m = tg.mean(x)
    assert rel_err(s.value, want) <= 1e-6           # recorded (eager forward)
    assert rel_err(m.value, want / BIG) <= 1e-6
    # the reverse of a broadcast: d/dw sum(w * data) = sum(data), a sum of 10^7 terms
    w = tape.param(np.ones(1, np.float32))
    y = (w * tape.const(data)).sum()
    y.backward()
    assert rel_err(w.grad, [want]) <= 1e-6
    tape.forward()                                  # replayed forward sweep
    assert rel_err(s.value, want) <= 1e-6
    assert rel_err(y.value, want) <= 1e-6


@pytest.mark.parametrize("rows", [1, 7, 8, 13, 64, 131])
def test_float32_column_sums_by_blocks_of_rows(rows):
    """Column sums of float32 rows go by blocks of 8 rows: every count of leftover rows."""
    rng = np.random.default_rng(rows)
    data = rng.standard_normal((2, rows, 5)).astype(np.float32)
    want = data.astype(np.float64).sum(axis=1)
    s = tg.Tape(np.float32).param(data).sum(axis=1)
    assert rel_err(s.value, want) <= 1e-6


def test_float32_column_sums_and_broadcast_rows():
    """Several columns (B > 1): sum over axis 0, and a bias row broadcast over 2.5e6 rows."""
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 1, (BIG // 4, 4)).astype(np.float32)
    want = data.astype(np.float64).sum(axis=0)
    tape = tg.Tape(np.float32)
    x = tape.param(data)
    s = x.sum(axis=0)
    assert rel_err(s.value, want) <= 1e-6
    b = tape.param(np.zeros(4, np.float32))
    loss = ((x + b) * x).sum()      # d/db: the column sums of x, through the reverse of EXPAND
    loss.backward()
    assert rel_err(b.grad, want) <= 1e-6
    tape.forward()
    assert rel_err(s.value, want) <= 1e-6


def test_float32_mse_loss_of_1e6():
    rng = np.random.default_rng(2)
    pred = rng.uniform(0, 1, 10 ** 6).astype(np.float32)
    target = rng.uniform(0, 1, 10 ** 6).astype(np.float32)
    d = pred.astype(np.float64) - target.astype(np.float64)
    tape = tg.Tape(np.float32)
    p = tape.param(pred)
    loss = tg.mse_loss(p, target)
    assert rel_err(loss.value, np.mean(d * d)) <= 1e-6
    tape.forward()
    assert rel_err(loss.value, np.mean(d * d)) <= 1e-6


def test_float32_logsumexp_and_softmax_sums():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, 10 ** 6).astype(np.float32)
    x64 = x.astype(np.float64)
    tape = tg.Tape(np.float32)
    v = tape.param(x)
    lse = tg.logsumexp(v, axis=0)
    sm = tg.softmax(v, axis=0)
    m = x64.max()
    want_lse = m + np.log(np.sum(np.exp(x64 - m)))
    assert rel_err(lse.value, want_lse) <= 1e-6
    assert rel_err(sm.value, np.exp(x64 - want_lse)) <= 1e-5   # each element rounded once
    lse.backward()
    assert rel_err(v.grad, np.exp(x64 - want_lse)) <= 1e-5


@pytest.mark.parametrize("xs, ys", [
    ((1, 60000), (60000, 1)),      # the K loop of the forward rule
    ((60000, 1), (1, 1)),          # gy sums over 60000 rows (M)
    ((1, 1), (1, 60000)),          # gx sums over 60000 columns (N)
    ((20000, 1, 3), (1, 3, 1)),    # y shared by a batch of 20000: gy sums over the batch
    ((1, 1, 3), (20000, 3, 1)),    # x shared by the batch
])
def test_float32_small_matmul_sums_in_float64(xs, ys):
    """float32 products with long sums below BLAS_MIN are hand-written loops: their sums are
    float64 too."""
    rng = np.random.default_rng(4)
    a = (0.1 + rng.uniform(0, 0.01, xs)).astype(np.float32)
    b = (0.1 + rng.uniform(0, 0.01, ys)).astype(np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    tape = tg.Tape(np.float32)
    x, y = tape.param(a), tape.param(b)
    z = x @ y
    assert z.size * xs[-1] < linalg.BLAS_MIN  # the loop path (linalg.use_blas)
    assert max(xs[-1], z.shape[-1], z.size // z.shape[-1]) > linalg.F32_SUM_MAX
    want = a64 @ b64
    assert rel_err(z.value, want) <= 1e-6
    gz = rng.uniform(0.5, 1.0, want.shape)
    z.backward(gz.astype(np.float32))
    gz64 = gz.astype(np.float32).astype(np.float64)
    gx = gz64 @ np.swapaxes(b64, -1, -2)
    gy = np.swapaxes(a64, -1, -2) @ gz64
    gx = gx.reshape((-1,) + xs).sum(axis=0) if gx.shape != xs else gx   # shared operand
    gy = gy.reshape((-1,) + ys).sum(axis=0) if gy.shape != ys else gy
    assert rel_err(x.grad, gx) <= 1e-6
    assert rel_err(y.grad, gy) <= 1e-6
    tape.forward()
    assert rel_err(z.value, want) <= 1e-6


@pytest.mark.parametrize("xs, ys, spread", [
    ((1, 4 * 10 ** 6), (4 * 10 ** 6,), 0.0),  # X @ y: equal terms (a float32 running sum
    ((9, 300), (300,), 0.01),                 # drifts), blocks of F32_BLOCK; a full block
    ((5000,), (5000, 1100), 0.01),            # and a partial one; x @ Y: 5000 rows, two
    ((300,), (300, 70), 0.01),                # column blocks (VM_BLOCK) of sums
    ((7,), (7, 9), 0.01),                     # one block, rows too short for 8-row passes
])
def test_float32_vector_products_sum_by_blocks(xs, ys, spread):
    """A float32 matrix-vector product sums its float32 products in float32 over at most
    linalg.F32_BLOCK terms (as BLAS's float32 sums over up to F32_SUM_MAX) and the block sums
    in float64: as accurate as a float64 sum over millions of terms of one sign."""
    assert linalg.F32_BLOCK <= linalg.F32_SUM_MAX
    rng = np.random.default_rng(5)
    a = (0.1 + rng.uniform(0, spread, xs)).astype(np.float32)
    b = (0.1 + rng.uniform(0, spread, ys)).astype(np.float32)
    tape = tg.Tape(np.float32)
    z = tape.param(a) @ tape.param(b)
    tape.forward()
    assert rel_err(z.value, a.astype(np.float64) @ b.astype(np.float64)) <= 1e-6


# ---------------------------------------------------------------------------- 2. NaN
X4 = [nan, 1.0, -1.0, 0.0]
# op -> (f, forward on X4, gradient of sum(f(x)) on X4), as torch 2.13 gives them
UNARY_NAN = {
    "relu": (tg.relu, [nan, 1, 0, 0], [1, 1, 0, 0]),
    "leaky_relu": (lambda v: tg.leaky_relu(v, 0.1), [nan, 1, -0.1, 0], [0.1, 1, 0.1, 0.1]),
    "abs": (tg.abs, [nan, 1, 1, 0], [0, 1, -1, 0]),
    "neg": (tg.neg, [nan, -1, 1, 0], [-1, -1, -1, -1]),
    "exp": (tg.exp, [nan, math.e, 1 / math.e, 1], [nan, math.e, 1 / math.e, 1]),
    "sigmoid": (tg.sigmoid, [nan, 0.7310585786300049, 0.2689414213699951, 0.5],
                [nan, 0.19661193324148185, 0.19661193324148185, 0.25]),
    "tanh": (tg.tanh, [nan, math.tanh(1), -math.tanh(1), 0],
             [nan, 0.41997434161402614, 0.41997434161402614, 1]),
    "square": (tg.square, [nan, 1, 1, 0], [nan, 2, -2, 0]),
    "cube": (lambda v: v ** 3, [nan, 1, -1, 0], [nan, 3, 3, 0]),
    "sqrt": (tg.sqrt, [nan, 1, nan, 0], [nan, 0.5, nan, inf]),
    "log": (tg.log, [nan, 0, nan, -inf], [nan, 1, -1, inf]),
    "sin": (tg.sin, [nan, math.sin(1), -math.sin(1), 0], [nan, math.cos(1), math.cos(1), 1]),
}


def _same(got, want):
    np.testing.assert_array_equal(np.asarray(got, np.float64), np.asarray(want, np.float64))


def _unary(f, xs, dtype=np.float64):
    tape = tg.Tape(dtype)
    x = tape.param(np.array(xs, dtype))
    y = f(x)
    y.sum().backward()
    return tape, x, y


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(UNARY_NAN))
def test_nan_unary(name, dtype):
    f, want_y, want_g = UNARY_NAN[name]
    tape, x, y = _unary(f, X4, dtype)
    rtol = 1e-6 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(y.value, want_y, rtol=rtol, err_msg=f"{name} recorded")
    np.testing.assert_allclose(x.grad, want_g, rtol=rtol, err_msg=f"{name} gradient")
    tape.forward()
    y.sum().backward()
    np.testing.assert_allclose(y.value, want_y, rtol=rtol, err_msg=f"{name} replayed")
    np.testing.assert_allclose(x.grad, want_g, rtol=rtol, err_msg=f"{name} replayed gradient")


A4, B4 = [nan, 1.0, nan, 2.0], [1.0, nan, nan, 2.0]
BINARY_NAN = {  # f -> (value, gradient of a, gradient of b) on (A4, B4)
    "maximum": (tg.maximum, [nan, nan, nan, 2], [1, 1, 1, 0.5], [1, 1, 1, 0.5]),
    "minimum": (tg.minimum, [nan, nan, nan, 2], [1, 1, 1, 0.5], [1, 1, 1, 0.5]),
    "add": (tg.add, [nan, nan, nan, 4], [1, 1, 1, 1], [1, 1, 1, 1]),
    "mul": (tg.mul, [nan, nan, nan, 4], [1, nan, nan, 2], [nan, 1, nan, 2]),
    "div": (tg.div, [nan, nan, nan, 1], [1, nan, nan, 0.5], [nan, nan, nan, -0.5]),
}


@pytest.mark.parametrize("name, swap", [(n, s) for n in sorted(BINARY_NAN)
                                         for s in ((False, True) if n != "div" else (False,))])
def test_nan_binary(name, swap):
    f, want, ga, gb = BINARY_NAN[name]
    A, B = A4, B4
    if swap:  # a symmetric op: the operands swapped, so is the nan in each
        A, B, ga, gb = B4, A4, gb, ga
    tape = tg.Tape()
    a, b = tape.param(np.array(A)), tape.param(np.array(B))
    y = f(a, b)
    y.sum().backward()
    _same(y.value, want)
    _same(a.grad, ga)
    _same(b.grad, gb)
    tape.forward()
    y.sum().backward()
    _same(y.value, want)
    _same(a.grad, ga)


def test_nan_maximum_of_nan_and_number_both_orders():
    """The issue's reproduction: maximum(nan, 1) was 1 but maximum(1, nan) nan."""
    tape = tg.Tape()
    n = tape.param(np.array([nan]))
    for y in (tg.maximum(n, 1.0), tg.maximum(1.0, n), tg.minimum(n, 1.0), tg.minimum(1.0, n)):
        assert np.isnan(y.value).all()


def test_nan_max_reduction_and_its_gradient():
    tape = tg.Tape()
    x = tape.param(np.array([[nan, 1.0, nan], [1.0, 2.0, 2.0]]))
    m = tg.max(x, axis=1)
    _same(m.value, [nan, 2])
    m.backward(np.ones(2))
    _same(x.grad, [[nan, nan, nan], [0, 0.5, 0.5]])   # torch.amax: nan for a nan row
    tape.forward()
    _same(m.value, [nan, 2])
    y = tape.param(np.array([nan, 1.0]))
    top = y.max()
    top.backward()
    assert np.isnan(top.value) and np.isnan(y.grad).all()


def test_nan_through_reductions_and_normalisations():
    tape = tg.Tape()
    x = tape.param(np.array([nan, 1.0]))
    for f in (lambda v: v.sum(), lambda v: tg.logsumexp(v, axis=0),
              lambda v: tg.softmax(v, axis=0).sum(), lambda v: tg.log_softmax(v, axis=0).sum(),
              lambda v: tg.cross_entropy(v, np.array(1)), lambda v: tg.mse_loss(v, np.zeros(2))):
        y = f(x)
        assert np.isnan(y.value)
        tape.forward()
        assert np.isnan(y.value)


def test_nan_pow_gradients():
    tape = tg.Tape()
    a = tape.param(np.array([nan, 2.0, -2.0, 2.0]))
    b = tape.param(np.array([2.0, nan, 0.5, 0.0]))
    y = a ** b
    y.sum().backward()
    _same(y.value, [nan, nan, nan, 1])
    _same(a.grad, [nan, nan, nan, 0])
    _same(b.grad, [nan, nan, nan, math.log(2)])


def test_nan_where_comparisons_and_matmul():
    tape = tg.Tape()
    x = tape.param(np.array([nan, 1.0]))
    # a nan condition is true (as bool(nan) and torch's cond.bool()); nan values pass through
    _same(tg.where(np.array([nan, 0.0]), np.array([1.0, 2.0]), x).value, [1, 1])
    _same(tg.where(np.array([1.0, 0.0]), x, 5.0).value, [nan, 5])
    _same((x > 0).value, [0, 1])
    _same((x == x).value, [0, 1])
    _same((x != x).value, [1, 0])
    z = x.reshape(1, 2) @ np.array([[1.0], [2.0]])
    assert np.isnan(z.value).all()


TORCH_UNARY = {
    "relu": lambda t: t.relu(), "abs": lambda t: t.abs(), "neg": lambda t: -t,
    "leaky_relu": lambda t: __import__("torch").nn.functional.leaky_relu(t, 0.1),
    "exp": lambda t: t.exp(), "sigmoid": lambda t: t.sigmoid(), "tanh": lambda t: t.tanh(),
    "square": lambda t: t.square(), "cube": lambda t: t ** 3, "sqrt": lambda t: t.sqrt(),
    "log": lambda t: t.log(), "sin": lambda t: t.sin(),
}
TORCH_BINARY = {"maximum": "maximum", "minimum": "minimum", "add": "add", "mul": "mul",
                "div": "div"}


def test_nan_matches_torch():
    """The tables above, against torch itself (skipped when torch is not installed)."""
    torch = pytest.importorskip("torch")
    for name, (f, _, _) in UNARY_NAN.items():
        t = torch.tensor(X4, dtype=torch.float64, requires_grad=True)
        TORCH_UNARY[name](t).sum().backward()
        _, x, y = _unary(f, X4)
        np.testing.assert_allclose(y.value, TORCH_UNARY[name](t).detach().numpy(),
                                   rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-12, err_msg=name)
    for name, (f, _, _, _) in BINARY_NAN.items():
        ta = torch.tensor(A4, dtype=torch.float64, requires_grad=True)
        tb = torch.tensor(B4, dtype=torch.float64, requires_grad=True)
        out = getattr(torch, TORCH_BINARY[name])(ta, tb)
        out.sum().backward()
        tape = tg.Tape()
        a, b = tape.param(np.array(A4)), tape.param(np.array(B4))
        y = f(a, b)
        y.sum().backward()
        for got, want in ((y.value, out.detach()), (a.grad, ta.grad), (b.grad, tb.grad)):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, err_msg=name)
    t = torch.tensor([[nan, 1.0, nan], [1.0, 2.0, 2.0]], dtype=torch.float64,
                     requires_grad=True)
    torch.amax(t, 1).sum().backward()
    tape = tg.Tape()
    x = tape.param(np.array([[nan, 1.0, nan], [1.0, 2.0, 2.0]]))
    tg.max(x, axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, t.grad.numpy())


# ---------------------------------------------------------------------------- 3. finite limits
def test_cross_entropy_target_logit_minus_inf():
    tape = tg.Tape()
    x = tape.param(np.array([[-inf, 0.0], [0.0, 1.0]]))
    loss = tg.cross_entropy(x, np.array([0, 1]), reduction="sum")
    loss.backward()
    assert loss.item() == inf
    p = 1 / (1 + math.e)
    np.testing.assert_allclose(x.grad, [[-1, 1], [p, -p]], rtol=1e-12)  # torch: [[-1, 1], ...]
    tape.forward()
    loss.backward()
    np.testing.assert_allclose(x.grad, [[-1, 1], [p, -p]], rtol=1e-12)


def test_pow_zero_to_negative_exponent_gradient():
    tape = tg.Tape()
    a = tape.param(np.array([0.0, 0.0, 0.0]))
    b = tape.param(np.array([-1.0, 0.0, 2.0]))
    y = a ** b
    y.sum().backward()
    _same(y.value, [inf, 1, 0])
    _same(b.grad, [-inf, 0, 0])     # torch: d 0**y / dy = -inf at y = -1, 0 where y >= 0
    _same(a.grad, [-inf, 0, 0])


@pytest.mark.parametrize("label", [0, 1, 2])
def test_float32_cross_entropy_gradient_at_large_logits(label):
    logits = np.array([[1e4 + 0.3, -1e4, 1e4 - 0.6], [-1e4, 1e4, 2e3]], np.float32)
    labels = np.array([label, label])
    tape = tg.Tape(np.float32)
    x = tape.param(logits)
    loss = tg.cross_entropy(x, labels, reduction="sum")
    loss.backward()
    x64 = logits.astype(np.float64)
    m = x64.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(x64 - m).sum(axis=1, keepdims=True))
    want = np.exp(x64 - lse)
    want[np.arange(2), labels] -= 1
    np.testing.assert_allclose(x.grad, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(loss.value, np.sum(lse[:, 0] - x64[np.arange(2), labels]),
                               rtol=1e-6)


@pytest.mark.parametrize("shift", [0.0, 5.5, -7.9, 8.2, 60.0])
def test_float32_cross_entropy_gradient_at_usual_logits(shift):
    """Rows of every size of logsumexp (the reverse rule takes float32 differences below 8)."""
    rng = np.random.default_rng(int(shift * 10) % 97)
    logits = (rng.standard_normal((64, 10)) * 2 + shift).astype(np.float32)
    labels = rng.integers(0, 10, 64)
    tape = tg.Tape(np.float32)
    x = tape.param(logits)
    tg.cross_entropy(x, labels, reduction="sum").backward()
    x64 = logits.astype(np.float64)
    m = x64.max(axis=1, keepdims=True)
    want = np.exp(x64 - m - np.log(np.exp(x64 - m).sum(axis=1, keepdims=True)))
    want[np.arange(64), labels] -= 1
    np.testing.assert_allclose(x.grad, want, rtol=2e-6, atol=1e-7)


# ---------------------------------------------------------------------------- 4. == and !=
def test_eq_ne_are_elementwise_vars():
    tape = tg.Tape()
    x = tape.param(np.array([0.0, 1.5, 0.0, -2.0]))
    e, n = x == 0, x != 0
    assert isinstance(e, tg.Var) and isinstance(n, tg.Var)
    _same(e.value, [1, 0, 1, 0])
    _same(n.value, [0, 1, 0, 1])
    _same((0 == x).value, [1, 0, 1, 0])                 # reflected
    _same((np.zeros(4) != x).value, [0, 1, 0, 1])       # ndarray on the left defers to Var
    y = tg.where(x == 0, 10.0, x)                       # the reproduction
    _same(y.value, [10, 1.5, 10, -2])
    (y * y).sum().backward()
    _same(x.grad, [0, 3, 0, -4])                        # no gradient through the condition
    x.value[...] = [1.0, 0.0, 0.0, 3.0]
    tape.forward()
    _same(y.value, [1, 10, 10, 3])
    _same(e.value, [0, 1, 1, 0])


def test_vars_stay_hashable_by_identity():
    tape = tg.Tape()
    a = tape.param(np.zeros(3))
    b = tape.param(np.zeros(3))
    d = {a: "a", b: "b"}
    assert d[a] == "a" and d[b] == "b"
    assert len({a, b, a}) == 2
    assert hash(a) != hash(b) or a is b
    assert (a == None) is False and (a != None) is True  # noqa: E711 - identity fallback
    assert (a == "a") is False
    with pytest.raises(tg.TapegradError, match="different tapes"):
        a == tg.Tape().param(np.zeros(3))
