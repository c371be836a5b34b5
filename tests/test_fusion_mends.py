"""Bugs the fusion review found (session 17, tests/test_fusion_review.py's companion), each
test failing before its mend: tg.fit's fused optimizer updated a parameter that a fused
group's reverse still read (fit._fused_plan), and check_finite looked only at a group's
output (Tape.forward now replays the groups op by op when it checks)."""
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


def test_fit_updates_a_parameter_that_a_fused_reverse_still_reads():
    """p is read in the group by a comparison (no rule: its reverse-mask bit is clear) and,
    with a gradient, only after the group. fit._fused_plan looked for a parameter's first
    reader among the rows with a rule only, so the fused optimizer updated p before the
    group's reverse program ran, which recomputes p > 0 from the updated p: w's gradient
    took the other branch of where() wherever a step flipped p's sign."""
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


def test_check_finite_sees_a_nan_inside_a_group():
    """A NaN made by a member and not carried to the output: the fused branch checked only
    the group's output, so check_finite=True passed where op by op raises at log."""
    n = 600
    tape = tg.Tape()
    x = tape.param(np.random.default_rng(0).standard_normal(n))
    y = hidden_nan(x, tape.const(np.zeros(n)))
    y.sum()
    tape.optimize()
    assert tape._fused_now is not None
    with pytest.raises(tg.NonFiniteError, match="log"):
        tape.forward(check_finite=True)


def test_check_finite_names_the_member_that_made_the_nan():
    """The NaN reaches the output: the error named the group's last member (mul), not the
    first op that produced it (log), as NonFiniteError's contract says."""
    n = 600
    tape = tg.Tape()
    x = tape.param(np.random.default_rng(0).standard_normal(n))
    y = tg.sin(tg.exp(tg.log(x) * 0.5)) * tg.tanh(x)  # the NaN reaches the output
    y.sum()
    tape.optimize()
    assert tape._fused_now is not None
    with pytest.raises(tg.NonFiniteError, match="log"):
        tape.forward(check_finite=True)
