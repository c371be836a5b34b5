"""Every script in examples/ and the notebook run, and print what they claim.

Each example runs as a subprocess in a temporary directory (so its PNGs land there) with
MPLBACKEND=Agg and the repository on PYTHONPATH; the notebook is executed with nbclient.
"""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _env():
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_example(name, tmp_path, timeout=300, args=()):
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def number(pattern, out):
    m = re.search(pattern, out, re.M)
    assert m, f"{pattern!r} not in output:\n{out}"
    return float(m.group(1))


def has_module(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def test_every_example_is_tested():
    tested = {"seed_mlp.py", "neuron.py", "ols.py", "mlp_vs_torch.py", "digits.py",
              "rnn_sincos.py", "grad_of_target.py", "replay_speed.py", "newton_rosenbrock.py",
              "tanh_derivatives.py", "pinn_oscillator.py", "gaussian_process.py", "cnn_digits.py",
              "data_parallel.py"}  # data_parallel.py: in test_dist.py (needs MPI)
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested
    readme = (EXAMPLES / "README.md").read_text()
    for name in tested:
        assert f"examples/{name}" in readme, f"{name} missing from examples/README.md"


def test_newton_rosenbrock(tmp_path):
    out = run_example("newton_rosenbrock.py", tmp_path)
    assert number(r"rosen_der: rel. error ([0-9.e+-]+);", out) < 1e-12
    for method in ("Newton-CG", "trust-ncg", "trust-krylov"):
        assert number(rf"^{method} +f = ([0-9.e+-]+)", out) < 1e-10


def test_tanh_derivatives(tmp_path):
    out = run_example("tanh_derivatives.py", tmp_path)
    for k in (1, 2, 3):
        assert number(rf"derivative {k}: max \|tapegrad - closed form\| = ([0-9.e+-]+)",
                      out) < 1e-12
    if has_module("matplotlib"):
        assert (tmp_path / "tanh_derivatives.png").is_file()


def test_gaussian_process(tmp_path):
    out = run_example("gaussian_process.py", tmp_path, args=("--maxiter", "15"))
    start, end = map(float, re.search(r"likelihood ([0-9.e+-]+) -> ([0-9.e+-]+)", out).groups())
    assert end < start - 20
    at_data, gap = map(float, re.search(r"at most ([0-9.]+) at the data, ([0-9.]+) in the gap",
                                        out).groups())
    assert gap > 2 * at_data
    if has_module("autograd"):
        assert number(r"difference of the likelihood ([0-9.e+-]+)", out) < 1e-10
        assert number(r"of its gradient ([0-9.e+-]+)", out) < 1e-10
    if has_module("matplotlib"):
        assert (tmp_path / "gaussian_process.png").is_file()


def test_pinn_oscillator(tmp_path):
    out = run_example("pinn_oscillator.py", tmp_path, args=("--steps", "1500"))
    start, end = map(float, re.search(r"loss ([0-9.e+-]+) -> ([0-9.e+-]+)", out).groups())
    assert end < 0.1 * start
    assert number(r"rms error against the exact solution on 200 points: ([0-9.]+)", out) < 0.5
    if has_module("matplotlib"):
        assert (tmp_path / "pinn_oscillator.png").is_file()


def test_replay_speed(tmp_path):
    out = run_example("replay_speed.py", tmp_path)
    assert number(r"forward\+reverse ([0-9.]+) ns per instruction", out) > 0


def test_seed_mlp(tmp_path):
    out = run_example("seed_mlp.py", tmp_path)
    assert number(r"MSE of the fit on a 201-point grid: ([0-9.e+-]+)", out) < 0.01
    assert number(r"([0-9.]+) us/step", out) > 0
    assert (tmp_path / "seed_mlp_fit.png").stat().st_size > 0


def test_neuron(tmp_path):
    out = run_example("neuron.py", tmp_path)
    expect = {"o": 0.7071, "dx1": -1.5, "dw1": 1.0, "dx2": 0.5, "dw2": 0.0, "db": 0.5}
    for name, value in expect.items():
        assert number(rf"^{name}\s*=\s*(\S+)", out) == pytest.approx(value, abs=1e-4)
    dot = (tmp_path / "neuron.dot").read_text()
    assert dot.lstrip().startswith("digraph")
    assert "tanh" in dot and "0.7071" in dot and "-1.5" in dot   # values and gradients


def test_ols(tmp_path):
    out = run_example("ols.py", tmp_path)
    assert number(r"max abs difference: (\S+)", out) < 1e-6


def test_mlp_vs_torch(tmp_path):
    out = run_example("mlp_vs_torch.py", tmp_path)
    if has_module("torch"):
        assert number(r"max loss difference over \d+ steps: (\S+)", out) < 1e-10
        assert number(r"max weight difference after training:\s+(\S+)", out) < 1e-10
    else:
        assert "PyTorch is not installed" in out
    assert number(r"-> ([0-9.]+) in \d+ SGD steps", out) < number(r"loss ([0-9.]+) ->", out)


def test_digits(tmp_path):
    out = run_example("digits.py", tmp_path)
    if not has_module("sklearn"):
        assert "scikit-learn is not installed" in out
        return
    assert number(r"test accuracy: ([0-9.]+)", out) > 0.9
    assert (tmp_path / "digits_confusion.png").stat().st_size > 0


def test_cnn_digits(tmp_path):
    out = run_example("cnn_digits.py", tmp_path, args=("--fast",))
    if not has_module("sklearn"):
        assert "scikit-learn is not installed" in out
        return
    assert number(r"test accuracy: ([0-9.]+)", out) > 0.9
    if has_module("torch"):  # same weights, same batches: the same losses (float32 rounding)
        assert number(r"max relative loss difference (\S+)", out) < 1e-5
        assert "PyTorch eager" in out
    else:
        assert "PyTorch is not installed" in out


def test_rnn_sincos(tmp_path):
    out = run_example("rnn_sincos.py", tmp_path)
    start, end = map(float, re.search(r"loss ([0-9.e+-]+) -> ([0-9.e+-]+)", out).groups())
    assert end < 0.01 * start
    assert number(r"free-running prediction of \d+ steps: max abs error (\S+)", out) < 0.1
    assert (tmp_path / "rnn_sincos.png").stat().st_size > 0


def test_grad_of_target(tmp_path):
    out = run_example("grad_of_target.py", tmp_path)
    diffs = [float(d) for d in re.findall(r"max abs difference: (\S+)", out)]
    assert len(diffs) == 2 and max(diffs) < 1e-10
    assert "matches too: True" in out
    assert "[6. 6.]" in out and "[-3. -3.]" in out


def test_tour_notebook(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    path = ROOT / "notebooks" / "tour.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code"), "the notebook is saved with outputs"
    for k, v in _env().items():
        if k != "MPLBACKEND":               # the kernel keeps its inline backend
            monkeypatch.setenv(k, v)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "o = 0.7071" in text and "BranchChanged:" in text
    assert number(r"max \|dL/dW0\| difference: (\S+)", text) < 1e-12
    assert number(r"tapegrad tg\.fit\s+([0-9.]+) us/step", text) > 0
