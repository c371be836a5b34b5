"""The tape: instructions, buffers and the two arenas.

Flat arrays (see also ``tapegrad.opcodes``):

* ``instr`` int32 ``(n, WIDTH)`` -- one row per instruction; ``imm`` float64 ``(n,)``.
* buffer table -- ``boff`` / ``bsize`` int64 ``(n_buffers,)``: where buffer ``b`` lives in the
  arenas; ``shape[b]`` (a tuple, Python side); ``kind[b]`` one of PARAM INPUT CONST TEMP;
  ``base[b]`` the buffer whose memory it aliases (itself unless it is a reshape).
* ``val`` / ``grad`` -- the value and gradient arenas, 1-D, float64 or float32, same layout.

While recording, buffers are appended to the end of the arena in creation order and every
instruction is evaluated as soon as it is recorded. At the first replay (or backward) the tape
is *sealed*: the arena is laid out anew with all parameters in one contiguous prefix
``[0, P)``, then inputs and constants, then intermediates; the buffer table is validated so no
compiled code ever sees an out-of-range index. Recording more after that re-seals.
"""
import numpy as np

from .errors import (BranchChanged, FeedError, NonFiniteError, ShapeError, TapegradError,
                     UnknownNameError, user_site)
from .opcodes import A0, N_ATTRS, OP, OPS, OUT, WIDTH, X, Y, Z, Op

PARAM, INPUT, CONST, TEMP = 0, 1, 2, 3
KIND_NAMES = ("param", "input", "const", "temp")

_stack = []  # tapes entered with `with tape:`


def current_tape(what):
    """The tape of the innermost ``with tape:`` block (used by ``tg.param`` etc.)."""
    if not _stack:
        raise TapegradError(f"tg.{what}() needs a tape: use it inside `with tape:` "
                            f"or call tape.{what}(...) ({user_site()})")
    return _stack[-1]


def _grow(a, n):
    """``a`` with room for at least ``n`` rows (capacity doubles)."""
    if n <= a.shape[0]:
        return a
    new = np.zeros((max(n, 2 * a.shape[0]),) + a.shape[1:], a.dtype)
    new[: a.shape[0]] = a
    return new


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

    def __init__(self, dtype=np.float64):
        dtype = np.dtype(dtype)
        if dtype not in (np.float64, np.float32):
            raise TapegradError(f"Tape(dtype={dtype}): only float64 and float32 are supported")
        self.dtype = dtype
        self._instr = np.full((64, WIDTH), -1, np.int32)
        self._imm = np.zeros(64)
        self._n = 0
        self._src = []            # "file:line" per instruction
        self._boff = np.zeros(64, np.int64)
        self._bsize = np.zeros(64, np.int64)
        self._nbuf = 0
        self._shape, self._kind, self._base, self._bname, self._bsrc = [], [], [], [], []
        self._val = np.zeros(256, dtype)
        self._used = 0            # arena elements in use
        self._grad = np.zeros(256, dtype)
        self._names = {}          # name -> buffer index
        self._params = []         # buffer indices, creation order
        self._inputs = {}         # name -> buffer index
        self._labels = {}         # input buffer -> number of classes it indexes
        self._sealed = False
        self._layout = 0          # counts seals: arena offsets change only then
        self._n_params = 0        # P: elements in the parameter prefix
        self._fwd_masks = {}      # tuple(output buffers) -> uint8 mask of needed instructions
        self._rev_masks = {}      # seed buffer -> uint8 mask of instructions with a gradient path
        self._requires_grad = set()
        self._unfed = set()       # inputs never fed nor given a value (tg.fit refuses them)

    # ------------------------------------------------------------------ leaves
    def param(self, value, name=None):
        """A learnable leaf initialised with a copy of ``value``."""
        value = self._leaf_array(value, "param", name)
        b = self._new_buffer(value.shape, PARAM, name)
        self._store(b, value)
        self._params.append(b)
        return self._var(b)

    def input(self, name, shape=None, value=None, requires_grad=False):
        """A placeholder fed by name at replay: ``tape.forward(name=array)``."""
        if not isinstance(name, str) or not name.isidentifier():
            raise TapegradError(f"input name must be an identifier string, got {name!r} "
                                f"({user_site()})")
        if value is not None:
            value = self._leaf_array(value, "input", name)
            if shape is not None and tuple(shape) != value.shape:
                raise ShapeError(f"input {name!r}: shape={tuple(shape)} but value has shape "
                                 f"{value.shape} ({user_site()})")
            shape = value.shape
        if shape is None:
            raise TapegradError(f"input {name!r} needs shape= or value= ({user_site()})")
        shape = _check_shape(shape, f"input {name!r}")
        b = self._new_buffer(shape, INPUT, name)
        if value is not None:
            self._store(b, value)
        else:
            self._unfed.add(b)
        self._inputs[name] = b
        if requires_grad:
            self._requires_grad.add(b)
        return self._var(b)

    def const(self, value, name=None):
        """A non-trainable leaf holding a copy of ``value``."""
        value = self._leaf_array(value, "const", name)
        b = self._new_buffer(value.shape, CONST, name)
        self._store(b, value)
        return self._var(b)

    def _leaf_array(self, value, what, name):
        try:
            a = np.asarray(value)
        except Exception as e:  # noqa: BLE001 - anything numpy cannot take
            raise TapegradError(f"{what} {name!r}: cannot convert {type(value).__name__} to an "
                                f"array ({e}) ({user_site()})") from None
        if a.dtype.kind not in "biuf":
            raise TapegradError(f"{what} {name!r}: values must be numeric, got dtype "
                                f"{a.dtype} ({user_site()})")
        return a.astype(self.dtype)

    # ------------------------------------------------------------------ buffers
    def _new_buffer(self, shape, kind, name=None, base=None):
        shape = tuple(int(s) for s in shape)
        if name is not None:
            self._check_name(name)
        b = self._nbuf
        self._boff = _grow(self._boff, b + 1)
        self._bsize = _grow(self._bsize, b + 1)
        size = int(np.prod(shape, dtype=np.int64))
        if base is None:
            self._boff[b] = self._used
            self._used += size
            if self._used > self._val.shape[0]:
                self._val = _grow(self._val, self._used)
                self._grad = _grow(self._grad, self._used)
            base = b
        else:
            self._boff[b] = self._boff[base]
        self._bsize[b] = size
        self._nbuf += 1
        self._shape.append(shape)
        self._kind.append(kind)
        self._base.append(base)
        self._bname.append(name)
        self._bsrc.append(user_site())
        if name is not None:
            self._names[name] = b
        self._dirty()
        return b

    def _check_name(self, name):
        if not isinstance(name, str) or not name:
            raise TapegradError(f"names must be non-empty strings, got {name!r} ({user_site()})")
        if name in self._names:
            raise TapegradError(f"the name {name!r} is already used on this tape "
                                f"(by {self._bsrc[self._names[name]]}) ({user_site()})")

    def _rename(self, b, name):
        if self._bname[b] == name:
            return
        self._check_name(name)
        if self._bname[b] is not None:
            del self._names[self._bname[b]]
        self._bname[b] = name
        self._names[name] = b

    def _store(self, b, value):
        o = self._boff[b]
        self._val[o: o + self._bsize[b]] = np.ravel(value)

    def _view(self, arena, b):
        o = self._boff[b]
        return arena[o: o + self._bsize[b]].reshape(self._shape[b])

    def _var(self, b):
        from .var import Var
        return Var(self, b)

    def _alias(self, b, shape):
        """A new buffer with another shape over the same memory (a reshape, no copy)."""
        return self._new_buffer(shape, self._kind[b] if self._kind[b] != PARAM else TEMP,
                                base=self._base[b])

    # ------------------------------------------------------------------ instructions
    def _emit(self, op, inputs, shape, attrs=(), imm=0.0, out=None):
        """Append one instruction, evaluate it now (eager recording), return its output buffer.

        Callers validate shapes first: nothing is appended for an op that raises.
        """
        if out is None:
            out = self._new_buffer(shape, TEMP)
        k = self._n
        self._instr = _grow(self._instr, k + 1)
        self._imm = _grow(self._imm, k + 1)
        row = self._instr[k]
        row[:] = -1
        row[OP], row[OUT] = op, out
        for j, b in enumerate(inputs):
            row[X + j] = b
        row[A0:A0 + N_ATTRS] = 0
        for j, a in enumerate(attrs):
            row[A0 + j] = a
        self._imm[k] = imm
        self._n += 1
        self._src.append(user_site())
        self._dirty()
        from . import sweep
        status, _ = sweep.forward(self._instr[k:k + 1], self._imm[k:k + 1],
                                   self._boff[:self._nbuf], self._bsize[:self._nbuf],
                                   self._val, _ONE, False)
        if status:
            # only a label out of range can fail while recording; undo the instruction
            self._n -= 1
            self._src.pop()
            raise self._status_error(status, k)
        return out

    def _dirty(self):
        self._sealed = False
        self._fwd_masks.clear()
        self._rev_masks.clear()

    # ------------------------------------------------------------------ sealing
    def _seal(self):
        """Lay out the arenas (parameters first), validate, freeze the arrays for replay."""
        if self._sealed:
            return
        nb = self._nbuf
        roots = [b for b in range(nb) if self._base[b] == b]
        order = sorted(roots, key=lambda b: (self._kind[b] != PARAM, self._kind[b], b))
        new_off = np.zeros(nb, np.int64)
        pos = 0
        for b in order:
            new_off[b] = pos
            pos += self._bsize[b]
        for b in range(nb):
            new_off[b] = new_off[self._base[b]]
        val = np.zeros(max(pos, 1), self.dtype)
        for b in roots:
            s = self._bsize[b]
            val[new_off[b]: new_off[b] + s] = self._val[self._boff[b]: self._boff[b] + s]
        self._boff = new_off
        self._bsize = self._bsize[:nb].copy()
        self._val = val
        self._grad = np.zeros_like(val)
        self._used = pos
        self._instr = np.ascontiguousarray(self._instr[: self._n])
        self._imm = np.ascontiguousarray(self._imm[: self._n])
        self._n_params = sum(self._bsize[b] for b in self._params)
        from .validate import validate_tape_arrays
        validate_tape_arrays(self._instr, self._imm, self._boff, self._bsize, self._shape,
                             self._val.shape[0])
        self._layout += 1
        self._sealed = True

    # ------------------------------------------------------------------ activity
    def _deps(self, k):
        row = self._instr[k]
        n_in = OPS[Op(int(row[OP]))].n_in
        return [self._base[int(row[X + j])] for j in range(n_in)]

    def _forward_mask(self, outputs):
        key = tuple(sorted(outputs))
        mask = self._fwd_masks.get(key)
        if mask is None:
            needed = {self._base[b] for b in key}
            mask = np.zeros(self._n, np.uint8)
            for k in range(self._n - 1, -1, -1):
                row = self._instr[k]
                if row[OP] == Op.GUARD or self._base[int(row[OUT])] in needed:
                    mask[k] = 1
                    needed.update(self._deps(k))
            self._fwd_masks[key] = mask
        return mask

    def _reverse_mask(self, seed):
        mask = self._rev_masks.get(seed)
        if mask is None:
            varied = {self._base[b] for b in self._params}
            varied |= {self._base[b] for b in self._requires_grad}
            # instructions fed (transitively) by a parameter or a requires_grad input ...
            carries = np.zeros(self._n, bool)
            for k in range(self._n):
                row = self._instr[k]
                if OPS[Op(int(row[OP]))].differentiable and varied.intersection(self._deps(k)):
                    carries[k] = True
                    varied.add(self._base[int(row[OUT])])
            # then keep those with a path to the seed; bit 2 << j: input j needs a gradient
            useful = {self._base[seed]}
            mask = np.zeros(self._n, np.uint8)
            for k in range(self._n - 1, -1, -1):
                if carries[k] and self._base[int(self._instr[k, OUT])] in useful:
                    deps = self._deps(k)
                    mask[k] = 1 | sum(2 << j for j, b in enumerate(deps) if b in varied)
                    useful.update(deps)
            self._rev_masks[seed] = mask
        return mask

    def _grad_ranges(self, rmask):
        """Disjoint ``(start, stop)`` rows of the gradient arena that a reverse sweep with
        ``rmask`` reads or accumulates into, plus the parameter prefix (an optimizer reads
        every parameter's gradient): the only part ``tg.fit`` must zero between steps."""
        spans = [(0, self._n_params)]
        for k in np.flatnonzero(rmask):
            for b in [int(self._instr[k, OUT])] + self._deps(k):
                o = int(self._boff[b])
                spans.append((o, o + int(self._bsize[self._base[b]])))
        spans.sort()
        out = []
        for a, b in spans:
            if out and a <= out[-1][1]:
                out[-1][1] = max(out[-1][1], b)
            elif b > a:
                out.append([a, b])
        return np.array(out, np.int64).reshape(-1, 2)

    # ------------------------------------------------------------------ replay
    def forward(self, outputs=None, check_finite=False, **feeds):
        """Copy ``feeds`` into the inputs and replay the tape; returns None.

        ``outputs``: Vars whose values are needed; instructions none of them needs are
        skipped (default: replay everything, so every Var's ``.value`` is current).
        ``check_finite``: raise ``NonFiniteError`` at the first op producing NaN/Inf.
        """
        self._seal()
        self._feed(feeds)
        if outputs is None:
            mask = self._all_mask()
        else:
            mask = self._forward_mask([self._own(v, "forward(outputs=...)")._b
                                       for v in outputs])
        from . import sweep
        status, k = sweep.forward(self._instr, self._imm, self._boff, self._bsize, self._val,
                                  mask, bool(check_finite))
        if status:
            raise self._status_error(status, k)

    def _all_mask(self):
        mask = self._fwd_masks.get(None)
        if mask is None:
            mask = self._fwd_masks[None] = np.ones(self._n, np.uint8)
        return mask

    def _feed(self, feeds):
        """Validate every feed first, then copy them all: a rejected feed changes nothing."""
        checked = []
        for name, value in feeds.items():
            b = self._inputs.get(name)
            if b is None:
                known = ", ".join(sorted(self._inputs)) or "none"
                raise FeedError(f"forward(): unknown input {name!r} (inputs: {known})")
            checked.append((b, self.check_feed(name, value)))
        for b, a in checked:
            self._store(b, a)
            self._unfed.discard(b)

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
                            f"(input recorded at {self._bsrc[b]})")
        n_classes = self._labels.get(b)
        if n_classes is not None:
            bad = ~((a >= 0) & (a < n_classes) & (a == np.floor(a)))
            if bad.any():
                i = tuple(int(j) for j in np.argwhere(bad)[0])
                raise FeedError(f"input {name!r}: labels must be integers in [0, {n_classes}); "
                                f"got {a[i].item()!r} at index {i}")
        return a

    def _backward(self, var, grad_output):
        self._seal()
        b = var._b
        if grad_output is None:
            if self._bsize[b] != 1:
                raise TapegradError(f"backward() of {var._describe()} needs grad_output: only "
                                    f"a Var of size 1 has an implicit gradient of 1 "
                                    f"({user_site()})")
            seed = 1.0
        else:
            seed = np.asarray(grad_output, dtype=self.dtype)
            if seed.shape != self._shape[b]:
                raise ShapeError(f"backward(): grad_output has shape {seed.shape}, "
                                 f"{var._describe()} ({user_site()})")
        self._grad[:] = 0
        self._view(self._grad, b)[...] = seed
        from . import sweep
        status, k = sweep.reverse(self._instr, self._imm, self._boff, self._bsize, self._val,
                                  self._grad, self._reverse_mask(b))
        if status:
            raise self._status_error(status, k)

    def _status_error(self, status, k):
        from . import sweep
        op = OPS[Op(int(self._instr[k, OP]))].name
        where = self._src[k]
        if status == sweep.GUARD_FLIPPED:
            return BranchChanged(
                f"replay took the other branch at the guard recorded at {where}: bool() of a "
                f"Var was {bool(self._instr[k, A0])} when recorded. Re-record the tape, or "
                f"write the choice with tg.where / tg.maximum so it replays")
        if status == sweep.NON_FINITE:
            out = int(self._instr[k, OUT])
            return NonFiniteError(f"{op} produced NaN/Inf in %{out} "
                                  f"{_fmt_shape(self._shape[out])} (recorded at {where})")
        if status == sweep.BAD_LABEL:
            return FeedError(f"{op}: a label is not an integer in [0, {self._instr[k, A0 + 1]}) "
                             f"(recorded at {where})")
        return TapegradError(f"{op}: replay failed with status {status} (recorded at {where})")

    # ------------------------------------------------------------------ access
    def _own(self, v, what):
        from .var import Var
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
        b = self._names.get(name)
        if b is None:
            known = ", ".join(sorted(self._names)) or "none"
            raise UnknownNameError(f"tape has no Var named {name!r} (names: {known})")
        return self._var(b)

    def __len__(self):
        return self._n

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
        """Instruction counts by opcode, buffers, arena bytes, parameter count (prints as a table)."""
        from .tools import stats
        return stats(self)

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
        _stack.append(self)
        return self

    def __exit__(self, *exc):
        _stack.remove(self)
        return False


def _check_shape(shape, what):
    try:
        shape = tuple(int(s) for s in (shape if np.iterable(shape) else (shape,)))
    except (TypeError, ValueError):
        raise ShapeError(f"{what}: shape must be a tuple of ints, got {shape!r}") from None
    if any(s < 0 for s in shape):
        raise ShapeError(f"{what}: negative dimension in shape {shape}")
    return shape


def _fmt_shape(shape):
    return "[" + ",".join(str(s) for s in shape) + "]"


_ONE = np.ones(1, np.uint8)
