"""micrograd's tanh neuron on a tape: o = tanh(x1*w1 + x2*w2 + b).

With x1=2, x2=0, w1=-3, w2=1, b=6.8813735870195432 micrograd prints o = 0.7071 and the
gradients dx1=-1.5, dw1=1.0, dx2=0.5, dw2=0.0; this script prints the same from tapegrad,
then writes the tape as a Graphviz graph with values and gradients (neuron.dot, plus
neuron.png when the graphviz `dot` program is installed).

    python examples/neuron.py
"""
import shutil
import sys
from pathlib import Path

import numpy as np

try:
    import tapegrad as tg
except ImportError:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tapegrad as tg

tape = tg.Tape()
# inputs made with requires_grad=True get gradients too, like micrograd's leaf Values
x1 = tape.input("x1", value=np.array(2.0), requires_grad=True)
x2 = tape.input("x2", value=np.array(0.0), requires_grad=True)
w1 = tape.param(np.array(-3.0), name="w1")
w2 = tape.param(np.array(1.0), name="w2")
b = tape.param(np.array(6.8813735870195432), name="b")

x1w1 = x1 * w1; x1w1.name = "x1*w1"
x2w2 = x2 * w2; x2w2.name = "x2*w2"
n = x1w1 + x2w2 + b; n.name = "n"
o = tg.tanh(n); o.name = "o"
o.backward()

print(f"o   = {o.item():.4f}")
for v in (x1, w1, x2, w2, b):
    print(f"d{v.name:<3}= {v.grad.item(): .4f}")

print()
print(tape)                                   # the listing: one line per instruction

dot = tape.to_dot(values=True, grads=True)
Path("neuron.dot").write_text(dot)
print("wrote neuron.dot")
if shutil.which("dot"):
    print("wrote", tape.render("neuron.png"))
else:
    print("graphviz `dot` not found: render with  dot -Tpng neuron.dot -o neuron.png")
