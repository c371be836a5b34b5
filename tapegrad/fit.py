"""``tg.fit``: many training steps (gather a minibatch, forward, reverse, optimizer) per call
into compiled code.

Python validates the data once, packs every fed input's samples into one 2-D array ``data``
(row = sample, a block of columns per input) and draws the sample order; the compiled
``train_steps`` then runs a chunk of steps with no Python in between. Chunks are sized to
take about a tenth of a second, so a progress bar can move and Ctrl-C stops after a whole
chunk of whole steps (``_DeferSigint``). ``tg.fit`` holds the tape's lock for its whole run.
"""
import functools
import math
import os
import signal
import sys
import threading
import time

import numpy as np

from ._jit import drop_stale_cache, jit
from .errors import FeedError, NonFiniteError, TapegradError
from .optim import Optimizer, step_kernel
from .sweep import OK, SOURCES, forward, reverse

LOSS_NOT_FINITE = 100


@jit
def train_steps(instr, imm, boff, bsize, val, grad, fmask, rmask, zero, loss_b, data, cols,
                idx, batch, kind, starts, stops, state, hyper, t0, losses):
    """Run ``losses.size`` steps; step s uses samples ``idx[s*batch:(s+1)*batch]``; ``zero``
    lists the gradient ranges the reverse sweep uses. Returns ``(status, instruction, steps
    done)``."""
    lo = boff[loss_b]
    for s in range(losses.shape[0]):
        for r in range(batch):
            row = idx[s * batch + r]
            for j in range(cols.shape[0]):
                off, c0, f = cols[j, 0], cols[j, 1], cols[j, 2]
                for q in range(f):
                    val[off + r * f + q] = data[row, c0 + q]
        status, k = forward(instr, imm, boff, bsize, val, fmask, False)
        if status != OK:
            return status, k, s
        losses[s] = val[lo]
        if not math.isfinite(val[lo]):
            return LOSS_NOT_FINITE, 0, s
        for r in range(zero.shape[0]):
            grad[zero[r, 0]:zero[r, 1]] = 0
        grad[lo] = 1
        status, k = reverse(instr, imm, boff, bsize, val, grad, rmask)
        if status != OK:
            return status, k, s
        step_kernel(kind, val, grad, starts, stops, state, hyper, t0 + s + 1)
    return OK, 0, losses.shape[0]



drop_stale_cache(train_steps, SOURCES + [__file__, os.path.join(os.path.dirname(__file__),
                                                                 "optim.py")])

class _Order:
    """Sample indices: passes over the data, each shuffled (seeded) or in order."""

    def __init__(self, n, shuffle, seed):
        self.n, self.shuffle = n, shuffle
        self.rng = np.random.default_rng(seed)
        self.buf = np.zeros(0, np.int64)

    def take(self, m):
        while self.buf.size < m:
            p = self.rng.permutation(self.n) if self.shuffle else np.arange(self.n)
            self.buf = np.concatenate([self.buf, p.astype(np.int64)])
        out, self.buf = self.buf[:m], self.buf[m:]
        return out


def _pack(tape, data, batch_size):
    """Validate ``data`` against the tape's inputs; return (packed array, column table)."""
    if not isinstance(data, dict) or not data:
        raise FeedError("fit(): data must be a non-empty dict of input name -> array")
    n = None
    blocks, cols, c0 = [], [], 0
    for name, arr in data.items():
        if name not in tape._inputs:
            known = ", ".join(sorted(tape._inputs)) or "none"
            raise FeedError(f"fit(): unknown input {name!r} (inputs: {known})")
        b = tape._inputs[name]
        shape = tape._shape[b]
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
    return np.ascontiguousarray(np.concatenate(blocks, axis=1)), np.array(cols, np.int64), n


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
def fit(loss, opt, data, batch_size, steps, shuffle=True, seed=0, progress=None):
    """Train for ``steps`` steps inside compiled code; returns the per-step losses.

    ``data``: dict input name -> array whose first axis is the samples; each step feeds
    ``batch_size`` of them (the inputs' recorded first axis). Each call starts a fresh pass
    over the data, shuffled with ``seed`` when ``shuffle`` is true, wrapping around as needed.
    Ctrl-C stops it after the current chunk (about 0.1 s) of whole steps: it returns the
    losses of the steps applied, and ``opt.t`` counts exactly those.

    >>> hist = tg.fit(loss, opt, {"x": X, "y": Y}, batch_size=32, steps=1000)  # doctest: +SKIP
    """
    from .var import Var
    if not isinstance(loss, Var) or loss.size != 1:
        raise TapegradError("fit(): loss must be a Var of size 1")
    if not isinstance(opt, Optimizer) or opt.tape is not loss.tape:
        raise TapegradError("fit(): opt must be a tg.optim optimizer of the loss's tape")
    steps, batch_size = int(steps), int(batch_size)
    if steps < 0 or batch_size < 1:
        raise TapegradError(f"fit(): need steps >= 0 and batch_size >= 1, got {steps}, "
                            f"{batch_size}")
    tape = loss.tape
    tape._seal()
    packed, cols, n = _pack(tape, data, batch_size)
    fmask = tape._forward_mask([loss._b])
    rmask = tape._reverse_mask(loss._b)
    zero = tape._grad_ranges(rmask)
    tape._grad[:] = 0  # afterwards every .grad is that of the last step
    starts, stops = opt.ranges()
    order = _Order(n, shuffle, seed)
    losses = np.full(steps, np.nan)
    bar = _Bar(steps, sys.stderr.isatty() if progress is None else bool(progress))
    done, chunk = 0, 1
    sigint = _DeferSigint()
    try:
        while done < steps and not sigint.hit:
            m = min(chunk, steps - done)
            t = time.perf_counter()
            status, k, ran = train_steps(
                tape._instr, tape._imm, tape._boff, tape._bsize, tape._val, tape._grad, fmask,
                rmask, zero, loss._b, packed, cols, order.take(m * batch_size), batch_size, opt.kind,
                starts, stops, opt.state, opt.hyper, opt.t, losses[done:done + m])
            opt.t += ran
            done += ran
            if status == LOSS_NOT_FINITE:
                raise NonFiniteError(f"fit(): the loss became {losses[done]} at step {done} "
                                     f"(0-based; steps before it are applied)")
            if status != OK:
                raise tape._failed(status, k, "values", "grads")
            bar.update(ran, losses[done - 1])
            dt = time.perf_counter() - t
            chunk = max(1, min(chunk * 4, int(chunk * 0.1 / dt) if dt > 0 else chunk * 4))
    except KeyboardInterrupt:  # a handler other than Python's raised it
        losses = losses[:done]
    finally:
        sigint.restore()
        bar.close()
    if done:
        tape._broken.clear()  # every step replayed both sweeps whole
    return losses[:done] if sigint.hit else losses
