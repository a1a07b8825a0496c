"""Validity (false-positive rate at alpha on simulated null pairs) and power of the statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from distill_audit import stats

N_SIM = 2000


def _fpr_bound(alpha: float, n_sim: int = N_SIM) -> float:
    """alpha plus three binomial standard errors: a valid test stays below this with near certainty."""
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / n_sim)


def _simulate_panel(rng: np.random.Generator, n_prompts: int, k_refs: int, student_shift: float,
                    model_sd: float = 0.03) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-prompt agreement rates of a student and k references with the teacher.

    Prompts differ in difficulty (shared by all models), each model has its own level of teacher-
    likeness (the model-level chance that makes a prompt-only test anti-conservative), and each
    prompt adds binomial noise from a couple dozen scored tokens.
    """
    difficulty = rng.beta(2, 5, size=n_prompts)
    tokens = rng.integers(8, 30, size=n_prompts)

    def model(shift: float) -> np.ndarray:
        p = np.clip(difficulty + rng.normal(0, model_sd) + shift, 0.01, 0.99)
        return rng.binomial(tokens, p) / tokens

    return model(student_shift), {f"r{j}": model(0.0) for j in range(k_refs)}


@pytest.mark.parametrize("k_refs", [2, 4])
def test_panel_comparison_false_positive_rate_under_the_null(k_refs: int) -> None:
    rng = np.random.default_rng(0)
    alpha = 0.05
    rejections, n_sim = 0, 1000
    for _ in range(n_sim):
        student, refs = _simulate_panel(rng, n_prompts=80, k_refs=k_refs, student_shift=0.0)
        rejections += stats.compare_to_panel(student, refs, rng).p_value < alpha
    assert rejections / n_sim <= _fpr_bound(alpha, n_sim)


def test_prompt_test_alone_would_not_be_valid_under_model_level_chance() -> None:
    """Why the panel test exists: the Wilcoxon test across prompts flags independent models too often."""
    rng = np.random.default_rng(1)
    rejections = 0
    for _ in range(500):
        student, refs = _simulate_panel(rng, n_prompts=200, k_refs=2, student_shift=0.0, model_sd=0.05)
        rejections += stats.compare_to_panel(student, refs, rng).p_prompts < 0.05
    assert rejections / 500 > 0.15  # far above 0.05: model-level chance is real


def test_panel_comparison_catches_a_distilled_student() -> None:
    rng = np.random.default_rng(2)
    caught = sum(
        stats.compare_to_panel(*_simulate_panel(rng, 80, 4, student_shift=0.3), rng).p_value < 0.01
        for _ in range(200)
    )
    assert caught / 200 >= 0.9


def test_paired_test_is_exactly_valid_for_exchangeable_pairs() -> None:
    rng = np.random.default_rng(3)
    alpha = 0.05
    p = [stats.paired_greater(rng.exponential(size=40), rng.exponential(size=40)).p_value for _ in range(N_SIM)]
    assert np.mean(np.array(p) < alpha) <= _fpr_bound(alpha)
    shifted = [stats.paired_greater(rng.normal(0.8, 1, 40), rng.normal(0, 1, 40)).p_value for _ in range(200)]
    assert np.mean(np.array(shifted) < alpha) >= 0.9


def test_paired_test_with_no_differences_is_no_evidence() -> None:
    x = np.array([0.5, 0.2, 0.9])
    assert stats.paired_greater(x, x).p_value == 1.0


def test_panel_prediction_test_is_valid_for_normal_exchangeable_models() -> None:
    rng = np.random.default_rng(4)
    alpha = 0.05
    for k in (2, 3, 6):
        p = [stats.panel_prediction_test(rng.normal(), rng.normal(size=k).tolist()).p_value for _ in range(N_SIM)]
        assert np.mean(np.array(p) < alpha) <= _fpr_bound(alpha)
    with pytest.raises(ValueError):
        stats.panel_prediction_test(1.0, [0.5])


def test_a_panel_that_agrees_with_itself_does_not_collapse_the_p_value() -> None:
    assert stats.panel_prediction_test(0.31, [0.3, 0.3, 0.3], floor_sd=0.02).p_value > 0.3


def test_combinations_valid_under_dependence() -> None:
    rng = np.random.default_rng(5)
    alpha = 0.05
    for combine in (stats.bonferroni_global, stats.cauchy_combination):
        hits = 0
        for _ in range(N_SIM):
            u = rng.uniform()
            p = [u, min(1.0, u * rng.uniform(0.9, 1.1)), rng.uniform()]  # two strongly dependent tests
            hits += combine(p) < alpha
        assert hits / N_SIM <= _fpr_bound(alpha)
    assert stats.bonferroni_global([0.001, 0.5]) == pytest.approx(0.002)
    assert stats.bonferroni_global([]) == 1.0


def test_bootstrap_ci_covers_the_mean() -> None:
    rng = np.random.default_rng(6)
    covered = 0
    for _ in range(300):
        lo, hi = stats.bootstrap_mean_ci(rng.normal(1.0, 1.0, 60), rng, n_boot=500)
        covered += lo <= 1.0 <= hi
    assert covered / 300 >= 0.9


def test_holm_adjusts_step_down_and_keeps_order() -> None:
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.5])
    assert adjusted == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert stats.holm([]) == []
    assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([0.02, 0.2]) == pytest.approx([0.04, 0.2])


def test_planted_effect_power_check() -> None:
    """An independent student: the data say nothing, but the planted check shows whether a student beating
    the closest reference by the margin would have been caught with this many prompts and this panel."""
    rng = np.random.default_rng(3)
    student, refs = _simulate_panel(rng, n_prompts=200, k_refs=6, student_shift=0.0, model_sd=0.01)
    big = stats.compare_to_panel(student, refs, rng, margin=0.2)
    small = stats.compare_to_panel(student, refs, rng, margin=0.001)
    assert big.p_value > 0.01
    assert big.planted_p_value < 0.001 < small.planted_p_value


def _choices(rng: np.random.Generator, bias: np.ndarray, sd: float) -> np.ndarray:
    """One model's top-1 choice at every place: the language's shared preference plus the model's own quirks."""
    return np.argmax(bias + rng.normal(0, sd, size=bias.shape), axis=-1)


@pytest.mark.parametrize("copy", [0.0, 0.5])
def test_leave_one_out_idiosyncrasy_is_valid_and_powerful(copy: float) -> None:
    """The idiosyncrasy detector's selection (places where the *other* models disagree with the teacher)
    keeps the student exchangeable with the references under the null, so the panel test stays valid;
    a student copying the teacher's choices half the time is caught."""
    from distill_audit.detectors.idiosyncrasy import _leave_one_out

    rng = np.random.default_rng(11)
    n_sim, n_prompts, places, k_refs, alpha = 300, 40, 12, 4, 0.05
    rejections = 0
    for _ in range(n_sim):
        bias = rng.normal(0, 1, size=(n_prompts, places, 5))
        teacher = _choices(rng, bias, 1.0)
        own = _choices(rng, bias, 1.0)
        student = np.where(rng.random(own.shape) < copy, teacher, own)
        models = {"student": student, **{f"r{j}": _choices(rng, bias, 1.0) for j in range(k_refs)}}
        values = {name: np.empty(n_prompts) for name in models}
        for i in range(n_prompts):
            for name, v in _leave_one_out({n: c[i] for n, c in models.items()}, teacher[i]).items():
                values[name][i] = v
        refs = {n: v for n, v in values.items() if n != "student"}
        rejections += stats.compare_to_panel(values["student"], refs, rng).p_value < alpha
    if copy == 0.0:
        assert rejections / n_sim <= _fpr_bound(alpha, n_sim)
    else:
        assert rejections / n_sim >= 0.9


@pytest.mark.parametrize("familiar", [0.0, 0.3])
def test_reading_design_is_valid_and_powerful(familiar: float) -> None:
    """teacher-text-likelihood: every model reads every other model's text and the teacher's. Models differ
    in overall skill (bits per byte on everything) and texts in difficulty; under the null the student is one
    more independent model. A student that trained on the teacher's text finds it easier by ``familiar``."""
    from distill_audit.detectors.membership import reading_advantage

    rng = np.random.default_rng(5)
    n_sim, n_prompts, k_refs, alpha = 300, 60, 4, 0.05
    rejections = 0
    for _ in range(n_sim):
        readers = ["student", *(f"r{j}" for j in range(k_refs))]
        writers = ["teacher", *readers]
        skill = {r: rng.normal(2.0, 0.2) for r in readers}
        difficulty = {w: rng.normal(0, 0.3, size=n_prompts) for w in writers}
        style = {(r, w): rng.normal(0, 0.05) for r in readers for w in writers}  # reader-writer kinship
        bpb = {}
        for r in readers:
            for w in writers:
                if r != w:
                    bpb[r, w] = skill[r] + difficulty[w] + style[r, w] + rng.normal(0, 0.2, size=n_prompts)
        bpb["student", "teacher"] = bpb["student", "teacher"] - familiar
        values = reading_advantage(bpb, readers)
        refs = {r: values[r] for r in readers[1:]}
        rejections += stats.compare_to_panel(values["student"], refs, rng).p_value < alpha
    if familiar == 0.0:
        assert rejections / n_sim <= _fpr_bound(alpha, n_sim)
    else:
        assert rejections / n_sim >= 0.9


def test_signed_rank_with_ties_among_few_pairs_equals_scipys_exact_permutation_test() -> None:
    """paired_greater enumerates the sign patterns itself where scipy would (ties, n <= 13): same p and W+."""
    rng = np.random.default_rng(7)
    tied = 0
    for _ in range(60):
        d = np.round(rng.normal(0.3, 1.0, size=int(rng.integers(1, 14))), 1)
        d = d[d != 0]
        if d.size == 0:
            continue
        ours = stats.paired_greater(d, np.zeros_like(d))
        ref = sps.wilcoxon(d, alternative="greater", zero_method="wilcox")
        assert ours.statistic == float(ref.statistic) and ours.p_value == pytest.approx(float(ref.pvalue), abs=1e-12)
        tied += np.unique(np.abs(d)).size < d.size
    assert tied > 20  # the enumeration itself was exercised
