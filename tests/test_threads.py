"""Threads: replays of one tape serialise on ``tape.lock``; ``tape.replica()`` gives each thread
its own arenas; the stack of ``with tape:`` blocks is per thread.

The compiled sweeps release the GIL, so without the lock two threads replaying one tape
interleave on its arenas (issue #14: a thread feeding x = 1 read ``w.grad == 18``). A race
cannot be forced deterministically; these tests run the racy patterns many times and require
every result to be exactly one a single thread could have produced.
"""
import os
import pathlib
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import tapegrad as tg

N_THREADS = 4


def run_threads(fn, n=N_THREADS):
    """Start ``fn(i)`` on ``n`` threads at once; re-raise the first exception."""
    start = threading.Barrier(n)
    errors = []

    def body(i):
        try:
            start.wait()
            fn(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def square_model(n=1000):
    """Issue #14's reproduction: loss = sum((w * x)**2), dloss/dw = 2 x**2 w."""
    tape = tg.Tape()
    w = tape.param(np.ones(n), name="w")
    x = tape.input("x", shape=(n,))
    loss = ((w * x) ** 2).sum()
    return tape, w, loss


def test_with_tape_stack_is_per_thread():
    tapes = [tg.Tape() for _ in range(2)]
    step = threading.Barrier(2)

    def record(i):
        with tapes[i]:
            for j in range(300):
                tg.param(np.zeros(1))
                if j % 10 == 0:
                    step.wait()   # the other thread is inside its own `with` right now

    run_threads(record, n=2)
    assert [len(t.params) for t in tapes] == [300, 300]
    with pytest.raises(tg.TapegradError, match="needs a tape"):
        tg.param(np.zeros(1))   # nothing entered on this thread


def test_locked_sequences_give_single_thread_results():
    """Each thread feeds its own x and reads loss and w.grad, inside ``with tape.lock:``."""
    tape, w, loss = square_model()
    xs = [np.full(1000, float(i + 1)) for i in range(N_THREADS)]
    ref = []
    for x in xs:
        tape.forward(x=x)
        loss.backward()
        ref.append((loss.item(), w.grad.copy()))
        np.testing.assert_allclose(w.grad, 2 * x ** 2 * w.value)   # NumPy reference
    bad = []

    def work(i):
        for _ in range(400):
            with tape.lock:
                tape.forward(x=xs[i])
                loss.backward()
                got = (loss.item(), w.grad.copy())
            if got[0] != ref[i][0] or not np.array_equal(got[1], ref[i][1]):
                bad.append((i, got[0], got[1][:3]))

    run_threads(work)
    assert not bad, f"{len(bad)} wrong results, first: thread {bad[0][0]}, loss {bad[0][1]}"


def test_backward_never_sees_a_half_done_forward():
    """One thread replays forward with alternating feeds while another runs backward: every
    gradient read is exactly the one for one of the two feeds (each call holds the lock)."""
    n = 200_000
    tape = tg.Tape()
    w = tape.param(np.linspace(-1, 1, n), name="w")
    x = tape.input("x", shape=(n,))
    loss = (tg.tanh(w * x) * x).sum()
    feeds = [np.full(n, 0.5), np.full(n, -2.0)]
    ref = []
    for f in feeds:
        tape.forward(x=f)
        loss.backward()
        ref.append(w.grad.copy())
        t = np.tanh(w.value * f)
        np.testing.assert_allclose(w.grad, (1 - t ** 2) * f * f, rtol=1e-12)
    stop = threading.Event()
    bad = []

    def work(i):
        if i == 0:
            for j in range(300):
                tape.forward(x=feeds[j % 2])
            stop.set()
        else:
            while not stop.is_set():
                loss.backward()
                g = w.grad.copy()   # only this thread writes gradients
                if not (np.array_equal(g, ref[0]) or np.array_equal(g, ref[1])):
                    bad.append(g)

    run_threads(work, n=2)
    assert not bad, f"{len(bad)} torn gradients"


def test_concurrent_fits_and_steps_serialise():
    """tg.fit and opt.step from several threads: the result of running them one after another
    (identical calls, so their order does not matter), and opt.t counts every step."""
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(64, 3)), rng.normal(size=(64, 1))

    def model():
        tape = tg.Tape()
        mlp = tg.nn.MLP(tape, [3, 16, 1], activation=tg.tanh, rng=1)
        loss = tg.mse_loss(mlp(tape.input("x", shape=(16, 3))), tape.input("y", shape=(16, 1)))
        return tape, loss, tg.optim.Adam(tape.params, lr=1e-2)

    def fit(loss, opt):
        return tg.fit(loss, opt, {"x": X, "y": Y}, batch_size=16, steps=25, shuffle=False,
                      progress=False)

    ref_tape, ref_loss, ref_opt = model()
    ref_hist = [fit(ref_loss, ref_opt) for _ in range(N_THREADS)]
    for _ in range(N_THREADS * 10):
        ref_opt.step()

    tape, loss, opt = model()
    hist = [None] * N_THREADS

    def work(i):
        hist[i] = fit(loss, opt)

    run_threads(work)
    run_threads(lambda i: [opt.step() for _ in range(10)])
    assert opt.t == ref_opt.t == N_THREADS * 35
    for a, b in zip(tape.params, ref_tape.params):
        np.testing.assert_array_equal(a.value, b.value)
    np.testing.assert_array_equal(opt.state, ref_opt.state)
    assert sorted(h.tolist() for h in hist) == sorted(h.tolist() for h in ref_hist)


def test_threads_share_one_grad_function():
    df = tg.grad(lambda a, b: (tg.sin(a) * b).sum(), argnums=(0, 1))
    args = [(np.full(50, 0.1 * i), np.full(50, 1.0 + i)) for i in range(N_THREADS)]
    bad = []

    def work(i):
        a, b = args[i]
        for _ in range(200):
            ga, gb = df(a, b)
            if not (np.allclose(ga, np.cos(a) * b, rtol=1e-14, atol=0)
                    and np.allclose(gb, np.sin(a), rtol=1e-14, atol=0)):
                bad.append(i)

    run_threads(work)
    assert not bad


# ---------------------------------------------------------------------------- replicas
def mlp_model(batch=32):
    tape = tg.Tape()
    mlp = tg.nn.MLP(tape, [4, 32, 1], activation=tg.tanh, rng=0)
    x = tape.input("x", shape=(batch, 4))
    y = tape.input("y", shape=(batch, 1))
    loss = tg.mse_loss(mlp(x), y)
    return tape, loss


def test_replica_shares_instructions_and_owns_arenas():
    tape, loss = mlp_model()
    rng = np.random.default_rng(0)
    xb, yb = rng.normal(size=(32, 4)), rng.normal(size=(32, 1))
    tape.forward(x=xb, y=yb)
    loss.backward()
    rep = tape.replica()
    assert rep._instr is tape._instr and rep._boff is tape._boff
    assert rep._val is not tape._val and rep._grad is not tape._grad
    W = tape.params[0]
    np.testing.assert_array_equal(rep[W].value, W.value)
    assert not rep[W].grad.any()   # gradients start at zero
    rep.forward(x=xb, y=yb)
    rep[loss].backward()
    for p in tape.params:
        np.testing.assert_array_equal(rep[p].grad, p.grad)
    assert rep[loss].item() == loss.item()
    # parameters are the replica's own copy ...
    rep[W].value[...] += 1.0
    assert not np.array_equal(rep[W].value, W.value)
    # ... until synced from the tape it was made from
    W.value[...] *= 0.5
    rep.sync_params()
    for p in tape.params:
        np.testing.assert_array_equal(rep[p].value, p.value)
    assert rep["x"].shape == (32, 4)
    rep2 = rep.replica()                  # a replica of a replica maps the first tape's Vars
    rep2.forward(x=xb, y=yb)
    rep.forward(x=xb, y=yb)
    assert rep2[loss].item() == rep[loss].item()


def test_recording_more_leaves_a_replica_unchanged():
    tape, loss = mlp_model()
    rng = np.random.default_rng(1)
    xb, yb = rng.normal(size=(32, 4)), rng.normal(size=(32, 1))
    rep = tape.replica()
    rep.forward(x=xb, y=yb)
    before = rep[loss].item()
    extra = tape.param(np.ones(3), name="extra")           # re-seals the original
    loss2 = loss * 2.0 + (extra * extra).sum()
    tape.forward(x=xb, y=yb)
    loss2.backward()
    assert loss2.item() == pytest.approx(2 * before + 3.0, rel=1e-12)
    rep.forward(x=xb, y=yb)
    rep[loss].backward()
    assert rep[loss].item() == before and len(rep) == len(tape) - 4
    with pytest.raises(tg.TapegradError, match="after this replica"):
        rep[loss2]
    rep.sync_params()                                      # extra is not the replica's
    with pytest.raises(tg.TapegradError, match="not a replica"):
        tg.Tape().sync_params()


def test_replicas_in_a_thread_pool_match_one_tape():
    tape, loss = mlp_model()
    rng = np.random.default_rng(2)
    batches = [(rng.normal(size=(32, 4)), rng.normal(size=(32, 1))) for _ in range(40)]
    ref = []
    for xb, yb in batches:
        tape.forward(x=xb, y=yb)
        loss.backward()
        ref.append((loss.item(), [p.grad.copy() for p in tape.params]))
    reps = [tape.replica() for _ in range(2)]
    local = threading.local()
    pool_ids = iter(range(2))
    lock = threading.Lock()

    def work(j):
        if not hasattr(local, "rep"):
            with lock:
                local.rep = reps[next(pool_ids)]
        rep = local.rep
        xb, yb = batches[j]
        rep.forward(x=xb, y=yb)
        rep[loss].backward()
        return rep[loss].item(), [rep[p].grad.copy() for p in tape.params]

    with ThreadPoolExecutor(max_workers=2) as pool:
        got = list(pool.map(work, range(len(batches))))
    for (l0, g0), (l1, g1) in zip(ref, got):
        assert l0 == l1
        for a, b in zip(g0, g1):
            np.testing.assert_array_equal(a, b)


def test_replicas_benchmark_runs():
    """``python -m tapegrad.bench.replicas --quick`` (BENCHMARKS.md): it checks every engine's
    gradients against one tape's before timing; no timing is asserted."""
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    p = subprocess.run([sys.executable, "-m", "tapegrad.bench.replicas", "--quick"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    for engine in ("one tape", "1 replica", "2 threads, one tape", "2 replicas"):
        assert engine in p.stdout
