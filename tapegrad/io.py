"""Saving and loading tapes as ``.npz`` files, without pickle, validated on load.

A saved tape is the *sealed* tape (parameters in the arena prefix) as plain arrays:

==================  ==========================  ===============================================
key                 dtype, shape                meaning
==================  ==========================  ===============================================
``format_version``  int64 ``()``                ``FORMAT_VERSION``
``dtype``           unicode ``()``              ``"float64"`` or ``"float32"`` (the arenas)
``instr``           int32 ``(n, WIDTH)``        instructions (``tapegrad.opcodes``)
``imm``             float64 ``(n,)``            float immediates
``src``             int64 ``(n,)``              index into ``sites`` of the line that recorded
                                                each instruction
``sites``           unicode ``(S,)``            distinct ``file:line`` texts
``boff, bsize``     int64 ``(nb,)``             buffer offsets and sizes in the arenas
``shapes``          int64 ``(nb, D)``           buffer shapes, padded with 0 to ``D`` columns
``ndim``            int64 ``(nb,)``             number of dimensions of each shape
``kind``            int64 ``(nb,)``             PARAM INPUT CONST TEMP (0..3)
``base``            int64 ``(nb,)``             buffer whose memory it aliases (itself if none)
``names``           unicode ``(nb,)``           buffer names, ``""`` for none
``bsrc``            int64 ``(nb,)``             index into ``sites`` of the line that created
                                                each buffer
``params``          int64 ``(P,)``              parameter buffers in creation order
``inputs``          int64 ``(I,)``              input buffers, with ``input_names`` unicode
``label_bufs``      int64 ``(L,)``              inputs read as class labels, with
                                                ``label_classes`` int64 (number of classes)
``requires_grad``   int64 ``(R,)``              inputs made with ``requires_grad=True``
``val``             dtype ``(arena,)``          the value arena (parameter values included)
==================  ==========================  ===============================================

``save`` is atomic: it writes a temporary file beside the target, flushes and fsyncs it, then
renames it over the target (``os.replace``), so a crash mid-save leaves the previous file
whole (and at worst a stray ``.NAME.*.tmp`` beside it).

``load`` reads the zip directory and every member's ``.npy`` header before it decompresses
any data: the members must be exactly the keys below, each ``.npy`` data of the right dtype
and number of dimensions whose declared size is exactly what its header describes, and an
archive may not declare more than ``MAX_INFLATE_RATIO`` times its own size (beyond
``MAX_INFLATE_FLOOR`` bytes) -- tapegrad writes uncompressed files, so only a zip bomb would.
It then checks every index, offset, size, shape, kind, alias and attribute
(``tapegrad.validate.validate_tape_arrays`` for the instructions) before it builds a Tape, so
no compiled code ever runs on a bad file: anything wrong raises ``TapeFormatError`` saying
what.

>>> tape.save("model.tape.npz")                       # doctest: +SKIP
>>> tape2 = tg.Tape.load("model.tape.npz")            # doctest: +SKIP
>>> tape2.forward(x=xb); tape2["loss"].backward()     # doctest: +SKIP
"""
import os
import secrets
import stat
import zipfile

import numpy as np

from .errors import TapeFormatError, TapegradError, intern_site, site_text
from .opcodes import A0, OP, OUT, WIDTH, X, Op
from .plan import dense_arrays
from .validate import validate_tape_arrays

FORMAT_VERSION = 2  # 2: sites table; immediates renumbered the opcodes
MAX_NDIM = 64
MAX_INFLATE_RATIO = 100          # declared (uncompressed) bytes per byte of file, at most ...
MAX_INFLATE_FLOOR = 16 * 2 ** 20  # ... once the archive declares more than this
_I64 = np.dtype(np.int64)

# key -> (dtype kind or exact dtype, ndim); sizes are checked against each other below
_SCHEMA = {
    "format_version": (_I64, 0), "dtype": ("U", 0),
    "instr": (np.dtype(np.int32), 2), "imm": (np.dtype(np.float64), 1), "src": (_I64, 1),
    "sites": ("U", 1),
    "boff": (_I64, 1), "bsize": (_I64, 1), "shapes": (_I64, 2), "ndim": (_I64, 1),
    "kind": (_I64, 1), "base": (_I64, 1), "names": ("U", 1), "bsrc": (_I64, 1),
    "params": (_I64, 1), "inputs": (_I64, 1), "input_names": ("U", 1),
    "label_bufs": (_I64, 1), "label_classes": (_I64, 1), "requires_grad": (_I64, 1),
    "val": ("f", 1),
}


def _ustr(items):
    return np.array([str(s) for s in items], dtype=str).reshape(len(items))


def save(tape, path):
    """Write the sealed ``tape`` to ``path`` (``.npz``, no pickle); returns ``path``.

    >>> tape.save("model.tape.npz")   # doctest: +SKIP
    'model.tape.npz'
    """
    tape._seal()
    nb = tape._nbuf
    D = max([len(s) for s in tape._shape] + [0])
    shapes = np.zeros((nb, D), np.int64)
    for b, s in enumerate(tape._shape):
        shapes[b, :len(s)] = s
    labels = sorted(tape._labels.items())
    n = tape._n
    boff, val = dense_arrays(tape)  # a planned tape is saved in its dense layout
    site_ids, where = np.unique(np.concatenate([tape._src[:n], tape._bsite[:nb]]),
                                return_inverse=True)
    arrays = dict(
        format_version=np.array(FORMAT_VERSION, np.int64),
        dtype=np.array(tape.dtype.name),
        instr=np.ascontiguousarray(tape._instr[:tape._n], np.int32),
        imm=np.ascontiguousarray(tape._imm[:tape._n], np.float64),
        src=where[:n].astype(np.int64),
        sites=_ustr([site_text(int(i)) for i in site_ids]),
        boff=np.asarray(boff, np.int64), bsize=np.asarray(tape._bsize[:nb], np.int64),
        shapes=shapes, ndim=np.array([len(s) for s in tape._shape], np.int64),
        kind=np.frombuffer(bytes(tape._kind), np.int8).astype(np.int64).reshape(nb),
        base=np.asarray(tape._base, np.int64).reshape(nb),
        names=_ustr([tape._bname.get(b, "") for b in range(nb)]),
        bsrc=where[n:].astype(np.int64),
        params=np.array(tape._params, np.int64).reshape(-1),
        inputs=np.array(list(tape._inputs.values()), np.int64).reshape(-1),
        input_names=_ustr(list(tape._inputs)),
        label_bufs=np.array([b for b, _ in labels], np.int64).reshape(-1),
        label_classes=np.array([c for _, c in labels], np.int64).reshape(-1),
        requires_grad=np.array(sorted(tape._requires_grad), np.int64).reshape(-1),
        val=np.asarray(val),
    )
    _atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def _atomic_write(path, write):
    """``write(file)`` into a new temporary file beside ``path`` (through a symlink: beside its
    target), flushed and fsynced, then renamed over ``path``. On any error the temporary file
    is removed and ``path`` is untouched. The file gets the mode of the file it replaces, or
    the usual ``0o666 & ~umask`` for a new one."""
    target = os.path.realpath(os.fspath(path))
    directory, base = os.path.split(target)
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        except FileNotFoundError:
            pass
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (POSIX; a directory cannot be opened on Windows)
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _file_size(path):
    if hasattr(path, "seek"):
        here = path.tell()
        size = path.seek(0, os.SEEK_END)
        path.seek(here)
        return size
    return os.path.getsize(path)


def _header(zf, info, key, path):
    """(shape, dtype, header bytes) of member ``info``, decompressing only its .npy header."""
    with zf.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"npy format version {version} is not read")
        except ValueError as e:
            raise TapeFormatError(f"{path}: member {key!r} is not .npy array data ({e})") from None
        return shape, dtype, f.tell()


def _read(path):
    """All arrays of the file, each checked for presence, dtype and number of dimensions, and
    for its declared size before any data is decompressed."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise TapeFormatError(f"{path}: the archive lists a member twice")
            bad = [n for n in names if not n.endswith(".npy")]
            if bad:
                raise TapeFormatError(f"{path}: member(s) {', '.join(map(repr, bad))} are not "
                                      f".npy arrays")
            members = {n[:-4]: i for n, i in zip(names, infos)}
            extra = sorted(set(members) - set(_SCHEMA))
            missing = sorted(set(_SCHEMA) - set(members))
            if missing:
                raise TapeFormatError(f"{path}: missing key(s) {', '.join(missing)}")
            if extra:
                raise TapeFormatError(f"{path}: unexpected key(s) {', '.join(extra)}")
            # sizes from the zip directory first: nothing is decompressed yet
            declared = sum(i.file_size for i in infos)
            on_disk = _file_size(path)
            if declared > max(MAX_INFLATE_FLOOR, MAX_INFLATE_RATIO * on_disk):
                raise TapeFormatError(
                    f"{path}: its members declare {declared} bytes uncompressed in a file of "
                    f"{on_disk} bytes (more than {MAX_INFLATE_RATIO}x); refusing to decompress "
                    f"(tapegrad writes uncompressed files)")
            for k, (dt, nd) in _SCHEMA.items():
                shape, dtype, head = _header(zf, members[k], k, path)
                ok = dtype == dt if isinstance(dt, np.dtype) else dtype.kind == dt
                if not ok or len(shape) != nd:
                    want = dt if isinstance(dt, np.dtype) else {"U": "unicode", "f": "float"}[dt]
                    raise TapeFormatError(f"{path}: key {k!r} must be a {nd}-d {want} array, "
                                          f"got {len(shape)}-d {dtype}")
                nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if members[k].file_size != head + nbytes:
                    raise TapeFormatError(
                        f"{path}: member {k!r} declares {members[k].file_size} bytes but its "
                        f"header describes {head + nbytes} ({dtype} of shape {shape})")
            arrays = {}
            for k in _SCHEMA:
                with zf.open(members[k]) as f:
                    arrays[k] = np.lib.format.read_array(f, allow_pickle=False)
    except TapegradError:
        raise
    except Exception as e:  # noqa: BLE001 - BadZipFile, ValueError, EOFError, OSError, zlib...
        raise TapeFormatError(f"{path}: cannot read tape file ({type(e).__name__}: {e})") from None
    return arrays


def load(path):
    """Read a tape written by ``save``; raises ``TapeFormatError`` on any malformed content.

    >>> tape2 = tg.Tape.load("model.tape.npz")   # doctest: +SKIP
    """
    from .tape import INPUT, PARAM, TEMP, Tape

    a = _read(path)

    def bad(msg):
        raise TapeFormatError(f"{path}: {msg}")

    version = int(a["format_version"])
    if version != FORMAT_VERSION:
        bad(f"format version {version} is not supported (this tapegrad reads {FORMAT_VERSION}; "
            f"re-record the tape and save it again)")
    dtype_name = str(a["dtype"])
    if dtype_name not in ("float64", "float32"):
        bad(f"arena dtype {dtype_name!r} is not float64 or float32")
    dtype = np.dtype(dtype_name)
    val = a["val"]
    if val.dtype != dtype:
        bad(f"value arena has dtype {val.dtype}, expected {dtype}")
    instr, imm = a["instr"], a["imm"]
    n = instr.shape[0]
    if instr.shape[1] != WIDTH:
        bad(f"instr must have {WIDTH} columns, got {instr.shape[1]}")
    for k in ("imm", "src"):
        if a[k].shape != (n,):
            bad(f"{k!r} has shape {a[k].shape}, expected ({n},) for {n} instructions")
    nb = a["boff"].shape[0]
    for k in ("bsize", "ndim", "kind", "base", "names", "bsrc"):
        if a[k].shape != (nb,):
            bad(f"{k!r} has shape {a[k].shape}, expected ({nb},) for {nb} buffers")
    shp = a["shapes"]
    if shp.shape[0] != nb or shp.shape[1] > MAX_NDIM:
        bad(f"'shapes' has shape {shp.shape}, expected ({nb}, <= {MAX_NDIM})")
    n_sites = a["sites"].shape[0]
    for k in ("src", "bsrc"):
        if a[k].size and not (0 <= a[k].min() and a[k].max() < n_sites):
            bad(f"{k!r} holds an index outside the {n_sites} sites")
    if a["input_names"].shape != a["inputs"].shape:
        bad("'inputs' and 'input_names' differ in length")
    if a["label_classes"].shape != a["label_bufs"].shape:
        bad("'label_bufs' and 'label_classes' differ in length")

    # ---- buffer table (Python ints throughout: no int64 overflow can hide a bad offset)
    boff = [int(v) for v in a["boff"]]
    bsize = [int(v) for v in a["bsize"]]
    kind = [int(v) for v in a["kind"]]
    base = [int(v) for v in a["base"]]
    arena = val.shape[0]
    shapes = []
    for b in range(nb):
        nd = int(a["ndim"][b])
        if not 0 <= nd <= shp.shape[1]:
            bad(f"buffer {b}: ndim {nd} out of range [0, {shp.shape[1]}]")
        row = [int(d) for d in shp[b]]
        if any(d < 0 for d in row) or any(row[nd:]):
            bad(f"buffer {b}: bad shape row {row} for ndim {nd}")
        shapes.append(tuple(row[:nd]))
        if kind[b] not in (0, 1, 2, 3):
            bad(f"buffer {b}: unknown kind {kind[b]}")
        if not (0 <= boff[b] and 0 <= bsize[b] and boff[b] + bsize[b] <= arena):
            bad(f"buffer {b}: offset {boff[b]} size {bsize[b]} lies outside the arena of "
                f"{arena} elements")
        if int(np.prod(shapes[b], dtype=object)) != bsize[b]:
            bad(f"buffer {b}: shape {shapes[b]} does not match size {bsize[b]}")
    for b in range(nb):
        r = base[b]
        if not 0 <= r < nb:
            bad(f"buffer {b}: base {r} out of range [0, {nb})")
        if base[r] != r:
            bad(f"buffer {b}: its base {r} is itself an alias (of {base[r]})")
        if r != b and (boff[b] != boff[r] or bsize[b] != bsize[r] or kind[b] == PARAM):
            bad(f"buffer {b}: alias of {r} must have its offset and size and not be a param")
    roots = sorted((boff[b], b) for b in range(nb) if base[b] == b)
    end = 0
    for o, b in roots:
        if o < end:
            bad(f"buffer {b}: overlaps another buffer at offset {o}")
        end = o + bsize[b]
    if arena != max(sum(bsize[b] for _, b in roots), 1):
        bad(f"value arena has {arena} elements, buffers need "
            f"{sum(bsize[b] for _, b in roots)}")

    # ---- names, params, inputs, labels, requires_grad
    bname = [str(s) or None for s in a["names"]]
    names = {}
    for b, nm in enumerate(bname):
        if nm is not None:
            if nm in names:
                bad(f"name {nm!r} is used by buffers {names[nm]} and {b}")
            names[nm] = b
    params = [int(v) for v in a["params"]]
    if sorted(set(params)) != params:
        bad(f"params {params} are not unique and in creation order")
    if set(params) != {b for b in range(nb) if kind[b] == PARAM}:
        bad("params list does not match the buffers of kind param")
    pos = 0
    for b in params:
        if base[b] != b or boff[b] != pos:
            bad(f"param buffer {b} is not at offset {pos} of the parameter prefix")
        pos += bsize[b]
    inputs = {}
    for nm, b in zip((str(s) for s in a["input_names"]), (int(v) for v in a["inputs"])):
        if not nm.isidentifier() or nm in inputs:
            bad(f"input name {nm!r} is not a unique identifier")
        if not (0 <= b < nb and kind[b] == INPUT and base[b] == b) or b in inputs.values():
            bad(f"input {nm!r}: buffer {b} is not an input buffer")
        inputs[nm] = b
    labels = {}
    for b, c in zip((int(v) for v in a["label_bufs"]), (int(v) for v in a["label_classes"])):
        if b not in inputs.values() or b in labels or c < 1:
            bad(f"label input buffer {b} with {c} classes is invalid")
        labels[b] = c
    rg = [int(v) for v in a["requires_grad"]]
    if len(set(rg)) != len(rg) or not set(rg) <= set(inputs.values()):
        bad(f"requires_grad {rg} must be distinct input buffers")

    # ---- instructions: the shared sweep validation, then what replay assumes besides
    a_boff, a_bsize = np.array(boff, np.int64), np.array(bsize, np.int64)
    try:
        validate_tape_arrays(instr, imm, a_boff, a_bsize, shapes, arena)
    except TapeFormatError as e:
        bad(str(e))
    for k in range(n):
        op, out = int(instr[k, OP]), int(instr[k, OUT])
        if op in (Op.GUARD, Op.TICK):
            if out != int(instr[k, X]):
                bad(f"instruction {k} ({Op(op).name.lower()}): output {out} must equal its "
                    f"input")
        if op != Op.GUARD and kind[out] != TEMP:
            bad(f"instruction {k}: writes buffer {out} of kind {kind[out]}, not a temporary")

    # ---- build the sealed tape
    tape = Tape(dtype)
    site_ids = np.array([intern_site(str(t)) for t in a["sites"]] + [0], np.int32)
    tape._instr = np.ascontiguousarray(instr, np.int32)
    tape._imm = np.ascontiguousarray(imm, np.float64)
    tape._src = site_ids[a["src"]]
    tape._n = tape._nf = tape._done = n
    tape._boff, tape._bsize, tape._nbuf = a_boff, a_bsize, nb
    tape._bsite = site_ids[a["bsrc"]]
    tape._nbf = nb
    tape._shape, tape._kind = shapes, bytearray(kind)
    tape._alias = {b: r for b, r in enumerate(base) if r != b}
    tape._base = np.array(base, np.int64).reshape(nb)
    tape._bname = {b: nm for b, nm in enumerate(bname) if nm is not None}
    tape._val = np.ascontiguousarray(val, dtype).copy()
    tape._cap = tape._val.shape[0]
    tape._grad = np.zeros_like(tape._val)
    tape._used = sum(bsize[b] for _, b in roots)
    tape._names, tape._params, tape._inputs = names, params, inputs
    tape._labels, tape._requires_grad = labels, set(rg)
    tape._n_params = tape._param_elems = pos
    tape._fwd_masks, tape._rev_masks = {}, {}
    tape._layout = 1
    draws = instr[np.isin(instr[:, OP], (Op.RAND, Op.RANDN))]
    ticks = instr[instr[:, OP] == Op.TICK]
    if len(draws):  # the seed and the counter of the random draws
        tape.seed = int(draws[0, A0 + 1]) | (int(draws[0, A0 + 2]) << 31)
        tape._rng_draws = int(draws[:, A0].max()) + 1
    if len(ticks):
        tape._rng = int(ticks[0, OUT])
    from .sweep import lower
    tape._low = lower(tape._instr, a_boff, a_bsize)  # from the arrays validated above
    tape._sealed = True
    return tape
