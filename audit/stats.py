"""Statistics shared by detectors and the verdict. Tests come from scipy; this module only wires them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats


def finite_or_none(x: float | None) -> float | None:
    """``x`` as a float where it is finite, else None (JSON has no NaN or infinity)."""
    return float(x) if x is not None and math.isfinite(x) else None


@dataclass(frozen=True)
class PairedTest:
    statistic: float  # Wilcoxon W+ (sum of ranks of positive differences)
    p_value: float
    n: int  # pairs with a non-zero difference
    mean_difference: float


def paired_greater(x: np.ndarray, y: np.ndarray) -> PairedTest:
    """One-sided Wilcoxon signed-rank test that x tends to exceed y, pairs in matching positions.

    Zero differences are dropped (Wilcoxon's convention); with none left the data carry no evidence
    and the p-value is 1. scipy picks the exact null distribution for small n without ties.
    """
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    d = d[np.isfinite(d)]
    mean = float(d.mean()) if d.size else 0.0
    nonzero = d[d != 0]
    if nonzero.size == 0:
        return PairedTest(0.0, 1.0, 0, mean)
    ranks = stats.rankdata(np.abs(nonzero))
    if nonzero.size <= _EXHAUSTIVE_MAX_N and np.unique(ranks).size < ranks.size:
        # ties among few pairs: scipy enumerates every sign pattern through its generic permutation test, one
        # Python call per pattern (0.1 s a test); the same exact enumeration, vectorised, gives the same p-value
        w_plus = float(ranks[nonzero > 0].sum())
        return PairedTest(w_plus, _exhaustive_signed_rank_sf(ranks, w_plus), int(nonzero.size), mean)
    res = stats.wilcoxon(nonzero, alternative="greater", zero_method="wilcox")
    return PairedTest(float(res.statistic), float(res.pvalue), int(nonzero.size), mean)


# scipy's permutation test enumerates every pattern when there are at most its default 9,999 resamples: 2**13
_EXHAUSTIVE_MAX_N = 13


def _exhaustive_signed_rank_sf(ranks: np.ndarray, w_plus: float) -> float:
    """P(W+ >= w_plus) over all 2**n sign patterns of the (tied, average) ranks: the exact permutation null."""
    n = ranks.size
    patterns = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    null = patterns @ ranks
    gamma = abs(np.finfo(float).eps * 100 * w_plus)  # scipy's tolerance for equal values computed differently
    return float(np.count_nonzero(null >= w_plus - gamma) / null.size)


@dataclass(frozen=True)
class PanelTest:
    statistic: float  # prediction-interval t
    p_value: float
    df: int


def panel_prediction_test(candidate: float, panel: Sequence[float], floor_sd: float = 0.0) -> PanelTest:
    """Is ``candidate`` above what one more draw from the panel's distribution would give?

    Under "the candidate is exchangeable with the panel members, normally distributed", the statistic
    (x0 - mean) / (s * sqrt(1 + 1/k)) follows Student's t with k - 1 degrees of freedom (a one-sided
    prediction-interval test). ``floor_sd`` keeps a panel that happens to agree with itself exactly from
    making s (and so the p-value) collapse to zero.
    """
    values = np.asarray(panel, dtype=float)
    k = values.size
    if k < 2:
        raise ValueError("a panel test needs at least 2 panel members")
    sd = max(float(values.std(ddof=1)), floor_sd, 1e-12)
    t = (candidate - float(values.mean())) / (sd * math.sqrt(1.0 + 1.0 / k))
    return PanelTest(float(t), float(stats.t.sf(t, df=k - 1)), k - 1)


def intersection_union(p_values: Sequence[float]) -> float:
    """p-value for "reject every one of these nulls": the largest p (Berger 1982), valid with no correction."""
    return float(max(p_values)) if p_values else 1.0


def bootstrap_mean_ci(values: np.ndarray, rng: np.random.Generator, level: float = 0.95,
                      n_boot: int = 2000) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over independent units (prompts)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (math.nan, math.nan)
    if v.size == 1:
        return (float(v[0]), float(v[0]))
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return (float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail)))


def bonferroni_global(p_values: Sequence[float]) -> float:
    """Global p-value over several tests, valid under any dependence: min(1, m * min p)."""
    if not p_values:
        return 1.0
    return float(min(1.0, len(p_values) * min(p_values)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (strong family-wise error control under any dependence)."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adjusted[idx] = running
    return [float(x) for x in adjusted]


def cauchy_combination(p_values: Sequence[float]) -> float:
    """Cauchy combination (Liu & Xie 2020): valid under arbitrary dependence for small p, equal weights."""
    if not p_values:
        return 1.0
    p = np.clip(np.asarray(p_values, dtype=float), 1e-300, 1.0)
    if np.any(p >= 1.0 - 1e-15):
        p = np.minimum(p, 1.0 - 1e-15)
    t = float(np.mean(np.tan((0.5 - p) * math.pi)))
    return float(stats.cauchy.sf(t))


@dataclass(frozen=True)
class PanelComparison:
    """A student's per-prompt similarity to the teacher, set against each reference's on the same prompts."""

    p_value: float  # intersection-union of the prompt test and the panel test
    p_prompts: float  # largest one-sided Wilcoxon p over references
    per_reference: dict[str, PairedTest]
    panel: PanelTest
    closest: str  # the most teacher-like reference
    effect: float  # mean per-prompt excess of the student over the closest reference
    ci_low: float
    ci_high: float
    n: int  # prompts usable for every model
    student_mean: float
    reference_means: dict[str, float]
    planted_p_value: float = math.nan  # the p-value had the student beaten the closest reference by ``margin``


def compare_to_panel(student: np.ndarray, references: dict[str, np.ndarray], rng: np.random.Generator,
                     ci_level: float = 0.95, margin: float | None = None) -> PanelComparison:
    """Two tests of "the student is no more teacher-like than an independent model", both must reject.

    (a) Prompts are the sample: a one-sided paired Wilcoxon test against each reference; the student
        must beat every one (intersection-union: the largest p).
    (b) Models are the sample: independent models differ in how teacher-like they are, so with enough
        prompts (a) alone would flag the most teacher-like of several independent models. The student's
        mean is tested against the spread of the reference means (t prediction test, k - 1 df), with the
        prompt-level standard error as a floor on that spread.
    """
    if len(references) < 2:
        raise ValueError("comparing to a panel needs at least 2 references")
    s = np.asarray(student, dtype=float)
    usable = np.isfinite(s)
    for values in references.values():
        usable &= np.isfinite(np.asarray(values, dtype=float))
    s = s[usable]
    refs = {name: np.asarray(v, dtype=float)[usable] for name, v in references.items()}
    n = int(usable.sum())
    if n == 0:
        nan = math.nan
        empty = PairedTest(0.0, 1.0, 0, 0.0)
        return PanelComparison(1.0, 1.0, {k: empty for k in refs}, PanelTest(nan, 1.0, len(refs) - 1),
                               sorted(refs)[0], nan, nan, nan, 0, nan, {k: nan for k in refs})
    means = {name: float(v.mean()) for name, v in refs.items()}
    closest = max(means, key=lambda k: (means[k], k))
    excess = s - refs[closest]
    ci_low, ci_high = bootstrap_mean_ci(excess, rng, level=ci_level)
    per_ref, panel, p_prompts = _panel_tests(s, refs, closest, means)
    planted = math.nan
    if margin is not None:
        # Power check: the same student shifted so that it beats the closest reference by exactly the margin.
        shifted = s - float(excess.mean()) + margin
        _, planted_panel, planted_prompts = _panel_tests(shifted, refs, closest, means)
        planted = intersection_union([planted_prompts, planted_panel.p_value])
    return PanelComparison(
        p_value=intersection_union([p_prompts, panel.p_value]),
        p_prompts=p_prompts,
        per_reference=per_ref,
        panel=panel,
        closest=closest,
        effect=float(excess.mean()),
        ci_low=ci_low,
        ci_high=ci_high,
        n=n,
        student_mean=float(s.mean()),
        reference_means=means,
        planted_p_value=planted,
    )


def _panel_tests(s: np.ndarray, refs: dict[str, np.ndarray], closest: str,
                 means: dict[str, float]) -> tuple[dict[str, PairedTest], PanelTest, float]:
    """The two tests of :func:`compare_to_panel`: Wilcoxon against each reference (and the largest p), and the
    panel prediction test with the prompt-level standard error as a floor on the panel's spread."""
    per_ref = {name: paired_greater(s, v) for name, v in refs.items()}
    excess = s - refs[closest]
    prompt_se = float(excess.std(ddof=1) / math.sqrt(s.size)) if s.size > 1 else 0.0
    panel = panel_prediction_test(float(s.mean()), list(means.values()), floor_sd=prompt_se)
    return per_ref, panel, intersection_union([t.p_value for t in per_ref.values()])
