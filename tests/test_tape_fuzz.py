"""Corrupted tape files never crash the process and only ever raise TapegradError.

Saved tapes are the one place where outside data reaches compiled code. Here ~1,300 seeded
corruptions of two saved tapes (random int overwrites in the index arrays, byte flips and
truncations of the file, reshaped arrays, missing or extra keys, wrong dtypes, wrong format
version, permuted instructions) are each loaded and, when loading succeeds, listed and
replayed (forward + backward). The loads run in a few subprocesses, so a segfault shows up
as a signal instead of killing pytest; a subprocess that dies is rerun on the file it died
on to name it. They all replay with the interpreter of every opcode, compiled (or loaded from
numba's cache) once by the test before they start: each corrupted opcode set would otherwise
make each subprocess compile interpreters of its own.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np

import tapegrad as tg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_PER_TAPE = 650          # variants per base tape; two base tapes
N_BATCHES = 2           # subprocesses (CI has two cores)

RUNNER = textwrap.dedent("""
    import sys
    import numpy as np
    import tapegrad as tg
    from tapegrad import sweep

    sweep.MAX_SPECIALISED = -1  # the full interpreter, which the test compiled
    for path in sys.argv[1:]:
        try:
            tape = tg.Tape.load(path)
            str(tape); str(tape.stats()); tape.to_dot()
            tape.forward()
            out = tape._var(int(tape._instr[-1, 1])) if len(tape) else None
            if out is not None:
                out.backward(None if out.size == 1 else np.ones(out.shape))
            tape.forward(check_finite=True)
            result = "ok"
        except tg.TapegradError:
            result = "TapegradError"
        except Exception as e:
            result = "OTHER:" + type(e).__name__ + ":" + " ".join(str(e).split())[:200]
        print(path, result, flush=True)
""")


def base_tapes():
    """Two tapes that use most opcodes, views, labels, guards, index inputs and requires_grad
    inputs."""
    rng = np.random.default_rng(0)
    tape = tg.Tape()
    W = tape.param(rng.standard_normal((3, 4)), name="W0")
    b = tape.param(rng.standard_normal(4), name="b0")
    x = tape.input("x", value=rng.standard_normal((5, 3)))
    lab = tape.input("lab", value=np.array([0.0, 1, 2, 3, 0]))
    h = tg.leaky_relu(x @ W + b, 0.1)
    z = tg.concatenate([h[:, :2], tg.softmax(h, axis=0)[:, 2:]], axis=1)
    loss = tg.cross_entropy(z, lab) + tg.logsumexp(h.T, axis=0).mean() + h.max() * 0.5
    loss = loss + tg.where(h[0] > 0, h[1], -h[2]).sum() + tg.log_softmax(h.reshape(20)).sum()
    if loss.value > -1e9:   # a guard
        loss = loss + (tg.sqrt(tg.abs(b) + 1.0) ** 1.5).sum() + tg.maximum(b, 0.2).sum()
    big = tape.input("big", value=rng.standard_normal((8, 1, 16)))  # BCAST (ops/bcast.py)
    loss = loss + ((big - tape.const(rng.standard_normal((1, 8, 16)))) / b.sum()).mean()
    loss.name = "loss"

    t32 = tg.Tape(np.float32)
    u = t32.input("u", value=rng.standard_normal((2, 3)), requires_grad=True)
    v = t32.param(rng.standard_normal(3), name="v")
    y = tg.stack([tg.sigmoid(u[0] * v), tg.tanh(u[1]) / (1.5 + v * v)], axis=0)
    out = (tg.exp(-y) + tg.relu(y) - tg.sin(y) * tg.cos(u) + (tg.abs(y) + 0.5) ** v.reshape(1, 3)).sum()
    ids = t32.input("ids", value=np.array([2.0, -1.0, 0.0]))
    gu, = tg.gradients((u[:, ids] ** 2).sum(), [u])  # a gather and its scatter-add
    out = out + (gu * v).sum()
    out.name = "out"
    return [tape, t32]


def _mutate(arrays, rng, raw):
    """One corrupted variant: ('npz', dict) or ('bytes', data)."""
    a = dict(arrays)
    kind = rng.choice(["int", "int", "int", "int", "int", "int", "attr", "attr", "trunc",
                       "flip", "shape", "missing", "dtype", "version", "extra", "permute"])
    ints = ["instr", "boff", "bsize", "shapes", "ndim", "kind", "base", "params", "inputs",
            "label_bufs", "label_classes", "requires_grad"]
    if kind in ("int", "attr"):
        for _ in range(rng.integers(1, 4)):
            key = "instr" if kind == "attr" else rng.choice(ints)
            arr = a[key] = a[key].copy()
            if arr.size == 0:
                continue
            if kind == "attr":
                idx = (rng.integers(arr.shape[0]), rng.integers(1, arr.shape[1]))
            else:
                idx = tuple(rng.integers(s) for s in arr.shape)
            cur = int(arr[idx])
            info = np.iinfo(arr.dtype)
            choices = [cur + 1, cur - 1, -1, 0, 1, 2, info.max, info.min, cur * 2,
                       int(rng.integers(-5, 40)), int(rng.integers(-2**20, 2**20)),
                       int(a["val"].shape[0]), 2**31 - 1, len(a["boff"])]
            arr[idx] = np.clip(choices[rng.integers(len(choices))], info.min, info.max)
    elif kind == "trunc":
        return "bytes", raw[:rng.integers(len(raw))]
    elif kind == "flip":
        data = bytearray(raw)
        for _ in range(rng.integers(1, 4)):
            data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
        return "bytes", bytes(data)
    elif kind == "shape":
        key = rng.choice(sorted(a))
        arr = a[key]
        how = rng.integers(4)
        if how == 0 and arr.size:
            a[key] = arr.reshape(-1)[:-1]
        elif how == 1:
            a[key] = np.concatenate([arr.reshape(-1), arr.reshape(-1)[:1]])
        elif how == 2:
            a[key] = arr.reshape(1, *arr.shape)
        else:
            a[key] = arr.reshape(-1)[:1].reshape(()) if arr.size else arr.reshape(0, 1)
    elif kind == "missing":
        del a[rng.choice(sorted(a))]
    elif kind == "dtype":
        key = rng.choice(sorted(a))
        to = rng.choice(["int32", "int64", "float64", "float32", "uint8", "S", "bool"])
        try:
            a[key] = a[key].astype(to)
        except (ValueError, TypeError):
            a[key] = np.zeros(a[key].shape, to)
    elif kind == "version":
        a["format_version"] = np.array(rng.choice([0, 2, -1, 99]), np.int64)
        if rng.integers(2):
            a["dtype"] = np.array(rng.choice(["int64", "float16", "", "object"]))
    elif kind == "extra":
        a["surprise"] = np.arange(3)
    else:  # permute or duplicate instruction rows: indices stay in range, data flow breaks
        instr = a["instr"].copy()
        if len(instr) > 1:
            i, j = rng.integers(len(instr), size=2)
            instr[[i, j]] = instr[[j, i]] if rng.integers(2) else instr[[i, i]]
        a["instr"] = instr
    return "npz", a


def _write_variants(tmp_path):
    paths = []
    for t_i, tape in enumerate(base_tapes()):
        good = str(tmp_path / f"base{t_i}.npz")
        tape.save(good)
        paths.append(good)
        raw = open(good, "rb").read()
        with np.load(good, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        rng = np.random.default_rng(1000 + t_i)
        for v in range(N_PER_TAPE):
            what, data = _mutate(arrays, rng, raw)
            p = str(tmp_path / f"v{t_i}_{v:04d}.npz")
            if what == "bytes":
                with open(p, "wb") as f:
                    f.write(data)
            else:
                with open(p, "wb") as f:
                    np.savez(f, **data)
            paths.append(p)
    # an object array needs pickle, which load refuses
    bad = dict(arrays, names=np.array([None, 1], dtype=object))
    p = str(tmp_path / "object.npz")
    with open(p, "wb") as f:
        np.savez(f, **bad)
    return paths + [p]


def _run(files, runner):
    return subprocess.run([sys.executable, runner, *files], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def _ready_full_interpreter():
    """Compile the interpreter of every opcode for both dtypes into numba's disk cache (or
    load it): the subprocesses then only load it."""
    from tapegrad import sweep
    full = sweep.interpreter(sweep.ALL_OPS)
    for dt in (np.float64, np.float32):
        for name in ("forward", "reverse", "check_instructions"):
            getattr(full, name).compile(sweep.call_types(name, dt))


def test_corrupted_tapes_raise_tapegraderror_only(tmp_path):
    files = _write_variants(tmp_path)
    _ready_full_interpreter()
    assert len(files) >= 1000
    runner = str(tmp_path / "runner.py")
    with open(runner, "w") as f:
        f.write(RUNNER)
    batches = [files[i::N_BATCHES] for i in range(N_BATCHES)]
    procs = [subprocess.Popen([sys.executable, runner, *batch], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT) for batch in batches]
    results, problems = {}, []
    for batch, proc in zip(batches, procs):
        out, err = proc.communicate(timeout=300)
        for line in out.splitlines():
            path, result = line.split(" ", 1)
            results[path] = result
        if proc.returncode != 0:
            todo = [p for p in batch if p not in results]
            culprit = todo[0] if todo else None
            again = _run([culprit], runner) if culprit else None
            problems.append(f"subprocess exited with {proc.returncode} on {culprit} "
                            f"(alone: exit {again and again.returncode}); stderr: {err[-500:]}")
    others = {p: r for p, r in results.items() if r not in ("ok", "TapegradError")}
    assert not problems, problems
    assert not others, dict(list(others.items())[:10])
    assert len(results) == len(files)
    assert results[files[0]] == results[files[N_PER_TAPE + 1]] == "ok"  # the unmodified tapes
    counts = {r: sum(1 for v in results.values() if v == r) for r in ("ok", "TapegradError")}
    assert counts["TapegradError"] >= 500 and counts["ok"] >= 20, counts
