#!/usr/bin/env python3
"""Fits the erf coefficients in shaders/gelu.wgsl and checks them in simulated f32.

Three pieces on a = |x|, each a least-squares polynomial fit in f64 at Chebyshev nodes
(close to minimax for smooth functions), using only multiplies and adds on the GPU so
accuracy does not hang on the driver's exp():
  a < 0.875       erf(x)  = x + x * S(x^2)            S(u) ~ erf(sqrt u)/sqrt u - 1
  0.875 <= a < 2  erfc(a) = M(a - 1.4375)
  2 <= a < 4      erfc(a) = T(a - 3)
  a >= 4          erfc(a) = 0 (erfc(4) = 1.5e-8 is below half an f32 ulp of 1)
Then evaluates the same Horner scheme in float32 (as the shader does) on a dense grid
against math.erf and prints the WGSL bodies. Needs numpy.  Usage: python3 tools/fit_erf.py
"""
import math

import numpy as np

PIECES = [  # name, variable, target, lo, hi, centre, degree
    ("S", "u", lambda a: math.erf(a) / a - 1.0, 1e-6, 0.875, None, 6),
    ("M", "t", math.erfc, 0.875, 2.0, 1.4375, 10),
    ("T", "t", math.erfc, 2.0, 4.0, 3.0, 11),
]


def fit(f, lo, hi, centre, deg, n=4000):
    k = np.arange(n)
    a = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.cos(np.pi * (k + 0.5) / n)
    t = a * a if centre is None else a - centre
    c, *_ = np.linalg.lstsq(np.vander(t, deg + 1, increasing=True), [f(v) for v in a], rcond=None)
    return c.astype(np.float32)  # what the shader's f32 literals round to


def horner(c, t):
    r = np.full_like(t, c[-1])
    for ck in c[-2::-1]:
        r = r * t + ck
    return r


def erf32(x, coef):
    x = np.asarray(x, np.float32)
    a = np.abs(x)
    np.seterr(over="ignore", invalid="ignore")  # out-of-range pieces are discarded below
    s, m, t = coef
    small = x + x * horner(s, x * x)
    mid = horner(m, a - np.float32(1.4375))
    tail = horner(t, a - np.float32(3.0))
    erfc = np.where(a < 2, mid, np.where(a < 4, tail, np.float32(0)))
    big = np.copysign(np.float32(1) - erfc.astype(np.float32), x)
    return np.where(a < 0.875, small, big).astype(np.float32)


def main():
    coef = [fit(f, lo, hi, c, d) for _, _, f, lo, hi, c, d in PIECES]
    x = np.concatenate([np.arange(-6.0, 6.0, 1e-4), np.geomspace(1e-30, 1e30, 2000)])
    x = np.concatenate([x, -x]).astype(np.float32)
    ref = np.array([math.erf(float(v)) for v in x])
    err = np.abs(erf32(x, coef).astype(np.float64) - ref)
    print(f"// max abs error in simulated f32: {err.max():.3e} at x = {x[err.argmax()]}")
    for (name, var, *_), c in zip(PIECES, coef):
        print(f"// {name}({var})")
        print(f"    var r = {float(c[-1]):.9e};")
        for ck in c[-2::-1]:
            print(f"    r = r * {var} + {float(ck):.9e};")


if __name__ == "__main__":
    main()
