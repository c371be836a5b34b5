"""The tape: instructions, buffers and the two arenas.

Flat arrays (see also ``tapegrad.opcodes``):

* ``instr`` int32 ``(n, WIDTH)`` -- one row per instruction; ``imm`` float64 ``(n,)``;
  ``src`` int32 ``(n,)`` the site (``errors.site_text``) that recorded it.
* buffer table -- ``boff`` / ``bsize`` int64 ``(n_buffers,)``: where buffer ``b`` lives in the
  arenas; ``bsite`` int32 the site that made it; ``shape[b]`` (a tuple, Python side);
  ``kind[b]`` one of PARAM INPUT CONST TEMP (a bytearray); the buffer whose memory it aliases
  (``_base_of(b)``: itself unless it is a reshape; only aliases are stored, in a dict).
* ``val`` / ``grad`` -- the value and gradient arenas, 1-D, float64 or float32, same layout.

Recording is a few appends per instruction: a row tuple to a pending list and a buffer tuple
to another. The pending rows are moved into the NumPy arrays in blocks and *evaluated* there
by the compiled forward sweep, one call per block: whenever a value is looked at (``.value``,
``bool(v)``, printing, a replay) and every 4096 instructions. So ``v.value`` is always the
value the op computes, as if each op ran when recorded, at a fraction of the per-op cost.

At the first replay (or backward) the tape is *sealed*: the arena is laid out anew with all
parameters in one contiguous prefix ``[0, P)``, then inputs and constants, then
intermediates; the instructions are validated so no compiled code ever sees an out-of-range
index. Layout, validation and activity analysis are array operations or compiled loops, never
a Python loop over instructions. Recording more after that re-seals.

Threads: replays of one tape (``forward``, ``backward``, ``tg.fit``, an optimizer step)
serialise on ``tape.lock``; ``tape.replica()`` gives another thread its own arenas over the
same sealed instructions, and the compiled sweeps release the GIL, so replicas run in
parallel. The stack of ``with tape:`` blocks is per thread. Record a tape on one thread.
"""
import copy
import operator
import os
import threading
import _thread
import struct
import sys

import numpy as np

from ._jit import _checked as _ANNOUNCED  # dispatchers announce_compile has looked at
from ._jit import announce_compile
from .errors import (BranchChanged, FeedError, LinAlgError, NonFiniteError, ShapeError,
                     TapegradError, UnknownNameError, site_id, site_text, user_site)
from .opcodes import A0, DIFFERENTIABLE, N_IN, OP, OPS, OUT, WIDTH, X, Op

PARAM, INPUT, CONST, TEMP = 0, 1, 2, 3
KIND_NAMES = ("param", "input", "const", "temp")
RESERVED_INPUT_NAMES = ("outputs", "check_finite")  # tape.forward's own keywords
FLUSH_EVERY = 4096           # pending instructions evaluated together
ZERO_ALL_BELOW = 4096        # a gradient arena this small is zeroed whole (one memset),
ZERO_WHOLE_ABOVE = 0.5       # and one whose swept buffers fill more than this fraction
_ZERO_ALL = "whole"          # Tape._zero when the ranges would fill most of the arena
GROW_IN_PLACE_ABOVE = 64 << 20  # a value arena this large grows by resizing (_grow_arena)
MAX_BUFFER_ELEMENTS = 2 ** 31 - 1  # attributes that describe sizes are int32
_INT32 = 2 ** 31
_CROSS_ENTROPY = int(Op.CROSS_ENTROPY)  # the op whose forward can fail: evaluated at once
_GUARD = int(Op.GUARD)                  # never folded
_MATMUL = int(Op.MATMUL)                # its rows depend on its attributes (sweep.opcodes_of)
_LAST_OP = int(max(OPS))                # the largest opcode (_block_ops)
_PAD_IN = ((-1, -1, -1), (-1, -1), (-1,), ())
_SIZES = {(): 1}             # shape -> number of elements, for shapes already seen
_new_object = object.__new__
_getframe = sys._getframe
_F64 = np.dtype(np.float64)
_INT_DTYPES = {"i": np.dtype(np.int32), "q": np.dtype(np.int64)}

# the arrays of an empty tape (never written: the first append reallocates)
_EMPTY_INSTR = np.zeros((0, WIDTH), np.int32)
_EMPTY_F64, _EMPTY_I64, _EMPTY_I32 = np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int32)
_EMPTY_F32 = np.zeros(0, np.float32)

try:  # physical memory: arenas larger than this are refused before anything is allocated
    _PHYS_BYTES = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
except (ValueError, OSError, AttributeError):  # not POSIX: numpy's MemoryError still applies
    _PHYS_BYTES = 2 ** 62

_local = threading.local()  # .stack: the tapes entered with `with tape:` on this thread


def _entered():
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def current_tape(what):
    """The tape of this thread's innermost ``with tape:`` block (used by ``tg.param`` etc.)."""
    stack = _entered()
    if not stack:
        raise TapegradError(f"tg.{what}() needs a tape: use it inside `with tape:` "
                            f"or call tape.{what}(...) ({user_site()})")
    return stack[-1]


def _grow(a, n):
    """``a`` with room for at least ``n`` rows (capacity doubles)."""
    m = a.shape[0]
    if n <= m:
        return a
    new = np.zeros((max(n, 2 * m, 16),) + a.shape[1:], a.dtype)
    if m:
        new[:m] = a
    return new


def _size(shape, what):
    """Number of elements of a validated shape tuple (ShapeError if it is too large)."""
    n = _SIZES.get(shape)
    if n is None:
        n = 1
        for d in shape:
            n *= d
        if n > MAX_BUFFER_ELEMENTS:
            raise ShapeError(f"{what}: shape {shape} has {n:,} elements; a buffer holds at "
                             f"most {MAX_BUFFER_ELEMENTS:,} ({user_site()})")
        if len(_SIZES) < 65536:
            _SIZES[shape] = n
    return n


class Tape:
    """A recorded computation, replayed by compiled interpreters.

    >>> import numpy as np, tapegrad as tg
    >>> tape = tg.Tape()
    >>> w = tape.param(np.array([2.0]), name="w")
    >>> x = tape.input("x", shape=(1,))
    >>> loss = ((w * x - 1.0) ** 2).sum()
    >>> tape.forward(x=np.array([3.0])); loss.backward(); float(w.grad[0])
    30.0
    """

    def __init__(self, dtype=np.float64, seed=None):
        if dtype is np.float64 or dtype is _F64:
            dtype = _F64
        else:
            dtype = np.dtype(dtype)
            if dtype not in (np.float64, np.float32):
                raise TapegradError(f"Tape(dtype={dtype}): only float64 and float32 are "
                                    f"supported")
        if seed is not None and (not isinstance(seed, (int, np.integer))
                                 or not 0 <= seed < 2 ** 62):
            raise TapegradError(f"Tape(seed={seed!r}): the seed must be an int in [0, 2**62)")
        self.dtype = dtype
        self._seed = None if seed is None else int(seed)  # see the seed property
        self._f32 = dtype.char == "f"
        # (the state whose first value is a number, None or a shared constant starts as the
        # class attributes below: a tape made per step pays for each assignment here)
        # instructions pending: _prow holds six ints per row (op, out, x, y, z, site), _pimm
        # the immediate, _pattr (row, attrs) for the rows that have attributes (flat lists
        # convert to arrays fastest); buffers pending in _pbuf, flat: off, size, site
        self._prow, self._pimm, self._pattr = [], [], []
        self._pbuf = []
        self._shape = []          # shape tuple per buffer
        self._kind = bytearray()  # kind per buffer
        self._alias = {}          # alias buffer -> the buffer whose memory it shares
        self._bname = {}          # buffer -> name (named buffers only)
        self._val = np.zeros(256, dtype)  # the value arena (_cap elements while recording)
        self._grad = _EMPTY_F32 if self._f32 else _EMPTY_F64  # made when sealed
        self._grad_seen = set()
        self._seeds = {}          # seed buffer -> (reverse mask, offset, size): backward's
        self._names = {}          # name -> buffer index
        self._params = []         # buffer indices, creation order
        self._inputs = {}         # name -> buffer index
        self._labels = {}         # input buffer -> number of classes it indexes
        self._fwd_masks = {}      # tuple(output buffers) -> uint8 mask of needed instructions
        self._rev_masks = {}      # seed buffer -> uint8 mask of instructions with a gradient path
        self._requires_grad = set()
        self.lock = _thread.RLock()  # held by every replay; hold it to make several atomic
        self._broken = {}         # "values"/"grads" -> error of the replay that left them half-done
        self._unfed = set()       # inputs never fed nor given a value (tg.fit refuses them)

    # -- state with immutable first values (instance attributes once assigned)
    _rng = None               # the draws' counter buffer, made with the first draw
    _rng_draws = 0            # draws recorded (each is its own stream)
    # instructions: rows [0, _nf) in the arrays, [_nf, _n) pending (_prow ...)
    _instr, _imm, _src = _EMPTY_INSTR, _EMPTY_F64, _EMPTY_I32
    _opset, _opset_n, _interp = frozenset(), 0, None  # the opcodes of rows [0, _opset_n) and
    _n = _nf = 0                                      # the generated interpreters for them
    _done = 0                 # instructions [0, _done) have been evaluated
    # buffers: [0, _nbf) in the arrays, [_nbf, _nbuf) pending in _pbuf
    _boff, _bsize, _bsite = _EMPTY_I64, _EMPTY_I64, _EMPTY_I32
    _nbuf = _nbf = 0
    _cap = 256                # the value arena's length while recording
    _used = 0                 # arena elements in use
    # what a backward must zero (_zero_grads): the whole gradient arena when it may hold
    # values of an earlier layout (_grad_stale), else the ranges _zero (made from every
    # reverse mask of this layout, None: make them again) and the non-parameter buffers
    # whose .grad view was handed out (_grad_seen: a user may have written into it)
    _grad_stale = False
    _zero = None
    _slots = None             # (val arena, {input name: (buffer, view, shape)}): _feed's
    _all = None               # sealed: the mask of every instruction (uint8 ones)
    _in_order = True          # root buffers created params, inputs, consts, temps: the
    _last_kind = PARAM        # layout needs no reordering when sealed (_last_kind: of the
    _nb_mark = 0              # last root; temporaries made by instructions since _new_buffer
                              # made buffer _nb_mark - 1 count as a TEMP last)
    _fresh_key = None         # a new tape's rows as _SEALED's key, until sealed or changed
    _sealed_as = None         # the _SEALED entry whose arrays it holds (_ingest)
    _shared = False           # its arrays are shared (an entry of _SEALED): copy to change
    _sealed = False
    _low = None               # sealed: the lowered stream the sweeps run (tapegrad.lower)
    _fresh_low = None         # a new tape's first flush (_ingest): its rows' lowered stream,
                              # until more rows or buffers come or the tape is sealed
    _copy_alias = (_EMPTY_I64, _EMPTY_I64)  # scalars moved into vector elements by
                              # optimize() (tapegrad.optimize._alias_copies): (buffers, dense offsets)
    _base = None              # sealed: int64 array, buffer -> root buffer
    _fused = None             # groups of elementwise rows optimize() fused, (k0, m) rows,
    _fused_now = None         # and those the last seal kept (tapegrad.fuse)
    _low_plain = None         # (_low, its stream without fused groups): check_finite's
    _layout = 0               # counts seals: arena offsets change only then
    _n_params = 0             # P: elements in the parameter prefix (when sealed)
    _param_elems = 0          # elements of the parameters recorded so far
    _varied = None            # after a reverse sweep: uint8 per root buffer, 1 if it has a
                              # gradient (depends on a param or a requires_grad input)
    planning = None           # arena memory planning: "auto", "always", "off" (None:
    _plan = None              # tapegrad.plan.MODE); the plan of this layout (tapegrad.plan)

    @property
    def seed(self):
        """The seed of the tape's random draws (``tg.random``, ``tg.dropout``): the one given
        to ``Tape(seed=...)``, else drawn from the OS's entropy when first needed."""
        if self._seed is None:
            self._seed = int(np.random.SeedSequence().entropy) & (2 ** 62 - 1)
        return self._seed

    @seed.setter
    def seed(self, value):
        self._seed = int(value)

    # ------------------------------------------------------------------ leaves
    def param(self, value, name=None):
        """A learnable leaf initialised with a copy of ``value``."""
        value = self._leaf_array(value, "param", name)
        b = self._new_buffer(value.shape, PARAM, name, value=value)
        self._params.append(b)
        self._param_elems += value.size
        return self._var(b)

    def input(self, name, shape=None, value=None, requires_grad=False):
        """A placeholder fed by name at replay: ``tape.forward(name=array)``."""
        if not isinstance(name, str) or not name.isidentifier():
            raise TapegradError(f"input name must be an identifier string, got {name!r} "
                                f"({user_site()})")
        if name in RESERVED_INPUT_NAMES:
            raise TapegradError(f"input name {name!r} is reserved: tape.forward() takes it as "
                                f"an option (reserved: {', '.join(RESERVED_INPUT_NAMES)}) "
                                f"({user_site()})")
        if value is not None:
            value = self._leaf_array(value, "input", name)
            if shape is not None and _check_shape(shape, f"input {name!r}") != value.shape:
                raise ShapeError(f"input {name!r}: shape={tuple(shape)} but value has shape "
                                 f"{value.shape} ({user_site()})")
            shape = value.shape
        if shape is None:
            raise TapegradError(f"input {name!r} needs shape= or value= ({user_site()})")
        shape = _check_shape(shape, f"input {name!r}")
        b = self._new_buffer(shape, INPUT, name, value=value)
        if value is None:
            self._unfed.add(b)
        self._inputs[name] = b
        if requires_grad:
            self._requires_grad.add(b)
        return self._var(b)

    def const(self, value, name=None):
        """A non-trainable leaf holding a copy of ``value``."""
        value = self._leaf_array(value, "const", name)
        return self._var(self._new_buffer(value.shape, CONST, name, value=value))

    def _leaf_array(self, value, what, name):
        try:
            a = np.asarray(value)
        except Exception as e:  # noqa: BLE001 - anything numpy cannot take
            raise TapegradError(f"{what} {name!r}: cannot convert {type(value).__name__} to an "
                                f"array ({e}) ({user_site()})") from None
        if a.dtype.kind not in "biuf":
            raise TapegradError(f"{what} {name!r}: values must be numeric, got dtype "
                                f"{a.dtype} ({user_site()})")
        return a  # (_new_buffer copies it into the arena: the arena's dtype)

    # ------------------------------------------------------------------ buffers
    def _new_buffer(self, shape, kind, name=None, base=None, site=None, value=None):
        """Append a buffer (an alias of ``base`` if given); ``value`` is copied into it.

        Nothing changes if this raises (a bad name, a shape too large, no memory)."""
        if type(shape) is not tuple:
            shape = tuple(shape)
        size = _size(shape, KIND_NAMES[kind])
        if name is not None:
            self._check_name(name)
        if site is None:
            site = site_id()
        b = self._nbuf
        if b != self._nb_mark:  # instructions made temporaries since the last buffer made here
            self._last_kind = TEMP
        if base is None:
            off = self._used
            if off + size > self._cap:
                self._grow_arena(off + size, shape, KIND_NAMES[kind])
            if kind < self._last_kind:
                self._in_order = False
            self._last_kind = kind
            if value is not None:
                if value.ndim:
                    self._val[off:off + size] = value.reshape(-1)
                else:  # a number (0-d): one element, no view
                    self._val[off] = value
            self._used = off + size
        else:
            off = self._off_of(base)
            self._alias[b] = base
        self._pbuf += (off, size, site)
        self._nbuf = self._nb_mark = b + 1
        self._shape.append(shape)
        self._kind.append(kind)
        if name is not None:
            self._bname[b] = name
            self._names[name] = b
        if self._sealed:
            self._dirty()
        return b

    def _grow_arena(self, n, shape, what="temporary"):
        need = 2 * n * self.dtype.itemsize  # values and gradients
        if need > _PHYS_BYTES:
            raise TapegradError(f"a {what} of shape {shape} makes the arenas need {need:,} bytes "
                                f"(values and gradients); this machine has {_PHYS_BYTES:,} "
                                f"({user_site()})")
        try:
            self._slots = None
            m = self._val.shape[0]
            if m * self.dtype.itemsize >= GROW_IN_PLACE_ABOVE:
                # large: a quarter more, in place when nothing else views the arena (realloc
                # moves the pages: no copy and no second arena at once, which made the peak of
                # recording twice the arena); else copied (a view handed out stays valid)
                try:
                    self._val.resize(max(n, m + m // 4), refcheck=True)
                except ValueError:
                    self._val = _grow(self._val, max(n, m + m // 4))
            else:
                self._val = _grow(self._val, n)
            self._cap = self._val.shape[0]
        except MemoryError:
            raise TapegradError(f"cannot allocate the value arena for a {what} of shape {shape} "
                                f"({n * self.dtype.itemsize:,} bytes) ({user_site()})") from None

    def _off_of(self, b):
        return int(self._boff[b]) if b < self._nbf else self._pbuf[3 * (b - self._nbf)]

    def _base_of(self, b):
        """The buffer whose memory ``b`` uses (``b`` itself unless it is a reshape)."""
        return self._alias.get(b, b)

    def _name_of(self, b):
        return self._bname.get(b)

    def _bsrc(self, b):
        """``file:line`` that created buffer ``b``."""
        self._flush_buffers()
        return site_text(int(self._bsite[b]))

    def _site(self, k):
        """``file:line`` that recorded instruction ``k``."""
        self._flush(evaluate=False)  # the rows only: an error names a site while flushing
        return site_text(int(self._src[k]))

    def _check_name(self, name):
        if not isinstance(name, str) or not name:
            raise TapegradError(f"names must be non-empty strings, got {name!r} ({user_site()})")
        if name in self._names:
            raise TapegradError(f"the name {name!r} is already used on this tape "
                                f"(by {self._bsrc(self._names[name])}) ({user_site()})")

    def _rename(self, b, name):
        if self._bname.get(b) == name:
            return
        self._check_name(name)
        if b in self._bname:
            del self._names[self._bname[b]]
        self._bname[b] = name
        self._names[name] = b

    def _view(self, arena, b):
        self._flush()
        return _arena_view(arena, self._boff[b], self._bsize[b], self._shape[b])

    def _var(self, b):
        return Var(self, b)

    def _alias_buffer(self, b, shape):
        """A new buffer with another shape over the same memory (a reshape, no copy)."""
        kind = self._kind[b]
        return self._new_buffer(shape, kind if kind != PARAM else TEMP, base=self._base_of(b))

    # ------------------------------------------------------------------ instructions
    def _emit(self, op, inputs, shape, attrs=(), imm=0.0, out=None, check=False):
        """Append one instruction and return its output buffer. Its value is computed with
        the next block (``_flush``), or at once when ``check`` (an op whose forward can fail,
        as cross_entropy's: its error is raised here); callers validate shapes first: nothing
        is appended for an op that raises. An op of constants only is folded: evaluated now
        and its output becomes a constant, with no instruction left on the tape.
        (``_rec`` is the same for the elementwise operators' common case, written out.)"""
        site = site_id()
        if attrs:
            for a in attrs:
                if not -_INT32 <= a < _INT32:
                    raise ShapeError(f"{OPS[op].name}: attribute {a} does not fit in int32 "
                                     f"(shapes too large) ({user_site()})")
        kinds = self._kind
        if out is None:  # a new temporary: _new_buffer inlined, this is the hot path
            size = _SIZES.get(shape) if type(shape) is tuple else None
            if size is None:
                shape = tuple(shape)
                size = _size(shape, OPS[op].name)
            off = self._used
            if off + size > self._cap:
                self._grow_arena(off + size, shape)
            self._used = off + size
            out = self._nbuf
            self._nbuf = out + 1
            self._pbuf += (off, size, site)
            self._shape.append(shape)
            kinds.append(TEMP)  # (_new_buffer notes it for the layout's order)
            # (op compares as an int: an Op member would hash in Python code in a set test)
            fold = (kinds[inputs[0]] == CONST and op != _GUARD
                    and all(kinds[b] == CONST for b in inputs))
        else:
            fold = False
        n_in = len(inputs)
        if n_in == 1:
            self._prow += (op, out, inputs[0], -1, -1, site)
        elif n_in == 2:
            self._prow += (op, out, inputs[0], inputs[1], -1, site)
        else:
            self._prow += (op, out) + tuple(inputs) + _PAD_IN[n_in] + (site,)
        self._pimm.append(imm)
        if attrs:
            self._pattr.append((self._n, attrs))
        self._n += 1
        if self._sealed:
            self._dirty()
        if fold or check or op == _CROSS_ENTROPY or len(self._pimm) >= FLUSH_EVERY:
            self._settle(out, fold)
        return out

    def _rec(self, op, x, y, imm):
        """A Var of the new instruction ``op`` of buffers ``x`` and ``y`` (-1: none) of one
        shape and the immediate ``imm``, its output a new temporary of that shape: ``_emit``
        written out for the elementwise operators (``Var.__add__`` ...), where one op costs
        about a microsecond and each call, lookup and branch shows."""
        # site_id's common case inlined: the user's frame is the operator's caller (frame 2)
        # or, for tg.sin(x) and the like, the caller of that package function (frame 3), and
        # site_id has seen its code (the one it saw last, or another in its table -- which
        # holds no file of the package): a lookup or two
        last = _errors._last
        f = _getframe(2)
        code = f.f_code
        if code is last[0]:
            try:  # (a subscript is cheaper than .get; a new site is the rare case)
                site = last[1][f.f_lasti]
            except KeyError:
                site = None
        else:
            if _errors._inside[code.co_filename]:
                f = f.f_back
                code = f.f_code if f is not None else None
            by = last[1] if code is last[0] else _errors._by_code.get(id(code))
            site = by.get(f.f_lasti) if by is not None else None
        if site is None:
            site = site_id()
        shapes = self._shape
        shape = shapes[x]
        size = _SIZES.get(shape)
        if size is None:
            size = _size(shape, OPS[op].name)
        off = self._used
        used = off + size
        if used > self._cap:
            self._grow_arena(used, shape)
        self._used = used
        out = self._nbuf
        self._nbuf = out + 1
        self._pbuf += (off, size, site)
        shapes.append(shape)
        kinds = self._kind
        kinds.append(TEMP)
        self._prow += (op, out, x, y, -1, site)
        pimm = self._pimm
        pimm.append(imm)
        self._n += 1
        if self._sealed:
            self._dirty()
        if kinds[x] == CONST and (y < 0 or kinds[y] == CONST):
            self._settle(out, True)
        elif len(pimm) >= FLUSH_EVERY:
            self._settle(out, False)
        v = _new_object(Var)  # Var(self, out) without the call of __init__
        v.tape = self
        v._b = out
        return v

    def _settle(self, out, fold):
        """Evaluate the pending block now that the instruction just appended (output
        ``out``) needs it: its forward can fail, the block is full, or (``fold``) it reads
        constants only and becomes a constant. A failing op is taken off the tape."""
        k = self._n - 1
        status, at = self._flush(check=True)
        if status:
            self._drop_from(k)  # the failing op is the last one
            raise self._status_error(status, k)
        if fold:
            self._drop_from(k)
            self._kind[out] = CONST
            self._in_order = False

    def _drop_from(self, k):
        """Forget instructions ``k..``: evaluated and folded into a constant, or failed."""
        self._n = self._nf = self._done = k
        if self._fused is not None:
            self._fused = self._fused[self._fused.sum(axis=1) <= k]
        self._all = None
        self._fresh_low = None
        if self._fresh_key is not None or self._shared:
            self._unshare()
        self._opset_n = min(self._opset_n, k)  # row k will be another op

    def _flush_buffers(self):
        p = self._pbuf
        if p:
            self._fresh_low = None
            if self._fresh_key is not None or self._shared:
                self._unshare()
            b0, a = self._nbf, _as_ints(p, "q").reshape(-1, 3)
            m = a.shape[0]
            if self._boff.shape[0] == 0:  # a new tape: arrays of exactly these rows
                cols = a.T.copy()
                self._boff, self._bsize, self._bsite = cols[0], cols[1], cols[2].astype(np.int32)
                self._nbf = m
                p.clear()
                return
            if b0 + m > self._boff.shape[0]:
                self._boff = _grow(self._boff, b0 + m)
                self._bsize = _grow(self._bsize, b0 + m)
                self._bsite = _grow(self._bsite, b0 + m)
            self._boff[b0:b0 + m] = a[:, 0]
            self._bsize[b0:b0 + m] = a[:, 1]
            self._bsite[b0:b0 + m] = a[:, 2]
            self._nbf = b0 + m
            p.clear()

    def _ingest(self):
        """A new tape's first flush (nothing in its arrays yet): the pending rows and buffers
        packed as one int64 array and made into the arrays by one compiled call
        (``lower.ingest``), instead of a dozen NumPy calls on a tape recorded afresh.

        A small tape whose rows, buffers, kinds and attributes are exactly those of one sealed
        before (the same code recorded again: a fresh tape per step) takes that tape's sealed
        arrays, lowered stream and activity masks (``_SEALED``): they were validated, and are
        never written in place -- a tape holding them copies them before it records more
        (``_unshare``)."""
        prow, pbuf, m = self._prow, self._pbuf, len(self._pimm)
        raw = struct.pack(f"{len(prow) + len(pbuf)}q", *prow, *pbuf)
        nb = len(pbuf) // 3
        entry = None
        if m <= SEALED_MAX_ROWS:
            rg = self._requires_grad
            key = (raw, tuple(self._pattr) if self._pattr else (), bytes(self._kind),
                   self.dtype.char, tuple(sorted(rg)) if rg else ())
            entry = _SEALED.get(key)
            if entry is not None:
                (self._instr, self._src, self._boff, self._bsize,
                 self._bsite) = entry[:5]
                self._sealed_as = entry
                self._shared = True
            else:
                self._fresh_key = key
        if entry is None:
            pattr = self._pattr
            if pattr:  # k, count, the attributes: after the rows and buffers
                raw += struct.pack(f"{len(pattr) * 2 + sum(len(a) for _, a in pattr)}q",
                                   *[v for k, a in pattr for v in (k, len(a), *a)])
            ints = np.frombuffer(raw, np.int64)
            instr = self._instr = np.empty((m, WIDTH), np.int32)
            src = self._src = np.empty(m, np.int32)
            boff = self._boff = np.empty(nb, np.int64)
            bsize = self._bsize = np.empty(nb, np.int64)
            bsite = self._bsite = np.empty(nb, np.int32)
            low = np.empty((m, _lower.LOW_WIDTH), np.int64)
            if _lower.ingest(ints, instr, src, boff, bsize, bsite, self._used,
                             _sweep.SCALAR_KIND, low):
                self._fresh_low = low  # the rows' lowered stream, checked as _seal would
            else:  # (_seal's validation names what is wrong)
                for k, attrs in pattr:
                    instr[k, A0:A0 + len(attrs)] = attrs
        self._imm = np.fromiter(self._pimm, np.float64, m)
        self._nbf = nb
        pbuf.clear()
        if entry is not None and self._opset_n == 0 and entry[7] is not None:
            self._opset, self._interp = entry[7]  # its opcodes and interpreters
            self._opset_n = self._nf = m
            prow.clear()
            self._pimm.clear()
            self._pattr.clear()
        else:
            self._block_done(0, m)

    def _unshare(self):
        """Before the tape's arrays change (more recording, a folded op taken off): copies of
        the arrays it shares with ``_SEALED`` (and other tapes), and no entry of it."""
        self._fresh_key = self._sealed_as = None
        if self._shared:
            self._shared = False
            self._instr, self._src = self._instr.copy(), self._src.copy()
            self._boff, self._bsize = self._boff.copy(), self._bsize.copy()
            self._bsite = self._bsite.copy()

    def _block_done(self, k0, m):
        """Rows ``k0 .. k0 + m`` are in the arrays: note their opcodes (cheaper than
        ``sweep.opcodes_of``) and clear the pending lists."""
        if self._opset_n == k0:
            ops = _block_ops(self._prow, self._instr[k0:k0 + m, OP])
            if ops is not None:
                if not ops <= self._opset:
                    self._opset = self._opset | ops
                    self._interp = None
                self._opset_n = k0 + m
        self._nf = k0 + m
        self._prow.clear()
        self._pimm.clear()
        if self._pattr:
            self._pattr.clear()

    def _flush(self, check=False, evaluate=True):
        """Move pending rows into the arrays and (``evaluate``) run every instruction not
        yet evaluated, in one compiled call. Returns the sweep's ``(status, k)``."""
        if self._done == self._n and not self._pbuf:  # nothing pending (a sealed tape read)
            return 0, 0
        if self._pimm and self._instr.shape[0] == 0 and self._boff.shape[0] == 0:
            self._ingest()  # a new tape: every row and buffer pending, in one call
        else:
            self._flush_buffers()
        if self._pimm:
            self._fresh_low = None
            if self._fresh_key is not None or self._shared:
                self._unshare()
            k0, m = self._nf, len(self._pimm)
            rows = _as_ints(self._prow, "i").reshape(m, A0 + 1)
            if self._instr.shape[0] == 0:  # a new tape: arrays of exactly these rows
                block = self._instr = np.zeros((m, WIDTH), np.int32)
                block[:, :A0] = rows[:, :A0]
                self._src = rows[:, A0].copy()
                self._imm = np.fromiter(self._pimm, np.float64, m)
            else:
                if k0 + m > self._instr.shape[0]:
                    self._instr = _grow(self._instr, k0 + m)
                    self._imm = _grow(self._imm, k0 + m)
                    self._src = _grow(self._src, k0 + m)
                block = self._instr[k0:k0 + m]
                block[:, :A0] = rows[:, :A0]
                block[:, A0:] = 0
                self._src[k0:k0 + m] = rows[:, A0]
                self._imm[k0:k0 + m] = _as_floats(self._pimm)
            for k, attrs in self._pattr:
                block[k - k0, A0:A0 + len(attrs)] = attrs
            self._block_done(k0, m)
        k0, k1 = self._done, self._nf
        if k0 < k1 and evaluate:
            nb = self._nbf
            forward = self._interpreters().forward
            announce_compile(forward)
            low = self._fresh_low
            if low is None or k0 != 0 or low.shape[0] != k1:
                low = _sweep.lower(self._instr[k0:k1], self._boff[:nb], self._bsize[:nb])
            status, k = forward(self._instr[k0:k1], self._imm[k0:k1], low, self._val,
                                _ones(k1 - k0), 0)
            if status:
                if not check:
                    raise self._status_error(status, k0 + k)
                self._done = k0 + k
                return status, k0 + k
            self._done = k1
        return 0, 0

    def _interpreters(self):
        """The compiled interpreters for the opcodes of the instructions flushed so far
        (``tapegrad.sweep.for_ops``), looked up again only when new opcodes appear."""
        n = self._opset_n
        if n == self._nf and self._interp is not None:
            return self._interp
        seen = self._opset
        if n < self._nf:
            seen = seen | _sweep.opcodes_of(self._instr[n:self._nf])
        if seen != self._opset or self._interp is None:
            key = (seen, self.dtype.char, self._param_elems > 0)
            interp = _INTERPS.get(key)  # (a tape recorded afresh every step asks each time)
            if interp is None:
                interp = _sweep.for_ops(seen, self.dtype)
                if self._param_elems:  # a gradient will follow: its sweep, in a worker
                    _sweep.compile_ahead(interp, self.dtype)
                if len(_INTERPS) >= 4096:
                    _INTERPS.clear()
                _INTERPS[key] = interp
            self._interp = interp
        self._opset, self._opset_n = seen, self._nf
        return self._interp

    def _dirty(self):
        if self._fresh_key is not None or self._shared:
            self._unshare()
        if self._fused_now is not None and self._sealed:  # recording reads any value
            _fuse.refresh(self)
        if self._plan is not None:  # recording reads any buffer: the dense layout back
            _plan.unplan(self)
        self._sealed = False
        self._low = None
        self._base = None
        self._varied = None
        self._fwd_masks.clear()
        self._rev_masks.clear()
        self._zero = None
        self._grad_seen = set()
        self._slots = None
        self._seeds.clear()
        self._all = None

    # ------------------------------------------------------------------ sealing
    def _seal(self, evaluate=True):
        """Lay out the arenas (parameters first), validate, freeze the arrays for replay.
        ``evaluate=False``: the caller replays every instruction next, so instructions
        recorded but not yet evaluated are left to that replay."""
        if self._sealed:
            if evaluate and self._done < self._n:
                self._flush()
            return
        self._flush(evaluate=evaluate)
        n, nb = self._n, self._nbuf
        if self._instr.shape[0] != n:
            self._instr, self._imm, self._src = self._instr[:n], self._imm[:n], self._src[:n]
        if self._boff.shape[0] != nb:
            self._boff, self._bsize = self._boff[:nb], self._bsize[:nb]
            self._bsite = self._bsite[:nb]
        instr, bsize = self._instr, self._bsize
        entry = self._sealed_as
        if (entry is not None and not self._alias and self._in_order and self._fused is None
                and _plan.stays_dense(self)):  # recorded as a tape sealed before: its arrays
            self._base = _identity(nb)
            self._seal_arenas()
            self._low = entry[5]
            self._layout += 1
            self._sealed = True
            return
        if self._shared:  # the layout may change them (relayout, arena planning)
            self._unshare()
            instr, bsize = self._instr, self._bsize
        if self._alias:
            base = np.arange(nb, dtype=np.int64)
            base[np.fromiter(self._alias.keys(), np.int64, len(self._alias))] = \
                np.fromiter(self._alias.values(), np.int64, len(self._alias))
        else:
            base = _identity(nb)  # shared, never written: every buffer is a root
        src = None if self._in_order else self._relayout(base, move=False)
        self._base = base
        self._fused_now = _fuse.effective(self, self._fused)  # (planning reads them)
        # shared slots (tapegrad.plan), the values moved there from where they are now
        clear = _plan.plan(self, base, src) if self._n else None
        if src is not None and self._plan is None:
            self._move_values(base, src)
        total = self._used
        self._seal_arenas()
        # the arrays' dtypes and shapes hold by construction: their indices are checked by
        # validate's compiled passes, and when one fails validate_tape_arrays says what
        arena = max(total, 1)
        interp = self._interpreters()
        if interp.check_instructions not in _ANNOUNCED:
            announce_compile(interp.check_instructions)
        # a new tape sealed as its first flush left it: the buffers were checked and the
        # rows lowered then (lower.ingest), the op-by-op rules are checked here
        low = self._fresh_low
        if low is None or low.shape[0] != n or src is not None or clear is not None:
            low = None
        if ((low is None and _validate.check_buffers(self._boff, bsize, arena) >= 0)
                or (n and interp.check_instructions(instr, bsize, N_IN)[0] >= 0)):
            _validate.validate_tape_arrays(instr, self._imm, self._boff, bsize, None, arena,
                                           interp)
        self._fresh_low = None
        self._low = low if low is not None else _sweep.lower(instr, self._boff, bsize)
        if clear is not None:
            self._low[:, _lower.CLEAR] = clear
        if self._fused_now is not None:
            _fuse.lower(self, self._low, self._fused_now)
            if _fuse.FUSE not in self._opset:
                self._opset, self._interp = self._opset | {_fuse.FUSE}, None
        elif clear is None and self._fresh_key is not None and src is None:  # for tapes
            # recorded alike
            if len(_SEALED) >= SEALED_MAX_ENTRIES:
                _SEALED.clear()
            ops = ((self._opset, interp) if self._opset_n == n and self._interp is interp
                   else None)
            self._sealed_as = _SEALED[self._fresh_key] = (
                instr, self._src, self._boff, bsize, self._bsite, self._low, {}, ops)
            self._shared = True
        self._fresh_key = None
        self._layout += 1
        self._sealed = True

    def _seal_arenas(self):
        total = self._used
        if self._grad.shape[0] != max(total, 1):
            self._grad = np.zeros(max(total, 1), self.dtype)
            self._grad_stale = False
        else:  # gradients of the last layout may sit anywhere in it
            self._grad_stale = True
        self._n_params = self._param_elems

    def _relayout(self, base, move=True):
        """New offsets with the root buffers ordered params, inputs, consts, temps (creation
        order within a kind); values move with their buffers (``move=False``: not yet, see
        ``_move_values``). Returns the old offsets."""
        nb = self._nbuf
        kind = np.frombuffer(bytes(self._kind), np.int8)
        roots = np.flatnonzero(base == np.arange(nb))
        rk = kind[roots]
        order = roots[np.lexsort((roots, rk, rk != PARAM))]
        sizes = self._bsize[order]
        ends = np.cumsum(sizes)
        root_off = ends - sizes
        new_off = np.empty(nb, np.int64)
        new_off[order] = root_off
        old = self._boff
        self._boff = new_off[base]
        self._copy_alias = (_EMPTY_I64, _EMPTY_I64)  # (dense again: each value moves out)
        self._in_order = True
        self._last_kind = TEMP
        if move:
            self._move_values(base, old)
        return old

    def _move_values(self, base, old):
        """A new value arena with every root's values moved from offset ``old[b]`` to
        ``_boff[b]``."""
        nb = self._nbuf
        roots = np.flatnonzero(base == np.arange(nb))
        sizes = self._bsize[roots]
        _plan.move_values(self, old[roots], self._boff[roots], sizes, int(sizes.sum()))

    # ------------------------------------------------------------------ activity
    def _forward_mask(self, outputs):
        """uint8 per instruction: 1 where some of ``outputs`` (buffers) needs it (or a guard)."""
        key = tuple(sorted(outputs))
        mask = self._fwd_masks.get(key)
        if mask is None:
            needed = np.zeros(max(self._nbuf, 1), np.uint8)
            needed[self._base[list(key)]] = 1
            mask = self._fwd_masks[key] = _activity.forward_mask(self._instr, N_IN, self._base,
                                                                 needed)
        return mask

    def _reverse_mask(self, seed):
        """uint8 per instruction: bit 1 where a gradient path from a parameter (or an input
        with ``requires_grad``) reaches ``seed`` through it; bit ``2 << j`` where input j
        needs its gradient."""
        mask = self._rev_masks.get(seed)
        if mask is None and self._sealed_as is not None:  # a tape recorded alike: its masks
            done = self._sealed_as[6].get(seed)
            if done is not None:
                mask, self._varied = done
                self._rev_masks[seed] = mask
                self._zero = None
                return mask
        if mask is None:
            varied = np.zeros(max(self._nbuf, 1), np.uint8)
            leaves = self._params
            if self._requires_grad:
                leaves = leaves + sorted(self._requires_grad)
            if len(leaves) > 8:  # parameters and inputs are root buffers
                varied[leaves] = 1
            else:
                for b in leaves:
                    varied[b] = 1
            mask = self._rev_masks[seed] = _activity.reverse_mask(
                self._instr, N_IN, DIFFERENTIABLE, self._base, varied, seed)
            self._varied = varied  # completed by the pass: every buffer with a gradient
            self._zero = None      # a sweep with this mask may write more of the arena
            if self._sealed_as is not None:
                self._sealed_as[6][seed] = (mask, varied)
        return mask

    def _zero_grads(self):
        """Zero the gradient arena where a reverse sweep of this layout will read a gradient
        or must deliver one: the outputs of the instructions of any of its reverse masks and
        their inputs that have a gradient (``activity.mark_gradients``), the seeds, the
        parameters and the buffers whose ``.grad`` view was handed out -- less the outputs
        that those sweeps zero themselves once read (``lower.CLEAR``, set by arena planning;
        ``activity.unmark_cleared``). Everything else a sweep reads is zero already: only
        those sweeps write into it (``tg.fit``'s and the optimizers' ranges are parts of it; a
        sweep that failed part-way leaves ``_broken["grads"]`` and the next backward zeroes
        the arena whole). Slots of buffers with no gradient (a constant added to a
        parameter: ``add_bwd`` adds into both inputs) are written and never zeroed; no sweep
        reads them and ``.grad`` refuses them. A small arena, one whose layout changed, or
        one those buffers fill for the most part is zeroed whole (one memset)."""
        g = self._grad
        if self._grad_stale or g.shape[0] <= ZERO_ALL_BELOW or "grads" in self._broken:
            g.fill(0)
            self._grad_stale = False
            return
        z = self._zero
        if z is None:
            flags = np.zeros(max(self._nbuf, 1), np.uint8)  # per root buffer: zero it
            for mask in self._rev_masks.values():
                _activity.mark_gradients(self._instr, N_IN, self._base, mask, flags)
            seeds = list(self._rev_masks)
            if seeds:
                flags[self._base[seeds]] = 1
            for mask in self._rev_masks.values():
                _activity.unmark_cleared(self._instr, self._low, self._boff, self._bsize,
                                         self._base, mask, flags)
            extra = list(self._grad_seen) + self._params
            if extra:
                flags[self._base[extra]] = 1
            if int(self._bsize @ flags) > ZERO_WHOLE_ABOVE * g.shape[0]:  # (roots only)
                z = self._zero = _ZERO_ALL
            else:
                roots = np.flatnonzero(flags)
                start = self._boff[roots]
                z = self._zero = np.stack([start, start + self._bsize[roots]], axis=1)
        if z is _ZERO_ALL:
            g.fill(0)
        else:
            _activity.zero_ranges(g, z)

    def _grad_ranges(self, rmask, cleared=False):
        """Disjoint ``(start, stop)`` rows of the gradient arena that a reverse sweep with
        ``rmask`` reads or accumulates into, plus the parameter prefix (an optimizer reads
        every parameter's gradient): the only part ``tg.fit`` must zero between steps.
        ``cleared``: without the outputs of the instructions the sweep runs, which a sweep
        with ``clear`` zeroes itself (PLACE's excepted)."""
        run = np.flatnonzero(rmask)
        rows = self._instr[run]
        n_in = N_IN[rows[:, OP]]
        bufs = [rows[:, OUT]] + [rows[n_in > j, X + j] for j in range(3)]
        b = np.concatenate(bufs).astype(np.int64)
        if cleared:
            ran = rows[(rmask[run] & 1 != 0) & (rows[:, OP] != Op.PLACE), OUT].astype(np.int64)
            b = np.setdiff1d(self._base[b], self._base[ran])
        start = np.concatenate(([0], self._boff[b]))
        stop = np.concatenate(([self._n_params], self._boff[b] + self._bsize[self._base[b]]))
        keep = stop > start
        start, stop = start[keep], stop[keep]
        if not start.size:
            return np.zeros((0, 2), np.int64)
        o = np.argsort(start, kind="stable")
        start, stop = start[o], np.maximum.accumulate(stop[o])
        new = np.ones(start.size, bool)
        new[1:] = start[1:] > stop[:-1]
        first = np.flatnonzero(new)
        last = np.concatenate((first[1:] - 1, [start.size - 1]))
        return np.stack([start[first], stop[last]], axis=1).astype(np.int64)

    # ------------------------------------------------------------------ replay
    def forward(self, outputs=None, check_finite=False, **feeds):
        """Copy ``feeds`` into the inputs and replay the tape; returns None.

        ``outputs``: Vars whose values are needed; instructions none of them needs are
        skipped (default: replay everything, so every Var's ``.value`` is current).
        ``check_finite``: raise ``NonFiniteError`` at the first op producing NaN/Inf.
        A replay that fails part-way leaves the values half-updated: ``backward()`` refuses
        them until a ``forward()`` succeeds. Holds ``tape.lock`` (see ``replica``).
        """
        with self.lock:
            if not self._sealed or (outputs is not None and self._done < self._n):
                self._seal(evaluate=outputs is not None)
            if feeds:
                self._feed(feeds)
            if outputs is None:
                mask = self._all
                if mask is None:
                    mask = self._all = _ones(self._n)
            else:
                mask = self._forward_mask([self._own(v, "forward(outputs=...)")._b
                                           for v in outputs])
            if self._unfed:
                self._refuse_unfed("forward()", mask)
            interp = self._interp
            if interp is None or self._opset_n != self._nf:
                interp = self._interpreters()
            forward = interp.forward
            if forward not in _ANNOUNCED:
                announce_compile(forward)
            low = self._low
            if check_finite and self._fused_now is not None:  # every member checked, and
                low = self._unfused_low()                     # named: groups op by op
            status, k = forward(self._instr, self._imm, low, self._val, mask,
                                1 if check_finite else 0)
            if status:
                raise self._failed(status, k, "values")
            if outputs is None:
                self._done = self._n
            if self._broken:
                self._broken.pop("values", None)

    def _unfused_low(self):
        """The lowered stream of the sealed tape without its fused groups (tapegrad.fuse: a
        group checks only its output's values), made once per sealed stream."""
        plain = self._low_plain
        if plain is None or plain[0] is not self._low:
            plain = self._low_plain = (self._low, _sweep.lower(self._instr, self._boff,
                                                               self._bsize))
        return plain[1]

    def _feed(self, feeds):
        """Validate every feed first, then copy them all: a rejected feed changes nothing.
        An array of the input's shape and a numeric dtype is all a feed is checked for (its
        values are numbers the sweeps compute with; labels are checked by value as well)."""
        slots = self._slots
        if slots is None or slots[0] is not self._val:
            slots = self._feed_slots()
        slots = slots[1]
        if len(feeds) == 1:  # one feed of the input's shape: copied without a list of them
            for name, value in feeds.items():
                s = slots.get(name)
                if (s is not None and type(value) is np.ndarray and value.shape == s[2]
                        and (value.dtype is _F64 or value.dtype.kind in "fiub")):
                    s[1][...] = value
                    if self._unfed:
                        self._unfed.discard(s[0])
                    return
        checked = []
        for name, value in feeds.items():
            s = slots.get(name)
            if (s is None or type(value) is not np.ndarray or value.shape != s[2]
                    or (value.dtype is not _F64 and value.dtype.kind not in "fiub")):
                b = self._inputs.get(name)
                if b is None:
                    known = ", ".join(sorted(self._inputs)) or "none"
                    raise FeedError(f"forward(): unknown input {name!r} (inputs: {known})")
                value = self.check_feed(name, value)
                s = (b, self._input_view(b))
            checked.append((s, value))
        for s, a in checked:
            s[1][...] = a
            if self._unfed:
                self._unfed.discard(s[0])

    def _feed_slots(self):
        """``(val, {name: (buffer, view of the value arena, shape)})`` for the inputs ``_feed`` may
        copy into without ``check_feed`` (not the label inputs, checked by value); remade when
        the arena moves (``_slots`` is reset then)."""
        slots = {name: (b, self._input_view(b), self._shape[b])
                 for name, b in self._inputs.items() if b not in self._labels}
        self._slots = (self._val, slots)
        return self._slots

    def _input_view(self, b):
        self._flush_buffers()  # (no evaluation: _view would evaluate pending instructions)
        return _arena_view(self._val, self._boff[b], self._bsize[b], self._shape[b])

    def _refuse_unfed(self, what, mask):
        """FeedError if an instruction of ``mask`` reads an input never fed nor given a
        value (a replay would run on its zeros)."""
        rows = self._instr[mask != 0]
        n_in = N_IN[rows[:, OP]]
        read = self._base[np.concatenate([rows[n_in > j, X + j] for j in range(3)])]
        unfed = [b for b in self._unfed if np.any(read == b)]
        if not unfed:
            return
        names = sorted(n for n, b in self._inputs.items() if b in unfed)
        raise FeedError(f"{what}: input{'s' if len(names) > 1 else ''} "
                        f"{', '.join(map(repr, names))} {'were' if len(names) > 1 else 'was'} "
                        f"never fed nor given a value: feed it (tape.forward({names[0]}=...)) "
                        f"or give value= when recording")

    def check_feed(self, name, value, batch_axis=False):
        """The feed ``value`` for input ``name`` as an array, or ``FeedError`` saying why."""
        b = self._inputs[name]
        try:
            a = np.asarray(value)
        except Exception as e:  # noqa: BLE001
            raise FeedError(f"input {name!r}: cannot convert {type(value).__name__} to an "
                            f"array ({e})") from None
        if a.dtype.kind not in "biuf":
            raise FeedError(f"input {name!r}: expected numbers, got dtype {a.dtype}")
        want = self._shape[b]
        got = a.shape[1:] if batch_axis else a.shape
        want_cmp = want[1:] if batch_axis else want
        if got != want_cmp:
            raise FeedError(f"input {name!r}: expected shape {want}, got {a.shape} "
                            f"(input recorded at {self._bsrc(b)})")
        n_classes = self._labels.get(b)
        if n_classes is not None:
            bad = ~((a >= 0) & (a < n_classes) & (a == np.floor(a)))
            if bad.any():
                i = tuple(int(j) for j in np.argwhere(bad)[0])
                raise FeedError(f"input {name!r}: labels must be integers in [0, {n_classes}); "
                                f"got {a[i].item()!r} at index {i}")
        return a

    def _backward(self, var, grad_output):
        with self.lock:
            if self._broken:
                self._check_intact("values", "backward()", "forward()")
            if not self._sealed or self._done < self._n:
                self._seal()
            b = var._b
            if self._unfed:
                self._refuse_unfed("backward()", self._forward_mask([b]))
            s = self._seeds.get(b)
            if s is None:
                s = self._seeds[b] = (self._reverse_mask(b), int(self._boff[b]),
                                      _size(self._shape[b], ""))
            mask, off, size = s
            if grad_output is None:
                if size != 1:
                    raise TapegradError(f"backward() of {var._describe()} needs grad_output: "
                                        f"only a Var of size 1 has an implicit gradient of 1 "
                                        f"({user_site()})")
            else:
                seed = np.asarray(grad_output, dtype=self.dtype)
                if seed.shape != self._shape[b]:
                    raise ShapeError(f"backward(): grad_output has shape {seed.shape}, "
                                     f"{var._describe()} ({user_site()})")
            g = self._grad
            if g.shape[0] <= ZERO_ALL_BELOW:  # _zero_grads' first case
                g.fill(0)
                if self._grad_stale:
                    self._grad_stale = False
            else:
                self._zero_grads()
            if grad_output is None:
                g[off] = 1.0
            else:
                g[off:off + size] = seed.reshape(-1)
            interp = self._interp
            if interp is None or self._opset_n != self._nf:
                interp = self._interpreters()
            reverse = interp.reverse
            if reverse not in _ANNOUNCED:
                announce_compile(reverse)
            status, k = reverse(self._instr, self._imm, self._low, self._val, self._grad,
                                mask, 0)
            if status:
                raise self._failed(status, k, "grads")
            if self._broken:
                self._broken.pop("grads", None)

    def _failed(self, status, k, *what):
        """The error of a replay stopped at instruction ``k``; ``what`` ("values", "grads")
        it left half-updated, which ``_check_intact`` then refuses."""
        err = self._status_error(status, k)
        for w in what:
            self._broken[w] = f"{type(err).__name__}: {err}"
        return err

    def _check_intact(self, what, caller, fix):
        if what in self._broken:
            raise TapegradError(f"{caller}: the {what} are half-updated by a replay that "
                                f"failed ({self._broken[what]}); call {fix} again first")

    # ------------------------------------------------------------------ threads
    def replica(self):
        """A tape sharing this one's sealed instructions and buffer table, with its own
        arenas (values copied, gradients zero) and its own lock: give each thread a replica
        and they replay in parallel (the compiled sweeps release the GIL).

        ``replica[v]`` is the replica's Var for a Var ``v`` of this tape (or by name). The
        replica's parameters are its own copy: after updating this tape's parameters (an
        optimizer step), ``replica.sync_params()`` copies them in. Recording more on either
        tape leaves the other as it was.

        >>> import numpy as np, tapegrad as tg
        >>> tape = tg.Tape(); w = tape.param(np.ones(2)); loss = (w * w).sum()
        >>> rep = tape.replica(); rep.forward(); rep[loss].backward(); rep[w].grad
        array([2., 2.])
        """
        with self.lock:
            self._seal()
            r = object.__new__(Tape)
            for key, v in self.__dict__.items():
                if key in ("_instr", "_imm", "_boff", "_bsize", "_low"):
                    r.__dict__[key] = v   # sealed: exactly n (nb) rows, grown (copied) before
                                          # the recorder writes a row, never written in place
                elif isinstance(v, (list, dict, set, bytearray, np.ndarray)):
                    r.__dict__[key] = copy.copy(v)
                else:
                    r.__dict__[key] = v
            r._grad = np.zeros_like(self._grad)
            r._grad_stale, r._slots = False, None
            r.lock = _thread.RLock()
            r._origin = self
        return r

    def _origins(self):
        """The tapes this one is a replica of, nearest first."""
        out, t = [], getattr(self, "_origin", None)
        while t is not None:
            out.append(t)
            t = getattr(t, "_origin", None)
        return out

    def sync_params(self, source=None):
        """Copy the parameter values of ``source`` (default: the tape this one is a
        ``replica()`` of) into this tape's parameters; returns None."""
        source = getattr(self, "_origin", None) if source is None else source
        if not isinstance(source, Tape):
            raise TapegradError("sync_params(): give the source tape (this tape is not a "
                                "replica)")
        with source.lock:
            bad = [b for b in self._params if b >= source._nbuf or source._kind[b] != PARAM
                   or source._shape[b] != self._shape[b]]
            if bad:
                raise TapegradError(f"sync_params(): parameter %{bad[0]} "
                                    f"{_fmt_shape(self._shape[bad[0]])} has no match on the "
                                    f"source tape (not a replica of it?)")
            values = [source._view(source._val, b).copy() for b in self._params]
        with self.lock:
            for b, v in zip(self._params, values):
                self._view(self._val, b)[...] = v

    def _status_error(self, status, k):
        op = OPS[Op(int(self._instr[k, OP]))].name
        where = self._site(k)
        if status == _sweep.GUARD_FLIPPED:
            return BranchChanged(
                f"replay took the other branch at the guard recorded at {where}: bool() of a "
                f"Var was {bool(self._instr[k, A0])} when recorded. Re-record the tape, or "
                f"write the choice with tg.where / tg.maximum so it replays")
        if status == _sweep.NON_FINITE:
            out = int(self._instr[k, OUT])
            return NonFiniteError(f"{op} produced NaN/Inf in %{out} "
                                  f"{_fmt_shape(self._shape[out])} (recorded at {where})")
        if status == _sweep.BAD_INDEX:
            return FeedError(f"{op}: an index is not an integer in [-{self._instr[k, A0 + 1]}, "
                             f"{self._instr[k, A0 + 1]}) (recorded at {where})")
        if status == _sweep.LINALG:
            what = ("not positive definite" if self._instr[k, OP] == Op.CHOLESKY
                    else "singular")
            b = int(self._instr[k, X])
            return LinAlgError(f"{op}: a matrix of %{b} {_fmt_shape(self._shape[b])} is {what} "
                               f"(recorded at {where})")
        if status == _sweep.BAD_LABEL:
            return FeedError(f"{op}: a label is not an integer in [0, {self._instr[k, A0 + 1]}) "
                             f"(recorded at {where})")
        return TapegradError(f"{op}: replay failed with status {status} (recorded at {where})")

    # ------------------------------------------------------------------ access
    def _own(self, v, what):
        if not isinstance(v, Var) or v.tape is not self:
            raise TapegradError(f"{what}: expected a Var of this tape, got {v!r}")
        return v

    @property
    def params(self):
        """Parameter Vars in creation order (the order of the arena prefix)."""
        return [self._var(b) for b in self._params]

    @property
    def inputs(self):
        """Dict name -> input Var."""
        return {name: self._var(b) for name, b in self._inputs.items()}

    def __getitem__(self, name):
        from .var import Var
        if isinstance(name, Var) and name.tape is not self and name.tape in self._origins():
            if name._b >= self._nbuf:
                raise UnknownNameError(f"{name._describe()} was recorded after this replica "
                                       f"was made")
            return self._var(name._b)   # a replica's twin of a Var of its origin
        b = self._names.get(name)
        if b is None:
            known = ", ".join(sorted(self._names)) or "none"
            raise UnknownNameError(f"tape has no Var named {name!r} (names: {known})")
        return self._var(b)

    def __len__(self):
        return self._n

    def _memory_bytes(self):
        """Bytes the tape itself holds: its arrays (instructions, buffer table, both arenas,
        cached masks) and the per-buffer Python lists (shape tuples are shared, not counted)."""
        import sys
        arrays = [self._instr, self._imm, self._src, self._boff, self._bsize, self._bsite,
                  self._val, self._grad] + list(self._fwd_masks.values()) + list(
                      self._rev_masks.values())
        if self._base is not None:
            arrays.append(self._base)
        return (sum(a.nbytes for a in arrays) + sys.getsizeof(self._shape)
                + sys.getsizeof(self._kind) + sys.getsizeof(self._alias)
                + sys.getsizeof(self._bname) + sys.getsizeof(self._prow)
                + sys.getsizeof(self._pbuf) + sys.getsizeof(self._pimm))

    # ------------------------------------------------------------------ tools (tapegrad.tools)
    def __str__(self):
        """The listing: one line per instruction, ``%7 = matmul %3, %5  (f64[32,64])  f.py:12``."""
        from .tools import listing
        return listing(self)

    def to_dot(self, values=True, grads=True):
        """Graphviz DOT source of the tape (op nodes, buffer nodes with names and shapes)."""
        from .tools import to_dot
        return to_dot(self, values=values, grads=grads)

    def render(self, path):
        """Write the DOT graph as SVG/PNG (graphviz installed) or as ``.dot``; returns the path."""
        from .tools import render
        return render(self, path)

    def stats(self):
        """Instruction counts by opcode, buffers, arena bytes, parameter count (prints as a
        table); after ``optimize()`` also the instruction count before it."""
        from .tools import stats
        return stats(self)

    def optimize(self):
        """Rewrite the tape into fewer instructions (fused EXP-ADDC-LOG chains, dead code)
        that give every Var still held the same value and gradient; returns the counts
        ``{"before", "after", "fused", "dead"}``. See ``tapegrad/optimize.py``."""
        from .optimize import optimize
        return optimize(self)

    def save(self, path):
        """Save to ``.npz`` (no pickle): arrays, shapes, names, parameter values."""
        from .io import save
        return save(self, path)

    @classmethod
    def load(cls, path):
        """Load a saved tape; every index is validated before any compiled code runs."""
        from .io import load
        return load(path)

    def __enter__(self):
        _entered().append(self)
        return self

    def __exit__(self, *exc):
        _entered().remove(self)
        return False


def _check_shape(shape, what):
    """``shape`` as a tuple of non-negative Python ints (a float dimension is an error, not
    truncated), with a size a buffer can hold."""
    try:
        shape = tuple(operator.index(s) for s in (shape if np.iterable(shape) else (shape,)))
    except TypeError:
        raise ShapeError(f"{what}: shape must be a tuple of ints, got {shape!r} "
                         f"({user_site()})") from None
    if any(s < 0 for s in shape):
        raise ShapeError(f"{what}: negative dimension in shape {shape} ({user_site()})")
    _size(shape, what)
    return shape


def _arena_view(arena, o, n, shape):
    """The view of ``arena[o:o + n]`` with ``shape`` (``.value``, ``.grad``): a 0-d view by
    indexing and a 1-d slice as it is (``reshape`` costs ~0.2-0.4 us of a fresh tape's
    reads)."""
    if not shape:
        return arena[o, ...]
    if len(shape) == 1:
        return arena[o:o + n]
    return arena[o:o + n].reshape(shape)


def _fmt_shape(shape):
    return "[" + ",".join(str(s) for s in shape) + "]"


_ONES = np.ones(FLUSH_EVERY, np.uint8)


def _as_ints(items, code):
    """A flat list of Python ints as a read-only int32 (``"i"``) or int64 (``"q"``) ndarray
    (``struct`` packs a list about twice as fast as ``array.fromlist`` or ``np.array``)."""
    return np.frombuffer(struct.pack(f"{len(items)}{code}", *items), _INT_DTYPES[code])


SEALED_MAX_ROWS = 1024       # tapes this small are remembered when sealed (Tape._ingest)
SEALED_MAX_ENTRIES = 64         # (at most ~150 KB each)
_SEALED = {}  # a new tape's (rows and buffers, attributes, kinds, dtype, requires_grad) ->
              # (instr, src, boff, bsize, bsite, low, {seed: (reverse mask, varied)},
              #  (opcode set, interpreters) or None)
_INTERPS = {}  # (opcode set, dtype char, has parameters) -> what Tape._interpreters chose
_BLOCK_OPS = {}  # a small block's opcodes (tuple) -> their set (None: a MATMUL)


def _block_ops(prow, column):
    """The opcodes of the pending rows ``prow`` (``column``: the same opcodes, as the int32
    column of the arrays they were moved into) as a frozenset of ints, or None when one is a
    MATMUL (``sweep.opcodes_of`` then reads its attributes). A tape recorded afresh every step
    meets the same small blocks again: those are remembered; a large block is counted with
    ``np.bincount`` (a set of its Python ints cost ~20 ns per instruction)."""
    small = len(prow) <= 256 * (A0 + 1)
    if small:
        key = tuple(prow[0::A0 + 1])
        ops = _BLOCK_OPS.get(key, _BLOCK_OPS)  # (the dict itself: not there)
        if ops is not _BLOCK_OPS:
            return ops
        ops = frozenset(map(int, set(key)))
    elif column.shape[0] and column.min() >= 0 and column.max() <= _LAST_OP:  # (else: a bad
        # opcode, which validation names later)
        ops = frozenset(np.flatnonzero(np.bincount(column)).tolist())
    else:
        ops = frozenset(column.tolist())
    if _MATMUL in ops:  # its interpreter rows depend on its attributes
        ops = None
    if small:
        if len(_BLOCK_OPS) >= 4096:
            _BLOCK_OPS.clear()
        _BLOCK_OPS[key] = ops
    return ops


def _as_floats(items):
    """A list of Python floats as a read-only float64 ndarray."""
    return np.frombuffer(struct.pack(f"{len(items)}d", *items), _F64)


_IDENTITY = np.arange(FLUSH_EVERY, dtype=np.int64)


def _identity(m):
    """The int64 array ``0 .. m-1`` (a view of a shared array, grown as needed: never write
    into it)."""
    global _IDENTITY
    if _IDENTITY.shape[0] < m:
        _IDENTITY = np.arange(max(m, 2 * _IDENTITY.shape[0]), dtype=np.int64)
    return _IDENTITY[:m]


def _ones(m):
    """A uint8 mask of ``m`` ones (shared, grown as needed)."""
    global _ONES
    if _ONES.shape[0] < m:
        _ONES = np.ones(max(m, 2 * _ONES.shape[0]), np.uint8)
    return _ONES[:m]


# imported last: these import the ops, which import this module
from . import activity as _activity  # noqa: E402
from . import errors as _errors  # noqa: E402
from . import fuse as _fuse  # noqa: E402
from . import lower as _lower  # noqa: E402
from . import plan as _plan  # noqa: E402
from . import sweep as _sweep  # noqa: E402
from . import validate as _validate  # noqa: E402
from .var import Var  # noqa: E402
