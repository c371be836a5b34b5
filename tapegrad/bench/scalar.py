"""The engines of the scalar-graph workload: tapegrad (record once, replay), ``pyobj``
(``Node`` objects), torch, HIPS autograd, and the C anchor. ``run(n, collect=False)`` does n
forward + reverse sweeps; with ``collect`` it returns the check values."""
import os
import re
import shutil
import subprocess
import time

import numpy as np

from .engines import Node
from .workloads import ANCHOR_C, LEAVES, _wsum, scalar_graph


class ScalarTg:
    """tapegrad: record the graph once (float32, like the anchor), replay forward + reverse;
    with ``optimize``, after ``tape.optimize()`` (softplus chains fused, dead code dropped)."""

    def __init__(self, n_ops, dtype=np.float32, optimize=False):
        import tapegrad as tg
        t = time.perf_counter()
        self.tape = tape = tg.Tape(dtype)
        self.leaves = [tape.param(np.array(v, dtype)) for v in LEAVES]

        def softmax4(xs):
            s = tg.softmax(tg.stack(xs))
            return [s[0], s[1], s[2], s[3]]
        self.last = scalar_graph(n_ops, self.leaves, lambda x: tg.log(1.0 + tg.exp(x)),
                                 lambda a, b, c, d: a + b + c + d, lambda a, b: a * b, softmax4)
        if optimize:
            tape.optimize()
        self.record_s = time.perf_counter() - t
        self.n_instr = len(tape)
        self.n_ops = n_ops

    def run(self, n, collect=False):
        tape, last = self.tape, self.last
        for _ in range(n):
            tape.forward()
            last.backward()
        if collect:
            return [float(last.item()), _wsum(float(p.grad) for p in self.leaves),
                    float(sum(float(p.grad) for p in self.leaves))]


class ScalarNodes:
    """pyobj: build the graph of Node objects and backpropagate, every time."""

    def __init__(self, n_ops):
        self.n_ops = n_ops

    def run(self, n, collect=False):
        for _ in range(n):
            leaves = [Node(v) for v in LEAVES]

            def softmax4(xs):
                es = [x.exp() for x in xs]
                s = es[0] + es[1] + es[2] + es[3]
                return [e / s for e in es]
            last = scalar_graph(self.n_ops, leaves, lambda x: (x.exp() + 1.0).log(),
                                lambda a, b, c, d: a + b + c + d, lambda a, b: a * b, softmax4)
            last.backward()
        if collect:
            return [last.data, _wsum(p.grad for p in leaves)]


class ScalarTorch:
    def __init__(self, n_ops):
        import torch
        torch.set_num_threads(1)
        self.torch, self.n_ops = torch, n_ops

    def run(self, n, collect=False):
        torch = self.torch
        for _ in range(n):
            leaves = [torch.tensor(v, dtype=torch.float32, requires_grad=True) for v in LEAVES]
            last = scalar_graph(self.n_ops, leaves, lambda x: torch.log(1 + torch.exp(x)),
                                lambda a, b, c, d: a + b + c + d, lambda a, b: a * b,
                                lambda xs: list(torch.softmax(torch.stack(xs), 0)))
            last.backward()
        if collect:
            return [float(last.detach()),
                    _wsum(0.0 if p.grad is None else float(p.grad) for p in leaves)]


class ScalarAutograd:
    def __init__(self, n_ops):
        import autograd
        import autograd.numpy as anp

        def f(xs):
            def softmax4(v):
                es = [anp.exp(x) for x in v]
                s = es[0] + es[1] + es[2] + es[3]
                return [e / s for e in es]
            return scalar_graph(n_ops, xs, lambda x: anp.log(1.0 + anp.exp(x)),
                                lambda a, b, c, d: a + b + c + d, lambda a, b: a * b, softmax4)
        self.vg = autograd.value_and_grad(f)
        self.n_ops = n_ops

    def run(self, n, collect=False):
        for _ in range(n):
            val, g = self.vg([np.float32(v) for v in LEAVES])
        if collect:
            return [float(val), _wsum(float(v) for v in g)]


def compile_anchor(tmp):
    if not os.path.exists(ANCHOR_C) or shutil.which("gcc") is None:
        return None
    exe = os.path.join(tmp, "scalar_graph_tape")
    r = subprocess.run(["gcc", "-O2", "-o", exe, ANCHOR_C, "-lm"], capture_output=True,
                       text=True)
    return exe if r.returncode == 0 else None


class CAnchor:
    """The C switch interpreter; each timed block is one run of the executable."""

    def __init__(self, exe, n_ops, iters):
        self.exe, self.n_ops, self.iters = exe, n_ops, iters

    def ns_per_op(self, iters=None):
        out = subprocess.run([self.exe, str(self.n_ops), str(iters or self.iters)],
                             capture_output=True, text=True, check=True).stdout
        return float(re.search(r"ns_per_op_fwd_bwd=([0-9.]+)", out).group(1)), \
            float(re.search(r"sink=(\S+)", out).group(1))
