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


class _InPackage(dict):
    """code filename -> is it a file of the tapegrad package (computed once per file)."""

    def __missing__(self, filename):
        inside = self[filename] = os.path.abspath(filename).startswith(_PKG_DIR + os.sep)
        return inside


_inside = _InPackage()
_sites = ["<unknown>"]  # site id -> (code, line), or the text itself (loaded tapes)
_by_code = {}           # id(code) -> {f_lasti: site id}; the code object is kept in _sites
_last = (None, None)    # the code object of the latest site and its dict: a loop recording
                        # from one function finds its sites without hashing the code (one
                        # tuple, replaced whole, so threads recording at once never mix them)
_by_text = {}           # a loaded site's text -> site id
_getframe = sys._getframe


def site_id():
    """A small integer naming the innermost caller outside the tapegrad package.

    Recording keeps this per instruction and per buffer; the ``file:line`` text is made only
    when an error message or a listing needs it (``site_text``). A site is a call site: the
    code object and the offset of its call instruction (``f_lasti``: reading it is cheap,
    computing ``f_lineno`` is not, so the line is computed once per site). The walk starts
    at the caller of site_id's caller: that caller (``Tape._emit``, ``_rec``,
    ``_new_buffer``) is a private method, always called from inside the package.
    """
    try:
        f = _getframe(3)
    except ValueError:  # a stack that shallow: a recorder called from the top level
        f = _getframe(2)
    code = f.f_code
    while _inside[code.co_filename]:
        f = f.f_back
        if f is None:
            return 0
        code = f.f_code
    global _last
    last = _last
    if code is last[0]:
        by_lasti = last[1]
    else:
        by_lasti = _by_code.get(id(code))
        if by_lasti is None:  # a new code object: its first site is appended below
            by_lasti = _by_code[id(code)] = {}
        _last = (code, by_lasti)
    s = by_lasti.get(f.f_lasti)
    if s is None:
        s = by_lasti[f.f_lasti] = len(_sites)
        _sites.append((code, f.f_lineno))
    return s


def site_text(s):
    """``file:line`` of site ``s``."""
    e = _sites[s]
    if isinstance(e, str):
        return e
    return f"{os.path.basename(e[0].co_filename)}:{e[1]}"


def intern_site(text):
    """The site id of a ``file:line`` text (used when loading a saved tape)."""
    s = _by_text.get(text)
    if s is None:
        s = _by_text[text] = len(_sites)
        _sites.append(text)
    return s


def user_site():
    """``file:line`` of the innermost caller outside the tapegrad package."""
    f = _getframe(1)
    while f is not None:
        fn = f.f_code.co_filename
        if not _inside[fn]:
            return f"{os.path.basename(fn)}:{f.f_lineno}"
        f = f.f_back
    return "<unknown>"
