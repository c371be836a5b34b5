"""The README's Python examples run as written."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    final = float(re.search(r"^loss ([0-9.e+-]+) ", out, re.M).group(1))
    assert final < 1e-6  # the quick start's regression converges
    start, end = map(float, re.search(r"loss ([0-9.]+) -> ([0-9.]+)", out).groups())
    assert end < 0.1 * start  # the training example learns
