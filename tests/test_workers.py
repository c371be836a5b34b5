"""Compile workers of several processes started at once on a cold cache: each interpreter is
compiled once (``sweep._compiling``), the other workers wait and load it from the cache."""
import os
import subprocess
import sys

import pytest

import tapegrad as tg

pytest.importorskip("fcntl")


def _env(tmp_path, **more):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), **more)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(tg.__file__)))]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def test_two_processes_workers_compile_an_interpreter_once(tmp_path):
    env = _env(tmp_path)
    path = subprocess.run(
        [sys.executable, "-c", "from tapegrad import sweep; from tapegrad.opcodes import Op;"
         "print(sweep.interpreter({int(Op.MUL), int(Op.NEG)}).__file__)"],
        env=env, capture_output=True, text=True, timeout=300, check=True).stdout.strip()
    log = tmp_path / "compile.log"
    wenv = _env(tmp_path, TAPEGRAD_COMPILE_LOG=str(log), TAPEGRAD_COMPILE_WORKERS="0")
    argv = [sys.executable, "-c", "from tapegrad import sweep; sweep._worker()", path,
            "forward", "<f8"]
    workers = [subprocess.Popen(argv, env=wenv, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=600) == 0, w.stderr.read()[-3000:]
    lines = [ln.split() for ln in log.read_text().splitlines()]
    compiled = [ln for ln in lines if ln[4].endswith(".forward")]
    assert len(compiled) == 1, "\n".join(" ".join(ln[:5]) for ln in lines)
    assert len({ln[0] for ln in lines}) == 1  # the other worker compiled nothing at all
    locks = [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".lock")]
    assert locks == [os.path.basename(path)[:-3] + ".forward.d.lock"]
