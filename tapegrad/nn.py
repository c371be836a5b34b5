"""Small building blocks: ``Linear``, ``MLP`` and ``Conv2d`` with PyTorch's default
initialisation.

Linear weights are stored as ``(in_features, out_features)`` so a layer is ``x @ W + b``; they
are drawn from U(-1/sqrt(in), 1/sqrt(in)) like ``torch.nn.Linear`` (its kaiming-uniform with
a = sqrt(5) reduces to that bound), from the generator (or seed) ``rng``. ``Conv2d`` keeps
torch's ``(out_channels, in_channels, kh, kw)`` layout and bound 1/sqrt(in_channels*kh*kw).
"""
import numpy as np

from . import ops
from .errors import TapegradError


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


class Linear:
    """``y = x @ W + b``.

    >>> tape = tg.Tape(); layer = tg.nn.Linear(tape, 3, 2, rng=0)   # doctest: +SKIP
    >>> y = layer(tape.input("x", shape=(5, 3)))                    # doctest: +SKIP
    """

    def __init__(self, tape, in_features, out_features, bias=True, rng=None, name=None):
        if in_features < 1 or out_features < 1:
            raise TapegradError(f"Linear({in_features}, {out_features}): sizes must be >= 1")
        rng = _rng(rng)
        bound = 1.0 / np.sqrt(in_features)
        name = name or f"linear{len(tape.params)}"
        self.W = tape.param(rng.uniform(-bound, bound, (in_features, out_features)),
                            name=f"{name}.W")
        self.b = (tape.param(rng.uniform(-bound, bound, out_features), name=f"{name}.b")
                  if bias else None)

    def __call__(self, x):
        y = ops.matmul(x, self.W)
        return y if self.b is None else ops.add(y, self.b)

    @property
    def params(self):
        return [self.W] + ([self.b] if self.b is not None else [])


class MLP:
    """Linear layers of ``sizes`` with ``activation`` between them (not after the last).

    >>> mlp = tg.nn.MLP(tape, [1, 64, 64, 1],
    ...                 activation=lambda v: tg.leaky_relu(v, 0.1), rng=0)  # doctest: +SKIP
    """

    def __init__(self, tape, sizes, activation=ops.relu, rng=None, name=None):
        sizes = list(sizes)
        if len(sizes) < 2:
            raise TapegradError(f"MLP: sizes needs at least two entries, got {sizes}")
        rng = _rng(rng)
        name = name or f"mlp{len(tape.params)}"
        self.layers = [Linear(tape, a, b, rng=rng, name=f"{name}.{i}")
                       for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
        self.activation = activation

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x

    @property
    def params(self):
        return [p for layer in self.layers for p in layer.params]


class Conv2d:
    """``y = conv2d(x, W, b, stride, padding)`` on NCHW (or CHW) inputs.

    >>> conv = tg.nn.Conv2d(tape, 1, 8, 3, padding=1, rng=0)      # doctest: +SKIP
    >>> h = tg.relu(conv(tape.input("x", shape=(64, 1, 8, 8))))   # doctest: +SKIP
    """

    def __init__(self, tape, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 bias=True, rng=None, name=None):
        kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
        if min(in_channels, out_channels, kh, kw) < 1:
            raise TapegradError(f"Conv2d({in_channels}, {out_channels}, {kernel_size}): sizes "
                                f"must be >= 1")
        rng = _rng(rng)
        bound = 1.0 / np.sqrt(in_channels * kh * kw)
        name = name or f"conv{len(tape.params)}"
        self.W = tape.param(rng.uniform(-bound, bound, (out_channels, in_channels, kh, kw)),
                            name=f"{name}.W")
        self.b = (tape.param(rng.uniform(-bound, bound, out_channels), name=f"{name}.b")
                  if bias else None)
        self.stride, self.padding = stride, padding

    def __call__(self, x):
        return ops.conv2d(x, self.W, self.b, stride=self.stride, padding=self.padding)

    @property
    def params(self):
        return [self.W] + ([self.b] if self.b is not None else [])
