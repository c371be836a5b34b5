"""``tg.gradcheck`` validates its own arguments (issue 16, item 16): ``eps=0`` was a
ZeroDivisionError, a negative tolerance made every check fail, NaN inputs compared NaNs."""
import math

import numpy as np
import pytest

import tapegrad as tg


def f(x):
    return (x ** 3).sum()


X = np.array([0.5, -1.5])

BAD = [
    (dict(eps=0), "eps must be a finite number > 0"),
    (dict(eps=0.0), "eps must be a finite number > 0"),
    (dict(eps=-1e-6), "eps must be a finite number > 0"),
    (dict(eps=math.nan), "eps must be a finite number > 0"),
    (dict(eps=math.inf), "eps must be a finite number > 0"),
    (dict(eps="1e-6"), "eps must be a finite number > 0"),
    (dict(eps=1e-30), r"eps=1e-30 is below the spacing"),
    (dict(rtol=-1e-5), "rtol must be a finite number >= 0"),
    (dict(rtol=math.nan), "rtol must be a finite number >= 0"),
    (dict(atol=-1.0), "atol must be a finite number >= 0"),
    (dict(atol=None), "atol must be a finite number >= 0"),
    (dict(n_directions=-1), "n_directions must be an integer >= 0"),
    (dict(n_directions=2.5), "n_directions must be an integer >= 0"),
    (dict(seed=-3), "seed -3 is not a seed"),
    (dict(seed="s"), "seed 's' is not a seed"),
]


@pytest.mark.parametrize("kw, match", BAD, ids=[repr(kw) for kw, _ in BAD])
def test_bad_options_are_named(kw, match):
    with pytest.raises(tg.TapegradError, match=f"gradcheck: {match}.*test_gradcheck_args.py:"):
        tg.gradcheck(f, X, **kw)


@pytest.mark.parametrize("arrays, match", [
    ((), "needs at least one array"),
    ((np.array([1.0, math.nan]),), "argument 0 holds NaN or Inf"),
    ((X, np.array([math.inf])), "argument 1 holds NaN or Inf"),
    ((np.array(["a"]),), "argument 0 must be numeric"),
    ((np.array([None]),), "argument 0 must be numeric"),
], ids=["none", "nan", "inf", "str", "object"])
def test_bad_arrays_are_named(arrays, match):
    with pytest.raises(tg.TapegradError, match=f"gradcheck: {match}"):
        tg.gradcheck(lambda *vs: sum(v.sum() for v in vs) * 1.0, *arrays)


def test_not_callable():
    with pytest.raises(tg.TapegradError, match="f must be a function"):
        tg.gradcheck("f", X)


def test_valid_edges_still_check():
    assert tg.gradcheck(f, X, rtol=0, atol=1e-5, n_directions=0, seed=None)
    assert tg.gradcheck(f, [1, 2], eps=1e-4, rtol=1e-6)      # ints and lists are fine
    with pytest.raises(tg.GradcheckError):
        tg.gradcheck(lambda x: (x * float(x.sum())).sum(), X, rtol=0, atol=0)
