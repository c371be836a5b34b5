"""Random draws on the tape (tapegrad/ops/random.py): the values equal an independent NumPy
transcription of the counter-based generator, are fresh on every replay and in every tg.fit
step, reproducible from the seed (also after save/load), and dropout's gradient is its mask."""
import math

import numpy as np
import pytest

import tapegrad as tg

M64 = (1 << 64) - 1


def _mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def np_draws(seed, counter, stream, n, normal=False, bits32=False):
    """The generator written out in Python integers (the reference)."""
    key = _mix(_mix(seed ^ 0x9E3779B97F4A7C15) ^ _mix(counter)
               ^ ((stream * 0xD1B54A32D192ED03) & M64))

    def unit(z):
        return (z >> 40) / 2 ** 24 if bits32 else (z >> 11) / 2 ** 53
    out = []
    for i in range(n):
        if normal:
            u1 = 1.0 - unit(_mix((key + 2 * i) & M64))
            u2 = unit(_mix((key + 2 * i + 1) & M64))
            out.append(math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2))
        else:
            out.append(unit(_mix((key + i) & M64)))
    return np.array(out)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_draws_equal_the_reference_and_change_every_replay(dtype):
    seed = 123456789012
    tape = tg.Tape(dtype, seed=seed)
    with tape:
        u = tg.random.uniform((3, 4))
        z = tg.random.normal((5,))
    bits32 = dtype == np.float32
    for counter in (1, 2, 3):
        if counter > 1:
            tape.forward()
        np.testing.assert_allclose(u.value.ravel(), np_draws(seed, counter, 0, 12, False, bits32),
                                   rtol=1e-6 if bits32 else 0)
        np.testing.assert_allclose(z.value, np_draws(seed, counter, 1, 5, True, bits32),
                                   rtol=1e-5 if bits32 else 1e-15)
    assert u.value.min() >= 0 and u.value.max() < 1


def test_statistics_of_many_draws():
    tape = tg.Tape(seed=0)
    u = tg.random.uniform((200000,), tape=tape)
    z = tg.random.normal((200000,), tape=tape)
    assert abs(u.value.mean() - 0.5) < 0.005 and abs(u.value.var() - 1 / 12) < 0.002
    assert abs(z.value.mean()) < 0.01 and abs(z.value.std() - 1) < 0.01
    assert abs(np.mean(z.value ** 4) - 3) < 0.1  # a normal's fourth moment, not a uniform's


def test_same_seed_same_draws_and_save_load(tmp_path):
    def make(seed):
        t = tg.Tape(seed=seed)
        with t:
            return t, tg.random.normal((6,))
    (t1, a), (t2, b), (t3, c) = make(7), make(7), make(8)
    np.testing.assert_array_equal(a.value, b.value)
    assert not np.array_equal(a.value, c.value)
    a.name = "a"
    t1.save(str(tmp_path / "r.tape.npz"))
    t4 = tg.Tape.load(str(tmp_path / "r.tape.npz"))
    t1.forward()
    t4.forward()
    np.testing.assert_array_equal(t4["a"].value, a.value)
    with t4:  # drawing more on a loaded tape keeps its seed and a new stream
        d = tg.random.normal((6,))
    assert not np.array_equal(d.value, t4["a"].value)


def test_dropout_masks_scales_and_differentiates():
    tape = tg.Tape(seed=3)
    x = tape.param(np.linspace(1, 2, 10000))
    y = tg.dropout(x, 0.25)
    loss = (y * y).sum()
    kept = y.value != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(y.value[kept], x.value[kept] / 0.75)
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * y.value * kept / 0.75)
    first = kept.copy()
    tape.forward()
    assert (first != (y.value != 0)).mean() > 0.2  # a new mask
    assert tg.dropout(x, 0.0) is x
    np.testing.assert_array_equal(tg.dropout(x, 1.0).value, 0.0)
    with pytest.raises(tg.TapegradError):
        tg.dropout(x, 1.5)
    with pytest.raises(tg.TapegradError):
        tg.Tape(seed=-1)


def test_training_draws_fresh_noise_every_step():
    """Fitting a constant to noisy targets made on the tape: the mean of the noise is 0, so
    the constant approaches 1.0 -- it would not if the noise were frozen at record time."""
    tape = tg.Tape(seed=11)
    c = tape.param(np.zeros(1))
    with tape:
        noise = tg.random.normal((4,))
    loss = ((c - (1.0 + 0.5 * noise)) ** 2).mean()
    opt = tg.optim.SGD(tape.params, lr=0.05)
    for _ in range(2000):
        tape.forward()
        loss.backward()
        opt.step()
    assert abs(c.value[0] - 1.0) < 0.05
