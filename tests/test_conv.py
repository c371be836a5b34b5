"""conv1d / conv2d / max_pool2d / avg_pool2d beyond the op-spec table: values and gradients
against PyTorch (when installed) on more geometries and both dtypes, Hessians through
them, nn.Conv2d, clear errors for bad arguments, and saved tapes whose convolution
attributes were corrupted (validation must reject them before any kernel runs)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.opcodes import A0, OP, Op

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONV_CASES = [  # x shape, w shape, stride, padding
    ((2, 3, 7, 6), (4, 3, 3, 2), (2, 1), (1, 2)),
    ((1, 2, 5, 5), (3, 2, 5, 5), 1, 2),
    ((3, 6, 5), (2, 3, 3, 3), 2, 0),                  # unbatched
    ((4, 16, 10, 10), (32, 16, 3, 3), 1, 1),         # BLAS
    ((2, 8, 11, 9), (16, 8, 3, 3), 2, (0, 1)),       # BLAS with stride
]


@needs_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("xs, ws, stride, padding", CONV_CASES)
def test_conv2d_matches_torch(xs, ws, stride, padding, dtype):
    rng = np.random.default_rng(0)
    x0, w0, b0 = (rng.standard_normal(s).astype(dtype) for s in (xs, ws, ws[:1]))
    tape = tg.Tape(dtype)
    x, w, b = tape.param(x0), tape.param(w0), tape.param(b0)
    y = tg.conv2d(x, w, b, stride=stride, padding=padding)
    G = rng.standard_normal(y.shape).astype(dtype)
    (y * tape.const(G)).sum().backward()
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x0, w0, b0))
    yt = F.conv2d(xt, wt, bt, stride=stride, padding=padding)
    (yt * torch.tensor(G)).sum().backward()
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for got, want in ((y.value, yt), (x.grad, xt.grad), (w.grad, wt.grad), (b.grad, bt.grad)):
        want = want.detach().numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@needs_torch
@pytest.mark.parametrize("k, stride, padding", [(2, None, 0), (3, 2, 1), ((3, 2), 1, (1, 1)),
                                                (3, (2, 1), 0)])
def test_pools_match_torch(k, stride, padding):
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((2, 3, 7, 8))
    tape = tg.Tape()
    x = tape.param(x0)
    m = tg.max_pool2d(x, k, stride=stride, padding=padding)
    a = tg.avg_pool2d(x, k, stride=stride, padding=padding)
    G, H = rng.standard_normal(m.shape), rng.standard_normal(a.shape)
    ((m * tape.const(G)).sum() + (a * tape.const(H)).sum()).backward()
    xt = torch.tensor(x0, requires_grad=True)
    mt = F.max_pool2d(xt, k, stride=stride, padding=padding)
    at = F.avg_pool2d(xt, k, stride=stride, padding=padding)
    ((mt * torch.tensor(G)).sum() + (at * torch.tensor(H)).sum()).backward()
    np.testing.assert_allclose(m.value, mt.detach().numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(a.value, at.detach().numpy(), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(x.grad, xt.grad.numpy(), rtol=1e-14, atol=1e-14)


def test_max_pool_ties_go_to_the_first_maximum():
    tape = tg.Tape()
    x = tape.param(np.array([[[1.0, 3.0], [3.0, 3.0]]]))
    tg.max_pool2d(x, 2).sum().backward()
    assert x.grad.tolist() == [[[0.0, 1.0], [0.0, 0.0]]]  # torch's choice too


@needs_torch
def test_conv1d_matches_torch():
    rng = np.random.default_rng(2)
    x0, w0, b0 = (rng.standard_normal(s) for s in ((3, 4, 11), (5, 4, 3), (5,)))
    tape = tg.Tape()
    x, w, b = tape.param(x0), tape.param(w0), tape.param(b0)
    y = tg.conv1d(x, w, b, stride=2, padding=1)
    (y ** 2).sum().backward()
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x0, w0, b0))
    yt = F.conv1d(xt, wt, bt, stride=2, padding=1)
    (yt ** 2).sum().backward()
    for got, want in ((y.value, yt), (x.grad, xt.grad), (w.grad, wt.grad), (b.grad, bt.grad)):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12, atol=1e-12)


@needs_torch
def test_hessian_through_conv_and_pools_matches_torch():
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((2, 2, 6, 6))
    w0 = rng.standard_normal((3, 2, 3, 3)) * 0.5

    def f(w):
        h = tg.tanh(tg.conv2d(tape_x(w), w, padding=1))
        return (tg.max_pool2d(h, 2) ** 2).sum() + tg.avg_pool2d(h, 3, stride=1).sum()

    def tape_x(w):
        return w.tape.const(x0)

    def ft(w):
        h = torch.tanh(F.conv2d(torch.tensor(x0), w, padding=1))
        return (F.max_pool2d(h, 2) ** 2).sum() + F.avg_pool2d(h, 3, stride=1).sum()

    H = tg.hessian(f)(w0)
    Ht = torch.autograd.functional.hessian(ft, torch.tensor(w0)).numpy()
    np.testing.assert_allclose(H, Ht, rtol=1e-10, atol=1e-10)
    g = tg.grad(f)(w0)
    np.testing.assert_allclose(g, torch.func.grad(ft)(torch.tensor(w0)).numpy(), rtol=1e-12)


def test_nn_conv2d_layer():
    tape = tg.Tape()
    conv = tg.nn.Conv2d(tape, 3, 4, (3, 2), stride=2, padding=1, rng=0)
    assert conv.W.shape == (4, 3, 3, 2) and conv.b.shape == (4,)
    bound = 1 / np.sqrt(3 * 3 * 2)
    assert np.abs(conv.W.value).max() <= bound and np.abs(conv.b.value).max() <= bound
    x = tape.input("x", value=np.ones((2, 3, 5, 5)))
    y = conv(x)
    assert y.shape == (2, 4, 3, 3)
    assert conv.params == [conv.W, conv.b]
    assert tg.nn.Conv2d(tape, 1, 2, 3, bias=False).params[0].shape == (2, 1, 3, 3)


def test_unbatched_inputs():
    rng = np.random.default_rng(4)
    tape = tg.Tape()
    x = tape.param(rng.standard_normal((2, 5, 5)))
    w = tape.param(rng.standard_normal((3, 2, 3, 3)))
    y = tg.conv2d(x, w, padding="same")
    y4 = tg.conv2d(x.reshape(1, 2, 5, 5), w, padding=1)
    assert y.shape == (3, 5, 5)
    np.testing.assert_array_equal(y.value, y4.value[0])
    assert tg.max_pool2d(x, 2).shape == (2, 2, 2)
    assert tg.avg_pool2d(x, 2, stride=1).shape == (2, 4, 4)


def _raises(err, match, fn):
    with pytest.raises(err, match=match) as e:
        fn()
    assert "test_conv.py" in str(e.value)  # the user's source line


def test_bad_arguments_are_clear_errors_and_leave_the_tape_usable():
    tape = tg.Tape()
    x = tape.param(np.ones((2, 3, 5, 5)))
    w = tape.param(np.ones((4, 3, 3, 3)))
    n = len(tape)
    _raises(tg.ShapeError, r"conv2d: input \(2, 3, 5, 5\) has 3 channels, weight \(4, 2, 3, 3\)",
            lambda: tg.conv2d(x, np.ones((4, 2, 3, 3))))
    _raises(tg.ShapeError, r"conv2d: expected input .* got \(5, 5\) and",
            lambda: tg.conv2d(x[0, 0], w))
    _raises(tg.ShapeError, r"conv2d: kernel \(3, 3\) is larger than the padded input \(2, 2\)",
            lambda: tg.conv2d(x[:, :, :2, :2], w))
    _raises(tg.ShapeError, r"conv2d: bias must have shape \(4,\)",
            lambda: tg.conv2d(x, w, np.ones(3)))
    _raises(tg.TapegradError, r"conv2d: dilation=2 is not supported",
            lambda: tg.conv2d(x, w, dilation=2))
    _raises(tg.TapegradError, r"conv2d: groups=3 is not supported",
            lambda: tg.conv2d(x, w, groups=3))
    _raises(tg.TapegradError, r"conv2d: stride must be an int or a pair",
            lambda: tg.conv2d(x, w, stride=1.5))
    _raises(tg.ShapeError, r"conv2d: stride \(0, 0\) must be in",
            lambda: tg.conv2d(x, w, stride=0))
    _raises(tg.TapegradError, r"conv2d: padding='same' is supported",
            lambda: tg.conv2d(x, w, stride=2, padding="same"))
    _raises(tg.ShapeError, r"conv1d: expected input \(N, C, L\)",
            lambda: tg.conv1d(x, w))
    _raises(tg.ShapeError, r"max_pool2d: padding \(2, 2\) must be at most half",
            lambda: tg.max_pool2d(x, 3, padding=2))
    _raises(tg.ShapeError, r"avg_pool2d: expected input \(N, C, H, W\) or \(C, H, W\), got "
                           r"\(5,\)", lambda: tg.avg_pool2d(x[0, 0, 0], 2))
    _raises(tg.TapegradError, r"max_pool2d: ceil_mode=True is not supported",
            lambda: tg.max_pool2d(x, 2, ceil_mode=True))
    _raises(tg.TapegradError, r"avg_pool2d: count_include_pad=False is not supported",
            lambda: tg.avg_pool2d(x, 2, count_include_pad=False))
    _raises(tg.ShapeError, r"max_pool2d: kernel \(6, 6\) is larger",
            lambda: tg.max_pool2d(x, 6))
    # nothing of the failed calls is on the tape (the slices above are), and it still works
    n2 = len(tape)
    y = tg.conv2d(x, w).sum()
    y.backward()
    assert len(tape) > n2 >= n and np.all(w.grad == 2 * 3 * 3)


CORRUPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tapegrad as tg
    from tapegrad.opcodes import A0, OP, Op

    src, out = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(int(sys.argv[3]))
    a = dict(np.load(src))
    rows = np.flatnonzero(np.isin(a["instr"][:, OP], [int(o) for o in (
        Op.CONV2D, Op.CONV2D_GRAD_X, Op.CONV2D_GRAD_W, Op.MAX_POOL2D, Op.MAX_UNPOOL2D)]))
    results = []
    for trial in range(150):
        b = {k: v.copy() for k, v in a.items()}
        k = rng.choice(rows)
        j = A0 + rng.integers(0, 6)
        old = int(b["instr"][k, j])
        b["instr"][k, j] = rng.choice([old + 1, old - 1, 0, -1, old * 2, old >> 15,
                                       old | (1 << 15), 1 << 30, 32767, rng.integers(0, 64)])
        np.savez(out, **b)
        try:
            tape = tg.Tape.load(out)
            tape.forward()
            loss = tape._var(int(tape._instr[-1, 1]))
            loss.backward()
            results.append("ok")
        except tg.TapegradError:
            results.append("TapegradError")
    print(" ".join(sorted(set(results))), results.count("TapegradError"))
""")


def test_corrupted_conv_attributes_are_rejected_or_safe(tmp_path):
    rng = np.random.default_rng(5)
    tape = tg.Tape()
    x = tape.input("x", value=rng.standard_normal((2, 2, 6, 5)))
    w = tape.param(rng.standard_normal((3, 2, 3, 3)), name="w")
    h = tg.conv2d(x, w, stride=(2, 1), padding=1)
    g, gx = tg.gradients((tg.max_pool2d(h, 2, padding=1) ** 2).sum(), [w, x])
    loss = (g ** 2).sum() + (gx ** 2).sum() + tg.avg_pool2d(h, 2).sum()
    loss.backward()
    assert {"conv2d", "conv2d_grad_x", "conv2d_grad_w", "max_pool2d",
            "max_unpool2d"} <= set(tape.stats()["by_opcode"])
    path = tmp_path / "conv.tape.npz"
    tape.save(path)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", CORRUPT, str(path), str(tmp_path / "bad.npz"),
                           "7"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]  # no crash, no other exception
    kinds, n_rejected = proc.stdout.split()[:-1], int(proc.stdout.split()[-1])
    assert set(kinds) <= {"ok", "TapegradError"}
    assert n_rejected > 50, proc.stdout  # most corruptions break the geometry


def test_listing_names_the_ops():
    tape = tg.Tape()
    x = tape.input("x", value=np.ones((1, 1, 4, 4)))
    tg.max_pool2d(tg.conv2d(x, np.ones((2, 1, 3, 3)), padding=1), 2)
    tape.forward()
    text = str(tape)
    assert "conv2d %0, %1 {C=1 O=2 HW=4x4 k=3x3 stride=1x1 pad=1x1}" in text
    assert "max_pool2d %3, %3 {H=4 W=4 kh=2 kw=2 stride=2x2 pad=0x0}" in text
    assert int(tape._instr[0, OP]) == Op.CONV2D and tape._instr[0, A0] == 1
