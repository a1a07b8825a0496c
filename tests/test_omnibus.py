"""The omnibus panel test and attribution: level under a model-level null, power over Bonferroni, symmetry."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from distill_audit import omnibus, stats
from distill_audit.detectors.base import Evidence


def _fpr_bound(alpha: float, n_sim: int) -> float:
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / n_sim)


def _world(rng: np.random.Generator, k_refs: int, n_prompts: int = 80, n_detectors: int = 5, rho: float = 0.6,
           shift: float = 0.0, scales: tuple[float, ...] = (0.03, 0.5, 0.01, 0.2, 0.05)
           ) -> dict[str, dict[str, np.ndarray]]:
    """Per detector, per-prompt teacher-likeness of a student and ``k_refs`` references.

    Each model has a model-level teacher-likeness shared across detectors (correlation ``rho``) plus its own
    deviation per detector: the model-level chance the panel test exists for. Detectors have unrelated units
    (``scales``), prompts differ in difficulty, and each value carries prompt noise. ``shift`` moves the
    student on every detector by that many model-level standard deviations."""
    models = ["student", *(f"r{j}" for j in range(k_refs))]
    latent = {m: rng.normal() for m in models}
    tables: dict[str, dict[str, np.ndarray]] = {}
    for d in range(n_detectors):
        scale = scales[d % len(scales)]
        difficulty = rng.normal(0, 2 * scale, n_prompts)
        table = {}
        for m in models:
            level = rho * latent[m] + math.sqrt(1 - rho**2) * rng.normal() + (shift if m == "student" else 0.0)
            table[m] = 5 * scale + scale * level + difficulty + rng.normal(0, 3 * scale, n_prompts)
        tables[f"d{d}"] = table
    return tables


def _omnibus_p(tables: dict[str, dict[str, np.ndarray]], rng: np.random.Generator) -> float:
    scores = omnibus.combine(tables)
    refs = {m: v for m, v in scores.items() if m != "student"}
    return stats.compare_to_panel(scores["student"], refs, rng).p_value


def _bonferroni_p(tables: dict[str, dict[str, np.ndarray]], rng: np.random.Generator) -> float:
    ps = [stats.compare_to_panel(t["student"], {m: v for m, v in t.items() if m != "student"}, rng).p_value
          for t in tables.values()]
    return stats.bonferroni_global(ps)


@pytest.mark.parametrize("k_refs", [3, 6])
def test_omnibus_keeps_its_level_under_a_model_level_null(k_refs: int) -> None:
    rng = np.random.default_rng(10 + k_refs)
    alpha, n_sim = 0.05, 800
    rejections = sum(_omnibus_p(_world(rng, k_refs), rng) < alpha for _ in range(n_sim))
    assert rejections / n_sim <= _fpr_bound(alpha, n_sim)


def test_omnibus_is_more_powerful_than_bonferroni_over_its_components() -> None:
    rng = np.random.default_rng(20)
    alpha, n_sim = 0.01, 300
    omni = bonf = 0
    for _ in range(n_sim):
        tables = _world(rng, 6, shift=3.5)
        omni += _omnibus_p(tables, rng) < alpha
        bonf += _bonferroni_p(tables, rng) < alpha
    # measured: about 0.85 against 0.5 (shift 3 model-level SDs: 0.73 against 0.39)
    assert omni / n_sim >= 0.75
    assert omni / n_sim >= bonf / n_sim + 0.2, (omni, bonf)


def test_standardizing_treats_every_model_alike() -> None:
    rng = np.random.default_rng(3)
    table = {m: rng.normal(size=30) for m in ("student", "a", "b", "c")}
    table["b"][4] = np.nan
    swapped = {"a": table["student"], "student": table["a"], "b": table["b"], "c": table["c"]}
    one, two = omnibus.standardize(table), omnibus.standardize(swapped)
    np.testing.assert_allclose(one["student"], two["a"])
    np.testing.assert_allclose(one["c"], two["c"])
    assert all(np.isnan(v[4]) for v in one.values())  # a prompt one model lacks counts for nobody


def test_one_far_out_model_barely_moves_the_scale() -> None:
    rng = np.random.default_rng(4)
    table = {f"r{j}": rng.normal(j * 0.01, 0.05, 50) for j in range(6)}
    calm = omnibus.standardize({**table, "student": rng.normal(0.03, 0.05, 50)})
    wild = omnibus.standardize({**table, "student": rng.normal(10.0, 0.05, 50)})
    ref_spread = [np.std([np.nanmean(s[f"r{j}"]) for j in range(6)]) for s in (calm, wild)]
    # the median and MAD of seven model means move by about one model's step; a standard deviation would
    # shrink the references to a hundredth of their spread
    assert 0.3 < ref_spread[1] / ref_spread[0] < 3.0


def _two_teachers(rng: np.random.Generator, k_refs: int, towards: str, strength: float = 3.0,
                  shared: float = 0.7) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]]]:
    """Component tables with the teacher T and with an alternative A in the teacher's seat. T and A are siblings:
    a model distilled from one is ``shared`` as teacher-like to the other (``towards``: T, A or none)."""
    t_tables = _world(rng, k_refs)
    a_tables = _world(rng, k_refs)
    shift_t = {"T": strength, "A": shared * strength, "none": 0.0}[towards]
    shift_a = {"T": shared * strength, "A": strength, "none": 0.0}[towards]
    for tables, shift in ((t_tables, shift_t), (a_tables, shift_a)):
        for table in tables.values():
            refs = np.array([table[m].mean() for m in table if m != "student"])
            table["student"] = table["student"] + shift * refs.std(ddof=1)
    return t_tables, a_tables


def _lean_p(t_tables: dict[str, dict[str, np.ndarray]], a_tables: dict[str, dict[str, np.ndarray]],
            rng: np.random.Generator) -> float:
    ct, ca = omnibus.combine(t_tables), omnibus.combine(a_tables)
    lean = {m: ct[m] - ca[m] for m in ct}
    return stats.compare_to_panel(lean["student"], {m: v for m, v in lean.items() if m != "student"}, rng).p_value


def test_a_student_of_the_sibling_is_not_blamed_on_the_teacher() -> None:
    rng = np.random.default_rng(5)
    alpha, n_sim = 0.05, 300
    blamed = sum(_lean_p(*_two_teachers(rng, 6, "A"), rng) < alpha for _ in range(n_sim))
    assert blamed / n_sim <= _fpr_bound(alpha, n_sim)
    null = sum(_lean_p(*_two_teachers(rng, 6, "none"), rng) < alpha for _ in range(n_sim))
    assert null / n_sim <= _fpr_bound(alpha, n_sim)


def test_a_student_of_the_teacher_leans_to_it_over_the_sibling() -> None:
    rng = np.random.default_rng(6)
    caught = sum(_lean_p(*_two_teachers(rng, 6, "T", strength=6.0, shared=0.4), rng) < 0.05 for _ in range(200))
    assert caught / 200 >= 0.8


def test_references_needed_grows_with_the_spread() -> None:
    assert omnibus.references_needed(1.0, [0.0, 0.1], level=0.01) is not None
    few = omnibus.references_needed(1.0, [0.0, 0.1, 0.05], level=0.01)
    many = omnibus.references_needed(1.0, [0.0, 0.4, 0.2], level=0.01)
    assert few is not None and (many is None or many > few)
    assert omnibus.references_needed(-1.0, [0.0, 0.1], level=0.01) is None  # below the panel: no count helps
    # the count it gives does reach the level with the observed mean and spread
    k = omnibus.references_needed(1.0, [0.0, 0.2, 0.1], level=0.005)
    assert k is not None
    sd = float(np.std([0.0, 0.2, 0.1], ddof=1))
    t = (1.0 - 0.1) / (sd * math.sqrt(1 + 1 / k))
    from scipy import stats as sps

    assert sps.t.sf(t, df=k - 1) < 0.005 <= sps.t.sf((1.0 - 0.1) / (sd * math.sqrt(1 + 1 / (k - 1))), df=k - 2)


def _evidence(name: str, per_prompt: dict[str, list[float]]) -> Evidence:
    return Evidence(detector=name, test="t", null="n.", statistic=0.0, statistic_name="s", p_value=0.5, effect_size=0.0,
                    effect_size_name="e", ci_low=0.0, ci_high=0.0, ci_level=0.95, n=3, rules_out=False,
                    details={"per_prompt": per_prompt})


def test_components_are_the_modes_set_and_fall_back_to_what_the_user_chose() -> None:
    ctx = SimpleNamespace(student=SimpleNamespace(name="student"), references=(SimpleNamespace(name="r1"),
                          SimpleNamespace(name="r2")), prompts=("a", "b", "c"))
    values = {"student": [0.1, 0.2, 0.3], "r1": [0.0, 0.1, 0.2], "r2": [0.2, None, 0.1]}
    evidence = [_evidence("text-word-agreement", values), _evidence("teacher-text-likelihood", values)]
    chosen = omnibus.components(evidence, ctx, "black")  # type: ignore[arg-type]
    assert chosen.names == ("teacher-text-likelihood",)  # text-word-agreement is not in the black set
    assert chosen.left_out == {"text-edit-similarity": "did not run on these models"}
    fallback = omnibus.components(evidence[:1], ctx, "gray")  # type: ignore[arg-type]
    assert fallback.names == ("text-word-agreement",)  # none of gray's ran: what ran is combined
