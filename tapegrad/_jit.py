"""numba decorators used by every kernel, in one place.

``kernel`` marks an op's forward or reverse rule: a small function over 1-D views of the value
and gradient arenas, inlined into the interpreters of ``tapegrad.sweep`` (so each op's rules can
sit next to its shape rule without costing a call per instruction).
``jit`` marks a compiled entry point (an interpreter, an optimizer step), cached on disk.

``error_model="numpy"`` lets ``/`` follow IEEE (inf/nan instead of an exception) and keeps
loops vectorisable; ``fastmath`` is off so results match NumPy's.
"""
import os

import numba

if "NUMBA_CACHE_DIR" not in os.environ:
    # numba fails at import-time of a cached function if __pycache__ beside the package is
    # unwritable and no cache dir is set; fall back to a per-user cache directory then.
    _here = os.path.dirname(os.path.abspath(__file__))
    if not os.access(_here, os.W_OK):
        os.environ["NUMBA_CACHE_DIR"] = os.path.join(
            os.path.expanduser("~"), ".cache", "tapegrad-numba")

kernel = numba.njit(inline="always", error_model="numpy")


def refresh_cache_stamp(module_file, *dep_files):
    """Touch ``module_file`` when a file it compiles in is newer.

    numba keys its on-disk cache on the source file of the cached function alone, but the
    interpreters inline kernels from other files: without this, editing a kernel would keep
    running the old compiled code. Call it at the top of a module, before its ``@jit``s.
    """
    try:
        if max(os.stat(f).st_mtime for f in dep_files) > os.stat(module_file).st_mtime:
            os.utime(module_file)
    except OSError:  # a read-only install never changes anyway
        pass


def jit(fn):
    """A cached compiled entry point."""
    return numba.njit(cache=True, error_model="numpy", nogil=True)(fn)
