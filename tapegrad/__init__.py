"""tapegrad: reverse-mode autodiff on a flat Wengert tape, replayed by numba-compiled sweeps.

Record once, replay for thousands of steps::

    import numpy as np, tapegrad as tg
    tape = tg.Tape()
    W = tape.param(np.random.randn(3, 1), name="W")
    x = tape.input("x", shape=(8, 3))
    y = tape.input("y", shape=(8, 1))
    loss = tg.mse_loss(x @ W, y)
    tape.forward(x=np.ones((8, 3)), y=np.zeros((8, 1)))
    loss.backward()          # W.grad is filled
"""
__version__ = "0.1.0"  # before the imports: tapegrad._jit keys its cache directory on it

from .errors import (BranchChanged, FeedError, GradcheckError, LinAlgError, NonFiniteError,
                     ShapeError, TapeFormatError, TapegradError)
from .tape import Tape, current_tape
from .var import Var
from .ops import (abs, add, argmax, clip, concatenate, cos, cross_entropy, div, exp, leaky_relu, log,
                  log_softmax, logsumexp, matmul, max, maximum, mean, minimum, mse_loss, mul,
                  neg, pow, relu, reshape, sigmoid, sin, softmax, sqrt, square, stack, sub, sum,
                  tanh, transpose, where)

from . import linalg, nn, optim
from .ops import random
from .ops.gather import expand_dims, repeat, squeeze, take
from .ops.random import dropout
from .ops import avg_pool2d, conv1d, conv2d, max_pool2d
from .fit import fit
from .forward import jacfwd, jvp
from .functional import grad, value_and_grad
from .gradcheck import gradcheck
from .higher import gradients, hessian, hvp, jacobian, jacrev, vjp
from . import tree
from .tree import tree_flatten, tree_leaves, tree_map, tree_structure, tree_unflatten


def __getattr__(name):
    # tg.dist on first use: importing tapegrad never imports mpi4py (an optional extra)
    if name == "dist":
        import importlib
        return importlib.import_module(".dist", __name__)
    raise AttributeError(f"module 'tapegrad' has no attribute {name!r}")


def param(value, name=None):
    """``tape.param`` on the tape of the enclosing ``with tape:`` block."""
    return current_tape("param").param(value, name=name)


def input(name, shape=None, value=None, requires_grad=False):  # noqa: A001
    """``tape.input`` on the tape of the enclosing ``with tape:`` block."""
    return current_tape("input").input(name, shape=shape, value=value,
                                       requires_grad=requires_grad)


def const(value, name=None):
    """``tape.const`` on the tape of the enclosing ``with tape:`` block."""
    return current_tape("const").const(value, name=name)
