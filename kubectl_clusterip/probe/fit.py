"""Does the observed split fit the predicted probabilities? A G-test, without scipy.

The G statistic (2 Σ O ln(O/E)) is chi-square distributed with k-1 degrees of freedom only
when every expected count is large enough (Cochran's rule: at least 5); below that the test
says nothing, and `fit` says so instead of guessing with a fixed tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_EXPECTED = 5.0  # Cochran: the chi-square approximation needs E >= 5 in every cell
ALPHA = 0.001  # a probe is one sample; be sure before calling a split implausible


@dataclass(frozen=True)
class Fit:
    """The test's answer: `consistent`, `implausible` or `too-few` (N too small to tell)."""

    verdict: str
    n: int
    statistic: float | None = None
    df: int = 0
    p_value: float | None = None
    needed: int = 0  # connections the test needs to say anything, when too few

    def to_dict(self) -> dict:
        out: dict = {"test": "G-test (chi-square, k-1 df)", "verdict": self.verdict,
                     "connections": self.n, "alpha": ALPHA}
        if self.statistic is not None:
            out.update({"statistic": round(self.statistic, 4), "df": self.df,
                        "pValue": float(f"{self.p_value:.4g}") if self.p_value is not None
                        else None})
        if self.needed:
            out["needed"] = self.needed
        return out

    def describe(self) -> str:
        if self.verdict == "too-few":
            return (f"{self.n} connection(s) are too few to test the split (the G-test needs "
                    f"{self.needed} here, ≥ {MIN_EXPECTED:g} expected per endpoint)")
        assert self.p_value is not None and self.statistic is not None
        how = "consistent with" if self.verdict == "consistent" else "implausible under"
        return (f"split {how} the predicted probabilities (G = {self.statistic:.2f}, "
                f"{self.df} df, p = {self.p_value:.3g}, N = {self.n})")


def fit(observed: list[int], probabilities: list[float]) -> Fit:
    """G-test of counts against probabilities (same order; probabilities sum to 1)."""
    n = sum(observed)
    cells = [(o, p) for o, p in zip(observed, probabilities) if p > 0]
    if len(cells) < 2:
        return Fit("consistent" if n else "too-few", n, needed=0 if n else 1)
    smallest = min(p for _, p in cells)
    needed = math.ceil(MIN_EXPECTED / smallest - 1e-9)
    if n < needed:
        return Fit("too-few", n, needed=needed)
    g = 2.0 * sum(o * math.log(o / (n * p)) for o, p in cells if o > 0)
    df = len(cells) - 1
    p_value = chi2_sf(max(g, 0.0), df)
    return Fit("implausible" if p_value < ALPHA else "consistent", n, g, df, p_value)


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square(df): the regularized upper incomplete gamma Q(df/2, x/2)."""
    if x <= 0:
        return 1.0
    return gamma_q(df / 2.0, x / 2.0)


def gamma_q(a: float, x: float) -> float:
    """Q(a, x) = Γ(a, x)/Γ(a): a series below a+1, a continued fraction above (Lentz)."""
    if x < a + 1.0:
        term = total = 1.0 / a
        k = a
        for _ in range(1000):
            k += 1.0
            term *= x / k
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - math.lgamma(a)))
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(-x + a * math.log(x) - math.lgamma(a)) * h)
