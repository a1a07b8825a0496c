"""The verdict: combination named and valid, `not-distilled` only with a power statement behind it."""

from __future__ import annotations

import math

import pytest

from audit.aggregate import verdict
from detectors.base import Evidence


def _ev(name: str, p: float, *, planted: float = math.nan, rules_out: bool = False) -> Evidence:
    return Evidence(detector=name, test="t", null="n.", statistic=0.0, statistic_name="s", p_value=p, effect_size=0.0,
                    effect_size_name="e", ci_low=-0.1, ci_high=0.1, ci_level=0.95, n=50, rules_out=rules_out,
                    margin=0.2, planted_p_value=planted)


def test_bonferroni_over_detectors_decides_distilled() -> None:
    v = verdict([_ev("a", 0.001), _ev("b", 0.5)], alpha=0.01)
    assert v.label == "distilled" and v.p_value == pytest.approx(0.002) and v.method == "bonferroni"
    assert v.adjusted == {"a": pytest.approx(0.002), "b": pytest.approx(0.5)}
    assert "Bonferroni over 2 detectors" in v.summary
    assert verdict([_ev("a", 0.006), _ev("b", 0.5)], alpha=0.01).label != "distilled"  # 2 x 0.006 > 0.01


def test_cauchy_combination_is_named_and_less_conservative_when_detectors_agree() -> None:
    evidence = [_ev(str(i), 0.004) for i in range(4)]
    assert verdict(evidence, 0.01).label != "distilled"  # Bonferroni: 0.016
    cauchy = verdict(evidence, 0.01, method="cauchy")
    assert cauchy.label == "distilled" and cauchy.to_dict()["combination"] == "cauchy"
    assert "Cauchy" in str(cauchy.to_dict()["combination_description"])


def test_not_distilled_needs_a_powered_detector_that_rules_the_margin_out() -> None:
    unpowered = verdict([_ev("a", 0.6, planted=0.2, rules_out=True)], alpha=0.01)
    assert unpowered.label == "inconclusive" and "power" in unpowered.summary and unpowered.powered == ()
    powered = verdict([_ev("a", 0.6, planted=1e-5, rules_out=True), _ev("b", 0.4, planted=0.3)], alpha=0.01)
    assert powered.label == "not-distilled" and powered.powered == ("a",)
    not_ruled_out = verdict([_ev("a", 0.6, planted=1e-5, rules_out=False)], alpha=0.01)
    assert not_ruled_out.label == "inconclusive"


def test_power_is_judged_at_the_per_detector_level() -> None:
    # planted p 0.004 is below alpha but not below alpha / 3: with three detectors it would not have been caught
    v = verdict([_ev(x, 0.5, planted=0.004, rules_out=True) for x in "abc"], alpha=0.01)
    assert v.label == "inconclusive"


def test_no_evidence_is_inconclusive_and_warnings_are_kept() -> None:
    v = verdict([], alpha=0.01, warnings=["w"])
    assert v.label == "inconclusive" and v.warnings == ("w",)
    with pytest.raises(ValueError, match="unknown combination"):
        verdict([_ev("a", 0.1)], 0.01, method="fisher")
