"""The verdict: combination named and valid, `not-distilled` only with a power statement behind it."""

from __future__ import annotations

import math

import pytest

from distill_audit.aggregate import verdict
from distill_audit.detectors.base import Evidence


def _ev(name: str, p: float, *, planted: float = math.nan, rules_out: bool = False) -> Evidence:
    return Evidence(detector=name, test="t", null="n.", statistic=0.0, statistic_name="s", p_value=p, effect_size=0.0,
                    effect_size_name="e", ci_low=-0.1, ci_high=0.1, ci_level=0.95, n=50, rules_out=rules_out,
                    margin=0.2, planted_p_value=planted)


OMNI, LOGS, MARK, WEIGHTS = "panel-omnibus", "logged-vs-fresh", "watermark-radioactivity", "weight-lineage"


def test_bonferroni_over_the_primary_lines_decides_distilled() -> None:
    v = verdict([_ev(OMNI, 0.001), _ev(LOGS, 0.5)], alpha=0.01)
    assert v.label == "distilled" and v.p_value == pytest.approx(0.002) and v.method == "bonferroni"
    assert [line["line"] for line in v.primary] == [OMNI, LOGS]
    assert [line["adjusted_p_value"] for line in v.primary] == [pytest.approx(0.002), pytest.approx(0.5)]
    assert "Bonferroni over 2 primary lines" in v.summary
    assert verdict([_ev(OMNI, 0.006), _ev(LOGS, 0.5)], alpha=0.01).label != "distilled"  # 2 x 0.006 > 0.01


def test_supporting_detectors_are_kept_with_holm_but_do_not_divide_alpha() -> None:
    supporting = [_ev(f"detector-{i}", 0.0001) for i in range(10)]
    v = verdict([_ev(OMNI, 0.004), *supporting], alpha=0.01)
    assert v.label == "distilled" and v.p_value == pytest.approx(0.004)  # one primary line: no division by 11
    assert set(v.adjusted) == {f"detector-{i}" for i in range(10)}  # Holm over the individual detectors
    assert v.adjusted["detector-0"] == pytest.approx(0.001)
    only_supporting = verdict(supporting, alpha=0.01)
    assert only_supporting.label == "inconclusive" and "no primary line" in only_supporting.summary


def test_cauchy_combination_is_named_and_less_conservative_when_lines_agree() -> None:
    evidence = [_ev(name, 0.004) for name in (OMNI, LOGS, MARK, WEIGHTS)]
    assert verdict(evidence, 0.01).label != "distilled"  # Bonferroni: 0.016
    cauchy = verdict(evidence, 0.01, method="cauchy")
    assert cauchy.label == "distilled" and cauchy.to_dict()["combination"] == "cauchy"
    assert "Cauchy" in str(cauchy.to_dict()["combination_description"])


def test_not_distilled_needs_a_powered_line_that_rules_the_margin_out() -> None:
    unpowered = verdict([_ev(OMNI, 0.6, planted=0.2, rules_out=True)], alpha=0.01)
    assert unpowered.label == "inconclusive" and "power" in unpowered.summary and unpowered.powered == ()
    powered = verdict([_ev(OMNI, 0.6, planted=1e-5, rules_out=True), _ev(LOGS, 0.4, planted=0.3)], alpha=0.01)
    assert powered.label == "not-distilled" and powered.powered == (OMNI,)
    not_ruled_out = verdict([_ev(OMNI, 0.6, planted=1e-5, rules_out=False)], alpha=0.01)
    assert not_ruled_out.label == "inconclusive"


def test_an_effect_beyond_its_margin_is_never_not_distilled() -> None:
    # the logs line is powered and rules its margin out, but the omnibus effect exceeds its margin without
    # reaching significance against the panel (few references): that is not "not distilled"
    big = Evidence(detector=OMNI, test="t", null="n.", statistic=0.0, statistic_name="s", p_value=0.04,
                   effect_size=6.0, effect_size_name="e", ci_low=5.0, ci_high=7.0, ci_level=0.95, n=50,
                   rules_out=False, margin=3.0, planted_p_value=0.2)
    v = verdict([big, _ev(LOGS, 0.5, planted=1e-6, rules_out=True)], alpha=0.01)
    assert v.label == "inconclusive" and OMNI in v.summary and "margin" in v.summary


def test_power_is_judged_at_the_per_line_level() -> None:
    # planted p 0.004 is below alpha but not below alpha / 3: with three lines it would not have been caught
    v = verdict([_ev(x, 0.5, planted=0.004, rules_out=True) for x in (OMNI, LOGS, WEIGHTS)], alpha=0.01)
    assert v.label == "inconclusive"


def _attribution(lean: float, closest: str, alt_p: float, towards: float = 0.001) -> dict[str, object]:
    return {"tested": True, "closest": closest, "versus_teacher_p_value": lean, "note": "n",
            "candidates": [{"name": "teacher", "role": "teacher", "source": "t", "p_value": 0.001},
                           {"name": "alternative-1", "role": "alternative", "source": "./sibling", "p_value": alt_p,
                            "versus_teacher_p_value": lean, "towards_alternative_p_value": towards}]}


def test_with_alternatives_the_omnibus_also_needs_the_student_to_lean_to_the_teacher() -> None:
    leaning = verdict([_ev(OMNI, 0.001)], 0.01, attribution=_attribution(0.002, "teacher", 0.3))
    assert leaning.label == "distilled" and leaning.attributed_to == "teacher"
    assert leaning.primary[0]["p_value"] == pytest.approx(0.002)  # intersection-union: the larger p
    assert leaning.primary[0]["panel_p_value"] == pytest.approx(0.001)
    sibling = verdict([_ev(OMNI, 0.001)], 0.01, attribution=_attribution(0.4, "alternative-1", 0.0005))
    assert sibling.label == "inconclusive" and sibling.attributed_to == "alternative-1"
    assert "./sibling" in sibling.summary and "not to the teacher" in sibling.summary
    undecided = verdict([_ev(OMNI, 0.001)], 0.01, attribution=_attribution(0.4, "teacher", 0.2))
    assert undecided.label == "inconclusive" and undecided.attributed_to is None
    # closest to the alternative by a hair, without a significant lean to it: no one is named
    hair = verdict([_ev(OMNI, 0.001)], 0.01, attribution=_attribution(0.4, "alternative-1", 0.001, towards=0.3))
    assert hair.label == "inconclusive" and hair.attributed_to is None
    # the logs speak for the teacher itself: a sibling cannot have written the teacher's logged answers
    logs = verdict([_ev(OMNI, 0.001), _ev(LOGS, 0.0001)], 0.01, attribution=_attribution(0.4, "alternative-1", 0.0005))
    assert logs.label == "distilled" and logs.attributed_to == "teacher"


def test_no_evidence_is_inconclusive_and_warnings_are_kept() -> None:
    v = verdict([], alpha=0.01, warnings=["w"])
    assert v.label == "inconclusive" and v.warnings == ("w",)
    with pytest.raises(ValueError, match="unknown combination"):
        verdict([_ev("a", 0.1)], 0.01, method="fisher")
