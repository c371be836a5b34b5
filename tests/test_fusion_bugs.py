"""Bugs the fusion review found (tests/test_fusion_review.py's companion): each test fails on
the current code and is marked xfail(strict=True) with the cause; mend the code, then drop
the mark."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad import fuse


@pytest.fixture(autouse=True)
def small_groups(monkeypatch):
    monkeypatch.setattr(fuse, "MIN_BYTES", 64)


def masked(w, p, z):
    """A group whose comparison member (no gradient: its reverse-mask bit 0 is clear) reads
    the parameter p; the group's reverse program recomputes that comparison from p."""
    g0 = tg.tanh(w)
    g1 = tg.exp(g0)
    c = p > z
    return tg.sin(tg.where(c, g1, g0))


@pytest.mark.xfail(strict=True, reason=(
    "fit._fused_plan finds a parameter's first reader among the rows with rmask & 1 only; "
    "p is read in the group by a comparison (rmask bit 0 clear) and, with a gradient, only "
    "after the group, so the fused optimizer updates p before the group's reverse program "
    "runs, and that program recomputes p > 0 from the updated p: w's gradient takes the "
    "other branch of where() wherever the step flips p's sign"))
def test_fit_updates_a_parameter_that_a_fused_reverse_still_reads():
    n = 1 << 16  # fit.FUSE_MIN_ELEMS: p is updated inside the reverse sweep
    r = np.random.default_rng(0)
    w0, p0 = r.standard_normal(n), r.standard_normal(n) * 0.1
    runs = []
    for optimize in (False, True):
        tape = tg.Tape()
        w, p = tape.param(w0), tape.param(p0)
        z = tape.const(np.zeros(n))
        loss = masked(w, p, z).sum() + (p * p).sum()
        if optimize:
            tape.optimize()
        assert (tape._fused_now is not None) == optimize
        opt = tg.optim.SGD([w, p], lr=1.0)  # each step p -> -p: every sign flips
        losses = tg.fit(loss, opt, steps=30)  # (chunks of >= fit.FUSE_MIN_STEPS: fused)
        runs.append((np.asarray(losses), w.value.copy()))
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-12)


def hidden_nan(x, z):
    """log(x) is NaN for x < 0 inside the group; where() keeps it out of the output."""
    t = tg.exp(tg.log(x) * 0.5)
    return tg.where(x > z, t, tg.tanh(x))


def test_check_finite_op_by_op_raises_on_a_hidden_nan():
    """(The reference behaviour the next test expects of the fused tape.)"""
    n = 600
    tape = tg.Tape()
    x = tape.param(np.random.default_rng(0).standard_normal(n))
    hidden_nan(x, tape.const(np.zeros(n)))
    with pytest.raises(tg.NonFiniteError, match="log"):
        tape.forward(check_finite=True)


@pytest.mark.xfail(strict=True, reason=(
    "the forward sweep's fused branch checks only the group's output (FORWARD_BRANCHES: "
    "'the output's check below names the last member'): a NaN/Inf made by a member and "
    "not carried to the output passes check_finite=True, which op by op raises at log"))
def test_check_finite_sees_a_nan_inside_a_group():
    n = 600
    tape = tg.Tape()
    x = tape.param(np.random.default_rng(0).standard_normal(n))
    y = hidden_nan(x, tape.const(np.zeros(n)))
    y.sum()
    tape.optimize()
    assert tape._fused_now is not None
    with pytest.raises(tg.NonFiniteError, match="log"):
        tape.forward(check_finite=True)


@pytest.mark.xfail(strict=True, reason=(
    "check_finite names the group's last member (mul), not the first op that produced "
    "the NaN (log), as NonFiniteError's contract and the op-by-op replay do"))
def test_check_finite_names_the_member_that_made_the_nan():
    n = 600
    tape = tg.Tape()
    x = tape.param(np.random.default_rng(0).standard_normal(n))
    y = tg.sin(tg.exp(tg.log(x) * 0.5)) * tg.tanh(x)  # the NaN reaches the output
    y.sum()
    tape.optimize()
    assert tape._fused_now is not None
    with pytest.raises(tg.NonFiniteError, match="log"):
        tape.forward(check_finite=True)
