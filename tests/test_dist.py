"""Data-parallel training on MPI (tapegrad.dist, tg.fit(comm=...)).

The MPI side runs as ``mpiexec -n 2 python -m mpi4py tests/test_dist.py OUT`` (this file's
``__main__`` part): one launch runs every check that needs two ranks and saves each rank's
results; the tests below compare them with one-process runs made here, with the global batch.
Skipped without mpi4py or an ``mpiexec``; every launch has a timeout, so nothing can hang.
"""
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import tapegrad as tg

HERE = pathlib.Path(__file__).resolve()
ROOT = HERE.parents[1]
B = 4                      # per-rank batch
STEPS = 12
OPTS = {"sgd-momentum": lambda ps: tg.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
        "adamw": lambda ps: tg.optim.AdamW(ps, lr=0.02, weight_decay=1e-2)}
SAMPLES = {"even": 32, "uneven": 37}   # 37 divides by neither 2 nor the global batch 8


def model(batch):
    tape = tg.Tape()
    mlp = tg.nn.MLP(tape, [2, 8, 1], activation=tg.tanh, rng=0)
    x = tape.input("x", shape=(batch, 2))
    y = tape.input("y", shape=(batch, 1))
    return tape, tg.mse_loss(mlp(x), y)


def dataset(n):
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, 2))
    return X, np.sin(X[:, :1]) + X[:, 1:] ** 2


def flat(tape):
    return np.concatenate([p.value.ravel() for p in tape.params])


def nan_data():
    """16 samples in order, global batch 4: at step 3 rank 1 takes rows 14 and 15."""
    X, Y = dataset(16)
    X[14, 1] = np.nan
    return X, Y


# ------------------------------------------------------------------ the MPI side
def worker(out):
    import mpi4py
    mpi4py.rc.thread_level = "funneled"
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    R, rank = comm.Get_size(), comm.Get_rank()
    res = {}
    # minibatches through tg.fit: every rank has the same data and seed
    for oname, make in OPTS.items():
        for sname, n in SAMPLES.items():
            tape, loss = model(B)
            X, Y = dataset(n)
            hist = tg.fit(loss, make(tape.params), {"x": X, "y": Y}, batch_size=B,
                          steps=STEPS, seed=3, comm=comm)
            res[f"{oname}-{sname}-hist"], res[f"{oname}-{sname}-params"] = hist, flat(tape)
    # a communicator of one rank is plain tg.fit, bit for bit
    X, Y = dataset(37)
    (t1, l1), (t2, l2) = model(B), model(B)
    h1 = tg.fit(l1, OPTS["adamw"](t1.params), {"x": X, "y": Y}, steps=STEPS, seed=3,
                comm=MPI.COMM_SELF)
    h2 = tg.fit(l2, OPTS["adamw"](t2.params), {"x": X, "y": Y}, steps=STEPS, seed=3)
    res["self-identical"] = np.array(h1.tobytes() == h2.tobytes()
                                     and flat(t1).tobytes() == flat(t2).tobytes())
    # full batch, data=None, unequal shards: rank 0 holds rows 0..19, rank 1 rows 20..36;
    # each rank's loss is its sum of squares over the global count
    X, Y = dataset(37)
    lo, hi = (0, 20) if rank == 0 else (20, 37)
    tape = tg.Tape()
    mlp = tg.nn.MLP(tape, [2, 8, 1], activation=tg.tanh, rng=0)
    x = tape.input("x", value=X[lo:hi])
    y = tape.input("y", value=Y[lo:hi])
    loss = tg.sum((mlp(x) - y) ** 2) / 37
    hist = tg.fit(loss, OPTS["sgd-momentum"](tape.params), steps=STEPS, comm=comm,
                  reduce="sum")
    res["full-hist"], res["full-params"] = hist, flat(tape)
    # the Python loop: broadcast, then forward / backward / allreduce_grads / step
    tape, loss = model(B)
    if rank:
        for p in tape.params:
            p.value[...] = 7.0                      # overwritten by rank 0's values
    tg.dist.broadcast_params(tape, comm)
    opt = OPTS["sgd-momentum"](tape.params)
    X, Y = dataset(32)
    for s in range(STEPS):
        rows = np.arange(s * R * B + rank * B, s * R * B + (rank + 1) * B) % 32
        tape.forward(x=X[rows], y=Y[rows])
        loss.backward()
        tg.dist.allreduce_grads(tape, comm)
        opt.step()
    res["loop-params"] = flat(tape)
    # allreduce_grads over an optimizer's parameters only (the last layer), summed
    rows = np.arange(rank * B, (rank + 1) * B)
    tape.forward(x=X[rows], y=Y[rows])
    loss.backward()
    before = [p.grad.copy() for p in tape.params]
    some = tape.params[2:]
    tg.dist.allreduce_grads(tg.optim.SGD(some), comm, reduce="sum")
    res["subset-grads"] = np.concatenate([p.grad.ravel() for p in some])
    res["other-grads-kept"] = np.array(all(np.array_equal(p.grad, b) for p, b in
                                           zip(tape.params[:2], before[:2])))
    # a NaN in rank 1's shard at step 3: every rank raises, at the same step
    tape, loss = model(2)
    opt = OPTS["sgd-momentum"](tape.params)
    X, Y = nan_data()
    try:
        tg.fit(loss, opt, {"x": X, "y": Y}, steps=10, shuffle=False, comm=comm)
        res["nan-error"] = np.array("no error")
    except tg.NonFiniteError as e:
        res["nan-error"] = np.array(str(e))
        res["nan-history"] = e.history
    res["nan-params"], res["nan-t"] = flat(tape), np.array(opt.t)
    # ranks that disagree (here on steps) all raise instead of waiting for each other
    tape, loss = model(B)
    try:
        tg.fit(loss, OPTS["adamw"](tape.params), {"x": X, "y": Y}, steps=5 + rank, comm=comm)
        res["disagree-error"] = np.array("no error")
    except tg.TapegradError as e:
        res["disagree-error"] = np.array(str(e))
    # a bad argument on one rank only: the same error on every rank
    try:
        tg.fit(loss, OPTS["adamw"](tape.params), {"x": X, "y" if rank == 0 else "z": Y},
               steps=5, comm=comm)
        res["feed-error"] = np.array("no error")
    except tg.FeedError as e:
        res["feed-error"] = np.array(str(e))
    try:
        tg.fit(loss, OPTS["adamw"](tape.params), {"x": X, "y": Y}, steps=5, comm="world")
    except tg.TapegradError as e:
        res["not-comm-error"] = np.array(str(e))
    np.savez(os.path.join(out, f"rank{rank}.npz"), **res)


def crash(out):
    """Rank 1 raises while rank 0 trains a long time: the job must end, non-zero."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    tape, loss = model(B)
    X, Y = dataset(32)
    if comm.Get_rank() == 1:
        raise ValueError("rank 1 fails on purpose")
    tg.fit(loss, OPTS["adamw"](tape.params), {"x": X, "y": Y}, steps=10 ** 9, comm=comm)


# ------------------------------------------------------------------ the pytest side
def mpiexec():
    pytest.importorskip("mpi4py")
    exe = pathlib.Path(sys.executable).parent / "mpiexec"
    exe = str(exe) if exe.exists() else shutil.which("mpiexec")
    if exe is None:
        pytest.skip("no mpiexec beside sys.executable nor on PATH")
    return exe


def launch(n, what, out, timeout, script=False):
    """``mpiexec -n n python -m mpi4py this_file what out`` (or the script ``what``, run in
    ``out``); killed (the whole process group) if it runs past ``timeout`` seconds."""
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    args = [what] if script else [str(HERE), what, str(out)]
    proc = subprocess.Popen([mpiexec(), "-n", str(n), sys.executable, "-m", "mpi4py"] + args,
                            cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        pytest.fail(f"mpiexec {what} did not finish in {timeout} s:\n{text}")
    return proc.returncode, text


def one_process(oname, n):
    """The same training in one process with the global batch 2 * B."""
    tape, loss = model(2 * B)
    X, Y = dataset(n)
    hist = tg.fit(loss, OPTS[oname](tape.params), {"x": X, "y": Y}, batch_size=2 * B,
                  steps=STEPS, seed=3)
    return hist, flat(tape)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    mpiexec()                 # skips without mpi4py / mpiexec
    one_process("adamw", 32)  # compiles here first, so the two ranks load it from the cache
    out = tmp_path_factory.mktemp("mpi")
    code, text = launch(2, "worker", out, timeout=600)
    assert code == 0, text
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]


@pytest.mark.parametrize("sname", SAMPLES)
@pytest.mark.parametrize("oname", OPTS)
def test_two_ranks_equal_one_process_with_the_global_batch(ranks, oname, sname):
    key = f"{oname}-{sname}"
    r0, r1 = ranks
    assert r0[key + "-params"].tobytes() == r1[key + "-params"].tobytes()
    assert r0[key + "-hist"].tobytes() == r1[key + "-hist"].tobytes()
    hist, params = one_process(oname, SAMPLES[sname])
    np.testing.assert_allclose(r0[key + "-params"], params, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r0[key + "-hist"], hist, rtol=1e-12, atol=1e-14)
    assert not np.allclose(params, flat(model(B)[0]))  # it trained


def test_one_rank_is_bit_identical_to_plain_fit(ranks):
    assert ranks[0]["self-identical"] and ranks[1]["self-identical"]


def test_full_batch_with_unequal_shards_and_sum_reduction(ranks):
    X, Y = dataset(37)
    tape = tg.Tape()
    mlp = tg.nn.MLP(tape, [2, 8, 1], activation=tg.tanh, rng=0)
    loss = tg.mse_loss(mlp(tape.input("x", value=X)), tape.input("y", value=Y))
    hist = tg.fit(loss, OPTS["sgd-momentum"](tape.params), steps=STEPS)
    for r in ranks:
        np.testing.assert_allclose(r["full-params"], flat(tape), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(r["full-hist"], hist, rtol=1e-12, atol=1e-14)
    assert hist[-1] < hist[0]


def test_python_loop_with_broadcast_and_allreduce(ranks):
    tape, loss = model(2 * B)
    opt = OPTS["sgd-momentum"](tape.params)
    X, Y = dataset(32)
    for s in range(STEPS):
        rows = np.arange(s * 2 * B, (s + 1) * 2 * B) % 32
        tape.forward(x=X[rows], y=Y[rows])
        loss.backward()
        opt.step()
    assert ranks[0]["loop-params"].tobytes() == ranks[1]["loop-params"].tobytes()
    np.testing.assert_allclose(ranks[0]["loop-params"], flat(tape), rtol=1e-12, atol=1e-14)
    # the optimizer's ranges only, summed: each rank's gradient of its own 4 rows, added
    total = 0
    for rank in range(2):
        rows = np.arange(rank * B, (rank + 1) * B)
        t, lo = model(B)
        for p, v in zip(t.params, tape.params):
            p.value[...] = v.value
        t.forward(x=X[rows], y=Y[rows])
        lo.backward()
        total = total + np.concatenate([p.grad.ravel() for p in t.params[2:]])
    for r in ranks:
        np.testing.assert_allclose(r["subset-grads"], total, rtol=1e-12, atol=1e-14)
        assert r["other-grads-kept"]


def test_nan_on_one_rank_stops_every_rank_at_that_step(ranks):
    tape, loss = model(4)
    opt = OPTS["sgd-momentum"](tape.params)
    X, Y = nan_data()
    hist = tg.fit(loss, opt, {"x": X[:12], "y": Y[:12]}, steps=3, shuffle=False)
    for r in ranks:
        msg = str(r["nan-error"])
        assert "stopped at step 3" in msg and "[on rank 1 of 2]" in msg, msg
        assert "input 'x' holds nan at index (0, 1) (data['x'] row 14)" in msg, msg
        assert int(r["nan-t"]) == 3
        np.testing.assert_allclose(r["nan-params"], flat(tape), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(r["nan-history"], hist, rtol=1e-12)
    assert str(ranks[0]["nan-error"]) == str(ranks[1]["nan-error"])


def test_ranks_that_disagree_all_raise(ranks):
    for r in ranks:
        assert "ranks disagree on steps: rank 0 has 5, rank 1 has 6" in str(r["disagree-error"])
        msg = str(r["feed-error"])
        assert "unknown input 'z'" in msg and "[on rank 1 of 2]" in msg, msg
        assert "comm must be an mpi4py intra-communicator" in str(r["not-comm-error"])


def test_an_exception_on_one_rank_ends_the_job(tmp_path):
    code, text = launch(2, "crash", tmp_path, timeout=120)
    assert code != 0 and "rank 1 fails on purpose" in text, text


def test_data_parallel_example(ranks, tmp_path):
    pytest.importorskip("sklearn")
    code, text = launch(2, str(ROOT / "examples" / "data_parallel.py"), tmp_path, timeout=300,
                        script=True)
    assert code == 0, text
    assert "ranks agree bitwise: True" in text, text
    acc = float(text.split("test accuracy:")[1].split()[0])
    assert acc > 0.9, text


def test_importing_tapegrad_does_not_import_mpi4py():
    code = ("import sys, tapegrad as tg; tg.dist; "
            "assert 'mpi4py' not in sys.modules, 'imported'")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


if __name__ == "__main__":
    {"worker": worker, "crash": crash}[sys.argv[1]](sys.argv[2])
