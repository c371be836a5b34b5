"""Where compiled code is cached, and installs that must keep working (issue #14 item 2,
issue #16 item 15): each case runs in fresh processes.

* an installed (non-editable) tapegrad caches outside site-packages, so after
  ``pip uninstall`` nothing is left to shadow a later ``pip install -e``;
* two processes compiling into one empty cache at once both succeed;
* ``NUMBA_DISABLE_JIT=1`` imports and differentiates (plain Python);
* with every cache location unwritable, tapegrad imports and runs, with one warning.
"""
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

import tapegrad
from tapegrad import _jit

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(**changes):
    """This process's environment without tapegrad-specific settings, plus ``changes``
    (a value of None removes the variable)."""
    env = dict(os.environ)
    for k in ("NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT", "XDG_CACHE_HOME"):
        env.pop(k, None)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


def _run(args, timeout=180, **kw):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    assert p.returncode == 0, f"{args} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def _script(tmp_path, name, code):
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return str(path)


def _copy_source(dst):
    """The files pip needs to build tapegrad, without caches (so nothing lands in ROOT)."""
    dst.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, dst / f)
    shutil.copytree(ROOT / "tapegrad", dst / "tapegrad",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def _deps_dir(tmp_path):
    """A directory of links to this environment's installed packages, except tapegrad (so the
    test venv sees numpy, numba and scipy without downloading them, and no other tapegrad)."""
    deps = tmp_path / "deps"
    deps.mkdir()
    from importlib.util import find_spec
    specs = [find_spec(m) for m in ("numpy", "numba", "llvmlite", "scipy", "setuptools")]
    sites = {pathlib.Path(s.origin).resolve().parents[1] for s in specs if s and s.origin}
    for site in sites:
        for entry in site.iterdir():
            name = entry.name.lower()
            if (name.startswith(("tapegrad", "__editable__"))
                    or name.endswith(".pth") or (deps / entry.name).exists()):
                continue
            (deps / entry.name).symlink_to(entry)
    return deps


def _pip(py, *args):
    """This environment's pip working on the venv of ``py`` (PYTHONPATH unset: it would
    show pip the checkout's tapegrad)."""
    return _run([sys.executable, "-m", "pip", "--python", py, *args], timeout=300,
                env=_env(PYTHONPATH=None))


def _pip_install(py, *args):
    """``pip install`` into the venv of ``py`` with this environment's pip, offline when this
    environment can build a wheel itself (setuptools >= 70.1 or the wheel package)."""
    can_build = _version("setuptools") >= (70, 1) or _version("wheel") > (0,)
    extra = ["--no-build-isolation"] if can_build else []
    return _pip(py, "install", "--no-deps", "--disable-pip-version-check", "-q", *extra, *args)


def _version(dist):
    """The installed version of ``dist`` as a tuple of ints, (0,) when absent."""
    from importlib import metadata
    try:
        v = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return (0,)
    return tuple(int(x) for x in v.split(".")[:2] if x.isdigit())


TINY_REPLAY = """
    import numpy as np, tapegrad as tg
    tape = tg.Tape()
    w = tape.param(np.array([1.0, 2.0]), name="w")
    x = tape.input("x", shape=(2,))
    y = (w * x).sum()
    tape.forward(x=np.array([3.0, 4.0]))
    print("value", y.item(), "file", tg.__file__)
"""


def test_installed_package_caches_outside_site_packages_and_reinstalls_editable(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = str(venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    site = pathlib.Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()"
                                        "['purelib'])"]).strip())
    (site / "deps.pth").write_text(str(_deps_dir(tmp_path)) + "\n")
    work = tmp_path / "work"   # cwd of every run: neither the checkout nor its copy
    work.mkdir()
    xdg = tmp_path / "xdg"
    env = _env(PYTHONPATH=None, XDG_CACHE_HOME=xdg)

    _pip_install(py, str(_copy_source(tmp_path / "src")))
    tiny = _script(tmp_path, "tiny.py", TINY_REPLAY)
    cold = subprocess.run([py, tiny], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert cold.returncode == 0, cold.stderr
    out = cold.stdout
    assert "value 11.0" in out and str(site) in out, out
    assert cold.stderr.count("tapegrad: compiling the replay kernels") == 1, cold.stderr
    warm = subprocess.run([py, tiny], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)   # loads what the first run cached: says nothing
    assert warm.returncode == 0 and "value 11.0" in warm.stdout, warm.stderr
    assert "compiling" not in warm.stderr, warm.stderr
    compiled = [p for p in (site / "tapegrad").rglob("*") if p.suffix in (".nbi", ".nbc")]
    assert compiled == [], f"numba cache files inside site-packages: {compiled}"
    user = list((xdg / "tapegrad").rglob("tg_sweep_*.forward-*.nbi"))  # sweep.py's modules
    assert len(user) == 1, list(xdg.rglob("*"))
    assert user[0].relative_to(xdg / "tapegrad").parts[0].startswith(
        f"{tapegrad.__version__}-py")

    _pip(py, "uninstall", "-y", "-q", "tapegrad")
    assert not (site / "tapegrad").exists(), list((site / "tapegrad").rglob("*"))

    editable = _copy_source(tmp_path / "checkout")
    _pip_install(py, "-e", str(editable))
    out = _run([py, "-c", "import tapegrad; print(tapegrad.Tape.__name__, tapegrad.__file__)"],
               cwd=work, env=env)
    assert out.split()[0] == "Tape" and str(editable) in out, out


def test_two_processes_compile_into_one_empty_cache(tmp_path):
    cache = tmp_path / "numba-cache"
    go = tmp_path / "go"
    code = f"""
        import os, sys, time
        import numpy as np, tapegrad as tg
        from tapegrad.optim import step_kernel
        while not os.path.exists({str(go)!r}):   # both processes compile at the same moment
            time.sleep(0.01)
        tape = tg.Tape()
        w = tape.param(np.array([1.0, 2.0]), name="w")
        opt = tg.optim.SGD([w], lr=0.5)
        w.grad[...] = [2.0, -4.0]
        opt.step()
        print(w.value.tolist(), sum(step_kernel.stats.cache_hits.values()))
    """
    script = _script(tmp_path, "compile.py", code)
    env = _env(NUMBA_CACHE_DIR=cache)
    procs = [subprocess.Popen([sys.executable, script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(1.0)   # both are importing tapegrad (the cache staleness stamps) now
    go.write_text("")
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out.split("]")[0] == "[0.0, 4.0", out
    out = _run([sys.executable, script], env=env)   # a third process loads what they saved
    assert out.strip() == "[0.0, 4.0] 1", out


def test_numba_disable_jit_imports_and_differentiates(tmp_path):
    code = """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import numpy as np, tapegrad as tg
        print("warnings", len(caught), caught[0].message if caught else "")
        tape = tg.Tape()
        w = tape.param(np.array([0.5, -1.5]), name="w")
        x = tape.input("x", shape=(2,))
        loss = (tg.tanh(w * x) ** 2).sum()
        xv = np.array([2.0, 3.0])
        tape.forward(x=xv)
        loss.backward()
        t = np.tanh(w.value * xv)
        ref = 2 * t * (1 - t ** 2) * xv
        assert np.allclose(w.grad, ref, rtol=1e-12), (w.grad, ref)
        opt = tg.optim.SGD(tape.params, lr=0.1)
        opt.step()
        assert opt.t == 1 and np.allclose(w.value, np.array([0.5, -1.5]) - 0.1 * ref)
        hist = tg.fit(loss, opt, {"x": np.array([2.0, 3.0])}, batch_size=2, steps=3,
                      shuffle=False, progress=False)
        assert opt.t == 4 and hist.shape == (3,) and hist[2] < hist[0], hist
        print("ok")
    """
    out = _run([sys.executable, _script(tmp_path, "nojit.py", code)],
               env=_env(NUMBA_DISABLE_JIT=1), cwd=tmp_path)
    assert "warnings 1 tapegrad: NUMBA_DISABLE_JIT is set" in out and "ok" in out, out


def test_unwritable_cache_locations_run_uncached_with_one_warning(tmp_path):
    # Every location numba could use is made unusable with a regular file where a directory
    # must be (root ignores permission bits, so chmod would not do).
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "tapegrad", src / "tapegrad",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (src / "tapegrad" / "__pycache__").write_text("")   # the in-tree cache directory
    code = """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import numpy as np, tapegrad as tg
        print("warnings", len(caught), caught[0].message if caught else "")
        tape = tg.Tape()
        w = tape.param(np.array([1.0, 2.0]), name="w")
        opt = tg.optim.Adam([w], lr=0.1)
        w.grad[...] = [2.0, -4.0]
        opt.step()
        print([round(v, 6) for v in w.value.tolist()], opt.t, tg.__file__)
    """
    out = _run([sys.executable, "-B", _script(tmp_path, "ro.py", code)], cwd=tmp_path,
               env=_env(PYTHONPATH=src, NUMBA_CACHE_DIR=blocker / "cache", HOME=blocker,
                        XDG_CACHE_HOME=blocker / "xdg"))
    assert "warnings 1 tapegrad: no writable directory for numba's cache" in out, out
    # Adam's first step moves each parameter by lr against the sign of its gradient
    assert "[0.9, 2.1] 1 " + str(src) in out, out
    assert not list(tmp_path.rglob("*.nbi"))


def test_a_source_checkout_caches_in_tree():
    assert not _jit.INSTALLED   # the tests run from a checkout (or an editable install)
    from tapegrad import sweep
    from tapegrad.validate import check_buffers
    where = os.environ.get("NUMBA_CACHE_DIR")
    path = pathlib.Path(check_buffers.stats.cache_path)
    generated = pathlib.Path(sweep.interpreter([]).forward.stats.cache_path)
    if where:
        assert pathlib.Path(where) in path.parents and pathlib.Path(where) in generated.parents
    else:
        assert path == ROOT / "tapegrad" / "__pycache__"
        assert generated == ROOT / "tapegrad" / "__pycache__" / "generated" / "__pycache__"


def test_user_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    d = pathlib.Path(_jit.user_cache_dir())
    assert d.parent == tmp_path / "tapegrad"
    assert d.name.startswith(f"{tapegrad.__version__}-py{sys.version_info[0]}"
                             f"{sys.version_info[1]}-")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")   # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pathlib.Path(_jit.user_cache_dir()).parent == tmp_path / "home" / ".cache" / "tapegrad"


KERNEL_V = """
    from tapegrad._jit import kernel

    @kernel
    def answer():
        return {v}
"""

SWEEP = """
    import os, sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tapegrad._jit import drop_stale_cache, jit
    from kern import answer

    @jit
    def sweep():
        return answer()   # inlined from kern.py, as the interpreters inline the kernels

    drop_stale_cache(sweep, [os.path.join(os.path.dirname(os.path.abspath(__file__)), "kern.py")])
    if "--wait" in sys.argv:
        print("imported", flush=True)
        sys.stdin.readline()
    print("answer", sweep(), flush=True)
"""


def test_a_process_on_older_sources_never_hands_them_to_newer_ones(tmp_path):
    """A job that imported the kernels before a checkout changed compiles and saves the old
    code after a newer process cached the new one: later processes still run the new code."""
    _script(tmp_path, "kern.py", KERNEL_V.format(v=1))
    sweep = _script(tmp_path, "sweep_mod.py", SWEEP)
    env = _env(PYTHONPATH=str(ROOT))
    old = subprocess.Popen([sys.executable, sweep, "--wait"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert old.stdout.readline().strip() == "imported"
        _script(tmp_path, "kern.py", KERNEL_V.format(v=2))       # the checkout changes
        assert "answer 2" in _run([sys.executable, sweep], env=env)
        out, _ = old.communicate("go\n", timeout=180)            # the old job saves its code
        assert "answer 1" in out
    finally:
        old.kill()
    assert "answer 2" in _run([sys.executable, sweep], env=env)  # not the old job's entry
    _script(tmp_path, "kern.py", KERNEL_V.format(v=1))
    assert "answer 1" in _run([sys.executable, sweep], env=env)
