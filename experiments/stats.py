"""The statistics of an experiment, as plain functions of counts, means and variances.

Intervals: proportions use Newcombe's hybrid score interval (from two Wilson intervals) for the
absolute lift and the log risk ratio (Katz) for the relative lift; means (revenue per person,
AOV) use Welch's t interval for the difference and the delta method for the ratio.

Posterior probability that an arm beats control: Beta(1, 1) priors and Beta-Binomial posteriors
for proportions (Monte Carlo with a fixed seed, so the figure is reproducible); for means, the
normal approximation to the posterior of the difference under flat priors, N(diff, se^2).

Sequential looks: two-sided O'Brien-Fleming-type alpha spending (Lan-DeMets; each side spends
alpha/2 by 2 - 2 Phi(z_{1-alpha/4} / sqrt(t)), as in ldbounds / gsDesign), with the boundary at each
look computed from the looks actually taken (numerical recursion over a grid: the
Armitage-McPherson-Rowe method), so any number of looks, daily or irregular, spends at most alpha.
Alpha is spent by calendar time (elapsed / planned days, fixed in advance, never data-dependent);
the correlation between looks comes from the information actually analysed at each (persons whose
outcome window has closed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

POSTERIOR_DRAWS = 40_000
SRM_ALPHA = 0.001  # the usual threshold: an SRM this unlikely means the assignment is broken


def z_of(alpha: float) -> float:
    return float(stats.norm.ppf(1 - alpha / 2))


def wilson(x: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    if n <= 0:
        return (0.0, 1.0)
    p = x / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe(x1: float, n1: float, x0: float, n0: float, z: float = 1.959964) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p0 (his method 10)."""
    p1, p0 = x1 / n1, x0 / n0
    l1, u1 = wilson(x1, n1, z)
    l0, u0 = wilson(x0, n0, z)
    d = p1 - p0
    return (d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2))


def relative_proportion(x1: float, n1: float, x0: float, n0: float, z: float = 1.959964) -> tuple[float, float, float]:
    """Relative lift p1/p0 - 1 with a Katz log risk-ratio interval (0.5 added to empty cells)."""
    if x0 == 0 or x1 == 0:
        x1, x0, n1, n0 = x1 + 0.5, x0 + 0.5, n1 + 0.5, n0 + 0.5
    rr = (x1 / n1) / (x0 / n0)
    se = math.sqrt(max(0.0, 1 / x1 - 1 / n1 + 1 / x0 - 1 / n0))
    return rr - 1, rr * math.exp(-z * se) - 1, rr * math.exp(z * se) - 1


@dataclass(frozen=True)
class Welch:
    diff: float
    se: float
    df: float

    def interval(self, alpha: float = 0.05) -> tuple[float, float]:
        if not math.isfinite(self.se) or self.se == 0:
            return (self.diff, self.diff)
        t = float(stats.t.ppf(1 - alpha / 2, self.df))
        return (self.diff - t * self.se, self.diff + t * self.se)


def welch(m1: float, v1: float, n1: float, m0: float, v0: float, n0: float) -> Welch:
    a, b = v1 / n1, v0 / n0
    se = math.sqrt(a + b)
    df = (a + b) ** 2 / (a * a / max(n1 - 1, 1) + b * b / max(n0 - 1, 1)) if a + b > 0 else float("inf")
    return Welch(m1 - m0, se, df)


def relative_mean(m1: float, v1: float, n1: float, m0: float, v0: float, n0: float,
                  z: float = 1.959964) -> tuple[float, float, float]:
    """m1/m0 - 1 with a delta-method interval."""
    if m0 == 0:
        return (math.nan, math.nan, math.nan)
    r = m1 / m0
    se = math.sqrt(v1 / (n1 * m0 * m0) + (m1 * m1) * v0 / (n0 * m0 ** 4))
    return r - 1, r - 1 - z * se, r - 1 + z * se


def prob_beats_beta(x1: float, n1: float, x0: float, n0: float, lower_is_better: bool = False,
                    seed: int = 0) -> float:
    """P(p_arm > p_control | data) under Beta(1, 1) priors (or < for a lower-is-better metric)."""
    rng = np.random.default_rng(seed)
    a = rng.beta(1 + x1, 1 + n1 - x1, POSTERIOR_DRAWS)
    b = rng.beta(1 + x0, 1 + n0 - x0, POSTERIOR_DRAWS)
    return float(np.mean(a < b if lower_is_better else a > b))


def prob_beats_normal(diff: float, se: float, lower_is_better: bool = False) -> float:
    """P(mu_arm > mu_control | data) with flat priors: the posterior of the difference is N(diff, se^2)."""
    if se <= 0 or not math.isfinite(se):
        return 0.5
    p = float(stats.norm.cdf(diff / se))
    return 1 - p if lower_is_better else p


def srm_pvalue(counts: list[int], shares: list[float]) -> float:
    """Chi-square goodness of fit of the arms' counts to their planned shares."""
    total = sum(counts)
    if total == 0:
        return 1.0
    expected = np.array(shares, dtype=float) / sum(shares) * total
    return float(stats.chisquare(np.array(counts, dtype=float), expected).pvalue)


def mde(var1: float, n1: float, var0: float, n0: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest absolute difference a two-sided test at `alpha` detects with `power` at these n."""
    if n1 <= 0 or n0 <= 0:
        return math.inf
    return (z_of(alpha) + float(stats.norm.ppf(power))) * math.sqrt(var1 / n1 + var0 / n0)


# --- sample size, matching statsmodels' NormalIndPower -------------------------------------------------

def cohens_h(p1: float, p0: float) -> float:
    return 2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p0))


def normal_power(effect_size: float, n1: float, alpha: float, ratio: float = 1.0) -> float:
    """Power of a two-sided z test on a standardised effect with n1 and ratio*n1 per arm
    (both rejection tails counted, as statsmodels does)."""
    nobs = 1 / (1 / n1 + 1 / (n1 * ratio))
    crit = z_of(alpha)
    shift = abs(effect_size) * math.sqrt(nobs)
    return float(stats.norm.cdf(shift - crit) + stats.norm.cdf(-shift - crit))


def sample_size(effect_size: float, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0) -> float:
    """n of the first arm (the other: ratio * n) for a standardised effect (Cohen's h or d)."""
    if effect_size == 0:
        return math.inf
    return float(optimize.brentq(lambda n: normal_power(effect_size, n, alpha, ratio) - power, 1e-6, 1e12))


# --- sequential looks ---------------------------------------------------------------------------------

def obf_spent(t: float, alpha: float = 0.05) -> float:
    """O'Brien-Fleming-type alpha spending (Lan-DeMets): alpha spent by information fraction t."""
    if t <= 0:
        return 0.0
    t = min(t, 1.0)
    return float(2 * (2 - 2 * stats.norm.cdf(z_of(alpha / 2) / math.sqrt(t))))


def _boundary(xs: np.ndarray, masses: np.ndarray, sd_step: float, sd_now: float, target: float) -> float:
    """The z boundary at which paths still running cross with probability `target` at this look."""
    def crossing(c: float) -> float:
        b = c * sd_now
        tail = stats.norm.cdf((-b - xs) / sd_step) + stats.norm.sf((b - xs) / sd_step)
        return float(np.sum(masses * tail)) - target
    return float(optimize.brentq(crossing, 0.0, 40.0)) if crossing(0.0) > 0 else 0.0


def sequential_boundaries(fractions: list[float], alpha: float = 0.05, information: list[float] | None = None,
                          grid: int = 401) -> list[float]:
    """Two-sided z boundaries for looks at increasing spending fractions (capped at 1), such that
    the chance of crossing at look k but not before is alpha(s_k) - alpha(s_{k-1}) under no effect.
    `information` (any scale, e.g. persons analysed) sets the correlation between looks,
    corr(Z_j, Z_k) = sqrt(I_j / I_k); by default it equals the spending fractions.

    The score B(I) ~ Brownian motion; Z_k = B(I_k) / sqrt(I_k). The density of B at each look,
    among paths not yet stopped, is carried on a grid and convolved with the next increment."""
    out: list[float] = []
    info = list(fractions if information is None else information)
    top = max(info) if info and max(info) > 0 else 1.0
    ts = [max(i / top, 1e-9) for i in info]
    spent_before = 0.0
    xs = dens = None  # grid and density of B(t_{k-1}) on the continuation region
    t_prev = 0.0
    for s_k, t in zip(fractions, ts):
        target = obf_spent(s_k, alpha) - spent_before
        if t <= t_prev or target <= 1e-12:
            # No new information (or nothing left to spend): this look cannot reject.
            out.append(math.inf)
            continue
        dt = t - t_prev
        if dens is None:
            c = float(stats.norm.ppf(1 - target / 2))
        else:
            c = _boundary(xs, dens, math.sqrt(dt), math.sqrt(t), target)
        # density of B(t) on |B(t)| < c sqrt(t), on a fresh grid
        b = c * math.sqrt(t)
        new_xs = np.linspace(-b, b, grid)
        if dens is None:
            new_dens = stats.norm.pdf(new_xs / math.sqrt(t)) / math.sqrt(t)
        else:
            kernel = stats.norm.pdf((new_xs[:, None] - xs[None, :]) / math.sqrt(dt)) / math.sqrt(dt)
            new_dens = kernel @ dens
        step = new_xs[1] - new_xs[0]
        weights = np.full(grid, step)
        weights[0] = weights[-1] = step / 2  # trapezoid rule
        xs, dens = new_xs, new_dens * weights  # dens now holds probability masses
        spent_before += target
        t_prev = t
        out.append(c)
    return out
