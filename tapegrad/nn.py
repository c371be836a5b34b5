"""Small building blocks: ``Linear`` and ``MLP`` with PyTorch's default initialisation.

Weights are stored as ``(in_features, out_features)`` so a layer is ``x @ W + b``; they are
drawn from U(-1/sqrt(in), 1/sqrt(in)) like ``torch.nn.Linear`` (its kaiming-uniform with
a = sqrt(5) reduces to that bound), from the generator (or seed) ``rng``.
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
