"""The exceptions tapegrad raises, and the helper that finds the user's source line.

Every message names the op, the shapes or names involved and the ``file:line`` of the user's
code that recorded the op, so an error in a model of a thousand ops points at one line.
"""
import os
import sys

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


class TapegradError(Exception):
    """Base class of every error tapegrad raises on purpose."""


class ShapeError(TapegradError, ValueError):
    """Operand shapes that an op cannot combine (broadcasting, matmul, axes, indices)."""


class FeedError(TapegradError, ValueError):
    """A feed to ``tape.forward`` / ``tg.fit`` with an unknown name, wrong shape or dtype."""


class BranchChanged(TapegradError):
    """A replay took a different branch than the one recorded by ``bool(var)``."""


class NonFiniteError(TapegradError, FloatingPointError):
    """``check_finite=True`` found NaN or Inf; names the first op that produced it."""


class TapeFormatError(TapegradError, ValueError):
    """A saved tape that is malformed or fails validation."""


class GradcheckError(TapegradError, AssertionError):
    """Reverse-mode gradient and finite differences disagree."""


class UnknownNameError(TapegradError, KeyError):
    """``tape[name]`` with a name the tape does not have."""

    def __str__(self):  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


_inside = {}  # code filename -> is it a file of the tapegrad package?


def user_site():
    """``file:line`` of the innermost caller outside the tapegrad package."""
    f = sys._getframe(1)
    while f is not None:
        fn = f.f_code.co_filename
        inside = _inside.get(fn)
        if inside is None:
            inside = _inside[fn] = os.path.abspath(fn).startswith(_PKG_DIR + os.sep)
        if not inside:
            return f"{os.path.basename(fn)}:{f.f_lineno}"
        f = f.f_back
    return "<unknown>"
