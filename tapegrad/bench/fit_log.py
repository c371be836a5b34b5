"""Fits the polynomial coefficients of ``tapegrad.ops._vmath``'s logarithms (``vlog``).

    python -m tapegrad.bench.fit_log               # both fits, printed as the kernel's constants
    python -m tapegrad.bench.fit_log f32 7         # one fit of a chosen degree

``m`` in ``[sqrt(1/2), sqrt(2))``, ``f = m - 1``:

* ``f32``: ``log(1 + f) = f - f**2 / 2 + f**3 Q(f)``, ``Q`` of degree 7 in ``f`` (no division);
* ``f64``: ``log(1 + f) = 2 atanh(s) = 2 s + s z Q(z)``, ``s = f / (2 + f)``, ``z = s**2`` in
  ``[0, (3 - 2 sqrt 2)**2]``, ``Q`` of degree 6 in ``z`` (the atanh series ``2/3 + 2z/5 + ...``
  needs degree 8 for the same error).

Each ``Q`` is fitted to the *relative* error of the logarithm it gives, nearly minimax:
Lawson's iteratively reweighted least squares (each weight multiplied by that node's error,
then normalised) over 400 Chebyshev nodes of the interval, in 50-digit arithmetic (mpmath),
from a plain least-squares start. The coefficients are then rounded to the kernel's precision
and the error of the rounded polynomial, evaluated exactly, printed with the bound of the exact
fit (the kernel's own arithmetic adds its roundings on top; ``tests/test_transcendental.py``
measures the whole).
"""
import sys

import numpy as np

try:
    import mpmath as mp
except ImportError:  # a maintainer's tool, not a dependency of tapegrad
    raise SystemExit("tapegrad.bench.fit_log needs mpmath: pip install mpmath") from None

mp.mp.dps = 50
F_LO, F_HI = mp.sqrt(mp.mpf(1) / 2) - 1, mp.sqrt(mp.mpf(2)) - 1
Z_HI = (3 - 2 * mp.sqrt(2)) ** 2      # s = f / (2 + f) at f = sqrt(2) - 1 (and -s at the low end)


class F32Form:
    """log(1 + f) = f - f**2/2 + f**3 Q(f)."""
    lo, hi, dtype, degree = F_LO, F_HI, np.float32, 7

    @staticmethod
    def target(f):  # Q*(f), by its series near 0
        if abs(f) < mp.mpf("1e-12"):
            return mp.mpf(1) / 3 - f / 4
        return (mp.log1p(f) - f + f * f / 2) / f ** 3

    @staticmethod
    def scale(f):  # |d log / d Q| / |log|: an error in Q -> relative error of the log
        return abs(f ** 3 / mp.log1p(f))

    @staticmethod
    def value(f, q):
        return f - f * f / 2 + f ** 3 * q, mp.log1p(f)


class F64Form:
    """log(1 + f) = 2 s + s z Q(z), z = s**2."""
    lo, hi, dtype, degree = mp.mpf(0), Z_HI, np.float64, 6

    @staticmethod
    def target(z):
        if z < mp.mpf("1e-30"):
            return mp.mpf(2) / 3 + 2 * z / 5
        s = mp.sqrt(z)
        return (2 * mp.atanh(s) - 2 * s) / (s * z)

    @staticmethod
    def scale(z):
        return z / 2 if z else mp.mpf(0)   # s z / (2 atanh s), to first order

    @staticmethod
    def value(z, q):
        s = mp.sqrt(z)
        return 2 * s + s * z * q, 2 * mp.atanh(s)


FORMS = {"f32": F32Form, "f64": F64Form}


def fit(form, degree, nodes=400, iterations=50):
    """The coefficients q_0..q_degree (lowest first) as mpf, and the relative error bound."""
    LO, HI = form.lo, form.hi
    xs = [(LO + HI) / 2 + (HI - LO) / 2 * mp.cos(mp.pi * (2 * i + 1) / (2 * nodes))
          for i in range(nodes)]
    ys = [form.target(f) for f in xs]
    scale = [form.scale(f) for f in xs]  # error in Q -> relative error
    A = mp.matrix([[f ** j for j in range(degree + 1)] for f in xs])
    w = [mp.mpf(1) / nodes] * nodes
    for _ in range(iterations):
        sw = [mp.sqrt(wi) * si for wi, si in zip(w, scale)]
        Aw = mp.matrix(nodes, degree + 1)
        bw = mp.matrix(nodes, 1)
        for i in range(nodes):
            for j in range(degree + 1):
                Aw[i, j] = A[i, j] * sw[i]
            bw[i] = ys[i] * sw[i]
        q = mp.qr_solve(Aw, bw)[0]
        err = [abs(sum(q[j] * xs[i] ** j for j in range(degree + 1)) - ys[i]) * scale[i]
               for i in range(nodes)]
        w = [wi * ei for wi, ei in zip(w, err)]
        total = sum(w)
        w = [wi / total for wi in w]
    return [q[j] for j in range(degree + 1)], max(err)


def relative_error(form, coeffs, samples=20001):
    """max |log - its polynomial form| / |log| over the interval, with the coefficients as
    given (floats: exactly as rounded)."""
    worst = mp.mpf(0)
    for i in range(1, samples):
        t = form.lo + (form.hi - form.lo) * i / (samples - 1)
        q = mp.mpf(0)
        for c in reversed(coeffs):
            q = q * t + mp.mpf(float(c))
        got, want = form.value(t, q)
        worst = max(worst, abs((got - want) / want))
    return worst


def fits(forms, argv=None):
    """``(name, form, degree, fitted bound, coefficients rounded to the form's dtype)`` of
    each form the command line names (``[name [degree]]``; default: every form, its own
    degree)."""
    argv = sys.argv[1:] if argv is None else argv
    for name in argv[:1] or list(forms):
        form = forms[name]
        degree = int(argv[1]) if len(argv) > 1 else form.degree
        q, bound = fit(form, degree)
        yield name, form, degree, bound, [form.dtype(float(c)) for c in q]


def main(argv=None):
    for name, form, degree, bound, qr in fits(FORMS, argv):
        eps = float(np.finfo(form.dtype).eps) / 2
        print(f"{name}: Q of degree {degree}: fitted relative error {mp.nstr(bound, 3)}, "
              f"rounded to {form.dtype.__name__}: {mp.nstr(relative_error(form, qr), 3)} "
              f"(2**-{np.finfo(form.dtype).nmant + 1} = {eps:.3g})")
        print("    " + ", ".join(repr(float(c)) for c in qr))


if __name__ == "__main__":
    main()
