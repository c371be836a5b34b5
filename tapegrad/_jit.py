"""numba decorators used by every kernel, in one place.

``kernel`` marks an op's forward or reverse rule: a small function over the value and
gradient arenas at given offsets, inlined into the interpreters of ``tapegrad.sweep`` (so each
op's rules can sit next to its shape rule without costing a call per instruction).
``jit`` marks a compiled entry point (an interpreter, an optimizer step), cached on disk.

``error_model="numpy"`` lets ``/`` follow IEEE (inf/nan instead of an exception) and keeps
loops vectorisable; ``fastmath`` is off so results match NumPy's.
"""
import glob
import hashlib
import os
import sys

import numba

if "NUMBA_CACHE_DIR" not in os.environ:
    # numba fails at import-time of a cached function if __pycache__ beside the package is
    # unwritable and no cache dir is set; fall back to a per-user cache directory then.
    _here = os.path.dirname(os.path.abspath(__file__))
    if not os.access(_here, os.W_OK):
        os.environ["NUMBA_CACHE_DIR"] = os.path.join(
            os.path.expanduser("~"), ".cache", "tapegrad-numba")

kernel = numba.njit(inline="always", error_model="numpy")


def _load_scipy_blas_single_threaded():
    """Matrix products call SciPy's own BLAS library (through numba's ?gemm entry); on a loaded 2-core machine its
    threads made a 128x64 product 300x slower (DESIGN.md). Load it now with one thread,
    unless the user chose (OPENBLAS_NUM_THREADS set) or SciPy's BLAS is already loaded.
    NumPy's BLAS (a separate library, already loaded) and child processes are unaffected."""
    if "OPENBLAS_NUM_THREADS" in os.environ or "scipy.linalg" in sys.modules:
        return
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:  # numba reports the missing SciPy when a matmul compiles
        pass
    finally:
        del os.environ["OPENBLAS_NUM_THREADS"]


_load_scipy_blas_single_threaded()


def drop_stale_cache(dispatcher, files):
    """Forget ``dispatcher``'s on-disk cache when any of ``files`` changed since it was saved.

    numba keys its cache on the content of the cached function's own file, but the
    interpreters inline kernels from other files: without this, editing a kernel would keep
    running the old compiled code. Call it right after defining the dispatcher (numba reads
    the cache index at the first call).
    """
    digest = hashlib.sha256()
    for f in sorted(files):
        with open(f, "rb") as fh:
            digest.update(fh.read())
    name = dispatcher.py_func.__module__.rsplit(".", 1)[-1] + "." + dispatcher.py_func.__name__
    try:
        cache_dir = dispatcher.stats.cache_path
        stamp = os.path.join(cache_dir, f"{name}.tapegrad-sources")
        if os.path.exists(stamp) and open(stamp).read() == digest.hexdigest():
            return
        for index in glob.glob(os.path.join(cache_dir, f"{name}-*.nbi")):
            os.remove(index)
        with open(stamp, "w") as fh:
            fh.write(digest.hexdigest())
    except (OSError, AttributeError):  # no writable cache: nothing stale can be loaded either
        pass


def jit(fn):
    """A cached compiled entry point."""
    return numba.njit(cache=True, error_model="numpy", nogil=True)(fn)
