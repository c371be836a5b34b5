"""tanh and its first six derivatives by nesting tg.grad (HIPS autograd's tanh example).

    python examples/tanh_derivatives.py     # writes tanh_derivatives.png

Each ``tg.grad`` called with Vars records onto their tape, so six nested calls put the sixth
derivative on one tape, recorded once and replayed. Since ``tanh(x).sum()`` has the
elementwise derivative as its gradient, a whole grid is differentiated at once. The first
three are checked against closed forms.
"""
import sys
from pathlib import Path

import numpy as np

try:
    import tapegrad as tg
except ImportError:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tapegrad as tg

x = np.linspace(-7, 7, 400)
fs = [lambda v: tg.tanh(v)]
for _ in range(6):
    fs.append((lambda f: lambda v: tg.grad(lambda w: f(w).sum())(v))(fs[-1]))
ys = [tg.grad(lambda v, f=f: f(v).sum())(x) for f in fs[:-1]]  # derivatives 1 .. 6
t = np.tanh(x)
closed = [1 - t ** 2, -2 * t * (1 - t ** 2), (1 - t ** 2) * (6 * t ** 2 - 2)]
for k, (got, want) in enumerate(zip(ys, closed), 1):
    err = np.max(np.abs(got - want))
    print(f"derivative {k}: max |tapegrad - closed form| = {err:.1e}")
    assert err < 1e-12
print("max |derivative 6| on the grid:", f"{np.max(np.abs(ys[-1])):.3f}")

try:
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit(0)
plt.figure(figsize=(7, 4))
plt.plot(x, t, label="tanh")
for k, y in enumerate(ys, 1):
    plt.plot(x, y, label=f"derivative {k}")
plt.legend(fontsize=7)
plt.axis("off")
plt.savefig("tanh_derivatives.png", dpi=120, bbox_inches="tight")
print("wrote tanh_derivatives.png")
