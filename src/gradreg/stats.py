"""Significance of differences between runs: Welch's t-test, Bonferroni, mean (std).

Conventions, as the paper's tables use them:

- A table cell is `mean (std)` over n runs (n = 10 seeds). The paper does not say which
  standard deviation it prints. The authors' aggregation script (`stat.py` in
  `danielvarga/improved_wgan_training`) printed `pandas ... .describe()`, which is the
  *sample* std (ddof=1); a side script (`std.py`) used `numpy.std` (ddof=0). Here it is
  ddof=1 throughout. At n = 10 the two differ by a factor sqrt(10/9) ~ 1.054.
- Comparisons are two-sided Welch (unequal-variance) t-tests, and a family of m comparisons
  is corrected with Bonferroni (Table 6: "after Bonferroni correction ...").

Only the p-value needs SciPy (the Student t survival function); it is imported when first
needed, so the rest of this module works without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["mean_std", "welch_t_test", "welch_from_summary", "bonferroni", "adjusted"]


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """`(mean, std)` of `values` with the *sample* standard deviation (ddof=1).

    This is how the tables' `mean (std)` cells are built here; the paper itself does not state
    its ddof (see the module docstring).

    Args:
        values: At least two finite numbers.

    Returns:
        `(mean, std)` as floats.

    Raises:
        ValueError: Fewer than two values, or a NaN or inf among them.
    """
    x = _sample(values, "values")
    return float(x.mean()), float(x.std(ddof=1))


def welch_t_test(a: Iterable[float], b: Iterable[float]) -> tuple[float, float, float]:
    """Two-sided Welch (unequal-variance) t-test of mean(a) == mean(b).

    The result is `(t, df, p)` with

    - `t = (mean_a - mean_b) / sqrt(s_a²/n_a + s_b²/n_b)`, `s²` the sample variance (ddof=1);
    - `df` the Welch–Satterthwaite degrees of freedom
      `(s_a²/n_a + s_b²/n_b)² / ((s_a²/n_a)²/(n_a-1) + (s_b²/n_b)²/(n_b-1))`;
    - `p = 2 · P(T_df >= |t|)`.

    When both samples are constant the statistic is undefined: `(nan, nan, nan)` if the means
    are equal, else `(±inf, nan, 0.0)`. Otherwise matches
    `scipy.stats.ttest_ind(a, b, equal_var=False)`.

    Args:
        a: The first sample, at least two finite values.
        b: The second sample, at least two finite values.

    Returns:
        `(t, df, p)`.

    Raises:
        ValueError: A sample has fewer than two values, or a NaN or inf.
        ImportError: SciPy, needed for the p-value, is not installed.
    """
    x, y = _sample(a, "a"), _sample(b, "b")
    return _welch(float(x.mean()), float(x.var(ddof=1)), x.size, float(y.mean()), float(y.var(ddof=1)), y.size)


def welch_from_summary(
    mean1: float, std1: float, n1: int, mean2: float, std2: float, n2: int
) -> tuple[float, float, float]:
    """`welch_t_test` from published summaries: `(t, df, p)`.

    To test a paper cell `97.79% (0.12)` over 10 runs, pass `97.79, 0.12, 10`. Rounded
    summaries give rounded answers: a two-decimal std carries up to ±0.005 of error.

    Args:
        mean1: The first mean.
        std1: The first *sample* standard deviation (ddof=1).
        n1: The first sample's size, an integer >= 2.
        mean2: The second mean.
        std2: The second sample standard deviation (ddof=1).
        n2: The second sample's size, an integer >= 2.

    Returns:
        `(t, df, p)`, as `welch_t_test` returns them.

    Raises:
        ValueError: A size is not an integer >= 2, a std is negative or not finite, or a mean
            is not finite.
        ImportError: SciPy, needed for the p-value, is not installed.
    """
    for name, n in (("n1", n1), ("n2", n2)):
        if isinstance(n, bool) or int(n) != n or n < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {n!r}")
    for name, s in (("std1", std1), ("std2", std2)):
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {s!r}")
    for name, m in (("mean1", mean1), ("mean2", mean2)):
        if not math.isfinite(m):
            raise ValueError(f"{name} must be finite, got {m!r}")
    return _welch(float(mean1), float(std1) ** 2, int(n1), float(mean2), float(std2) ** 2, int(n2))


def adjusted(p: float, m: int) -> float:
    """Bonferroni-adjusted p-value `min(1, p · m)` for one of `m` comparisons (NaN stays NaN).

    Args:
        p: A p-value in [0, 1], or NaN.
        m: The number of comparisons, an integer >= 1.

    Returns:
        The adjusted p-value.

    Raises:
        ValueError: `m` is not an integer >= 1, or `p` is outside [0, 1].
    """
    if isinstance(m, bool) or int(m) != m or m < 1:
        raise ValueError(f"m must be an integer >= 1, got {m!r}")
    _check_p(p)
    return p if math.isnan(p) else min(1.0, p * m)


def bonferroni(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Which of the `m = len(p_values)` comparisons are significant at family-wise level `alpha`.

    Significant means `p · m < alpha` (strict). A NaN p-value (an undefined test) is never
    significant. An empty family gives `[]`.

    Args:
        p_values: The family's p-values, each in [0, 1] or NaN.
        alpha: The family-wise level, in (0, 1) (default 0.05).

    Returns:
        One bool per p-value.

    Raises:
        ValueError: `alpha` is not in (0, 1), or a p-value is outside [0, 1].
    """
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    ps = [float(p) for p in p_values]
    for p in ps:
        _check_p(p)
    m = len(ps)
    return [(not math.isnan(p)) and p * m < alpha for p in ps]


# --------------------------------------------------------------------------- helpers


def _welch(m1: float, v1: float, n1: int, m2: float, v2: float, n2: int) -> tuple[float, float, float]:
    # v1, v2: sample variances (ddof=1).
    e1, e2 = v1 / n1, v2 / n2
    se2 = e1 + e2
    diff = m1 - m2
    if se2 == 0.0:
        if diff == 0.0:
            return math.nan, math.nan, math.nan
        return math.copysign(math.inf, diff), math.nan, 0.0
    t = diff / math.sqrt(se2)
    df = se2**2 / (e1**2 / (n1 - 1) + e2**2 / (n2 - 1))
    return t, df, _two_sided_p(t, df)


def _two_sided_p(t: float, df: float) -> float:
    try:
        from scipy.special import stdtr
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("gradreg.stats needs SciPy for p-values: pip install scipy") from e
    # stdtr(df, x) = P(T_df <= x); the lower tail at -|t| is accurate far into the tail.
    return float(min(1.0, 2.0 * stdtr(df, -abs(t))))


def _sample(values: Iterable[float], name: str) -> np.ndarray:
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError(f"{name} needs at least 2 values for a sample std, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _check_p(p: float) -> None:
    if not math.isnan(p) and not (0.0 <= p <= 1.0):
        raise ValueError(f"p-values must lie in [0, 1], got {p!r}")
