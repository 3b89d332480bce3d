"""Student's t distribution without SciPy: the two-sided p-value of a paired t-test over seeds.

A method's gain over its baseline is paired by seed: d_s = method_s − baseline_s, t = mean(d) / (std(d) / √n), with
n − 1 degrees of freedom (Student 1908). Its two-sided p-value is

    p = P(|T_{n−1}| ≥ |t|) = I_{df / (df + t²)}(df / 2, 1 / 2)

where I_x(a, b) is the regularized incomplete beta function, evaluated here with the continued fraction of Numerical
Recipes (Press et al., 3rd ed., §6.4), accurate to ~1e-12. With 2 seeds (df = 1) a gain needs |t| > 12.71 to reach
p < 0.05: that is why 2 seeds are weak evidence.
"""

from __future__ import annotations

import math

ALPHA = 0.05  # what the report calls a clear difference: two-sided p < ALPHA
_EPS = 1e-15
_TINY = 1e-300


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Lentz's evaluation of the continued fraction of I_x(a, b) (converges fast for x < (a + 1) / (a + b + 2))."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` degrees of freedom (1 for t = 0; 0 for an infinite t)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_critical(df: float, alpha: float = ALPHA) -> float:
    """The |t| above which a two-sided test at level ``alpha`` is passed (12.706 for df = 1, 2.776 for df = 4)."""
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > alpha:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > alpha else (lo, mid)
    return (lo + hi) / 2.0


def paired_t_p(mean: float | None, se: float | None, n: int | None) -> tuple[float | None, float | None]:
    """(t, two-sided p) of a paired gain ``mean`` ± ``se`` over ``n`` seeds; (None, None) when there is no test: fewer
    than 2 seeds, or no spread at all (identical per-seed differences)."""
    if mean is None or se is None or not n or n < 2 or math.isnan(mean) or math.isnan(se) or se <= 0:
        return None, None
    t = mean / se
    return t, t_two_sided_p(t, n - 1)


def format_p(p: float | None) -> str:
    """``"p = 0.031"``, ``"p < 0.001"``, or "–" (no test)."""
    if p is None:
        return "–"
    if 0.0495 <= p < 0.0505:  # "0.050" would hide on which side of 0.05 it lies
        return f"p = {p:.4f}"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"
