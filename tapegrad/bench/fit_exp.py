"""Fits the polynomial coefficients of ``tapegrad.ops._vmath``'s exponentials (``vexp``,
``vtanh``, ``vsigmoid``).

    python -m tapegrad.bench.fit_exp               # both fits, printed as the kernel's constants
    python -m tapegrad.bench.fit_exp f64 9         # one fit of a chosen degree of P

``exp(x) = 2**k exp(r)``, ``|r| <= ln2 / 2`` (a little more: the rounding of ``k``), and

    expm1(r) = r + r**2 / 2 + r**3 P(r),    exp(r) = 1 + expm1(r),

one ``P`` for both (``_exp64`` and ``_expm1_pos64``, which ``vtanh`` uses near 0), of degree 8
for float64 and 3 for float32: polynomials of degree 11 and 6 (Taylor's needed 13 and 7). The
1/2 is kept exact (fitting it too, its rounding doubled the float64 error). ``P`` is fitted to
the relative error of ``expm1`` -- the stricter of the two: ``r**3 / |expm1(r)|`` > ``r**3 /
exp(r)`` on the interval -- nearly minimax, by ``fit_log.fit`` (Lawson's iteration, 50 digits,
mpmath). Printed: the bound of the exact fit and the relative errors of expm1 and exp with the
coefficients rounded to the kernel's precision (evaluated exactly; the kernel's arithmetic adds
its roundings, ``tests/test_transcendental.py`` measures the whole).
"""
import numpy as np

try:
    import mpmath  # noqa: F401  (fit_log's arithmetic)
except ImportError:  # a maintainer's tool, not a dependency of tapegrad
    raise SystemExit("tapegrad.bench.fit_exp needs mpmath: pip install mpmath") from None

from tapegrad.bench.fit_log import fits, mp, relative_error  # noqa: E402

R_HI = mp.log(2) / 2 * (1 + mp.mpf("1e-5"))
SAMPLES = 20000                 # (even: 0, where the relative error is 0 / 0, is not one)


class _ExpForm:
    """expm1(r) = r + r**2 / 2 + r**3 P(r) on [-R_HI, R_HI]."""
    lo, hi = -R_HI, R_HI

    @staticmethod
    def target(r):  # P*(r), by its series near 0
        if abs(r) < mp.mpf("1e-12"):
            return mp.mpf(1) / 6 + r / 24
        return (mp.expm1(r) - r - r * r / 2) / r ** 3

    @staticmethod
    def scale(r):  # an error in P -> the relative error of expm1
        return abs(r ** 3 / mp.expm1(r)) if r else mp.mpf(0)

    @staticmethod
    def value(r, p):  # expm1
        return r + r * r / 2 + r ** 3 * p, mp.expm1(r)


class _ExpOfForm(_ExpForm):
    """The same P in exp(r) = 1 + r + r**2 / 2 + r**3 P(r) (only to print its error)."""
    @staticmethod
    def value(r, p):
        return 1 + r + r * r / 2 + r ** 3 * p, mp.exp(r)


class F64Form(_ExpForm):
    dtype, degree = np.float64, 8


class F32Form(_ExpForm):
    dtype, degree = np.float32, 3


FORMS = {"f64": F64Form, "f32": F32Form}


def main(argv=None):
    for name, form, degree, bound, qr in fits(FORMS, argv):
        eps, bits = float(np.finfo(form.dtype).eps) / 2, np.finfo(form.dtype).nmant + 1
        em1 = mp.nstr(relative_error(form, qr, SAMPLES), 3)
        ex = mp.nstr(relative_error(_ExpOfForm, qr, SAMPLES), 3)
        print(f"{name}: P of degree {degree} (exp's polynomial of degree {degree + 3}): fitted "
              f"relative error of expm1 {mp.nstr(bound, 3)}; rounded to {form.dtype.__name__}: "
              f"expm1 {em1}, exp {ex} (2**-{bits} = {eps:.3g})")
        print("    " + ", ".join(repr(float(c)) for c in qr))


if __name__ == "__main__":
    main()
