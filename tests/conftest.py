"""The suite runs the compiled sweeps: the Python tier (tapegrad/tier.py) would start compile
workers in every test process and run big tapes as Python. tests/test_tier.py turns it on
where it tests it."""
import os

os.environ.setdefault("TAPEGRAD_TIER", "off")
