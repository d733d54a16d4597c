#!/usr/bin/env python3
"""Fits the erf / normal-CDF coefficients in shaders/gelu.wgsl and checks them in f32.

Every piece is a least-squares polynomial fit in f64 at Chebyshev nodes (close to minimax),
weighted for relative error, with the coefficients then rounded to f32:
  S  |x| < 0.875:       erf(x)  = x + x * S(x^2)
  M  0.875 <= a < 1.25: erfc(a) = M(a - 1.0625)
  T  1.25 <= a < 9:     erfc(a) = exp(-a^2) * T(1 / a)
  E  -0.5 <= r <= 0.6:  exp(-r) = E(r)
  a >= 9:               erfc(a) = 0 (erfc(9) = 4e-37)
The shader's exp(-v^2) (exp_neg_sq) splits v = h + (v - h), h with 12 significant bits, so
that v^2 = hi + lo with hi = h^2 exact; then k = round(hi / ln 2) and
r = (hi - k LN2_HI) - k LN2_LO + lo, where LN2_HI has 9 significant bits, so k LN2_HI and
hi - k LN2_HI are exact; exp(-v^2) = 2^-k E(r) with 2^-k from ldexp. No step subtracts
nearly equal rounded values, so a compiler reassociating float math cannot spoil it, and
no lane indexes a table (a per-lane gather on CPU-like adapters).
Then it runs the shader's arithmetic in float32 over a dense grid and prints the max abs
error of erf, the max relative error of Phi(x) = 0.5 erfc(-x / sqrt 2) and of
exp(-x^2 / 2), and the WGSL Horner lines.  Needs numpy.  Usage: python3 tools/fit_erf.py
"""
import math

import numpy as np

PIECES = [  # name, variable, target, lo, hi, variable map, degree
    ("S", "u", lambda a: math.erf(a) / a - 1.0, 1e-6, 0.875, lambda a: a * a, 6),
    ("M", "t", math.erfc, 0.875, 1.25, lambda a: a - 1.0625, 8),
    ("T", "t", lambda a: math.erfc(a) * math.exp(a * a), 1.25, 9.0, lambda a: 1.0 / a, 11),
    ("E", "r", lambda r: math.exp(-r), -0.5, 0.6, lambda r: r, 9),
]
F = np.float32
LOG2E = F(1.4426950408889634)
LN2_HI = F(0.693359375)  # 355 / 512: 9 significant bits
LN2_LO = F(math.log(2) - 0.693359375)


def fit(f, lo, hi, var, deg, n=4000):
    k = np.arange(n)
    a = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.cos(np.pi * (k + 0.5) / n)
    y = np.array([f(v) for v in a])
    V = np.vander(var(a), deg + 1, increasing=True)
    c, *_ = np.linalg.lstsq(V / np.abs(y)[:, None], np.sign(y), rcond=None)
    return c.astype(F)  # what the shader's f32 literals round to


def horner(c, t):
    r = np.full_like(t, c[-1])
    for ck in c[-2::-1]:
        r = r * t + ck
    return r


def exp_neg_sq(v, s, E):
    """exp(-s v^2) as the shader does it (s a power of two, s v^2 <= 87)."""
    h = (v.view(np.uint32) & np.uint32(0xFFFFF000)).view(F)
    hi, lo = s * (h * h), s * ((v - h) * (v + h))
    k = np.round(hi * LOG2E)
    r = (hi - k * LN2_HI) - k * LN2_LO + lo
    return np.ldexp(horner(E, r), -k.astype(np.int32)).astype(F)


def erfc_large(a, e, coef):
    """erfc(a) for a >= 0.875, given e = exp(-a^2) from the caller."""
    _, m, t, _ = coef
    mid = horner(m, a - F(1.0625))
    tail = e * horner(t, F(1) / a)
    return np.where(a < 1.25, mid, np.where(a < 9, tail, F(0)))


def erf32(x, coef):
    a = np.abs(x)
    ac = np.minimum(a, F(9))
    c = erfc_large(ac, exp_neg_sq(ac, F(1), coef[3]), coef)
    small = x + x * horner(coef[0], x * x)
    return np.where(a < 0.875, small, np.copysign(F(1) - c, x))


def norm_cdf32(x, coef):
    z = x * F(0.7071067811865476)
    a = np.abs(z)
    c = F(0.5) * erfc_large(np.minimum(a, F(9)), exp_neg_sq(np.minimum(np.abs(x), F(13)), F(0.5), coef[3]), coef)
    small = F(0.5) + F(0.5) * (z + z * horner(coef[0], z * z))
    return np.where(a < 0.875, small, np.where(z < 0, c, F(1) - c))


def main():
    np.seterr(all="ignore")  # pieces evaluated outside their range are discarded
    coef = [fit(f, lo, hi, var, d) for _, _, f, lo, hi, var, d in PIECES]
    x = np.concatenate([np.arange(-13.0, 13.0, 1e-4), np.geomspace(1e-30, 1e30, 2000)])
    x = np.concatenate([x, -x]).astype(F)
    xd = x.astype(np.float64)
    err = np.abs(erf32(x, coef) - np.array([math.erf(v) for v in xd]))
    print(f"// erf: max abs error {err.max():.2e} at x = {x[err.argmax()]}")
    keep = np.abs(xd) < 12.7  # beyond, Phi(x) < 2e-37 and the shader returns 0
    ref = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in xd[keep]])
    rel = np.abs(norm_cdf32(x[keep], coef) / ref - 1)
    print(f"// Phi: max rel error {rel.max():.2e} at x = {x[keep][rel.argmax()]}")
    keep = np.abs(xd) < 13
    e = exp_neg_sq(np.abs(x[keep]), F(0.5), coef[3])
    rel = np.abs(e / np.exp(-0.5 * xd[keep] ** 2) - 1)
    print(f"// exp(-x^2/2): max rel error {rel.max():.2e} at x = {x[keep][rel.argmax()]}")
    print(f"const LN2_LO: f32 = {float(LN2_LO):.9e};")
    for (name, var, *_), c in zip(PIECES, coef):
        print(f"// {name}({var})")
        print(f"    var q = {float(c[-1]):.9e};")
        for ck in c[-2::-1]:
            print(f"    q = q * {var} + {float(ck):.9e};")


if __name__ == "__main__":
    main()
