"""How fast is replay? Compile/load time of the sweeps, and the cost per instruction.

Records a tape of 10,000 scalar instructions (alternating sin and products of earlier
nodes), then times forward and reverse replays (medians). The first replay in a process
compiles the sweeps (or loads them from numba's on-disk cache); run it twice to see both.

    python examples/replay_speed.py
"""
import time

t0 = time.perf_counter()
import numpy as np  # noqa: E402

import tapegrad as tg  # noqa: E402

t_import = time.perf_counter() - t0

N = 10_000
tape = tg.Tape()
nodes = [tape.param(np.array([0.01 * i])) for i in range(100)]
t1 = time.perf_counter()
for k in range(N):  # the first op compiles (or loads) the forward sweep
    nodes.append(nodes[-1] * nodes[-7] if k % 2 else tg.sin(nodes[-3]))
t_record = time.perf_counter() - t1
out = nodes[-1]
t2 = time.perf_counter()
out.backward()  # compiles (or loads) the reverse sweep
t_first_backward = time.perf_counter() - t2

fwd, rev = [], []
for _ in range(50):
    a = time.perf_counter()
    tape.forward()
    b = time.perf_counter()
    out.backward()
    fwd.append(b - a)
    rev.append(time.perf_counter() - b)
f, r = np.median(fwd) / len(tape), np.median(rev) / len(tape)
print(f"import tapegrad: {t_import:.2f} s; recording {len(tape)} instructions: {t_record:.2f} s "
      f"(includes compiling or loading the forward sweep); first backward: "
      f"{t_first_backward:.2f} s")
print(f"replay of {len(tape)} scalar instructions: forward {1e9 * f:.1f} ns, reverse "
      f"{1e9 * r:.1f} ns, forward+reverse {1e9 * (f + r):.1f} ns per instruction "
      f"(median of 50)")
