"""The exceptions tapegrad raises, and the helper that finds the user's source line.

Every message names the op, the shapes or names involved and the ``file:line`` of the user's
code that recorded the op, so an error in a model of a thousand ops points at one line.
"""
import os
import sys

import numpy as np

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


class LinAlgError(TapegradError, np.linalg.LinAlgError):
    """A singular matrix (``tg.linalg.solve``, ``inv``, ``solve_triangular``) or one that is
    not positive definite (``cholesky``), when recorded or replayed."""


class TapeFormatError(TapegradError, ValueError):
    """A saved tape that is malformed or fails validation."""


class GradcheckError(TapegradError, AssertionError):
    """Reverse-mode gradient and finite differences disagree."""


class UnknownNameError(TapegradError, KeyError):
    """``tape[name]`` with a name the tape does not have."""

    def __str__(self):  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


_inside = {}      # code filename -> is it a file of the tapegrad package?
_site_index = {}  # (id(code), line) -> site id
_sites = ["<unknown>"]  # site id -> (code, line), or the text itself (loaded tapes)


def site_id():
    """A small integer naming the innermost caller outside the tapegrad package.

    Recording keeps this per instruction and per buffer; the ``file:line`` text is made only
    when an error message or a listing needs it (``site_text``). The code object is kept
    alive in ``_sites``, so its ``id`` stays unique. The walk starts at the caller's caller:
    the caller (``Tape._emit`` or ``_new_buffer``) is always inside the package.
    """
    f = sys._getframe(2)
    inside = _inside
    while f is not None:
        code = f.f_code
        fn = code.co_filename
        i = inside.get(fn)
        if i is None:
            i = inside[fn] = os.path.abspath(fn).startswith(_PKG_DIR + os.sep)
        if not i:
            key = (id(code), f.f_lineno)
            s = _site_index.get(key)
            if s is None:
                s = _site_index[key] = len(_sites)
                _sites.append((code, f.f_lineno))
            return s
        f = f.f_back
    return 0


def site_text(s):
    """``file:line`` of site ``s``."""
    e = _sites[s]
    if isinstance(e, str):
        return e
    return f"{os.path.basename(e[0].co_filename)}:{e[1]}"


def intern_site(text):
    """The site id of a ``file:line`` text (used when loading a saved tape)."""
    s = _site_index.get(text)
    if s is None:
        s = _site_index[text] = len(_sites)
        _sites.append(text)
    return s


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
