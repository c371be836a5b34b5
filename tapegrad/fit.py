"""``tg.fit``: many training steps (gather a minibatch, forward, reverse, optimizer) per call
into compiled code.

Python validates the data once, packs every fed input's samples into one 2-D array ``data``
(row = sample, a block of columns per input) and draws the sample order; the compiled
``train_steps`` then runs a chunk of steps with no Python in between. Chunks are sized to
take about a tenth of a second, so a progress bar can move and Ctrl-C stops after a whole
chunk of whole steps (``_DeferSigint``); ``tg.fit`` holds the tape's lock for its whole run.
With ``data=None`` nothing is gathered: every step replays the tape with
the inputs it holds (full-batch training).

A step is applied only when its loss and the gradients the optimizer reads are all finite;
otherwise ``fit`` raises ``NonFiniteError`` naming the step, leaving the parameters and the
optimizer state as after the last good step, and replays that step (inputs, then the forward
sweep with ``check_finite``, then the reverse sweep cut short) to name the first bad op.

The optimizer runs inside the step (``fuse_optimizer``, ``_fused_plan``): each parameter is
updated once the reverse sweep has made its gradient final, each update checking the
gradients it reads; a step failing after some updates is undone from the chunk's checkpoint
(``_checkpoint``) and the chunk rerun unfused (reverse sweep, check, one optimizer pass).

With ``comm`` (``tapegrad.dist``) the same compiled loop sums the gradients of all ranks with
one ``MPI_Allreduce`` over the parameter prefix ``[0, P)`` before the check and the
optimizer. A rank that fails puts a NaN into its gradient before that Allreduce, so every rank
sees the failure at the same step and no rank is left waiting in a collective.
"""
import functools
import hashlib
import math
import operator
import signal
import sys
import threading
import time

import numpy as np

from ._jit import announce_compile, kernel
from .errors import (BranchChanged, FeedError, LinAlgError, NonFiniteError, ShapeError,
                     TapegradError)
from .opcodes import N_IN, OP, OPS, OUT, X, Op
from .optim import Optimizer, step_kernel, update_range
from .sweep import NON_FINITE, OK

LOSS_NOT_FINITE, GRAD_NOT_FINITE, MPI_FAILED = 100, 101, 102
_MAX_COUNT = 1 << 30  # elements per MPI call (its count is a C int)


@kernel
def finite_range(a, lo, hi):
    """No NaN/Inf in ``a[lo:hi]`` (an or-reduction LLVM vectorises)."""
    g = a[lo:hi]
    bad = False
    for i in range(g.size):
        bad |= g[i] - g[i] != 0  # x - x is NaN for NaN and +-Inf, 0 otherwise
    return not bad


@kernel
def all_finite(a, starts, stops):
    """No NaN/Inf in ``a[starts[r]:stops[r]]`` for any r."""
    for r in range(starts.shape[0]):
        if not finite_range(a, starts[r], stops[r]):
            return False
    return True


@kernel
def allreduce_prefix(allreduce, handles, grad, n):
    """Sum ``grad[0:n]`` over the ranks in place; returns MPI's error code (0: success)."""
    base = np.int64(grad.ctypes.data)
    done = 0
    while done < n:
        m = min(n - done, _MAX_COUNT)
        err = allreduce(handles[0], base + done * grad.itemsize, m, handles[1], handles[2],
                        handles[3])
        if err != 0:
            return err
        done += m
    return 0


# The template of the compiled step loop: ``tapegrad.sweep`` pastes this function's text into
# each interpreter module it generates, where ``forward`` and ``reverse`` are that module's
# sweeps, and compiles it there (``tape._interpreters().train_steps``). Never called as is.
def train_steps(instr, imm, low, val, grad, fmask, rmask, zero, n_clear, lo, data,
                cols, idx, batch, kind, starts, stops, state, hyper, t0, losses,
                seed, n_params, nranks, allreduce, handles, check_finite, segs, upd):
    """Run ``losses.size`` steps; step s uses samples ``idx[s*batch:(s+1)*batch]``. The
    reverse sweeps of the first ``n_clear`` steps zero each output gradient once read
    (``sweep.reverse``'s ``clear``), so ``zero`` lists only the gradient ranges they leave: the
    ones to zero before each reverse sweep. The reverse sweep starts from ``seed``
    (1/R for a mean over R ranks). With ``nranks > 1`` the gradient prefix ``[0, n_params)``
    is summed over the ranks by ``allreduce`` (``tapegrad.dist.Link``). ``check_finite`` (0:
    an argument, not a literal, so the forward sweep compiles once for every caller). Returns
    ``(status, instruction or MPI error code, steps done)``. ``low``: the lowered stream
    (``tapegrad.lower``); ``lo``: the loss's offset in the arenas.

    ``segs`` empty: the optimizer steps over ``starts/stops`` after the reverse sweep (and the
    check that those gradients are finite). Otherwise the optimizer is fused into the sweep
    (``_fused_plan``): row q of ``segs`` is ``(a, b, u0, u1)``: run the reverse rules of
    instructions ``b-1 .. a``, then check and update the parameter ranges ``upd[u0:u1]``
    (rows ``(start, stop, state column)``), whose gradients are then final; a non-finite
    gradient is found by the update that reads it. A failure after some of a step's updates
    leaves them applied: ``fit`` then restores the chunk's checkpoint and runs it unfused."""
    for s in range(losses.shape[0]):
        for r in range(batch):
            row = idx[s * batch + r]
            for j in range(cols.shape[0]):
                off, c0, f = cols[j, 0], cols[j, 1], cols[j, 2]
                for q in range(f):
                    val[off + r * f + q] = data[row, c0 + q]
        status, k = forward(instr, imm, low, val, fmask, check_finite)
        if status == OK:
            losses[s] = val[lo]
            if not math.isfinite(val[lo]):
                status = LOSS_NOT_FINITE
        if status == OK:
            for r in range(zero.shape[0]):
                grad[zero[r, 0]:zero[r, 1]] = 0
            grad[lo] = seed
            clear = 1 if s < n_clear else 0
            if segs.shape[0] == 0:
                status, k = reverse(instr, imm, low, val, grad, rmask, clear)
            for q in range(segs.shape[0]):
                a, b = segs[q, 0], segs[q, 1]
                if a == 0 and b == low.shape[0]:  # uncut (slicing costs ~0.1 us)
                    status, k = reverse(instr, imm, low, val, grad, rmask, clear)
                elif b > a:  # views of the rows: the sweep's k counts from a
                    status, k = reverse(instr[a:b], imm[a:b], low[a:b], val, grad,
                                        rmask[a:b], clear)
                    k += a
                if status != OK:
                    break
                for u in range(segs[q, 2], segs[q, 3]):
                    if not update_range(kind, val, grad, upd[u, 0], upd[u, 1], state,
                                        upd[u, 2], hyper, t0 + s + 1):
                        status, k = GRAD_NOT_FINITE, 0
                        break
                if status != OK:
                    break
        if nranks > 1:
            if status != OK:
                grad[starts[0]] = np.nan  # so every rank stops at this step
            err = allreduce_prefix(allreduce, handles, grad, n_params)
            if err != 0:
                return MPI_FAILED, err, s
        if status != OK:
            return status, k, s
        if segs.shape[0] == 0:
            if not all_finite(grad, starts, stops):
                return GRAD_NOT_FINITE, 0, s
            step_kernel(kind, val, grad, starts, stops, state, hyper, t0 + s + 1)
    return OK, 0, losses.shape[0]


class _Order:
    """Sample indices: passes over the data, each shuffled (seeded) or in order."""

    def __init__(self, n, shuffle, seed):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rng = None  # made when first needed (it costs ~0.1 ms)
        self.buf = np.zeros(0, np.int64)

    def take(self, m):
        while self.buf.size < m:
            if self.shuffle and self.rng is None:
                self.rng = np.random.default_rng(self.seed)
            p = self.rng.permutation(self.n) if self.shuffle else np.arange(self.n)
            self.buf = np.concatenate([self.buf, p.astype(np.int64)])
        out, self.buf = self.buf[:m], self.buf[m:]
        return out


def _count(name, value, least):
    """``value`` as an int >= ``least``; a float, a bool or anything else is an error."""
    if isinstance(value, bool):
        value = None
    try:
        v = operator.index(value)
    except TypeError:
        raise TapegradError(f"fit(): {name} must be an integer, got {value!r}") from None
    if v < least:
        raise TapegradError(f"fit(): need {name} >= {least}, got {v}")
    return v


def _cached(tape, key, mask, make):
    """``make()``, remembered per tape until its layout, its instructions or the activity
    ``mask`` it is derived from (the tape's cached array: the same object) change -- what
    ``tg.fit`` derives from the tape and the loss on every call took ~1 ms, as long as a
    thousand steps of a small model."""
    stamp = (tape._layout, len(tape))
    memo = tape.__dict__.get("_fit_memo")
    if memo is None or memo[0] != stamp:
        memo = tape._fit_memo = (stamp, {})
    got = memo[1].get(key)
    if got is None or got[0] is not mask:
        got = memo[1][key] = (mask, make())
    return got[1]


def _needed_inputs(tape, fmask):
    """Names of the inputs that the masked forward sweep reads (the tape is sealed)."""
    rows = tape._instr[np.flatnonzero(fmask)]
    n_in = N_IN[rows[:, OP]]
    read = set(tape._base[np.concatenate([rows[n_in > j, X + j] for j in range(3)])].tolist())
    return [name for name, b in tape._inputs.items() if b in read]


def _pack(tape, data, batch_size, needed):
    """Validate ``data`` against the tape's inputs; return (packed array, column table,
    samples, batch size, names in column order)."""
    if not isinstance(data, dict) or not data:
        raise FeedError("fit(): data must be a non-empty dict of input name -> array, or None "
                        "to replay the inputs the tape holds")
    for name in data:
        if name not in tape._inputs:
            known = ", ".join(sorted(tape._inputs)) or "none"
            raise FeedError(f"fit(): unknown input {name!r} (inputs: {known})")
    missing = [name for name in needed if name not in data and tape._inputs[name] in tape._unfed]
    if missing:
        raise FeedError(f"fit(): the loss needs input {missing[0]!r}, which is not in data "
                        f"and was never fed nor given a value (recorded at "
                        f"{tape._bsrc(tape._inputs[missing[0]])}; data has: "
                        f"{', '.join(data)})")
    n = None
    blocks, cols, c0 = [], [], 0
    for name, arr in data.items():
        b = tape._inputs[name]
        shape = tape._shape[b]
        if batch_size is None:
            batch_size = shape[0] if shape else 0
        if not shape or shape[0] != batch_size:
            raise FeedError(f"fit(): input {name!r} was recorded with shape {shape}; its first "
                            f"axis must be batch_size={batch_size}")
        a = tape.check_feed(name, arr, batch_axis=True)
        if a.ndim == 0 or a.shape[0] == 0:
            raise FeedError(f"fit(): data {name!r} has no samples (shape {a.shape})")
        if n is None:
            n = a.shape[0]
        elif a.shape[0] != n:
            raise FeedError(f"fit(): data arrays have different numbers of samples "
                            f"({n} and {a.shape[0]} for {name!r})")
        f = int(np.prod(shape[1:], dtype=np.int64))
        blocks.append(a.reshape(n, f).astype(tape.dtype))
        cols.append((int(tape._boff[b]), c0, f))
        c0 += f
    return (np.ascontiguousarray(np.concatenate(blocks, axis=1)), np.array(cols, np.int64), n,
            batch_size, list(data))


class _Bar:
    def __init__(self, total, enabled):
        self.total, self.done, self.bar = total, 0, None
        if not enabled:
            self.enabled = False
            return
        self.enabled = True
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="step")
        except ImportError:
            self.bar = None

    def update(self, k, loss):
        self.done += k
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(k)
            self.bar.set_postfix(loss=f"{loss:.4g}")
        else:
            w = 30
            filled = w * self.done // max(self.total, 1)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (w - filled)}] {self.done}/{self.total} "
                             f"loss {loss:.4g}")
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


class _Alone:
    """The communicator of a process training alone: the compiled loop never calls MPI."""
    nranks, rank = 1, 0

    def __init__(self):
        from .dist import NO_HANDLES, NOOP
        self.allreduce, self.handles = NOOP, NO_HANDLES


class _DeferSigint:
    """Until ``restore()``, Ctrl-C (SIGINT) only sets ``hit``, and the loop stops at the end
    of the chunk, after its steps are counted -- not a KeyboardInterrupt landing between a
    compiled call and the bookkeeping (steps applied but not counted in ``opt.t``). Main
    thread only (where Python delivers signals); ``restore()`` puts the previous handler back
    and, when it is not Python's default, calls it for the deferred Ctrl-C."""

    def __init__(self):
        self.hit, self.old = False, None
        if threading.current_thread() is threading.main_thread():
            if callable(signal.getsignal(signal.SIGINT)):
                self.old = signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame):
        self.hit = True

    def restore(self):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
            if self.hit and self.old is not signal.default_int_handler:
                self.old(signal.SIGINT, None)


def _locked(fn):
    """Run ``fn(loss, ...)`` holding the lock of the loss's tape (replays serialise)."""
    @functools.wraps(fn)
    def wrapper(loss, *args, **kwargs):
        lock = getattr(getattr(loss, "tape", None), "lock", None)
        if lock is None:
            return fn(loss, *args, **kwargs)
        with lock:
            return fn(loss, *args, **kwargs)
    return wrapper


@_locked
def fit(loss, opt, data=None, batch_size=None, steps=None, shuffle=True, seed=0,
        progress=None, comm=None, reduce="mean", fuse_optimizer=True):
    """Train for ``steps`` steps inside compiled code; returns the per-step losses.

    ``data``: dict input name -> array whose first axis is the samples; each step feeds
    ``batch_size`` of them (default and requirement: the inputs' recorded first axis). Each
    call starts a fresh pass over the data, shuffled with ``seed`` when ``shuffle`` is true,
    wrapping around as needed. ``data=None``: full batch, every step replays the tape with
    the inputs it holds. A NaN/Inf loss or gradient raises ``NonFiniteError`` naming the step
    and the first bad op; the parameters and optimizer state stay as after the last good step
    (the losses so far are the exception's ``history``).

    ``comm`` (an mpi4py communicator, see ``tapegrad.dist``): data-parallel training. Every
    rank passes the same arguments; each step draws a global batch of ``R * batch_size``
    samples and rank r takes the r-th slice; the gradients are summed over the ranks, divided
    by R (``reduce="mean"``, a mean loss over equal shards) or not (``"sum"``); the history is
    the same reduction of the ranks' losses.

    Ctrl-C stops it after the current chunk (about 0.1 s) of whole steps: it returns the
    losses of the steps applied, and ``opt.t`` counts exactly those (alone; on several ranks
    Ctrl-C raises, and mpi4py ends the job).

    Afterwards every Var's ``.grad`` is that of the last step (after Ctrl-C: the parameters'
    and inputs'; intermediate gradients are zero, as each step's reverse sweep clears them
    once read).

    ``fuse_optimizer`` (default): alone (no ``comm``), each parameter is updated inside the
    reverse sweep as soon as its gradient is final -- right after the reverse rule of the
    first instruction that reads it -- instead of in a pass over all parameters after the
    sweep; the same update kernel, so the same bits. ``False``: that separate pass (what
    ``comm`` always does: the gradients are summed over the ranks first).

    >>> hist = tg.fit(loss, opt, {"x": X, "y": Y}, batch_size=32, steps=1000)  # doctest: +SKIP
    """
    from .var import Var
    if not isinstance(loss, Var) or loss.size != 1:
        raise TapegradError("fit(): loss must be a Var of size 1")
    tape = loss.tape
    if comm is None:
        link = _Alone()
    else:
        from .dist import Link
        link = Link(comm, tape.dtype)
    R, rank = link.nranks, link.rank
    try:
        steps, batch, packed, cols, n, names, fmask = _prepare(loss, opt, data, batch_size,
                                                               steps, reduce)
        problem = None
    except TapegradError as e:
        if R == 1:
            raise
        problem, steps, batch, n = e, None, None, None
    if R > 1:  # every rank raises the same error, or none does
        seed = _agree(link, problem, tape, opt, steps, batch, n, shuffle, seed, reduce)
    rmask = tape._reverse_mask(loss._b)
    zero = _cached(tape, ("zero", loss._b), rmask,
                   lambda: tape._grad_ranges(rmask, cleared=True))
    # (the sweeps zero the rest as they go)
    starts, stops = opt.ranges()
    segs, upd = (_fused_plan(tape, opt, loss, rmask) if fuse_optimizer and R == 1
                 else (_NO_SEGS, _NO_SEGS))
    weight = 1.0 / R if reduce == "mean" else 1.0
    interp = tape._interpreters()
    tape._grad[:] = 0  # the last step does not clear: then every .grad is that of that step
    order = _Order(n, shuffle, seed)
    losses = np.full(steps, np.nan)
    bar = _Bar(steps, rank == 0 and (sys.stderr.isatty() if progress is None else bool(progress)))
    done, chunk = 0, 1
    sigint = _DeferSigint() if R == 1 else None
    try:
        while done < steps and not (sigint and sigint.hit):
            m = min(chunk, steps - done)
            ids = order.take(m * R * batch).reshape(m, R, batch)[:, rank].ravel()
            t = time.perf_counter()
            announce_compile(interp.reverse, interp.train_steps)  # (a worker's reverse first)
            fused = segs.shape[0] > 0 and m >= FUSE_MIN_STEPS
            saved = _checkpoint(tape, opt) if fused else None

            def run(plan):
                return interp.train_steps(
                    tape._instr, tape._imm, tape._low, tape._val, tape._grad, fmask, rmask,
                    zero, m if done + m < steps else m - 1, tape._boff[loss._b], packed, cols,
                    ids, batch, opt.kind, starts, stops, opt.state, opt.hyper, opt.t,
                    losses[done:done + m], weight, tape._n_params, R, link.allreduce,
                    link.handles, 0, *plan)
            status, k, ran = run((segs, upd) if fused else (_NO_SEGS, _NO_SEGS))
            if status != OK and fused:  # a step failed after updating some parameters:
                _restore(tape, opt, saved)  # redo the chunk the unfused way, which stops
                status, k, ran = run((_NO_SEGS, _NO_SEGS))  # before the failed step's update
            dt = time.perf_counter() - t
            nxt = max(1, min(chunk * 4, int(chunk * 0.1 / dt) if dt > 0 else chunk * 4))
            if R > 1:
                nxt = _reduce_losses(link, losses[done:done + ran], weight, nxt)
            opt.t += ran
            done += ran
            if status != OK:
                step_ids = ids[ran * batch:(ran + 1) * batch]
                err = _failure(link, tape, loss, fmask, rmask, tape._grad_ranges(rmask), weight,
                               status, k, done, names, step_ids, losses)
                for what in ("values", "grads"):  # half-done: forward / backward first
                    tape._broken[what] = f"{type(err).__name__}: {err}"
                raise err
            bar.update(ran, losses[done - 1])
            chunk = nxt
    except KeyboardInterrupt:  # several ranks, or a handler other than Python's raised it
        if R > 1:  # the other ranks cannot be told: let mpi4py abort the job
            raise
        losses = losses[:done]
    finally:
        bar.close()
        if sigint is not None:
            sigint.restore()
    if done:
        tape._broken.clear()  # every step replayed both sweeps whole
        for name in data or ():  # they now hold the last batch
            tape._unfed.discard(tape._inputs[name])
    return losses[:done] if sigint is not None and sigint.hit else losses


# ------------------------------------------------------------------ the fused optimizer
FUSE_MIN_STEPS = 8  # chunks of fewer steps run unfused: the checkpoint would cost too much
FUSE_MIN_ELEMS = 1 << 16  # smaller parameters are updated after the sweep, which is not cut
_NO_SEGS = np.zeros((0, 4), np.int64)


def _fused_plan(tape, opt, loss, rmask, min_elems=None):
    """Where the reverse sweep can update each of ``opt``'s parameters: ``(segs, upd)`` for
    ``train_steps``. A parameter's gradient is final, and no rule reads its value any more,
    once the reverse rules of every instruction that reads it (through any view, or writes
    it) have run: in reverse order, after the first such instruction the sweep runs (``rmask
    & 1``). So the sweep is cut at those instructions into segments, each followed by the
    updates of the parameters it finished; a parameter no rule reads, or of fewer than
    ``min_elems`` elements, is updated after the last segment (a cut costs 0.3-0.5 us, about
    a hundred elements' AdamW, and saves nothing measurable while the gradients still sit
    in the L2 cache: BENCHMARKS.md). Cached on ``opt`` per layout, loss and ``rmask``."""
    min_elems = FUSE_MIN_ELEMS if min_elems is None else min_elems
    key = (tape._layout, loss._b, len(tape), min_elems)
    cached = getattr(opt, "_fit_plan", None)
    if cached is not None and cached[0] == key and cached[2] is rmask:
        return cached[1]
    run = np.flatnonzero(rmask & 1).astype(np.int64)
    if tape._fused_now is not None:  # a fused group's reverse recomputes every member from
        # the group's inputs, those of members without a rule (a comparison's) too: while it
        # runs, every member reads its inputs
        rows = [np.arange(k0, k0 + m) for k0, m in tape._fused_now if rmask[k0 + m - 1] & 1]
        if rows:
            run = np.union1d(run, np.concatenate(rows)).astype(np.int64)
    n = int(tape._instr.shape[0])
    first = np.full(max(tape._nbuf, 1), n, np.int64)  # per root buffer: first reader
    for slot in (OUT, X, X + 1, X + 2):  # (every slot: an unused one holds -1)
        b = tape._instr[run, slot].astype(np.int64)
        ok = b >= 0
        np.minimum.at(first, tape._base[b[ok]], run[ok])
    if tape._fused_now is not None:  # a fused group's reverse runs at its last row, all
        start = np.arange(n + 1, dtype=np.int64)  # of it: a cut inside moves to its start
        for k0, m in tape._fused_now:
            start[k0:k0 + m] = k0
        first = start[first]
    rows, j = {}, 0
    for p in opt.params:
        k = int(first[tape._base[p._b]])
        o = int(tape._boff[p._b])
        if k >= n or p.size < min_elems:  # unread, or small: updated after the sweep
            k = 0
        rows.setdefault(k, []).append((o, o + p.size, j))
        j += p.size
    segs, upd, hi = [], [], n
    for k in sorted(set(rows) | {0}, reverse=True):
        u0 = len(upd)
        for a, b, col in sorted(rows.get(k, ())):
            if len(upd) > u0 and upd[-1][1] == a and upd[-1][2] + (a - upd[-1][0]) == col:
                upd[-1] = (upd[-1][0], b, upd[-1][2])  # adjacent in the arena and the state
            else:
                upd.append((a, b, col))
        segs.append((k, hi, u0, len(upd)))
        hi = k
    plan = (np.array(segs, np.int64).reshape(-1, 4), np.array(upd, np.int64).reshape(-1, 3))
    opt._fit_plan = (key, plan, rmask)
    return plan


def _checkpoint(tape, opt):
    """What a fused chunk changes and ``_restore`` puts back: the optimizer's parameters,
    its state, the draws' counter."""
    starts, stops = opt.ranges()
    rng = tape._rng
    extra = [] if rng is None else [(int(tape._boff[rng]), int(tape._boff[rng]) + 2)]
    ranges = list(zip(starts.tolist(), stops.tolist())) + extra
    return ranges, [tape._val[a:b].copy() for a, b in ranges], opt.state.copy()


def _restore(tape, opt, saved):
    ranges, values, state = saved
    for (a, b), v in zip(ranges, values):
        tape._val[a:b] = v
    opt.state[:] = state
    tape._grad[:] = 0  # a sweep cut short leaves gradients that its rules would have cleared


def _prepare(loss, opt, data, batch_size, steps, reduce):
    """Validate the arguments; return (steps, batch, packed data, column table, samples,
    input names in column order, forward mask)."""
    if not isinstance(opt, Optimizer) or opt.tape is not loss.tape:
        raise TapegradError("fit(): opt must be a tg.optim optimizer of the loss's tape")
    if steps is None:
        raise TapegradError("fit(): steps= is required")
    steps = _count("steps", steps, 0)
    if batch_size is not None:
        batch_size = _count("batch_size", batch_size, 1)
    if reduce not in ("mean", "sum"):
        raise TapegradError(f"fit(): reduce must be 'mean' or 'sum', got {reduce!r}")
    tape = loss.tape
    tape._seal()
    fmask = tape._forward_mask([loss._b])
    needed = _cached(tape, ("needed", loss._b), fmask, lambda: _needed_inputs(tape, fmask))
    if data is not None:
        packed, cols, n, batch, names = _pack(tape, data, batch_size, needed)
        return steps, batch, packed, cols, n, names, fmask
    if batch_size is not None:
        raise TapegradError("fit(): batch_size needs data; with data=None every step "
                            "replays the inputs the tape holds")
    unfed = [name for name in needed if tape._inputs[name] in tape._unfed]
    if unfed:
        raise FeedError(f"fit(data=None): the loss needs input {unfed[0]!r}, which was "
                        f"never fed nor given a value (recorded at "
                        f"{tape._bsrc(tape._inputs[unfed[0]])}): feed it with "
                        f"tape.forward({unfed[0]}=...) or pass data")
    return (steps, 0, np.zeros((0, 0), tape.dtype), np.zeros((0, 3), np.int64), 0, [],
            fmask)


# ------------------------------------------------------------------ many ranks
_KINDS = {c.__name__: c for c in (NonFiniteError, FeedError, ShapeError, BranchChanged,
                                  LinAlgError, TapegradError)}


def _same_error(every, key):
    """The error reported by the lowest rank that has one, raised on every rank."""
    rank = next(r for r, e in enumerate(every) if e[key] is not None)
    name, text = every[rank][key]
    return _KINDS.get(name, TapegradError)(f"{text} [on rank {rank} of {len(every)}]")


def _agree(link, problem, tape, opt, steps, batch, n, shuffle, seed, reduce):
    """Check that no rank found a problem in its arguments and that every rank runs the same
    training (else the collectives would not match and a rank would wait forever). Returns
    the seed: a ``seed`` of None (on every rank) becomes a fresh one drawn by rank 0."""
    comm = link.comm
    if problem is not None:
        raise _same_error(comm.allgather({"error": (type(problem).__name__, str(problem))}),
                          "error")
    P = tape._n_params
    digest = hashlib.blake2b(tape._val[:P].tobytes(), digest_size=16)
    digest.update(opt.state.tobytes())
    digest.update(opt.hyper.tobytes())
    mine = {"error": None, "steps": steps, "batch_size": batch, "samples": n,
            "shuffle": bool(shuffle), "seed": repr(seed), "reduce": reduce,
            "parameter elements": P, "dtype": str(tape.dtype), "instructions": len(tape),
            "optimizer": type(opt).__name__, "optimizer step count": opt.t,
            "parameter values and optimizer state": digest.hexdigest()}
    if seed is None and link.rank == 0:
        mine["fresh seed"] = int(np.random.SeedSequence().entropy)
    every = comm.allgather(mine)
    if any(e["error"] is not None for e in every):
        raise _same_error(every, "error")
    for key in mine:
        ranks = [r for r in range(link.nranks) if every[r].get(key) != every[0][key]]
        if ranks and key != "fresh seed":
            hint = ("; call tg.dist.broadcast_params(tape, comm) before training"
                    if key.startswith("parameter values") else "")
            raise TapegradError(f"fit(comm=...): ranks disagree on {key}: rank 0 has "
                                f"{every[0][key]!r}, rank {ranks[0]} has "
                                f"{every[ranks[0]][key]!r}{hint}")
    return every[0].get("fresh seed", seed)


def _reduce_losses(link, losses, weight, proposal):
    """One Allreduce for the chunk: the ranks' weighted losses (in place) and their proposed
    next chunk sizes, whose mean every rank then takes (the chunks must match)."""
    from .dist import _mpi
    MPI = _mpi()
    buf = np.empty(losses.size + 1)
    buf[:-1] = losses * weight
    buf[-1] = proposal
    link.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    losses[:] = buf[:-1]
    return max(1, int(buf[-1] / link.nranks))


# ------------------------------------------------------------------ explaining a failed step
def _failure(link, tape, loss, fmask, rmask, zero, weight, status, k, step, names, rows,
             losses):
    """The exception for a failed step (the same on every rank): this rank's own explanation,
    or that of the lowest rank which found a cause in its shard."""
    if status == MPI_FAILED:
        err = TapegradError(f"fit(): MPI_Allreduce returned error code {k} at step {step}")
        err.history = losses[:step]
        return err
    cls, text, cause = NonFiniteError, None, True
    if status in (LOSS_NOT_FINITE, GRAD_NOT_FINITE):
        text, cause = _explain_non_finite(tape, loss, fmask, rmask, zero, weight, names, rows)
    else:
        e = tape._status_error(status, k)
        cls, text = type(e), str(e)
    if link.nranks > 1:
        every = link.comm.allgather((cause, cls.__name__, text))
        rank = next((r for r, (c, _, _) in enumerate(every) if c), None)
        if rank is None:
            cls, text = NonFiniteError, (f"the gradient summed over the {link.nranks} ranks is "
                                         f"NaN/Inf, though no rank's own gradient is")
        else:
            cls = _KINDS.get(every[rank][1], TapegradError)
            text = every[rank][2] + f" [on rank {rank} of {link.nranks}]"
    if step:
        done = (f"the {step} step{'s' if step > 1 else ''} before it applied; parameters and "
                f"optimizer state are as after {'them' if step > 1 else 'it'}")
    else:
        done = "no step was applied; parameters and optimizer state are unchanged"
    err = cls(f"fit(): stopped at step {step} (0-based; {done}): {text}")
    err.history = losses[:step]
    return err


def _explain_non_finite(tape, loss, fmask, rmask, zero, weight, names, rows):
    """Replay the failed step on this rank (the arena still holds its inputs and the
    parameters before it): which input holds NaN/Inf, the first op whose value is NaN/Inf,
    or else the first op of the reverse sweep whose gradient is. Returns (text, whether this
    rank's shard is the cause)."""
    val = tape._val
    lo = int(tape._boff[loss._b])
    parts = []
    if not math.isfinite(val[lo]):
        parts.append(f"the loss is {val[lo]}")
    fed = set(names)
    for name in _needed_inputs(tape, fmask):
        v = tape._view(val, tape._inputs[name])
        bad = np.argwhere(~np.isfinite(v))
        if bad.size:
            i = tuple(int(j) for j in bad[0])
            where = f"input {name!r} holds {v[i]} at index {i}"
            if name in fed and len(i) and rows.size:
                where += f" (data[{name!r}] row {int(rows[i[0]])})"
            parts.append(where)
    s, k = tape._interpreters().forward(tape._instr, tape._imm, tape._low, val, fmask, 1)
    if s == NON_FINITE:
        parts.append("first op to produce NaN/Inf: " + str(tape._status_error(s, k)))
    elif not parts:
        k = _first_bad_gradient(tape, loss, rmask, zero, weight)
        if k is not None:
            op = OPS[Op(int(tape._instr[k, OP]))].name
            params = [p.name or f"%{p._b}" for p in tape.params if not np.isfinite(p.grad).all()]
            parts.append(f"the gradient is NaN/Inf (loss {val[lo]}): the reverse sweep of "
                         f"{op} -> %{int(tape._instr[k, OUT])} (recorded at {tape._site(k)}) "
                         f"is the first to produce it" +
                         (f"; parameters with NaN/Inf gradients: {', '.join(params)}"
                          if params else ""))
    if not parts:
        return "the gradient is NaN/Inf", False
    return "; ".join(parts), True


def _first_bad_gradient(tape, loss, rmask, zero, weight):
    """The first instruction, in reverse-sweep order, after which the gradient arena holds a
    NaN/Inf: found by bisection over reverse sweeps cut short (gradients only accumulate, so
    once non-finite they stay so). None if the full reverse sweep is finite."""
    reverse = tape._interpreters().reverse
    grad, lo = tape._grad, int(tape._boff[loss._b])

    def bad_after(j):  # run the reverse sweep over instructions n-1 .. j
        mask = rmask.copy()
        mask[:j] = 0
        for a, b in zero:
            grad[a:b] = 0
        grad[lo] = weight
        reverse(tape._instr, tape._imm, tape._low, tape._val, grad, mask, 0)
        return any(not np.isfinite(grad[a:b]).all() for a, b in zero)

    if not bad_after(0):
        return None
    lo_j, hi_j = 0, len(tape)  # bad_after(lo_j) holds; bad_after(len) does not
    while hi_j - lo_j > 1:
        mid = (lo_j + hi_j) // 2
        if bad_after(mid):
            lo_j = mid
        else:
            hi_j = mid
    bad_after(0)  # leave the step's full gradient in the arena
    return lo_j
