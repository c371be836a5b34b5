"""``tg.grad`` / ``tg.value_and_grad`` keep a bounded, least-recently-used cache of recorded
tapes (issue 16, item 12): 20,000 argument shapes used to mean 20,000 tapes held forever."""
import gc
import weakref

import numpy as np
import pytest

import tapegrad as tg
import tapegrad.functional


def _cube_sum(refs):
    def f(x):
        refs.append(weakref.ref(x.tape))
        return (x ** 3).sum()
    return f


def test_evicted_tapes_are_freed():
    refs = []
    df = tg.grad(_cube_sum(refs), cache_size=4)
    for n in range(1, 21):
        x = np.arange(float(n))
        np.testing.assert_allclose(df(x), 3 * x ** 2)
    gc.collect()
    assert len(refs) == 20                                   # one recording per shape
    assert sum(r() is not None for r in refs) <= 4           # only the cached tapes live
    info = df.cache_info()
    assert (info.misses, info.hits, info.maxsize, info.currsize) == (20, 0, 4, 4)


def test_least_recently_used_goes_first():
    refs = []
    vg = tg.value_and_grad(_cube_sum(refs), cache_size=2)
    a, b, c = np.ones(1), np.ones(2), np.ones(3)
    vg(a)
    vg(b)
    vg(a)                      # a is now the most recent: b is the one to drop
    vg(c)
    assert vg.cache_info().hits == 1 and len(refs) == 3
    vg(a)                      # still cached
    assert len(refs) == 3 and vg.cache_info().hits == 2
    value, g = vg(b)           # was dropped: recorded again
    assert len(refs) == 4 and value == 2.0
    np.testing.assert_allclose(g, [3.0, 3.0])


def test_default_size_and_module_setting(monkeypatch):
    assert tapegrad.functional.CACHE_SIZE == 64
    assert tg.grad(lambda x: x.sum()).cache_info().maxsize == 64
    monkeypatch.setattr(tapegrad.functional, "CACHE_SIZE", 3)
    df = tg.grad(lambda x: x.sum())       # read when the function is wrapped
    for n in range(1, 6):
        df(np.ones(n))
    assert df.cache_info().currsize == 3 and df.cache_info().maxsize == 3


def test_cache_size_zero_records_every_call():
    refs = []
    df = tg.grad(_cube_sum(refs), cache_size=0)
    for _ in range(3):
        np.testing.assert_allclose(df(np.array([2.0])), [12.0])
    assert len(refs) == 3 and df.cache_info().currsize == 0
    df.cache_clear()


@pytest.mark.parametrize("bad", [-1, 1.5, "8", True])
def test_cache_size_is_validated(bad):
    with pytest.raises(tg.TapegradError, match="cache_size"):
        tg.grad(lambda x: x.sum(), cache_size=bad)
