"""The compiled interpreters: a forward sweep (instructions 0..n), a reverse sweep (n..0), the
tangent sweep (``tapegrad.tangent``), the checks (``tapegrad.validate``) and ``tg.fit``'s step
loop, each a loop with one branch per opcode that calls the op's kernel
(``tapegrad.ops.*``: ``<op>_fwd`` / ``<op>_bwd``; a cached non-inlined twin of it, see
``called``) with the arenas and the buffers' offsets. Offsets go to the kernels as np.uint64 (vectorisable loops) and attributes as int64;
no array views are made per instruction (each would cost reference counting), except for
matrix products.

**Generated per opcode set.** The branches are rows of tables, ``FORWARD`` and ``REVERSE``
here, ``TANGENT`` and ``CHECKS`` in their modules (opcode -> the source of its branch), and
``interpreter(ops)`` writes a module holding only the rows of ``ops`` -- the opcodes a tape
uses, ``opcodes_of(instr)`` -- then compiles it with numba's disk cache. (MATMUL has two
rows: a tape with no transposed-operand product, which only recorded gradients make, gets
the one that leaves the flagged products' code out: ``PLAIN``, ``FLAGGED_MATMUL``.) Each branch costs a fraction of a second of compile, so a tape of seven opcodes
compiles in a small part of the time of all sixty (issue 11; DESIGN.md's facts). The module's
file is named by a hash of its text and of every source its kernels come from, so an edited
kernel gets a fresh file and a fresh cache entry, never stale code. ``for_ops(ops, dtype)``
chooses: the interpreter of every opcode when it is already compiled or in the disk cache,
otherwise the one of these opcodes -- and the full one once a process has compiled
``MAX_SPECIALISED`` specialised ones (a test suite, a session that records many different
tapes), so compile time stays bounded.

Both sweeps trust the tape arrays: ``Tape._seal`` and ``Tape.load`` validate every index first.

``mask[k]`` says which instructions to run: forward runs ``mask[k] != 0``; reverse runs
``mask[k] & 1`` and reads bit ``2 << j`` as "input j needs a gradient" (used where skipping
an input's gradient saves real work, as in matmul).
With ``clear`` (``tg.fit``'s steps) the reverse sweep zeroes each instruction's output
gradient once its rule has read it -- no later rule reads it -- so the next step needs only
the leaves' gradients zeroed, not the whole arena (PLACE excepted: several instructions write
parts of one output; ``Tape._grad_ranges(cleared=True)`` keeps those).
Both return ``(status, k)``: ``OK`` or the failure found at instruction ``k``. Flags are
passed as integers, never as Python literals (a literal compiles a second specialisation).
"""
import atexit
import contextlib
import glob
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import re
import shutil
import sys
import tempfile
import textwrap
import threading
import time
import warnings

import numpy as np
from numba.core.errors import NumbaIRAssumptionWarning

from . import fuse as _fuse
from . import lower as _lower
from numba.core.dispatcher import Dispatcher

from ._jit import cached, drop_stale_cache, generated_dir, jit, kernel
from .opcodes import A0, OP, OUT, X, Y, Z, Op
from .ops.bcast import bcast_bwd, bcast_fwd
from .ops.conv import conv_bwd, conv_fwd
from .ops.elementwise import (abs_bwd, abs_fwd, add_bwd, add_bwd_one, add_fwd, compare_fwd, cos_bwd,
                              cos_fwd, div_bwd, div_bwd_one, div_fwd, exp_bwd, exp_fwd,
                              leaky_relu_bwd, leaky_relu_fwd, log_bwd, log_fwd, maximum_bwd,
                              maximum_fwd, minimum_bwd, minimum_fwd, mul_bwd, mul_bwd_one, mul_fwd,
                              neg_bwd, neg_fwd, pow_bwd, pow_fwd, powc_bwd, powc_fwd, relu_bwd,
                              relu_fwd, sigmoid_bwd, sigmoid_fwd, sin_bwd, sin_fwd, sqrt_bwd,
                              sqrt_fwd, square_bwd, square_fwd, sub_bwd, sub_bwd_one, sub_fwd,
                              tanh_bwd, tanh_fwd, where_bwd, where_fwd)
from .ops.immediate import (addc_bwd, addc_fwd, divc_bwd, divc_fwd, mulc_bwd, mulc_fwd,
                            rdivc_bwd, rdivc_fwd, rpowc_bwd, rpowc_fwd, rsubc_bwd, rsubc_fwd)
from .ops.fused import (add3_bwd, add3_fwd, mul3_bwd, mul3_fwd, softplus_bwd, softplus_fwd,
                        tanh_grad_bwd, tanh_grad_fwd)
from .ops.factor import (cholesky_bwd, cholesky_fwd, slogdet_bwd, slogdet_fwd, solve_bwd,
                         solve_fwd, trisolve_bwd, trisolve_fwd)
from .ops.linalg import matmul_bwd, matmul_fwd, plain_matmul_bwd, plain_matmul_fwd
from .ops.gather import gather_bwd, gather_fwd, scatter_add_bwd, scatter_add_fwd
from .ops.loss import cross_entropy_bwd, cross_entropy_fwd, onehot_fwd
from .ops.random import rand_fwd, tick_fwd
from .ops._vmath import vexp, vlog, vsigmoid, vtanh
from .ops._precision import is_f32
from .ops.reduce import (_dot_run, _max_run, _sum_run, exp_for, softmax_short,  # SOFTMAX's
                          softmax_short_bwd)  # one-row rows
from .ops.reduce import (log_softmax_bwd, log_softmax_fwd, logsumexp_bwd, logsumexp_fwd,
                         max_bwd, max_fwd, softmax_bwd, softmax_fwd, sum_bwd, sum_fwd)
from .ops.shape import (expand_bwd, expand_fwd, place_bwd, place_fwd, slice_bwd, slice_fwd,
                        transpose_bwd, transpose_fwd, unslice_bwd, unslice_fwd)

OK, GUARD_FLIPPED, NON_FINITE, BAD_LABEL = 0, 1, 2, 3
BAD_INDEX = 4  # a gather's index is not an integer in [-n, n)
LINALG = 5     # a singular matrix (solve, trisolve) or one not positive definite (cholesky)
UNKNOWN_OP = 6  # an opcode this interpreter was not generated for (a bug: never expected)


@kernel
def _offset(boff, b):
    """Offset of buffer ``b`` (0 for an unused input slot, -1, which no kernel then reads)."""
    return np.uint64(boff[b]) if b >= 0 else np.uint64(0)




# ------------------------------------------------------------------ the branch tables
# One row per opcode: the source of its branch. A branch may use the arenas ``val`` and
# ``grad``, the offsets ``x y z ans`` (np.uint64) of its inputs and output, the output's size
# ``n``, the size ``nx`` (int64) of input x, the attributes ``a0 .. a5`` (int64), the opcode
# ``op``, ``imm[k]``, ``mask[k]``, ``k``, ``instr`` and every kernel imported above; it may
# ``return STATUS, k``. (The sweeps read ``op``, ``nx`` and the attributes only in the
# branches whose text names them.)
FORWARD = {
    Op.NEG: "neg_fwd(val, x, ans, n, imm[k])",
    Op.EXP: "exp_fwd(val, x, ans, n, imm[k])",
    Op.LOG: "log_fwd(val, x, ans, n, imm[k])",
    Op.SQRT: "sqrt_fwd(val, x, ans, n, imm[k])",
    Op.SIN: "sin_fwd(val, x, ans, n, imm[k])",
    Op.COS: "cos_fwd(val, x, ans, n, imm[k])",
    Op.TANH: "tanh_fwd(val, x, ans, n, imm[k])",
    Op.SIGMOID: "sigmoid_fwd(val, x, ans, n, imm[k])",
    Op.RELU: "relu_fwd(val, x, ans, n, imm[k])",
    Op.LEAKY_RELU: "leaky_relu_fwd(val, x, ans, n, imm[k])",
    Op.ABS: "abs_fwd(val, x, ans, n, imm[k])",
    Op.SQUARE: "square_fwd(val, x, ans, n, imm[k])",
    Op.POWC: "powc_fwd(val, x, ans, n, imm[k])",
    Op.ADDC: "addc_fwd(val, x, ans, n, imm[k])",
    Op.MULC: "mulc_fwd(val, x, ans, n, imm[k])",
    Op.RSUBC: "rsubc_fwd(val, x, ans, n, imm[k])",
    Op.DIVC: "divc_fwd(val, x, ans, n, imm[k])",
    Op.RDIVC: "rdivc_fwd(val, x, ans, n, imm[k])",
    Op.RPOWC: "rpowc_fwd(val, x, ans, n, imm[k])",
    Op.ADD: "add_fwd(val, x, y, ans, n)",
    Op.SUB: "sub_fwd(val, x, y, ans, n)",
    Op.MUL: "mul_fwd(val, x, y, ans, n)",
    Op.DIV: "div_fwd(val, x, y, ans, n)",
    Op.POW: "pow_fwd(val, x, y, ans, n)",
    Op.MAXIMUM: "maximum_fwd(val, x, y, ans, n)",
    Op.MINIMUM: "minimum_fwd(val, x, y, ans, n)",
    **{c: "compare_fwd(op, val, x, y, ans, n)"
       for c in (Op.GT, Op.GE, Op.LT, Op.LE, Op.EQ, Op.NE)},
    Op.WHERE: "where_fwd(val, x, y, z, ans, n)",
    Op.EXPAND: "expand_fwd(val, x, ans, a0, a1, a2)",
    Op.SLICE: "slice_fwd(val, x, ans, a0, a1, a2, a3, a4, a5)",
    Op.PLACE: "place_fwd(val, x, ans, a0, a1, a2, a3, a4)",
    Op.UNSLICE: "unslice_fwd(val, x, ans, a0, a1, a2, a3, a4, a5)",
    Op.TRANSPOSE: "transpose_fwd(val, x, ans, a0, a1, a2, a3)",
    Op.SUM: "sum_fwd(val, x, ans, a0, a1, a2)",
    Op.MAX: "max_fwd(val, x, ans, a0, a1, a2)",
    Op.LOGSUMEXP: "logsumexp_fwd(val, x, ans, a0, a1, a2)",
    Op.SOFTMAX: "softmax_fwd(val, x, ans, a0, a1, a2)",
    Op.LOG_SOFTMAX: "log_softmax_fwd(val, x, ans, a0, a1, a2)",
    Op.MATMUL: "matmul_fwd(val, np.int64(x), np.int64(y), np.int64(ans), a0, a1, a2, a3, a4, a5)",
    Op.CROSS_ENTROPY: """
        if not cross_entropy_fwd(val, x, y, ans, a0, a1):
            return BAD_LABEL, k""",
    Op.ONEHOT: """
        if not onehot_fwd(val, x, ans, a0, a1):
            return BAD_LABEL, k""",
    Op.TICK: "tick_fwd(val, x)",
    Op.RAND: "rand_fwd(val, x, ans, n, a0, a1, a2, np.int64(0))",
    Op.RANDN: "rand_fwd(val, x, ans, n, a0, a1, a2, np.int64(1))",
    Op.GUARD: """
        if (val[x] != 0) != (a0 != 0):
            return GUARD_FLIPPED, k
        n = np.uint64(0)  # (its output is x, checked where it was computed)""",
    Op.GATHER: """
        if not gather_fwd(val, val, x, y, ans, a0, a1, a2, a3):
            return BAD_INDEX, k""",
    Op.SCATTER_ADD: """
        if not scatter_add_fwd(val, val, x, y, ans, a0, a1, a2, a3):
            return BAD_INDEX, k""",
    Op.SOLVE: """
        if not solve_fwd(val, np.int64(x), np.int64(y), np.int64(ans), a0, a1, a2, a3):
            return LINALG, k""",
    Op.CHOLESKY: """
        if not cholesky_fwd(val, np.int64(x), np.int64(ans), a0, a1):
            return LINALG, k""",
    Op.TRISOLVE: """
        if not trisolve_fwd(val, np.int64(x), np.int64(y), np.int64(ans), a0, a1, a2, a3, a4,
                            a5):
            return LINALG, k""",
    Op.SLOGDET: "slogdet_fwd(val, np.int64(x), np.int64(ans), a0, a1, a2)",
    Op.TANH_GRAD: "tanh_grad_fwd(val, x, y, ans, n)",
    Op.MUL3: "mul3_fwd(val, x, y, z, ans, n, imm[k])",
    Op.SOFTPLUS: "softplus_fwd(val, x, ans, n, imm[k])",
    Op.ADD3: "add3_fwd(val, x, y, z, ans, n)",
    Op.BCAST: "bcast_fwd(val, x, y, ans, a0, a1, a2, a3, a4, a5)",
    **{c: "conv_fwd(op, val, x, y, ans, nx, a0, a1, a2, a3, a4, a5)"
       for c in (Op.CONV2D, Op.CONV2D_GRAD_X, Op.CONV2D_GRAD_W, Op.MAX_POOL2D,
                 Op.MAX_UNPOOL2D)},
}

_GX, _GY = "mask[k] & 2 != 0", "mask[k] & 4 != 0"  # input x / y needs a gradient
# add sub mul div: both inputs' gradients by one loop, or only the one that has a gradient
# (a constant operand's is neither computed nor written: ops/elementwise.py). A size-1
# instruction runs the scalar row of the two-input kernel (``SCALAR_SOURCE``): one element.
_BINARY = ((Op.ADD, "add"), (Op.SUB, "sub"), (Op.MUL, "mul"), (Op.DIV, "div"))
SCALAR_SOURCE = {op: f"{name}_bwd(val, grad, x, y, ans, n)" for op, name in _BINARY}
_ONE_SIDED = {op: f"""
        if {_GX} and {_GY}:
            {name}_bwd(val, grad, x, y, ans, n)
        else:
            {name}_bwd_one(val, grad, x, y, ans, n, {_GX})""" for op, name in _BINARY}
REVERSE = {
    Op.NEG: "neg_bwd(val, grad, x, ans, n, imm[k])",
    Op.EXP: "exp_bwd(val, grad, x, ans, n, imm[k])",
    Op.LOG: "log_bwd(val, grad, x, ans, n, imm[k])",
    Op.SQRT: "sqrt_bwd(val, grad, x, ans, n, imm[k])",
    Op.SIN: "sin_bwd(val, grad, x, ans, n, imm[k])",
    Op.COS: "cos_bwd(val, grad, x, ans, n, imm[k])",
    Op.TANH: "tanh_bwd(val, grad, x, ans, n, imm[k])",
    Op.SIGMOID: "sigmoid_bwd(val, grad, x, ans, n, imm[k])",
    Op.RELU: "relu_bwd(val, grad, x, ans, n, imm[k])",
    Op.LEAKY_RELU: "leaky_relu_bwd(val, grad, x, ans, n, imm[k])",
    Op.ABS: "abs_bwd(val, grad, x, ans, n, imm[k])",
    Op.SQUARE: "square_bwd(val, grad, x, ans, n, imm[k])",
    Op.POWC: "powc_bwd(val, grad, x, ans, n, imm[k])",
    Op.ADDC: "addc_bwd(val, grad, x, ans, n, imm[k])",
    Op.MULC: "mulc_bwd(val, grad, x, ans, n, imm[k])",
    Op.RSUBC: "rsubc_bwd(val, grad, x, ans, n, imm[k])",
    Op.DIVC: "divc_bwd(val, grad, x, ans, n, imm[k])",
    Op.RDIVC: "rdivc_bwd(val, grad, x, ans, n, imm[k])",
    Op.RPOWC: "rpowc_bwd(val, grad, x, ans, n, imm[k])",
    **_ONE_SIDED,
    Op.POW: "pow_bwd(val, grad, x, y, ans, n)",
    Op.MAXIMUM: "maximum_bwd(val, grad, x, y, ans, n)",
    Op.MINIMUM: "minimum_bwd(val, grad, x, y, ans, n)",
    Op.WHERE: "where_bwd(val, grad, x, y, z, ans, n)",
    Op.EXPAND: "expand_bwd(grad, x, ans, a0, a1, a2)",
    Op.SLICE: "slice_bwd(grad, x, ans, a0, a1, a2, a3, a4, a5)",
    Op.PLACE: "place_bwd(grad, x, ans, a0, a1, a2, a3, a4)",
    Op.UNSLICE: "unslice_bwd(grad, x, ans, a0, a1, a2, a3, a4, a5)",
    Op.TRANSPOSE: "transpose_bwd(grad, x, ans, a0, a1, a2, a3)",
    Op.SUM: "sum_bwd(val, grad, x, ans, a0, a1, a2)",
    Op.MAX: "max_bwd(val, grad, x, ans, a0, a1, a2)",
    Op.LOGSUMEXP: "logsumexp_bwd(val, grad, x, ans, a0, a1, a2)",
    Op.SOFTMAX: "softmax_bwd(val, grad, x, ans, a0, a1, a2)",
    Op.LOG_SOFTMAX: "log_softmax_bwd(val, grad, x, ans, a0, a1, a2)",
    Op.MATMUL: f"""
        matmul_bwd(val, grad, np.int64(x), np.int64(y), np.int64(ans), a0, a1, a2, a3, a4,
                   a5, {_GX}, {_GY})""",
    Op.CROSS_ENTROPY: """
        if not cross_entropy_bwd(val, grad, x, y, ans, a0, a1):
            return BAD_LABEL, k""",
    Op.GATHER: f"""
        if {_GX} and not gather_bwd(grad, val, x, y, ans, a0, a1, a2, a3):
            return BAD_INDEX, k""",
    Op.SCATTER_ADD: f"""
        if {_GX} and not scatter_add_bwd(grad, val, x, y, ans, a0, a1, a2, a3):
            return BAD_INDEX, k""",
    Op.SOLVE: f"""
        solve_bwd(val, grad, np.int64(x), np.int64(y), np.int64(ans), a0, a1, a2, a3,
                  {_GX}, {_GY})""",
    Op.CHOLESKY: "cholesky_bwd(val, grad, np.int64(x), np.int64(ans), a0, a1)",
    Op.TRISOLVE: f"""
        trisolve_bwd(val, grad, np.int64(x), np.int64(y), np.int64(ans), a0, a1, a2, a3, a4,
                     a5, {_GX}, {_GY})""",
    Op.SLOGDET: "slogdet_bwd(val, grad, np.int64(x), np.int64(ans), a0, a1, a2)",
    Op.TANH_GRAD: "tanh_grad_bwd(val, grad, x, y, ans, n)",
    Op.MUL3: "mul3_bwd(val, grad, x, y, z, ans, n, imm[k])",
    Op.SOFTPLUS: "softplus_bwd(val, grad, x, ans, n, imm[k])",
    Op.ADD3: "add3_bwd(val, grad, x, y, z, ans, n)",
    Op.BCAST: f"bcast_bwd(val, grad, x, y, ans, a0, a1, a2, a3, a4, a5, {_GX}, {_GY})",
    **{c: f"""
        conv_bwd(op, val, grad, x, y, ans, nx, a0, a1, a2, a3, a4, a5, {_GX}, {_GY})"""
       for c in (Op.CONV2D, Op.CONV2D_GRAD_X, Op.CONV2D_GRAD_W, Op.MAX_POOL2D,
                 Op.MAX_UNPOOL2D)},
}
# MATMUL without transposed operands (stride attributes 0 or 1): the rows of a tape on which
# no product has one (``opset``), which leave the flagged products' functions uncompiled
FLAGGED_MATMUL = -1  # in an opcode set: some MATMUL has a transposed operand
PLAIN = {
    Op.MATMUL: (f"""
        if not plain_matmul_fwd(val, np.int64(x), np.int64(y), np.int64(ans), a0, a1, a2, a3,
                                a4, a5):
            return UNKNOWN_OP, k""", f"""
        if not plain_matmul_bwd(val, grad, np.int64(x), np.int64(y), np.int64(ans), a0, a1,
                                a2, a3, a4, a5, {_GX}, {_GY}):
            return UNKNOWN_OP, k"""),
}
# no gradient: comparisons, ONEHOT, the random draws and TICK, GUARD (never in a reverse mask)
for _op in (Op.GT, Op.GE, Op.LT, Op.LE, Op.EQ, Op.NE, Op.ONEHOT, Op.TICK, Op.RAND, Op.RANDN,
            Op.GUARD):
    REVERSE[_op] = "pass"
OPCODES = frozenset(int(o) for o in Op if o != Op.N_OPS)
assert set(FORWARD) == set(REVERSE) == OPCODES, "every opcode needs a row in both tables"
# (and in tapegrad.tangent.TANGENT and tapegrad.validate.CHECKS: tests/test_codegen.py)
ALL_OPS = OPCODES | {FLAGGED_MATMUL, _fuse.FUSE}  # the full interpreter's set


def opcodes_of(instr):
    """The opcode set of the instruction rows ``instr`` as ``interpreter`` takes it: the
    valid opcodes present, and ``FLAGGED_MATMUL`` if a product has a transposed operand."""
    col = instr[:, OP]
    ops = set((np.unique(col) if col.size > 256 else col).tolist())
    if int(Op.MATMUL) in ops:
        mm = instr[col == Op.MATMUL]
        if ((mm[:, A0 + 4] | mm[:, A0 + 5]) > 1).any():
            ops.add(FLAGGED_MATMUL)
    return frozenset(o for o in ops if o in OPCODES or o == FLAGGED_MATMUL)




# ------------------------------------------------------------------ scalar rows
# An instruction of one element runs its op's scalar row (``tapegrad.lower``): the kernel's
# loop body pasted in as plain expressions, derived from the row above by
# ``lower.scalar_row``, or written here where the element is elsewhere (SLICE, PLACE).
SCALAR_FORWARD, SCALAR_REVERSE = {}, {}
# (numba's pedantic SSA check warns about the phi nodes of ops/_vmath.py's overloads when
# they are inlined straight into a sweep, as scalar rows do; the code is correct)
warnings.filterwarnings("ignore", message=r"variable '_register__locals___impl",
                        category=NumbaIRAssumptionWarning)
# A scalar row calls the vectorisable transcendentals of ops/_vmath.py through functions of
# their own, compiled once per dtype: inlined into every scalar row, beside the kernels' own
# copies, they made up much of the full forward sweep's compile time. (Same code, same bits:
# tests/test_lower.py.)
_CALLED = re.compile(r"\b(vexp|vlog|vtanh|vsigmoid)\(")


@jit
def scalar_vexp(x):
    return vexp(x)


@jit
def scalar_vlog(x):
    return vlog(x)


@jit
def scalar_vtanh(x):
    return vtanh(x)


@jit
def scalar_vsigmoid(x):
    return vsigmoid(x)


_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = sorted(glob.glob(os.path.join(_HERE, "ops", "*.py"))) + [
    os.path.join(_HERE, f) for f in ("sweep.py", "_jit.py", "opcodes.py", "fit.py", "optim.py",
                                     "tangent.py", "validate.py", "lower.py", "fuse.py")]
for _f in (scalar_vexp, scalar_vlog, scalar_vtanh, scalar_vsigmoid):
    drop_stale_cache(_f, SOURCES)  # they inline ops/_vmath.py (session 17: an edit of its log
    #                                kept running the old one here, one ulp off the kernels')
_digest_value = None


def _digest():
    """sha256 of every file whose code the interpreters compile (inlined kernels, called
    functions, the loop templates), read once per process."""
    global _digest_value
    if _digest_value is None:
        h = hashlib.sha256()
        for f in sorted(SOURCES):
            with open(f, "rb") as fh:
                h.update(fh.read())
        _digest_value = h.hexdigest()[:16]
    return _digest_value


def _derive_scalar_rows():
    """Fill ``SCALAR_FORWARD`` / ``SCALAR_REVERSE`` with the rows ``lower.scalar_row`` derives
    from the kernels' sources, binding the globals they name into this module. Parsing ~130
    kernels costs a tenth of a second per import, so the result is kept in a file named by
    ``_digest()`` (every source it comes from) beside the generated modules, and read back."""
    path = os.path.join(generated_dir(), f"scalar_rows-{_digest()}.json")
    try:
        with open(path) as fh:
            kept = json.load(fh)
        rows = []
        for which, op, text, names in kept:
            objs = {k: getattr(sys.modules[m], k) for k, m in names.items()}
            rows.append((which, int(op), text, objs))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        rows = []
        reverse = {**REVERSE, **SCALAR_SOURCE}
        for which, table in (("forward", FORWARD), ("reverse", reverse)):
            for op, row in table.items():
                derived = _lower.scalar_row(row, globals())
                if derived is not None:
                    rows.append((which, int(op), derived[0], derived[1]))
        try:  # the module each name comes from, to find the same object again
            kept = [(w, op, t, {k: _home(k, v) for k, v in objs.items()})
                    for w, op, t, objs in rows]
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as fh:
                json.dump(kept, fh)
            os.replace(tmp, path)
        except (OSError, LookupError):
            pass  # read-only or unusual: derived again next time
    g = globals()
    for which, op, text, objs in rows:
        if all(g.setdefault(k, v) is v for k, v in objs.items()):
            (SCALAR_FORWARD if which == "forward" else SCALAR_REVERSE)[Op(op)] = \
                _CALLED.sub(r"scalar_\1(", text)


def _home(name, obj):
    """The module whose attribute ``name`` is ``obj`` (LookupError when none is loaded)."""
    m = getattr(obj, "__module__", None)
    if m and getattr(sys.modules.get(m), name, None) is obj:
        return m
    for m, mod in list(sys.modules.items()):
        if m.startswith("tapegrad") and getattr(mod, name, None) is obj:
            return m
    raise LookupError(name)


_derive_scalar_rows()
SCALAR_FORWARD[Op.SLICE] = SCALAR_FORWARD[Op.PLACE] = "val[ans] = val[x]"
SCALAR_REVERSE[Op.SLICE] = SCALAR_REVERSE[Op.PLACE] = "grad[x] += grad[ans]"
# SOFTMAX of one contiguous row (A = B = 1: a softmax of a few stacked scalars): the
# kernels' row loops written out, with the same helpers (ops/reduce.py; a row of 2 to 4 in
# ``softmax_short`` / ``softmax_short_bwd``, which take no arena: an inlined call with one
# made numba count references around it) -- tests/test_lower.py holds the two to the same bits
SCALAR_FORWARD[Op.SOFTMAX] = """
        if 2 <= n <= 4:
            _s_a2 = np.float64(val[x + np.uint64(2)]) if n > 2 else -math.inf
            _s_a3 = np.float64(val[x + np.uint64(3)]) if n > 3 else -math.inf
            _s_q0, _s_q1, _s_q2, _s_q3 = softmax_short(
                is_f32(val), np.float64(val[x]), np.float64(val[x + np.uint64(1)]), _s_a2, _s_a3)
            val[ans] = _s_q0
            val[ans + np.uint64(1)] = _s_q1
            if n > 2:
                val[ans + np.uint64(2)] = _s_q2
            if n > 3:
                val[ans + np.uint64(3)] = _s_q3
        else:
            _s_m = _max_run(val, x, n)
            for _s_j in range(n):
                val[ans + _s_j] = exp_for(val, np.float64(val[x + _s_j]) - _s_m)
            _s_s = _sum_run(val, ans, n)
            for _s_j in range(n):
                val[ans + _s_j] /= _s_s"""
SCALAR_REVERSE[Op.SOFTMAX] = """
        if 2 <= n <= 4:
            _s_s2 = np.float64(val[ans + np.uint64(2)]) if n > 2 else 0.0
            _s_g2 = np.float64(grad[ans + np.uint64(2)]) if n > 2 else 0.0
            _s_s3 = np.float64(val[ans + np.uint64(3)]) if n > 3 else 0.0
            _s_g3 = np.float64(grad[ans + np.uint64(3)]) if n > 3 else 0.0
            _s_d0, _s_d1, _s_d2, _s_d3 = softmax_short_bwd(
                np.float64(val[ans]), np.float64(val[ans + np.uint64(1)]), _s_s2, _s_s3,
                np.float64(grad[ans]), np.float64(grad[ans + np.uint64(1)]), _s_g2, _s_g3)
            grad[x] += _s_d0
            grad[x + np.uint64(1)] += _s_d1
            if n > 2:
                grad[x + np.uint64(2)] += _s_d2
            if n > 3:
                grad[x + np.uint64(3)] += _s_d3
        else:
            _s_dot = _dot_run(grad, ans, val, ans, n)
            for _s_j in range(n):
                grad[x + _s_j] += val[ans + _s_j] * (grad[ans + _s_j] - _s_dot)"""
# where a size-1 instruction's element lies (lower_into): SLICE reads one element of its
# input, PLACE writes one of its output; the elementwise ops' are at the buffers' offsets
SCALAR_KIND = np.zeros(int(Op.N_OPS), np.int8)
for _op in set(SCALAR_FORWARD) | set(SCALAR_REVERSE):
    SCALAR_KIND[_op] = _lower.ELEMENTWISE
SCALAR_KIND[Op.SLICE], SCALAR_KIND[Op.PLACE] = _lower.IN_ELEMENT, _lower.OUT_ELEMENT
SCALAR_KIND[Op.SOFTMAX] = _lower.ONE_ROW
assert {o for o in OPCODES if SCALAR_KIND[o] not in (_lower.NONE, _lower.ELEMENTWISE)} <= \
    set(SCALAR_FORWARD) & set(SCALAR_REVERSE), \
    "an op whose scalar element is not at its buffers' offsets needs both scalar rows"


def lower(instr, boff, bsize):
    """The lowered stream of ``instr`` that ``forward`` / ``reverse`` run (``tapegrad.lower``)."""
    return _lower.lower(instr, boff, bsize, SCALAR_KIND)


# ------------------------------------------------------------------ the loops around them
# (the tangent sweep's: offsets through the buffer table)
_PREAMBLE = """
        op = instr[k, OP]
        ans, n = np.uint64(boff[instr[k, OUT]]), np.uint64(bsize[instr[k, OUT]])
        x, y, z = _offset(boff, instr[k, X]), _offset(boff, instr[k, Y]), _offset(boff, instr[k, Z])
        a0, a1, a2 = np.int64(instr[k, A0]), np.int64(instr[k, A0 + 1]), np.int64(instr[k, A0 + 2])
        a3, a4, a5 = np.int64(instr[k, A0 + 3]), np.int64(instr[k, A0 + 4]), np.int64(instr[k, A0 + 5])"""

# the value sweeps': one row of the lowered stream
_LOW_PREAMBLE = """
        code = low[k, 0]
        ans, n = np.uint64(low[k, 1]), np.uint64(low[k, 2])
        x, y, z = np.uint64(low[k, 3]), np.uint64(low[k, 4]), np.uint64(low[k, 5])"""

_FORWARD_LOOP = """
@jit
def forward(instr, imm, low, val, mask, check_finite):
    k = 0
    while k < low.shape[0]:
        if mask[k] == 0:
            k += 1
            continue{preamble}
{branches}
        else:
            return UNKNOWN_OP, k
        if check_finite:
            for i in range(n):
                if not math.isfinite(val[ans + i]):
                    return NON_FINITE, k
        k += 1
    return OK, 0
"""

_REVERSE_LOOP = """
@jit
def reverse(instr, imm, low, val, grad, mask, clear):
    k = low.shape[0] - 1
    while k >= 0:
        if mask[k] & 1 == 0:
            k -= 1
            continue{preamble}
{branches}
        else:
            return UNKNOWN_OP, k
        if (clear or low[k, 7] != 0) and instr[k, OP] != Op.PLACE:  # consumed: zero again
            # for the next step (low[k, 7]: lower.CLEAR, a slot that tapegrad.plan shares)
            for i in range(n):
                grad[ans + i] = 0
        k -= 1
    return OK, 0
"""

# a SKIP row holds the length of the run of SKIP rows it starts, each way (>= 1)
# (at least one: a zero would never end the loop)
_SKIP_AHEAD = f"k += max(low[k, {_lower.RUN_AHEAD}], 1)"
_SKIP_BACK = f"k -= max(low[k, {_lower.RUN_BACK}], 1)"

_LAZY = [(re.compile(r"\bop\b"), "op = np.int64(instr[k, OP])"),
         (re.compile(r"\bnx\b"), "nx = low[k, 6]")] + [
    (re.compile(rf"\ba{j}\b"), f"a{j} = np.int64(instr[k, A0 + {j}])") for j in range(6)]


def _block(code):
    """A row as lines at the branch's indent (12 spaces)."""
    code = code.strip("\n")
    if "\n" not in code:
        return "            " + code.strip()
    lines = textwrap.dedent(code).split("\n")
    return "\n".join("            " + line for line in lines)


def _lowered_branches(table, scalar, ops, plain=None, skip="pass", fused=""):
    """The ``if code == ...: / elif ...`` chain of the value sweeps: per opcode of ``ops`` its
    row (from ``plain`` where given), and for one with a scalar kind its size-1 branch (its row
    in ``scalar``, else its row), then ``fused`` (a fused group's branches, when ``ops`` holds
    ``fuse.FUSE``). Each branch first reads the attributes it names."""
    fused = fused if _fuse.FUSE in ops else ""
    ops = sorted(o for o in ops if o >= 0)
    out = [] if ops else ["        if code < 0:  # no opcodes: any instruction is unknown\n"
                          "            pass"]
    if Op.PLACE in ops or Op.SLICE in ops:  # a copy onto itself (tape.optimize()): the
        # sweep steps over the run of such rows it starts (``skip``, lower.RUN_AHEAD/BACK)
        out.append(f"        if code == {_lower.SKIP}:  # SKIP\n            {skip}\n"
                   f"            continue")
    for op in ops:
        rows = [(op, (plain or {}).get(op, table[op]), "")]
        if SCALAR_KIND[op] != _lower.NONE:
            rows.insert(0, (op + _lower.SCALAR, scalar.get(op, table[op]), " (one element)"))
        for code, row, note in rows:
            # the value sweeps are while loops that step k themselves (SKIP runs): a row's
            # own `continue` would never step it
            assert not re.search(r"\bcontinue\b", row), (Op(op).name, row)
            lazy = [line for pattern, line in _LAZY if pattern.search(row)]
            text = "\n".join(["            " + line for line in lazy] + [_block(row)])
            out.append(f"        {'elif' if out else 'if'} code == {code}:  # {Op(op).name}"
                       f"{note}\n{text}")
    return "\n".join(out) + fused


def _branches(table, ops, plain=None):
    """The ``if op == ...: / elif ...`` chain of the rows of ``ops`` in ``table`` (those of
    ``plain``, a dict opcode -> row, instead where given)."""
    ops = sorted(o for o in ops if o >= 0)
    out = [] if ops else ["        if op < 0:  # no opcodes: any instruction is unknown\n"
                          "            pass"]
    for op in ops:
        code = (plain or {}).get(op, table[op]).strip("\n")
        if "\n" not in code:
            code = "            " + code.strip()
        else:  # a block: written at the 8-space indent of the tables, one level deeper here
            code = "\n".join("    " + line for line in code.split("\n"))
        out.append(f"        {'elif' if out else 'if'} op == {op}:  # {Op(op).name}\n{code}")
    return "\n".join(out)


def source(ops):
    """The text of the module holding the interpreters of the opcodes ``ops``: ``forward``,
    ``reverse``, ``tangent`` (forward mode, rows from ``tapegrad.tangent.TANGENT``),
    ``check_instructions`` (the validation, rows from ``tapegrad.validate.CHECKS``) and
    ``train_steps`` (``tg.fit``'s loop, whose text is ``tapegrad.fit``'s)."""
    fit = importlib.import_module("tapegrad.fit")  # (tapegrad.fit is also the function)
    tangent = importlib.import_module("tapegrad.tangent")
    validate = importlib.import_module("tapegrad.validate")
    flagged = FLAGGED_MATMUL in ops or int(Op.MATMUL) not in ops
    fused = _fuse.FUSE in ops
    ops = sorted(int(o) for o in ops if o >= 0) + ([_fuse.FUSE] if fused else [])
    names = (" ".join(Op(o).name for o in ops if o >= 0) if len(ops) < len(OPCODES) + fused
             else "(all)") + (" and fused groups" if fused else "")
    if not flagged:
        names += " (no transposed operands)"
    fwd, rev = ({op: row[0] for op, row in PLAIN.items()},
                {op: row[1] for op, row in PLAIN.items()}) if not flagged else (None, None)
    steps = inspect.getsource(fit.train_steps)
    return "\n".join([
        f'"""tapegrad\'s interpreters for the opcodes {names}.',
        f"Generated by tapegrad.sweep from the sources with digest {_digest()}: do not edit."
        f'"""',
        "import importlib",
        "for _m in ('fit', 'tangent', 'validate', 'sweep'):",
        "    globals().update({k: v for k, v in vars(importlib.import_module('tapegrad.' + _m))"
        ".items() if not k.startswith('__')})",
        "globals().update(called(globals()))",
        _fuse.IMPORT if fused else "",
        _FORWARD_LOOP.format(preamble=_LOW_PREAMBLE,
                             branches=_lowered_branches(FORWARD, SCALAR_FORWARD, ops, fwd,
                                                         _SKIP_AHEAD, _fuse.branches(True))),
        _REVERSE_LOOP.format(preamble=_LOW_PREAMBLE,
                             branches=_lowered_branches(REVERSE, SCALAR_REVERSE, ops, rev,
                                                         _SKIP_BACK, _fuse.branches(False))),
        tangent.LOOP.format(preamble=_PREAMBLE, branches=_branches(tangent.TANGENT, ops)),
        validate.LOOP.format(branches=_branches(validate.CHECKS, ops)),
        "\n@jit\n" + steps])


# ------------------------------------------------------------------ kernels called, not inlined
# numba inlines an ``inline="always"`` kernel by copying its IR into the caller and re-running
# its analyses over the *whole* caller after each copy: in a sweep of sixty branches that cost
# grows with the square of the sweep's size (most of a cold compile, issue 11). The generated
# sweeps therefore call a cached, non-inlined twin of each kernel instead -- compiled once per
# dtype and shared by every interpreter -- and keep inline code only for the size-1 scalar
# rows, which are plain text. A call costs tens of ns with its reference counting: nothing
# beside an array kernel's work.
# tiny helpers that stay inline: the tangent sweep's per-instruction offsets, the checks'
# ``_prod`` (called with literal arguments), and what the scalar rows call (SOFTMAX's
# one-row rows; ``one_like``)
INLINED = {"_offset", "_prod", "_dot_run", "_max_run", "_sum_run", "exp64", "exp_for",
           "softmax_short", "softmax_short_bwd", "one_like"}
_twins = {}


def called(kernels):
    """``{name: twin}`` for the inline kernels among ``kernels`` (a module's globals): the
    same Python function compiled as a cached function of its own. Of a generated module,
    only the kernels its text names (a twin costs a dispatcher and a cache object: a warm
    process's first gradient made 121 of them for the ten its sweeps call)."""
    used = None
    try:
        with open(kernels["__file__"]) as fh:
            used = set(re.findall(r"\w+", fh.read()))
    except (KeyError, TypeError, OSError):
        pass
    out = {}
    for name, disp in kernels.items():
        if (name in INLINED or not isinstance(disp, Dispatcher) or (used and name not in used)
                or disp.targetoptions.get("inline") != "always"):
            continue
        twin = _twins.get(disp)
        if twin is None:
            twin = _twins[disp] = cached(disp.py_func, error_model="numpy")
            drop_stale_cache(twin, SOURCES)  # it inlines kernels from other files
        out[name] = twin
    return out




_modules = {}            # frozenset of opcodes -> generated module
_lock = threading.Lock()
MAX_SPECIALISED = 4      # specialised interpreters a process compiles before using the full one


def interpreter(ops):
    """The module of interpreters for the opcodes ``ops`` (generated, written and imported
    once per process; numba compiles each function on its first call, or loads it from the
    disk cache)."""
    key = frozenset(int(o) for o in ops)
    mod = _modules.get(key)
    if mod is not None:
        return mod
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            mod = _modules[key] = _load(source(key))
    return mod


_scratch = []


def _scratch_dir():
    """A directory for this process's generated modules when the cache locations are not
    writable (removed at exit; numba then compiles them in every process)."""
    if not _scratch:
        _scratch.append(tempfile.mkdtemp(prefix="tapegrad-"))
        atexit.register(shutil.rmtree, _scratch[0], True)
    return _scratch[0]


def _load(text):
    """Write ``text`` to its file (named by its hash) unless there, and import it."""
    name = "tg_sweep_" + hashlib.sha256(text.encode()).hexdigest()[:20]
    path = None
    for where in (generated_dir(), None):
        try:
            d = where or _scratch_dir()
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, name + ".py")
            if not os.path.exists(path):  # written whole, then renamed: readers never see half
                tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
                with open(tmp, "w") as fh:
                    fh.write(text)
                os.replace(tmp, path)
                if where and not os.environ.get("NUMBA_CACHE_DIR"):
                    _remove_superseded(d)
            else:
                os.utime(path)  # its mtime says when it was last used (_remove_superseded)
            break
        except OSError:
            continue
    return _import(path)


UNUSED_DAYS = 1.0  # a superseded module unused this long is removed


def _remove_superseded(d):
    """Delete the modules in ``d`` generated from other sources than these (an edited
    checkout, an older version) and unused for ``UNUSED_DAYS``, with their cached code: each
    holds about a megabyte. (A process still running older sources may be using a recent one.)
    Not in a shared ``NUMBA_CACHE_DIR``, where other versions may run."""
    mine = _digest()
    old = time.time() - UNUSED_DAYS * 86400
    for path in glob.glob(os.path.join(d, "tg_sweep_*.py")):
        try:
            if os.path.getmtime(path) > old:
                continue
            with open(path) as fh:
                head = fh.read(400)
            if "with digest " not in head or f"with digest {mine}:" in head:
                continue
            name = os.path.basename(path)[:-3]
            for f in ([path] + glob.glob(os.path.join(d, "__pycache__", name + ".*"))
                      + glob.glob(os.path.join(d, name + ".*.lock"))):  # (_compiling's)
                os.remove(f)
        except OSError:  # another process removed it first, or no permission: leave it
            continue


def _import(path):
    """Import the generated module at ``path`` (by the name every process gives it)."""
    name = "tapegrad._generated." + os.path.basename(path)[:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _ready(dispatcher, dtype):
    """Whether ``dispatcher`` (a generated function) runs float ``dtype`` arenas without
    compiling: compiled in this process, or in numba's disk cache (read from disk until it
    is; then remembered). Its signature must be ``call_types`` of its name."""
    key = (dispatcher, np.dtype(dtype).char)
    if key in _ready_seen:
        return True
    try:
        want = call_types(dispatcher.py_func.__name__, dtype)
    except (AttributeError, KeyError):
        return False
    ready = any(tuple(sig) == want for sig in getattr(dispatcher, "signatures", ()))
    if not ready:
        try:
            index = dispatcher._cache._cache_file._load_index()
            ready = any(tuple(k[0]) == want for k in index)
        except Exception:  # no cache (NUMBA_DISABLE_JIT, unwritable) or numba's internals
            ready = False
    if ready:
        _ready_seen.add(key)
    return ready


_ready_seen = set()
_chosen = {}             # (opcodes, dtype) -> the module for_ops chose


def for_ops(ops, dtype):
    """The interpreters to run a tape of opcodes ``ops`` with ``dtype`` arenas: the full set's
    when they are ready (compiled or cached) or when this process has already generated
    ``MAX_SPECIALISED`` others, else those of exactly ``ops``. Remembered per set and dtype
    (a tape recorded afresh every step asks each time)."""
    key = (ops if isinstance(ops, frozenset) else frozenset(ops), np.dtype(dtype).char)
    mod = _chosen.get(key)
    if mod is None:
        mod = _chosen[key] = _choose(key[0], dtype)
    return mod


def _choose(ops, dtype):
    """This opcode set's own module when it is compiled or cached (its smaller dispatch runs
    a scalar graph ~10 % faster than the full one's), else the full one when that is, else
    this set's (compiled now, or run by the Python tier while workers compile it)."""
    if ops == ALL_OPS or ops in _modules:
        return _tiered(interpreter(ops), dtype)
    key = frozenset(int(o) for o in ops)
    own = _probed.get(key)
    if own is None:  # loaded to look at its cache, registered only when chosen
        with _lock:
            own = _probed.get(key) or _modules.get(key)
            if own is None:
                own = _probed[key] = _load(source(key))
    if not all(_ready(getattr(own, n), dtype) for n in ("forward", "reverse")):
        full = interpreter(ALL_OPS)  # (loading it costs ~0.2 s: only when needed)
        if _ready(full.forward, dtype) or len(_modules) > MAX_SPECIALISED:
            return _tiered(full, dtype)
    with _lock:
        own = _modules.setdefault(key, own)
    return _tiered(own, dtype)


_probed = {}             # opcode set -> its module, loaded by _choose but not chosen (yet)


def _tiered(mod, dtype):
    """``mod``, or while its sweeps are neither compiled nor cached (and the Python tier is
    on), a ``tier.Tiered`` stand-in running them as Python while workers compile them."""
    from . import tier
    if not tier.enabled() or all(_ready(getattr(mod, n), dtype)
                                 for n in ("forward", "reverse", "check_instructions")):
        return mod
    if getattr(getattr(mod.forward, "_cache", None), "_cache_file", None) is None:
        return mod  # no disk cache (or no JIT): nothing for a worker to hand over
    want = os.environ.get("TAPEGRAD_COMPILE_WORKERS", "").strip()
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return tier.Tiered(mod, dtype, int(want) if want.isdigit() else min(2, cpus))



# ------------------------------------------------------------------ compiling ahead, in parallel
# A cold first gradient compiles the forward sweep, the checks and the reverse sweep one after
# the other, each seconds long, in one process: numba compiles under a global lock, so threads
# cannot share the work, but processes can -- numba's disk cache is where they meet. When a
# tape first needs a module whose reverse sweep is neither compiled nor cached, a worker process
# compiles it (into the cache) while this one compiles the forward sweep and the checks; the
# first call of the reverse sweep waits for the worker and loads its code from the cache
# (``_jit.announce_compile`` does the waiting). A worker that fails or is too slow changes
# nothing: this process then compiles as it would have. TAPEGRAD_COMPILE_WORKERS=N sets how
# many may run (0: none); by default one per idle CPU (the load average says how many are
# busy), none on a single CPU, with numba's JIT off, without a disk cache, or under MPI.
AHEAD = ("reverse",)     # what workers compile, in this order, one worker each
_ahead = set()           # (module, dtype) pairs compile_ahead has looked at


def call_types(name, dtype):
    """The numba argument types with which tapegrad calls the generated function ``name`` on
    ``dtype`` arenas (what a worker compiles; tests/test_codegen.py checks them against the
    signatures the callers compile)."""
    from numba.core import types
    from numba.np.numpy_support import from_dtype

    def arr(dt, nd=1):
        return types.Array(from_dtype(np.dtype(dt)), nd, "C")
    instr, imm, idx, low, mask, v = (arr(np.int32, 2), arr(np.float64), arr(np.int64),
                                     arr(np.int64, 2), arr(np.uint8), arr(dtype))
    return {"forward": (instr, imm, low, v, mask, types.int64),
            "reverse": (instr, imm, low, v, v, mask, types.int64),
            "check_instructions": (instr, idx, idx),
            "tangent": (instr, imm, idx, idx, v, v, types.int64, mask)}[name]


def _worker_budget():
    """How many compile workers may run besides this process (0: none)."""
    want = os.environ.get("TAPEGRAD_COMPILE_WORKERS", "")
    if want.strip().isdigit():
        return int(want)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    if cpus < 2 or "mpi4py.MPI" in sys.modules:
        return 0
    try:  # no core to spare (a busy machine): a worker would slow this process down
        idle = cpus - os.getloadavg()[0]
    except (AttributeError, OSError):
        idle = cpus - 1
    return max(0, min(int(idle + 0.5), cpus - 1, len(AHEAD)))


def compile_ahead(mod, dtype):
    """Start workers compiling ``AHEAD`` of module ``mod`` for ``dtype`` arenas, unless they
    are compiled, cached or being compiled already (module comment above)."""
    from ._jit import _workers, start_worker
    key = (mod, np.dtype(dtype).char)
    if key in _ahead:
        return
    _ahead.add(key)
    for name in AHEAD[:_worker_budget()]:
        d = getattr(mod, name, None)
        if (getattr(d, "_cache", None) is None or type(d._cache).__name__ == "NullCache"
                or d in _workers or _ready(d, dtype)):
            continue
        start_worker(d, [sys.executable, "-c", "from tapegrad import sweep; sweep._worker()",
                         mod.__file__, name, np.dtype(dtype).str], os.path.dirname(_HERE))


def _worker():
    """A compile worker's body: ``python -c ... MODULE_PATH NAME DTYPE``."""
    path, names, dtype = sys.argv[1:4]
    nice = os.environ.get("TAPEGRAD_WORKER_NICE", "")
    if nice.isdigit() and hasattr(os, "nice"):
        try:
            os.nice(int(nice))
        except OSError:
            pass
    mod = _import(path)
    for name in names.split(","):  # (several: one after the other)
        with _compiling(path, name, dtype):
            getattr(mod, name).compile(call_types(name, np.dtype(dtype)))


@contextlib.contextmanager
def _compiling(path, name, dtype):
    """Held while a worker compiles ``name`` of the generated module at ``path`` for
    ``dtype``: processes started together on a cold cache each start workers for the same
    interpreters, and a worker of another process compiling the same one waits here, then
    finds it in numba's disk cache (``compile`` loads it) instead of compiling it again --
    one compile per interpreter, not one per process. An exclusive ``flock`` on a file
    beside the module (released by the system if the worker dies); none where that fails."""
    try:
        import fcntl
        fd = os.open(f"{path[:-3]}.{name}.{np.dtype(dtype).char}.lock",
                     os.O_CREAT | os.O_RDWR, 0o666)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)
