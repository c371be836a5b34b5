"""Optimizers refuse what torch.optim's constructors refuse (and non-finite numbers), in the
constructor, in the ``lr`` setter and in ``load_state_dict``; ``zero_grad`` (issue 16, item 7).
"""
import math

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.optim import LR

nan, inf = math.nan, math.inf


def _tape():
    tape = tg.Tape()
    w = tape.param(np.array([1.0, -2.0]), name="w")
    b = tape.param(np.array([0.5]), name="b")
    loss = ((w * 3.0).sum() + b.sum() * 2.0) ** 2
    return tape, w, b, loss


# (class, keyword arguments, the name the error must give, torch's constructor refuses it too)
BAD = [
    ("SGD", dict(lr=-1.0), "lr", True),
    ("SGD", dict(lr=nan), "lr", False),           # torch: `lr < 0.0` is False for nan
    ("SGD", dict(lr=inf), "lr", False),
    ("SGD", dict(lr="0.1"), "lr", False),         # torch: TypeError from the comparison
    ("SGD", dict(lr=None), "lr", False),
    ("SGD", dict(lr=True), "lr", False),
    ("SGD", dict(momentum=-0.1), "momentum", True),
    ("SGD", dict(weight_decay=-1e-3), "weight_decay", True),
    ("SGD", dict(dampening=nan), "dampening", False),
    ("SGD", dict(nesterov=True), "nesterov", True),                         # momentum 0
    ("SGD", dict(nesterov=True, momentum=0.9, dampening=0.1), "nesterov", True),
    ("Adam", dict(betas=(1.5, 0.999)), r"betas\[0\]", True),
    ("Adam", dict(betas=(1.0, 0.999)), r"betas\[0\]", True),
    ("Adam", dict(betas=(-0.1, 0.999)), r"betas\[0\]", True),
    ("Adam", dict(betas=(0.9, 1.0)), r"betas\[1\]", True),
    ("Adam", dict(betas=(0.9, nan)), r"betas\[1\]", True),
    ("Adam", dict(betas=0.9), "betas", False),
    ("Adam", dict(betas=(0.9, 0.99, 0.9)), "betas", False),
    ("Adam", dict(eps=-1e-8), "eps", True),
    ("Adam", dict(lr=-1e-3), "lr", True),
    ("Adam", dict(weight_decay=-0.1), "weight_decay", True),
    ("AdamW", dict(betas=(1.5, 0.999)), r"betas\[0\]", True),
    ("AdamW", dict(betas=(0.9, 1.0)), r"betas\[1\]", True),
    ("AdamW", dict(eps=nan), "eps", True),
    ("AdamW", dict(lr=nan), "lr", True),
    ("AdamW", dict(weight_decay=-1e-2), "weight_decay", True),
]


@pytest.mark.parametrize("cls, kw, what, _", BAD,
                         ids=[f"{c}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"
                              for c, kw, _, _ in BAD])
def test_constructor_rejects_like_torch(cls, kw, what, _):
    tape, *_ = _tape()
    with pytest.raises(tg.TapegradError, match=f"{cls}: {what}.*test_optim_validation.py:"):
        getattr(tg.optim, cls)(tape.params, **kw)


def test_constructor_accepts_the_edges():
    tape, *_ = _tape()
    tg.optim.SGD(tape.params, lr=0.0, momentum=0.0, weight_decay=0.0)
    tg.optim.SGD(tape.params, lr=np.float32(0.1), momentum=0.9, nesterov=True)
    tg.optim.Adam(tape.params, lr=0, betas=(0.0, 0.0), eps=0.0)
    tg.optim.AdamW(tape.params, betas=[0.5, 0.999999], weight_decay=0)


def test_torch_rejects_the_same():
    """The rows marked True against torch's own constructors (when torch is installed)."""
    torch = pytest.importorskip("torch")
    p = [torch.zeros(2, requires_grad=True)]
    for cls, kw, _, torch_too in BAD:
        if torch_too:
            with pytest.raises(ValueError):
                getattr(torch.optim, cls)(p, **kw)
    getattr(torch.optim, "SGD")(p, lr=nan)          # what tapegrad refuses beyond torch


@pytest.mark.parametrize("value", [nan, -1.0, inf, "1e-3", None])
@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
def test_lr_setter_validates(cls, value):
    tape, *_ = _tape()
    opt = getattr(tg.optim, cls)(tape.params, lr=0.1)
    with pytest.raises(tg.TapegradError, match=f"{cls}: lr"):
        opt.lr = value
    assert opt.lr == 0.1


def test_lr_setter_takes_effect():
    tape, w, b, loss = _tape()
    opt = tg.optim.SGD(tape.params, lr=0.1)
    opt.lr = 0.0
    loss.backward()
    before = w.value.copy()
    opt.step()
    np.testing.assert_array_equal(w.value, before)
    opt.lr = np.float64(0.5)
    opt.step()
    np.testing.assert_allclose(w.value, before - 0.5 * w.grad)


def _trained(cls, **kw):
    tape, w, b, loss = _tape()
    opt = cls(tape.params, **kw)
    for _ in range(3):
        loss.backward()
        opt.step()
    return tape, opt


def test_load_state_dict_wrong_lengths_are_named_errors():
    tape, opt = _trained(tg.optim.AdamW, lr=0.01)
    sd = opt.state_dict()
    _, other = _trained(tg.optim.AdamW, lr=0.02)
    before = (other.t, other.hyper.copy(), other.state.copy())

    def rejected(bad, match):
        with pytest.raises(tg.TapegradError, match=match):
            other.load_state_dict(bad)
        assert other.t == before[0]
        np.testing.assert_array_equal(other.hyper, before[1])   # nothing half-loaded
        np.testing.assert_array_equal(other.state, before[2])

    rejected({**sd, "hyper": sd["hyper"][:7]}, r"AdamW.load_state_dict: 'hyper' has shape \(7,\)")
    rejected({**sd, "state": sd["state"][:, :2]}, r"'state' has shape \(2, 2\)")
    rejected({**sd, "state": sd["state"].reshape(-1)}, r"'state' has shape \(6,\)")
    rejected({k: v for k, v in sd.items() if k != "hyper"}, "expected a dict with keys")
    rejected([1, 2], "expected a dict with keys")
    rejected({**sd, "t": -1}, "'t' must be an integer >= 0")
    rejected({**sd, "t": 2.5}, "'t' must be an integer >= 0")
    hyper = sd["hyper"].copy()
    hyper[LR] = nan
    rejected({**sd, "hyper": hyper}, "lr must be")
    hyper = sd["hyper"].copy()
    hyper[1] = 1.5
    rejected({**sd, "hyper": hyper}, r"betas\[0\]")
    state = sd["state"].copy()
    state[1, 0] = -1.0
    rejected({**sd, "state": state}, "negative second moments")
    rejected({**sd, "state": [["a"]]}, "'state' is not an array of numbers")
    rejected({**sd, "kind": "SGD"}, "state of 'SGD'")
    other.load_state_dict(sd)                        # the good one still loads
    assert other.t == 3 and other.lr == 0.01


def test_zero_grad_zeroes_this_optimizers_parameters_only():
    tape, w, b, loss = _tape()
    opt = tg.optim.SGD([w], lr=0.1)
    loss.backward()
    assert np.all(w.grad != 0) and np.all(b.grad != 0)
    gb = b.grad.copy()
    opt.zero_grad()
    np.testing.assert_array_equal(w.grad, 0)
    np.testing.assert_array_equal(b.grad, gb)
    before = w.value.copy()
    opt.step()                                        # a step on zero gradients: no move
    np.testing.assert_array_equal(w.value, before)
