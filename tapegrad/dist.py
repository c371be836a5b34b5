"""Data-parallel training on MPI, through mpi4py (``pip install "tapegrad[mpi]"``).

Every parameter's gradient lives in one contiguous prefix ``[0, P)`` of the gradient arena, so
one in-place ``MPI_Allreduce`` over that prefix sums the gradients of all ranks. Two ways:

* the Python loop: ``broadcast_params(tape, comm)`` once, then per step ``tape.forward(...)``,
  ``loss.backward()``, ``allreduce_grads(tape, comm)``, ``opt.step()``;
* ``tg.fit(..., comm=comm)``: the Allreduce runs inside the compiled training loop, between
  the reverse sweep and the optimizer kernel. The compiled loop receives ``MPI_Allreduce`` as
  an argument -- a ctypes function pointer into the MPI library mpi4py loaded, with the MPI
  handles as integers -- so numba caches it like any other call; running alone, it receives
  ``NOOP`` (same type, never called) and the same compiled code serves both.

Nothing here imports mpi4py until a communicator is used, so ``import tapegrad`` works without
it. Thread level: mpi4py initialises MPI with ``THREAD_MULTIPLE`` unless told otherwise, which
made small Allreduces ~3x slower here; set ``mpi4py.rc.thread_level = "funneled"`` before
``from mpi4py import MPI`` (the compiled loop calls MPI from the thread that calls ``fit``).
Launch with ``mpiexec -n R python -m mpi4py script.py``: ``-m mpi4py`` turns an exception on
one rank into ``MPI_Abort`` of the whole job instead of a rank waiting forever.
"""
import ctypes
import sys

import numpy as np

from .errors import TapegradError

# int MPI_Allreduce(const void *sendbuf, void *recvbuf, int count, MPI_Datatype, MPI_Op,
# MPI_Comm). Buffers go as pointer-sized integers (the same registers as pointers) so that
# numba can pass computed addresses; handles are C ints in MPICH and its ABI family, pointers
# in Open MPI (which therefore compiles a second variant of the training loop).
_INT_HANDLE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_int,
                               ctypes.c_int, ctypes.c_int, ctypes.c_int)
_PTR_HANDLE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_int,
                               ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_ssize_t)


def _never_called(*args):  # the compiled loop calls the Allreduce only when nranks > 1
    return 0


NOOP = _INT_HANDLE(_never_called)
NO_HANDLES = np.zeros(4, np.int64)  # in-place marker, datatype, op, communicator

_REDUCE = ("mean", "sum")


class Link:
    """What the compiled loop needs to reach the other ranks of ``comm``.

    ``allreduce`` (ctypes function pointer), ``handles`` (int64: MPI_IN_PLACE, datatype,
    MPI_SUM, communicator), ``nranks``, ``rank``, and ``comm`` itself for the Python side.
    """

    def __init__(self, comm, dtype):
        MPI = _mpi()
        if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
            raise TapegradError(f"comm must be an mpi4py intra-communicator such as "
                                f"MPI.COMM_WORLD, got {comm!r}")
        self.comm, self.nranks, self.rank = comm, comm.Get_size(), comm.Get_rank()
        datatype = {np.dtype(np.float64): MPI.DOUBLE, np.dtype(np.float32): MPI.FLOAT}[dtype]
        proto = _INT_HANDLE if MPI._sizeof(MPI.Comm) == ctypes.sizeof(ctypes.c_int) \
            else _PTR_HANDLE
        self.allreduce = ctypes.cast(ctypes.CDLL(MPI.__file__).MPI_Allreduce, proto)
        self.handles = np.array([int(MPI.IN_PLACE), MPI._handleof(datatype),
                                 MPI._handleof(MPI.SUM), MPI._handleof(comm)], np.int64)


def _mpi():
    """mpi4py's MPI module, initialised at thread level "funneled" if nobody imported it yet."""
    try:
        import mpi4py
    except ImportError:
        raise TapegradError('tapegrad.dist needs mpi4py: pip install "tapegrad[mpi]" '
                            '(or: pip install mpi4py mpich)') from None
    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.thread_level = "funneled"
    from mpi4py import MPI
    return MPI


def _prefix(tape, what):
    from .tape import Tape
    if not isinstance(tape, Tape):
        raise TapegradError(f"{what}: expected a tg.Tape, got {type(tape).__name__}")
    tape._seal()
    return tape._n_params


def broadcast_params(tape, comm, root=0):
    """Copy rank ``root``'s parameter values to every rank (one Bcast of the prefix).

    >>> tg.dist.broadcast_params(tape, MPI.COMM_WORLD)   # doctest: +SKIP
    """
    P = _prefix(tape, "broadcast_params")
    link = Link(comm, tape.dtype)
    if not isinstance(root, (int, np.integer)) or not 0 <= root < link.nranks:
        raise TapegradError(f"broadcast_params: root must be a rank in [0, {link.nranks}), "
                            f"got {root!r}")
    if P:
        comm.Bcast(tape._val[:P], root=int(root))


def allreduce_grads(tape, comm, reduce="mean"):
    """Sum the gradients of every rank in place: one Allreduce over the parameter prefix of
    the gradient arena (``tape`` a Tape), or one per range of an optimizer's parameters
    (``tape`` a tg.optim optimizer). ``reduce="mean"`` then divides by the number of ranks
    -- right for a loss that is a mean over equal shards; with unequal shards record each
    rank's loss as its *sum* divided by the global number of samples and use ``"sum"``.

    >>> loss.backward(); tg.dist.allreduce_grads(tape, comm); opt.step()   # doctest: +SKIP
    """
    from .optim import Optimizer
    if reduce not in _REDUCE:
        raise TapegradError(f"allreduce_grads: reduce must be 'mean' or 'sum', got {reduce!r}")
    if isinstance(tape, Optimizer):
        starts, stops = tape.ranges()
        tape = tape.tape
    else:
        starts, stops = [0], [_prefix(tape, "allreduce_grads")]
    link = Link(comm, tape.dtype)
    MPI = _mpi()
    for a, b in zip(starts, stops):
        g = tape._grad[int(a):int(b)]
        if link.nranks > 1 and g.size:
            comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
            if reduce == "mean":
                g /= link.nranks
