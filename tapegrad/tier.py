"""The Python tier: a tape's sweeps run as plain Python while numba compiles them elsewhere.

A cold first gradient used to wait 10-30 s for numba to compile the interpreters of the tape's
opcodes (issue 11). The generated interpreters (``tapegrad.sweep.interpreter``) are Python
source and the kernels they call are Python functions (``dispatcher.py_func``): run as they
are, without numba, they compute the same thing, slowly -- a few microseconds per element
instead of nanoseconds, which for a small tape is a few milliseconds. So when a tape needs
interpreters that are neither compiled nor in numba's disk cache, ``sweep.for_ops`` hands it a
``Tiered`` stand-in: worker processes compile the interpreters into the cache
(``sweep._worker``) while this process runs the same source as Python; every call checks,
without waiting, whether its worker has finished, and from then on calls the compiled
function (loaded from the cache). A call whose work is too large for Python (``COST_LIMIT``,
estimated from the lowered stream) waits for the worker instead, as does anything the tier
does not cover (``tg.fit``'s step loop: ``Tiered.__getattr__``).

Same numbers: the Python tier runs the very source numba compiles, in the same order, with
pure-Python stand-ins for what only numba has: the bit casts and fused multiply-add of
``ops/_vmath.py`` (an exactly rounded ``fma``), its typed ``vexp`` & co. (the same float64 and
float32 algorithms, not NumPy's), ``math`` through libm's own functions (``expf`` for float32,
as numba calls), numba's external BLAS/LAPACK entries through ctypes, and module-level float
and int constants as NumPy float64 / int64 (numba's types for them). tests/test_tier.py holds
it to the compiled results over the op-spec table, forward and reverse, both dtypes.

``TAPEGRAD_TIER=off`` turns it off (every call compiles, or waits for a worker, as before);
without compile workers (``TAPEGRAD_COMPILE_WORKERS=0``, numba's JIT off, no disk cache) it
is off too, since nothing would compile in the background.
"""
import ctypes
import ctypes.util
import math
import os
import struct
import subprocess
import sys
import threading
import types
from fractions import Fraction

import numpy as np
from numba.core import types as nbtypes
from numba.core.dispatcher import Dispatcher

TIERED = ("forward", "reverse", "check_instructions", "tangent")
COST_LIMIT = 2_000_000     # estimated Python-tier work (~ns x 1000) above which a call waits
_lock = threading.RLock()


def enabled():
    """Whether a cold tape may run its sweeps as Python (module docstring)."""
    if os.environ.get("TAPEGRAD_TIER", "").strip().lower() in ("0", "off", "no", "false"):
        return False
    w = os.environ.get("TAPEGRAD_COMPILE_WORKERS", "").strip()
    return not (w.isdigit() and int(w) == 0) and "mpi4py.MPI" not in sys.modules


# ------------------------------------------------------------------ numba-only pieces, in Python
_F32, _F64, _I32, _I64 = np.float32, np.float64, np.int32, np.int64


def _bits(x):
    """``_vmath._bits``: the IEEE bits of a float as the integer of its width."""
    if type(x) is _F32:
        return x.view(_I32)
    return _F64(x).view(_I64)


def _float(i):
    """``_vmath._float``: the float whose bits are ``i`` (int64 -> float64, int32 -> float32)."""
    if type(i) is _I32:
        return i.view(_F32)
    return _I64(i).view(_F64)


def _split(a):
    t = 134217729.0 * a  # 2**27 + 1: Veltkamp's split into two 26-bit halves
    hi = t - (t - a)
    return hi, a - hi


def _fma64(a, b, c):
    """a * b + c rounded once, in float64 (llvm.fma)."""
    a, b, c = float(a), float(b), float(c)
    p = a * b
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)) or a == 0.0 or b == 0.0:
        return _F64(p + c)  # an exact product, or inf/nan as fma makes them
    if 2.0 ** -900 < abs(p) < 2.0 ** 1000 and abs(a) < 2.0 ** 995 and abs(b) < 2.0 ** 995:
        ah, al = _split(a)
        bh, bl = _split(b)
        e = ((ah * bh - p) + ah * bl + al * bh) + al * bl  # p + e == a * b exactly (Dekker)
        try:
            return _F64(math.fsum((p, e, c)))  # fsum: correctly rounded
        except OverflowError:
            pass
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    if exact == 0:
        return _F64(0.0)
    try:
        return _F64(float(exact))  # int / int division: correctly rounded
    except OverflowError:
        return _F64(math.inf if exact > 0 else -math.inf)


def _fma32(a, b, c):
    """a * b + c rounded once, in float32: the product is exact in float64; the sum is
    rounded to odd in float64 (exact sum by TwoSum), which rounds to float32 correctly."""
    p = float(a) * float(b)
    c = float(c)
    s = p + c
    if not math.isfinite(s):
        return _F32(s)
    bb = s - p
    e = (p - (s - bb)) + (c - bb)
    if e != 0.0 and not struct.unpack("<q", struct.pack("<d", s))[0] & 1:
        s = math.nextafter(s, math.inf if e > 0 else -math.inf)
    return _F32(s)


def _fma(a, b, c):
    """``_vmath._fma``."""
    return _fma32(a, b, c) if type(a) is _F32 else _fma64(a, b, c)


class _Math:
    """``math`` as numba compiles it: libm's function of the argument's precision (``expf``
    for a float32), NaN/inf instead of Python's exceptions, NumPy scalars out."""

    def __init__(self):
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        for name in ("exp", "log", "sin", "cos", "tan", "tanh", "sinh", "cosh", "expm1",
                     "log1p", "log2", "log10", "atan", "asin", "acos", "erf", "erfc"):
            d, f = getattr(libm, name), getattr(libm, name + "f")
            d.restype, d.argtypes = ctypes.c_double, [ctypes.c_double]
            f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float]
            setattr(self, name, self._unary(d, f))
        for name in ("pow", "atan2", "hypot", "fmod"):
            d, f = getattr(libm, name), getattr(libm, name + "f")
            d.restype, d.argtypes = ctypes.c_double, [ctypes.c_double, ctypes.c_double]
            f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float, ctypes.c_float]
            setattr(self, name, self._binary(d, f))

    @staticmethod
    def _unary(d, f):
        def fn(x):
            if type(x) is _F32:
                return _F32(f(float(x)))
            return _F64(d(float(x)))
        return fn

    @staticmethod
    def _binary(d, f):
        def fn(x, y):
            if type(x) is _F32 and type(y) is _F32:
                return _F32(f(float(x), float(y)))
            return _F64(d(float(x), float(y)))
        return fn

    @staticmethod
    def sqrt(x):
        with np.errstate(all="ignore"):
            return np.sqrt(x if type(x) is _F32 else _F64(x))

    @staticmethod
    def copysign(x, y):
        return (_F32 if type(x) is _F32 else _F64)(math.copysign(x, y))

    @staticmethod
    def fabs(x):
        return abs(x if type(x) is _F32 else _F64(x))

    @staticmethod
    def floor(x):
        return _I64(math.floor(x)) if math.isfinite(x) else _I64(0)

    @staticmethod
    def ceil(x):
        return _I64(math.ceil(x)) if math.isfinite(x) else _I64(0)

    def __getattr__(self, name):  # isfinite, isnan, inf, pi, ...: Python's
        return getattr(math, name)


_MATH = _Math()


def _external(fn):
    """A numba ``ExternalFunction`` of numba's helper library (BLAS/LAPACK entries), called
    through ctypes."""
    from numba import _helperlib
    key = fn.symbol[len("numba_"):] if fn.symbol.startswith("numba_") else fn.symbol
    ctype = {nbtypes.int8: ctypes.c_int8, nbtypes.intc: ctypes.c_int,
             nbtypes.intp: ctypes.c_ssize_t, nbtypes.int64: ctypes.c_int64}
    proto = ctypes.CFUNCTYPE(ctype[fn.sig.return_type], *[ctype[a] for a in fn.sig.args])
    cfn = proto(_helperlib.c_helpers[key])

    def call(*args):
        return cfn(*[int(a) for a in args])
    return call


# ------------------------------------------------------------------ plain-Python copies
_globals = {}   # id(module globals) -> their Python-tier copy
_clones = {}    # original function or dispatcher -> its Python-tier copy
_keep = []      # the originals' globals, kept alive while their ids key _globals


def _special():
    """The stand-ins by object: _vmath's intrinsics and typed overloads."""
    from .ops import _vmath as vm
    out = {vm._bits: _bits, vm._float: _float, vm._fma: _fma}
    for public, f64, f32 in ((vm.vexp, vm._exp64, vm._exp32), (vm.vlog, vm._log64, vm._log32),
                             (vm.vtanh, vm._tanh64, vm._tanh32),
                             (vm.vsigmoid, vm._sigmoid64, vm._sigmoid32)):
        out[public] = _typed(f64, f32)
    return out


def _typed(f64, f32):
    def fn(x):
        return python(f32)(x) if type(x) is _F32 else python(f64)(x)
    return fn


_SPECIAL = None


def _convert(v):
    if isinstance(v, Dispatcher):
        return python(v)
    if type(v) is float:
        return _F64(v)
    if type(v) is int:
        return _I64(v)
    if isinstance(v, nbtypes.ExternalFunction):
        return _external(v)
    if v is math:
        return _MATH
    try:
        return _specials().get(v, v)
    except TypeError:  # unhashable
        return v


def _specials():
    """The numba-only objects and their Python stand-ins (made on first use)."""
    global _SPECIAL
    if _SPECIAL is None:
        _SPECIAL = _special()
    return _SPECIAL


def _tier_globals(g):
    """The Python-tier copy of a module's globals (made once per module)."""
    out = _globals.get(id(g))
    if out is None:
        _specials()
        out = _globals[id(g)] = {}
        _keep.append(g)
        out.update(g)
        for k, v in g.items():
            if not k.startswith("__"):
                out[k] = _convert(v)
        out["float"] = _F64  # numba's float() is a float64
    return out


def python(fn):
    """The plain-Python copy of the numba dispatcher (or Python function) ``fn``: its
    function with its module's globals in their Python-tier form (``_convert``)."""
    with _lock:
        c = _clones.get(fn)
        if c is None:
            f = fn.py_func if isinstance(fn, Dispatcher) else fn
            c = types.FunctionType(f.__code__, _tier_globals(f.__globals__), f.__name__,
                                   f.__defaults__, f.__closure__)
            c.__kwdefaults__ = f.__kwdefaults__
            _clones[fn] = c
    return c


# ------------------------------------------------------------------ what a call costs in Python
def _weights():
    from .lower import SCALAR
    from .opcodes import Op
    w = np.full(2 * SCALAR + 1, 3.0)  # ~us per output element: arithmetic, copies
    for op in (Op.EXP, Op.LOG, Op.TANH, Op.SIGMOID, Op.SOFTPLUS, Op.LOGSUMEXP, Op.SOFTMAX,
               Op.LOG_SOFTMAX, Op.CROSS_ENTROPY, Op.TANH_GRAD, Op.POW, Op.POWC, Op.RPOWC,
               Op.SIN, Op.COS):
        w[int(op)] = w[int(op) + SCALAR] = 40.0  # ~15 fused multiply-adds in Python
    for op in (Op.CONV2D, Op.CONV2D_GRAD_X, Op.CONV2D_GRAD_W, Op.MAX_POOL2D, Op.MAX_UNPOOL2D,
               Op.SOLVE, Op.CHOLESKY, Op.TRISOLVE, Op.SLOGDET):
        w[int(op)] = w[int(op) + SCALAR] = 1e9  # compiled only
    return w


_W = None


def cost(name, args):
    """Estimated microseconds of Python for the call ``name(*args)``."""
    global _W
    from .lower import FUSED
    from .opcodes import A0, OP, Op
    if name == "check_instructions":
        return 30.0 * args[0].shape[0]
    if name == "tangent":
        instr, bsize, ndir, mask = args[0], args[3], int(args[6]), args[7]
        rows = instr[mask != 0]
        work = float(bsize[rows[:, 1]].sum()) * 40.0 * max(ndir, 1)
        mm = rows[rows[:, OP] == Op.MATMUL]
        work += 3.0 * float((mm[:, A0].astype(np.float64) * mm[:, A0 + 1] * mm[:, A0 + 2]
                             * mm[:, A0 + 3]).sum()) * max(ndir, 1)
        return work + 1e9 * float(np.isin(rows[:, OP], [int(Op.CONV2D)]).any())
    if _W is None:
        _W = _weights()
    instr, low = args[0], args[2]
    mask = args[4] if name == "forward" else args[5]
    on = mask != 0
    code, n = low[on, 0], low[on, 2]
    if (code >= FUSED).any():  # a fused group calls compiled code by its address
        return math.inf
    work = float((n * _W[np.clip(code, 0, _W.shape[0] - 1)]).sum()) + 2.0 * code.shape[0]
    mm = instr[on][code == Op.MATMUL]
    if mm.shape[0]:
        work += 3.0 * float((mm[:, A0].astype(np.float64) * mm[:, A0 + 1] * mm[:, A0 + 2]
                             * mm[:, A0 + 3]).sum())
    return work * (2.0 if name == "reverse" else 1.0)


# ------------------------------------------------------------------ the stand-in
_procs = []  # (a worker still compiling when this process exits finishes on its own, niced:
#               the next process then finds the code in the cache instead of starting over)


def _start(mod, names, dtype):
    """A worker process compiling ``names`` of module ``mod`` for ``dtype`` into the cache."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TAPEGRAD_COMPILE_WORKERS="0", TAPEGRAD_TIER="off",
               TAPEGRAD_WORKER_NICE="10",  # this process, running the tape, comes first
               PYTHONPATH=os.pathsep.join([here] + [p for p in os.environ.get(
                   "PYTHONPATH", "").split(os.pathsep) if p]))
    try:
        p = subprocess.Popen(
            [sys.executable, "-c", "from tapegrad import sweep; sweep._worker()", mod.__file__,
             ",".join(names), np.dtype(dtype).str], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None
    _procs.append(p)
    return p


class Tiered:
    """Stands in for the generated interpreter module ``mod`` on ``dtype`` arenas while
    workers compile it (module docstring). ``forward``, ``reverse``, ``check_instructions``
    and ``tangent`` run as Python until their worker is done, then are the compiled
    functions themselves; any other attribute waits for the workers and is the module's."""

    def __init__(self, mod, dtype, workers):
        self._mod, self._dtype, self._workers = mod, np.dtype(dtype), {}
        for name in TIERED:
            setattr(self, name, self._caller(name))
        first = [["check_instructions", "forward", "reverse"]] if workers < 2 else \
            [["check_instructions", "forward"], ["reverse"]]
        for names in first:
            p = _start(mod, names, self._dtype)
            for name in names:
                self._workers[name] = p

    def _caller(self, name):
        def call(*args):
            if name not in self._workers:  # (tangent: on first use)
                self._workers[name] = _start(self._mod, [name], self._dtype)
            p = self._workers[name]
            if p is None or p.poll() is not None or cost(name, args) > COST_LIMIT:
                return self._switch(name)(*args)
            with np.errstate(all="ignore"):
                return python(getattr(self._mod, name))(*args)
        call.tier = "python"
        return call

    def _switch(self, name):
        """The compiled ``name``, after its worker (if any) has finished: loaded from the
        cache, or compiled here if the worker failed."""
        from ._jit import announce_compile
        p = self._workers.get(name)
        if p is not None and p.poll() is None:
            try:  # this process now waits for it: its priority back (where permitted)
                os.setpriority(os.PRIO_PROCESS, p.pid, 0)
            except (AttributeError, OSError):
                pass
            p.wait()
        d = getattr(self._mod, name)
        announce_compile(d)
        setattr(self, name, d)
        return d

    def settle(self):
        """Wait for every worker; then every tiered name is the compiled function."""
        for name in TIERED:
            if name in self._workers and getattr(self, name) is not getattr(self._mod, name):
                self._switch(name)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        self.settle()
        return getattr(self._mod, name)


def python_module(mod):
    """``{name: Python-tier function}`` of the tiered functions of a generated module (tests)."""
    return {name: python(getattr(mod, name)) for name in TIERED}
