"""numba decorators used by every kernel, in one place, and where their compiled code is cached.

``kernel`` marks an op's forward or reverse rule: a small function over the value and
gradient arenas at given offsets, inlined into the interpreters of ``tapegrad.sweep`` (so each
op's rules can sit next to its shape rule without costing a call per instruction).
``jit`` marks a compiled entry point (an interpreter, an optimizer step), cached on disk.

``error_model="numpy"`` lets ``/`` follow IEEE (inf/nan instead of an exception) and keeps
loops vectorisable; ``fastmath`` is off so results match NumPy's.

Where the cache lives (first usable directory wins):

1. ``NUMBA_CACHE_DIR``, when set (numba's own rule);
2. an installed (non-editable) tapegrad -- one inside a ``site-packages`` directory -- caches
   in a per-user directory, ``$XDG_CACHE_HOME/tapegrad`` or ``~/.cache/tapegrad``, in a
   subdirectory named by tapegrad's version, the Python version and a hash of the install
   path: never beside the package, where ``pip uninstall`` would leave the files behind as a
   namespace package that shadows a later ``pip install -e``;
3. a source checkout or editable install caches in ``tapegrad/__pycache__`` (numba's default);
4. numba's user-wide cache directory.

Loading a function from the cache skips numba's full refresh of its compiler contexts (only a
compile needs their registries; a compile refreshes them itself): 0.1-0.2 s of a warm process's
first gradient. ``TAPEGRAD_FULL_REFRESH=1`` restores numba's own loading.

When none is writable, tapegrad runs without a cache (each process compiles again) and says so
in one warning. With ``NUMBA_DISABLE_JIT=1`` every kernel runs as plain Python: correct and
very slow, for debugging; one warning says so too.
"""
import hashlib
import os
import sys
import warnings

import numba
from numba.core.dispatcher import Dispatcher

from . import __version__

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
INSTALLED = any(part in ("site-packages", "dist-packages")
                for part in os.path.normpath(PACKAGE_DIR).split(os.sep))

kernel = numba.njit(inline="always", error_model="numpy")


def user_cache_dir():
    """The per-user cache directory of an installed tapegrad (whether or not it is in use)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.environ.get("LOCALAPPDATA", "") if os.name == "nt" else ""
        base = base or os.path.join(os.path.expanduser("~"), ".cache")
    where = hashlib.sha1(PACKAGE_DIR.encode()).hexdigest()[:10]
    tag = f"{__version__}-py{sys.version_info[0]}{sys.version_info[1]}-{where}"
    return os.path.join(base, "tapegrad", tag)


def _inside(path, directory):
    return os.path.abspath(path).startswith(os.path.abspath(directory) + os.sep)


def _cache_class():
    """numba's ``FunctionCache`` with tapegrad's list of cache locations (module docstring).

    numba chooses a cache directory by trying its locator classes in order; this subclass
    puts the per-user directory of an installed tapegrad second (after ``NUMBA_CACHE_DIR``)
    and drops the in-tree ``__pycache__`` for an installed package. None when this numba
    lacks the internals (tapegrad then uses numba's default locations).
    """
    try:
        from numba.core import caching as c
        base_impl, base_cache = c.CompileResultCacheImpl, c.FunctionCache
        mixin, locator = c._SourceFileBackedLocatorMixin, c._CacheLocator
        defaults = list(base_impl._locator_classes)
    except (ImportError, AttributeError):
        return None

    class InstalledPackageLocator(mixin, locator):
        """Files of an installed tapegrad, cached in ``user_cache_dir()``; the interpreter
        modules it generates there (``generated_dir()``), cached beside them."""

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            where = os.path.dirname(os.path.abspath(py_file))
            if _inside(py_file, PACKAGE_DIR):
                sub = os.path.relpath(where, PACKAGE_DIR)
                self._cache_path = os.path.normpath(os.path.join(user_cache_dir(), sub))
            else:
                self._cache_path = os.path.join(where, "__pycache__")

        def get_cache_path(self):
            return self._cache_path

        @classmethod
        def from_function(cls, py_func, py_file):
            ours = _inside(py_file, PACKAGE_DIR) or _inside(py_file, generated_dir())
            return super().from_function(py_func, py_file) if INSTALLED and ours else None

    first = 1 if defaults and "UserProvided" in defaults[0].__name__ else 0
    rest = [k for k in defaults[first:] if not (INSTALLED and "InTree" in k.__name__)]

    class Impl(base_impl):
        _locator_classes = defaults[:first] + [InstalledPackageLocator] + rest

    class TapegradFunctionCache(base_cache):
        _impl_class = Impl

        def _index_key(self, sig, codegen):
            # code compiled with and without wide vectors must never stand in for each other
            return super()._index_key(sig, codegen) + (("tapegrad-wide", WIDE_VECTORS),)

        def load_overload(self, sig, target_context):
            # numba refreshes the whole target context before every cache load: the first
            # time in a process that imports and installs all its typing and lowering
            # registries (0.2-0.4 s of a warm process's first gradient), which only a compile
            # uses -- and a compile refreshes them itself (numba's CompilerBase). Loading
            # compiled code needs numba's runtime (NRT: its symbols); the rest of the symbols
            # it links against are installed when the context is created.
            if not (_LIGHT_LOAD and _runtime_for(target_context)):
                return super().load_overload(sig, target_context)
            with self._guard_against_spurious_io_errors():
                return self._load_overload(sig, target_context)

    return TapegradFunctionCache


def _runtime_for(target_context):
    """numba's runtime (NRT) initialised for ``target_context``, as numba's
    ``CPUContext.load_additional_registries`` does first (once; later calls return at once).
    False if this numba has no such runtime object."""
    try:
        from numba.core.runtime import rtsys
        rtsys.initialize(target_context)
    except (ImportError, AttributeError):  # numba's internals moved: its own full refresh
        return False
    return True


# TAPEGRAD_FULL_REFRESH=1: numba's own cache loads (a full context refresh first)
_LIGHT_LOAD = os.environ.get("TAPEGRAD_FULL_REFRESH", "") in ("", "0")


_FunctionCache = _cache_class()


def _wide_vectors():
    """Whether the kernels that ask for it (``tapegrad.ops._vmath.wide``) are vectorised
    512 bits wide: only on a CPU with AVX-512 (as numba compiles for it: ``NUMBA_CPU_FEATURES``
    when set, else the host's), unless ``TAPEGRAD_AVX512=0``.

    LLVM vectorises 256 bits wide on the Intel CPUs that have AVX-512 (its tuning
    "prefer-256-bit": older Xeons lowered their clock for 512-bit instructions); the
    transcendental kernels do twice the arithmetic per instruction at 512 bits (BENCHMARKS.md,
    issue 17 session 13). The choice is part of every cache key of ``cached`` (besides numba's
    own key of CPU name and features), so code of one setting is never loaded under the
    other; without that cache class (numba's internals changed) it stays off."""
    flag = os.environ.get("TAPEGRAD_AVX512", "").strip().lower()
    if flag in ("0", "off", "no", "false") or _FunctionCache is None:
        return False
    try:
        from numba.core import config
        from numba.core.codegen import get_host_cpu_features
        feats = config.CPU_FEATURES
        if feats is None:
            feats = get_host_cpu_features()
    except Exception:  # numba's internals moved: keep LLVM's default
        return False
    return "+avx512f" in str(feats).split(",")


WIDE_VECTORS = _wide_vectors()


def generated_dir():
    """Where ``tapegrad.sweep`` writes the interpreter modules it generates (numba caches
    their code beside them, in ``__pycache__``): under ``NUMBA_CACHE_DIR`` when set, in
    ``user_cache_dir()`` for an installed tapegrad, else in the checkout's
    ``tapegrad/__pycache__``."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.path.join(os.environ["NUMBA_CACHE_DIR"], "tapegrad_generated")
    if INSTALLED:
        return os.path.join(user_cache_dir(), "generated")
    return os.path.join(PACKAGE_DIR, "__pycache__", "generated")
_warned = set()


def _warn_once(what, message):
    if what not in _warned:
        _warned.add(what)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def cached(fn, **options):
    """``numba.njit(cache=True, **options)(fn)``, cached where the module docstring says."""
    disp = numba.njit(**options)(fn)
    if not isinstance(disp, Dispatcher):  # NUMBA_DISABLE_JIT=1
        _warn_once("nojit", "tapegrad: NUMBA_DISABLE_JIT is set, so replays, tg.fit and the "
                            "optimizers run as plain Python (correct, and about 1000x slower)")
        return disp
    try:
        if _FunctionCache is None:
            disp.enable_caching()
        else:
            disp._cache = _FunctionCache(disp.py_func)
    except RuntimeError as e:  # numba: "cannot cache function ...: no locator available"
        _warn_once("nocache", f"tapegrad: no writable directory for numba's cache ({e}); "
                              f"compiled code is not cached, so every process compiles the "
                              f"interpreters again (seconds per kernel). Set NUMBA_CACHE_DIR "
                              f"to a writable directory to cache it.")
    return disp


def jit(fn):
    """A cached compiled entry point; it releases the GIL (the tape's lock serialises
    replays of one tape, replicas run in parallel)."""
    return cached(fn, error_model="numpy", nogil=True)


def _lapack_ilp64():
    """Whether numba's BLAS/LAPACK entries take 64-bit integers (``numba.np.linalg``'s
    ``F_INT``, read where that module reads it, without importing it: its array lowering costs
    0.07 s of import, and only a compile needs it; tests/test_import.py compares the two)."""
    from numba import _helperlib
    return bool(getattr(_helperlib, "LAPACK_BUILD_ILP64", False))


def _scipy_ilp64():
    """Whether SciPy's ``cython_blas`` takes 64-bit integers (as numba reads it)."""
    try:
        from scipy.__config__ import CONFIG
        return bool(CONFIG["Build Dependencies"]["blas"]["cython blas ilp64"])
    except (ImportError, KeyError, TypeError):  # older SciPy: always 32-bit
        return False


ILP64 = _lapack_ilp64()


def _load_scipy_blas_single_threaded():
    """Matrix products and factorizations call SciPy's own BLAS library (through numba's
    ?gemm, ?getrf, ?potrf entries); on a loaded 2-core machine its threads made a 128x64
    product 300x slower (DESIGN.md). Load it now with one thread, unless the user chose
    (OPENBLAS_NUM_THREADS set: then with theirs) or SciPy's BLAS is already loaded. NumPy's
    BLAS (a separate library, already loaded) and child processes are unaffected.

    Only the extension modules ``scipy.linalg.cython_blas`` and ``cython_lapack`` are loaded,
    not the package ``scipy.linalg`` around them (0.04 s against 0.3-0.4 s: the package
    imports all of SciPy's linear algebra and its array-API layer); loading them loads the
    BLAS library, whose thread count is fixed then. They are then taken out of
    ``sys.modules`` (where Cython puts them), so that numba's import of them by name -- at
    the first product that goes to BLAS, or at its first compile in the process -- imports
    ``scipy.linalg`` as usual (and gets these same modules: Cython keeps one per process).
    Should SciPy's layout differ, the package is imported as before.

    Returns True when SciPy's BLAS is there with numba's integer width; False has
    ``ops.linalg`` and ``ops.factor`` ask numba (``ensure_blas``), which raises its error
    (no SciPy; a SciPy of the other integer width)."""
    if "scipy.linalg" in sys.modules:
        return _scipy_ilp64() == ILP64
    ours = "OPENBLAS_NUM_THREADS" not in os.environ
    if ours:
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
    names = ("scipy.linalg.cython_blas", "scipy.linalg.cython_lapack")
    try:
        try:
            import importlib.machinery
            import importlib.util
            import scipy
            where = [os.path.join(os.path.dirname(scipy.__file__), "linalg")]
            for name in names:
                origin = importlib.machinery.PathFinder.find_spec(name.split(".")[-1],
                                                                  where).origin
                loader = importlib.machinery.ExtensionFileLoader(name, origin)
                loader.exec_module(importlib.util.module_from_spec(
                    importlib.util.spec_from_loader(name, loader, origin=origin)))
            return _scipy_ilp64() == ILP64
        except Exception:  # no SciPy, or its layout changed: the package, as numba does
            pass
        finally:
            if "scipy.linalg" not in sys.modules:
                for name in names:
                    sys.modules.pop(name, None)
        try:
            import scipy.linalg.cython_blas  # noqa: F401
            return _scipy_ilp64() == ILP64
        except ImportError:
            return False
    finally:
        if ours:
            del os.environ["OPENBLAS_NUM_THREADS"]


BLAS = _load_scipy_blas_single_threaded()


_checked = set()     # dispatchers already looked at by announce_compile
_announced = False
_workers = {}        # dispatcher -> the worker process compiling it (tapegrad.sweep)


def start_worker(dispatcher, argv, path):
    """Run ``argv``, a process that compiles ``dispatcher`` into numba's disk cache, with
    ``path`` (the directory holding this tapegrad) first on its import path."""
    import subprocess
    for d, w in list(_workers.items()):  # reap the finished ones (else they stay zombies)
        if w.poll() is not None:
            del _workers[d]
    env = dict(os.environ, TAPEGRAD_COMPILE_WORKERS="0",
               PYTHONPATH=os.pathsep.join([path] + [p for p in os.environ.get(
                   "PYTHONPATH", "").split(os.pathsep) if p]))
    try:
        _workers[dispatcher] = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
    except OSError:  # no process to be had: this process compiles it when needed
        return
    if len(_workers) == 1:
        import atexit
        atexit.register(_stop_workers)


def await_worker(dispatcher, timeout=600.0):  # (a compile takes seconds, not minutes)
    """Wait for the worker compiling ``dispatcher``, if any (then its first call loads the
    worker's code from the cache; if the worker failed, it compiles as usual)."""
    import subprocess
    w = _workers.pop(dispatcher, None)
    if w is not None:
        try:
            w.wait(timeout)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def _stop_workers():
    """At exit: stop the workers still compiling (nothing waits for their code)."""
    for w in list(_workers.values()):
        if w.poll() is None:
            w.kill()
            w.wait()
    _workers.clear()


def announce_compile(*dispatchers):
    """One line on stderr, once per process, before a call that will compile (not load from
    numba's cache) one of ``dispatchers``: a cold first run takes a minute or more, which
    should not pass in silence. Each dispatcher is looked at once (a set lookup after that).
    Waits first for a worker compiling one of them (``tapegrad.sweep.compile_ahead``)."""
    global _announced
    for d in dispatchers:
        if d in _checked:
            continue
        _checked.add(d)
        if _workers:
            await_worker(d)
        if _announced or not isinstance(d, Dispatcher) or d.signatures:
            continue
        cache_file = getattr(getattr(d, "_cache", None), "_cache_file", None)
        try:
            cached = cache_file is not None and bool(cache_file._load_index())
        except Exception:  # numba's internals changed: say nothing rather than fail
            cached = True
        if not cached:
            _announced = True
            sys.stderr.write("tapegrad: compiling the replay kernels for this tape's ops (first "
                             "run only: seconds, up to a minute for many ops; later runs load "
                             "them from numba's cache) ...\n")
            sys.stderr.flush()


def _log_compiles(path):
    """``TAPEGRAD_COMPILE_LOG=path``: append a line per numba compile (not per cache load) to
    ``path`` -- pid, nesting depth, wall and CPU seconds, function, argument types -- from this
    process and its children (they inherit the variable). For finding where a cold start or a
    test suite spends its compile time: ``sort -k3 -n path``."""
    import threading
    import time
    from numba.core import event

    class Log(event.Listener):
        def __init__(self):
            self.open = threading.local()

        def on_start(self, ev):
            stack = self.open.__dict__.setdefault("stack", [])
            stack.append((time.perf_counter(), time.process_time()))

        def on_end(self, ev):
            stack = self.open.__dict__.setdefault("stack", [])
            if not stack:
                return
            t0, c0 = stack.pop()
            d = ev.data or {}
            fn = getattr(d.get("dispatcher"), "py_func", None)
            name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"
            args = ",".join(str(a) for a in d.get("args", ()))[:160]
            try:
                with open(path, "a") as fh:
                    fh.write(f"{os.getpid()} {len(stack)} {time.perf_counter() - t0:.3f} "
                             f"{time.process_time() - c0:.3f} {name} ({args})\n")
            except OSError:
                pass

    event.register("numba:compile", Log())


if os.environ.get("TAPEGRAD_COMPILE_LOG"):
    _log_compiles(os.environ["TAPEGRAD_COMPILE_LOG"])


def drop_stale_cache(dispatcher, files):
    """Make ``dispatcher``'s on-disk cache entries valid only for the present content of
    ``files``.

    numba keys its cache on the cached function's own file (its mtime and size), but the
    interpreters inline kernels from other files: without this, editing a kernel would keep
    running the old compiled code. The content digest of ``files``, read now (right after
    the dispatcher is defined, as its kernels were imported; once per process for a set of
    files), joins the source stamp numba writes into the cache index and compares when it
    loads one: an index saved for other sources reads as empty, and the compile that follows
    overwrites it. So a process still
    running on older sources (a long job while a checkout is updated) can only save entries
    that newer processes ignore -- it never hands them its stale code.
    """
    cache = getattr(dispatcher, "_cache", None)
    cache_file = getattr(cache, "_cache_file", None)
    if cache_file is None:  # not compiled (NUMBA_DISABLE_JIT) or not cached
        return
    key = tuple(sorted(files))
    digest = _digests.get(key)
    if digest is None:  # once per process and set of files (the sweeps' twins share one)
        h = hashlib.sha256()
        for f in key:
            with open(f, "rb") as fh:
                h.update(fh.read())
        digest = _digests[key] = h.hexdigest()
    cache_file._source_stamp = (cache_file._source_stamp, digest)


_digests = {}
