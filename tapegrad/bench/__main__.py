"""``python -m tapegrad.bench``."""
import sys

from . import main

sys.exit(main())
