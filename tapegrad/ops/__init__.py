"""The ops: each module holds the shape rules (Python, run while recording) and the forward
and reverse kernels (numba, inlined into ``tapegrad.sweep``) of a family of ops."""
from .elementwise import (abs, add, argmax, clip, cos, div, eq, exp, ge, gt, le, leaky_relu,
                          log, lt, maximum, minimum, mul, ne, neg, pow, relu, sigmoid, sin, sqrt,
                          square, sub, tanh, where)
from .gather import expand_dims, repeat, squeeze, take
from .conv import avg_pool2d, conv1d, conv2d, max_pool2d
from .linalg import matmul
from .loss import cross_entropy, mse_loss
from .reduce import log_softmax, logsumexp, max, mean, softmax, sum
from .shape import concatenate, index, reshape, stack, transpose

__all__ = ["abs", "add", "argmax", "avg_pool2d", "clip", "concatenate", "conv1d", "conv2d", "cos",
           "cross_entropy", "div", "eq", "exp", "expand_dims", "ge", "gt", "index", "le",
           "leaky_relu", "log", "log_softmax", "logsumexp", "lt", "matmul", "max", "max_pool2d",
           "maximum", "mean", "minimum", "mse_loss", "mul", "ne", "neg", "pow", "relu", "reshape",
           "sigmoid", "sin", "softmax", "sqrt", "square", "stack", "sub", "sum", "tanh",
           "transpose", "where", "take", "repeat", "squeeze"]
