"""Seeing and keeping tapes: listing, DOT, stats, gradcheck, save/load, ``tapegrad show``."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import tapegrad as tg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp():
    """A small MLP with a reshape view, a label input and names: (tape, loss, line of matmul)."""
    rng = np.random.default_rng(0)
    tape = tg.Tape()
    W = tape.param(rng.standard_normal((3, 4)), name="W0")
    b = tape.param(np.zeros(4), name="b0")
    v = tape.param(rng.standard_normal(4), name="v")
    x = tape.input("x", value=rng.standard_normal((5, 3)))
    lab = tape.input("lab", value=np.array([0.0, 1, 2, 3, 0]))
    line = sys._getframe().f_lineno + 1
    h = tg.tanh(x @ W + b)
    flat = h.reshape(20)
    loss = tg.cross_entropy(flat.reshape(5, 4), lab) + (v * v).sum() * 0.1
    loss.name = "loss"
    return tape, loss, line


# ---------------------------------------------------------------------------------- listing
def test_listing_lines_name_ops_shapes_and_source():
    tape, loss, line = mlp()
    text = str(tape)
    assert text.splitlines()[0] == "params:"
    assert re.search(r"%0 W0  f64\[3,4\]  test_tools\.py:\d+", text)
    assert re.search(r"^inputs:\n  %3 x  f64\[5,3\]", text, re.M)
    mm = [ln for ln in text.splitlines() if " = matmul " in ln]
    assert len(mm) == 1
    assert re.match(r"%\d+ = matmul %3, %0 .*\(f64\[5,4\]\)  test_tools\.py:" + str(line) + "$",
                    mm[0])
    assert re.search(r"= tanh %\d+ .*\(f64\[5,4\]\)", text)
    assert re.search(r"= view %\d+ .*\(f64\[20\]\)", text)   # the reshape, no instruction
    assert re.search(r"= cross_entropy %\d+, %4 \{N=5 C=4\}", text)
    assert text.splitlines()[-1].endswith("# loss")
    n_instr = sum(1 for ln in text.splitlines() if re.match(r"%\d+ = (?!view)", ln))
    assert n_instr == len(tape)


def test_listing_float32_guard_and_empty():
    assert "(no instructions)" in str(tg.Tape())
    tape = tg.Tape(np.float32)
    x = tape.input("x", value=np.array([1.0]))
    if (x > 0).sum():
        y = x * 2
    text = str(tape)
    assert "(f32[1])" in text and re.search(r"^guard %\d+ \{expected=1\}", text, re.M)
    assert y.value[0] == 2


# ---------------------------------------------------------------------------------- DOT
def test_dot_has_nodes_values_and_grads_of_small_buffers():
    tape = tg.Tape()
    a = tape.param(np.array([1.5, -2.0]), name="a")
    big = tape.param(np.arange(6.0).reshape(2, 3), name="big")
    y = ((a * a).sum() + big.sum()).reshape(1)
    y.name = "y"
    y.backward()
    src = tape.to_dot()
    assert src.startswith("digraph") and src.rstrip().endswith("}")
    assert src.count("{") == src.count("}")
    assert 'label="%0 a\\nf64[2]\\ndata [1.5, -2]\\ngrad [3, -4]"' in src
    big_line = next(ln for ln in src.splitlines() if "%1 big" in ln)
    assert "data" not in big_line                       # 6 elements: no numbers
    assert 'label="mul"' in src and 'label="sum {A=1 n=2 B=1}"' in src
    assert 'label="view"' in src and "style=dashed" in src  # the reshape to (1,)
    assert "%" in src and "y\\nf64[1]" in src
    plain = tape.to_dot(values=False, grads=False)
    assert "data" not in plain and "grad [" not in plain


def test_render_writes_dot_or_image(tmp_path, capsys, monkeypatch):
    tape, loss, _ = mlp()
    monkeypatch.setattr("shutil.which", lambda name: None)
    out = tape.render(tmp_path / "g.svg")
    assert out == str(tmp_path / "g.dot") and open(out).read().startswith("digraph")
    assert "wrote DOT source" in capsys.readouterr().out
    monkeypatch.undo()
    out = tape.render(str(tmp_path / "h.svg"))
    assert os.path.exists(out) and os.path.getsize(out) > 0


# ---------------------------------------------------------------------------------- stats
def test_stats_counts():
    tape, loss, _ = mlp()
    s = tape.stats()
    assert isinstance(s, dict)
    assert s["instructions"] == len(tape)
    assert sum(s["by_opcode"].values()) == len(tape)
    assert s["by_opcode"]["matmul"] == 1 and s["by_opcode"]["tanh"] == 1
    assert s["by_opcode"]["cross_entropy"] == 1
    assert s["params"] == 3 * 4 + 4 + 4 and s["param_tensors"] == 3
    assert s["buffers"] == tape._nbuf
    roots = sum(int(tape._bsize[b]) for b in range(tape._nbuf) if tape._base_of(b) == b)
    assert s["arena_bytes"] == 2 * 8 * roots
    assert s["views"] >= 3
    text = str(s)
    assert re.search(r"^  matmul +1$", text, re.M) and re.search(r"^parameters +20$", text, re.M)
    assert text.splitlines()[0].startswith("tape (float64)")


# ---------------------------------------------------------------------------------- gradcheck
def test_gradcheck_passes_on_correct_functions():
    rng = np.random.default_rng(1)
    assert tg.gradcheck(lambda x, y: (x * tg.sin(y)).sum(), rng.standard_normal(3),
                        rng.standard_normal(3))
    assert tg.gradcheck(lambda W, x: tg.logsumexp(tg.tanh(x @ W), axis=-1).mean(),
                        rng.standard_normal((3, 2)), rng.standard_normal((4, 3)))
    assert tg.gradcheck(lambda x: (x ** 3).sum().reshape(1), np.array([0.5, -1.5]))


def test_gradcheck_catches_a_value_frozen_into_the_tape():
    def f(x):   # float() freezes sum(x): the tape's gradient misses the d(sum)/dx term
        return (x * float(x.sum())).sum()

    with pytest.raises(tg.GradcheckError) as e:
        tg.gradcheck(f, np.array([1.0, 2.0, 3.0]))
    msg = str(e.value)
    # true gradient 2*sum = 12 everywhere; the tape says sum = 6
    assert "argument 0" in msg and "index (" in msg and "tape gradient 6.0" in msg
    assert re.search(r"finite difference 12\.0", msg)
    assert isinstance(e.value, tg.TapegradError)


def test_gradcheck_wrong_gradient_names_worst_entry():
    def f(a, b):  # gradient of b[1] is wrong because b[1]'s value is read as a constant
        return (a * a).sum() + (b * b).sum() + b.value[1] ** 2 * 0 + float(b[1].value) * b[1] * 5

    with pytest.raises(tg.GradcheckError, match=r"argument 1 \(arg1, shape \(2,\)\) index \(1,\)"):
        tg.gradcheck(f, np.ones(2), np.array([0.5, 2.0]))


def test_gradcheck_rejects_non_scalar():
    with pytest.raises(tg.TapegradError, match="size 1"):
        tg.gradcheck(lambda x: x * 2, np.ones(3))


# ---------------------------------------------------------------------------------- save/load
def test_save_load_round_trip(tmp_path):
    tape, loss, _ = mlp()
    loss.backward()
    path = str(tmp_path / "m.tape.npz")
    tape.save(path)
    t2 = tg.Tape.load(path)
    assert str(t2) == str(tape)
    assert [p.name for p in t2.params] == ["W0", "b0", "v"]
    assert sorted(t2.inputs) == ["lab", "x"] and t2._labels == tape._labels
    for name in ("W0", "b0", "v", "x", "lab", "loss"):
        np.testing.assert_array_equal(t2[name].value, tape[name].value)
    t2["loss"].backward()
    for name in ("W0", "b0", "v"):
        np.testing.assert_array_equal(t2[name].grad, tape[name].grad)
    rng = np.random.default_rng(5)
    feed = dict(x=rng.standard_normal((5, 3)), lab=np.array([3.0, 2, 1, 0, 1]))
    for t in (tape, t2):
        t.forward(**feed)
        t["loss"].backward()
    assert t2["loss"].item() == tape["loss"].item()
    for name in ("W0", "b0", "v"):
        np.testing.assert_array_equal(t2[name].grad, tape[name].grad)
    with pytest.raises(tg.FeedError):   # label checks survive the round trip
        t2.forward(lab=np.array([9.0, 0, 0, 0, 0]))
    with pytest.raises(KeyError):
        t2["nope"]
    opt = tg.optim.SGD(t2.params, lr=0.1)
    opt.step()                           # optimizers work on the loaded arena prefix
    assert not np.array_equal(t2["W0"].value, tape["W0"].value)


def test_save_load_float32_requires_grad_and_recording_more(tmp_path):
    tape = tg.Tape(np.float32)
    x = tape.input("x", value=np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.name = "y"
    path = str(tmp_path / "f.npz")
    tape.save(path)
    t2 = tg.Tape.load(path)
    assert t2.dtype == np.float32 and t2._requires_grad == tape._requires_grad
    t2["y"].backward()
    np.testing.assert_array_equal(t2["x"].grad, [2.0, 4.0])
    z = t2["y"] * 3            # recording more on a loaded tape re-seals it
    t2.forward(x=np.array([1.0, 1.0], np.float32))
    assert z.item() == 6.0


def test_load_rejects_garbage(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"not a zip file at all")
    with pytest.raises(tg.TapeFormatError, match="cannot read"):
        tg.Tape.load(str(p))
    with pytest.raises(tg.TapeFormatError):
        tg.Tape.load(str(tmp_path / "missing.npz"))


# ---------------------------------------------------------------------------------- CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tapegrad", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_cli_show(tmp_path):
    tape, loss, line = mlp()
    good = str(tmp_path / "good.tape.npz")
    tape.save(good)
    r = _cli("show", good)
    assert r.returncode == 0, r.stderr
    assert "matmul %3, %0" in r.stdout and f"test_tools.py:{line}" in r.stdout
    assert re.search(r"^parameters +20$", r.stdout, re.M)
    bad = tmp_path / "bad.tape.npz"
    bad.write_bytes(open(good, "rb").read()[:300])
    r = _cli("show", str(bad))
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1
    assert "TapeFormatError" in r.stderr and "bad.tape.npz" in r.stderr
    assert "Traceback" not in r.stderr
