"""Smoke test of ``python -m tapegrad.bench --quick``: it runs, prints the table and writes the
JSON and the chart. No timing assertions (CI machines are noisy)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_runs_and_writes_outputs(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-m", "tapegrad.bench", "--quick", "--out",
                        str(tmp_path)], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    # the table: header, one row per engine of each workload, and the targets
    assert "workload" in out and "engine" in out and "x tapegrad" in out
    for wl in ("seed-mlp", "digits-mlp", "scalar-graph"):
        assert wl in out
    assert "targets" in out
    assert "check seed-mlp" in out
    js = tmp_path / "bench.json"
    assert js.is_file()
    report = json.loads(js.read_text())
    for wl, ref in (("seed-mlp", "tg-fit"), ("digits-mlp", "tg-fit"),
                    ("scalar-graph", "tg-replay")):
        eng = report["workloads"][wl]["engines"]
        assert ref in eng and eng[ref]["median"] > 0
        assert eng[ref]["ratio"] == pytest.approx(1.0)
    # every engine of the seed-mlp started from the same weights: losses agree
    assert report["info"]["seed-mlp"]["check_ok"]
    assert "numba-fused" in report["workloads"]["seed-mlp"]["engines"]
    assert report["targets"]
    rec = report["recording"]
    assert [r["n"] for r in rec["scaling"]] and rec["scaling"][0]["record_s"] > 0
    fresh = rec["fresh"]["test_more_ops"]
    # every engine computed the same gradients of micrograd's graph
    assert all(d < 1e-12 for d in fresh["check_rel_diff"].values()), fresh
    assert "recording: chains of scalar instructions" in out
    pinn = report["pinn-oscillator"]
    assert pinn["median_s"]["tg-fit"] > 0 and pinn["instructions"] > 0
    first = pinn["first_losses"]
    for engine in ("tg-fit", "torch", "jax-jit"):  # the same start: the same first losses
        if engine in first:
            np.testing.assert_allclose(first[engine], first["tg-loop"], rtol=1e-8)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    png = tmp_path / "bench.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_opprofile_covers_every_instruction_of_the_tape():
    from tapegrad.bench.opprofile import _workload, op_profile
    tape, loss = _workload("seed")
    rows, whole = op_profile(tape, loss, reps=2)
    assert sum(r[1] for r in rows) == len(tape)
    names = {r[0] for r in rows}
    assert {"matmul", "leaky_relu", "sum"} <= names
    assert all(r[2] >= 0 and r[3] >= 0 for r in rows) and len(whole) == 2  # (no timings)
    assert "(1, 1, 64, 64)" in next(r[4] for r in rows if r[0] == "matmul")


def test_arrays_bench_quick_runs(capsys):
    """``python -m tapegrad.bench.arrays --quick`` (a subset, one round): prints the kernel
    rows and the workload rows; where PyTorch is installed its gradients of the workloads
    (an independent reference) agree with tapegrad's. JAX is left out (its compiles take
    longer than this test should); without PyTorch, only tapegrad and NumPy run."""
    from tapegrad.bench import arrays
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        tmp = os.path.join(d, "arrays.json")
        assert arrays.main(["--quick", "--rounds", "1", "--skip", "jax", "--no-memory",
                            "--kernels", "sum,sum0,bcast-scalar,matvec,chain10",
                            "--workloads", "lstsq,rk4,gmm", "--json", tmp]) == 0
        with open(tmp) as fh:
            report = json.load(fh)
    out = capsys.readouterr().out
    assert "kernels: per element" in out and "workloads: value and gradient" in out
    kernels = {(r["kernel"], r["n"], r["sweep"]) for r in report["kernels"]}
    assert ("sum0", 19869, "bwd") in kernels and ("chain10", 20000, "fwd") in kernels
    assert all(r["tg"] > 0 and r["numpy"] > 0 for r in report["kernels"]
               if r["kernel"] != "chain10" or r["sweep"] == "fwd")
    rows = {r["workload"]: r for r in report["workloads"]}
    assert set(rows) == {"lstsq", "rk4", "gmm"}
    for r in rows.values():
        assert r["median_s"]["tapegrad"] > 0 and r["instructions"] > 0
        assert "jax" not in r["median_s"]
        if "torch" in r["check"]:
            assert r["check"]["torch"] < 1e-10, r


def test_fusion_bench_runs(capsys):
    """``python -m tapegrad.bench.fusion`` at one small size: both chains fused (it asserts a
    group formed) and timed against op by op."""
    from tapegrad.bench import fusion
    fusion.main(["--sizes", "4096", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "arith" in out and "transcendental" in out and "4096" in out
