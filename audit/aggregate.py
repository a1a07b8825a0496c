"""From per-detector evidence to one verdict, with a combination valid under dependence.

Detectors look at the same models and prompts, so their p-values are dependent. The default
combination is Bonferroni's global test (m times the smallest p), which Holm's procedure shares as its
first step: valid under any dependence. The Cauchy combination (Liu & Xie 2020) is offered too; it is
less conservative when several detectors agree, and its validity under dependence holds for small
alpha (asymptotically), so it is an explicit choice, not the default.

Labels:

* ``distilled``: the combined p-value is below alpha.
* ``not-distilled``: only with a power statement behind it. Each detector reports the p-value it would
  have given had the student shown an effect of exactly its margin (``planted_p_value``). A detector is
  *powered* when that planted p-value is below alpha / m (it would have caught such a student here, with
  this probe budget and panel). The label needs at least one powered detector, and every powered detector's
  confidence interval must exclude its margin.
* ``inconclusive``: anything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from audit import stats
from detectors.base import Evidence

LABELS = ("distilled", "inconclusive", "not-distilled")
COMBINATIONS = {
    "bonferroni": "Bonferroni global test (Holm's first step): m x smallest p, valid under any dependence",
    "cauchy": "Cauchy combination test (Liu & Xie 2020): valid under dependence for small alpha",
}


@dataclass(frozen=True)
class Verdict:
    label: str
    p_value: float
    alpha: float
    method: str
    summary: str
    warnings: tuple[str, ...] = ()
    adjusted: dict[str, float] = field(default_factory=dict)  # Holm-adjusted p per detector
    powered: tuple[str, ...] = ()  # detectors that would have caught an effect of their margin

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "combination": self.method,
            "combination_description": COMBINATIONS[self.method],
            "holm_adjusted_p_values": dict(self.adjusted),
            "powered_detectors": list(self.powered),
            "summary": self.summary,
            "warnings": list(self.warnings),
        }


def combine(p_values: Sequence[float], method: str) -> float:
    if method == "bonferroni":
        return stats.bonferroni_global(p_values)
    if method == "cauchy":
        return stats.cauchy_combination(p_values)
    raise ValueError(f"unknown combination {method!r}; known: {', '.join(COMBINATIONS)}")


def verdict(evidence: Sequence[Evidence], alpha: float, warnings: Sequence[str] = (),
            method: str = "bonferroni") -> Verdict:
    if method not in COMBINATIONS:
        raise ValueError(f"unknown combination {method!r}; known: {', '.join(COMBINATIONS)}")
    if not evidence:
        return Verdict("inconclusive", 1.0, alpha, method,
                       "Inconclusive: no detector could run on these models.", tuple(warnings))
    p_values = [e.p_value for e in evidence]
    combined = combine(p_values, method)
    adjusted = dict(zip((e.detector for e in evidence), stats.holm(p_values)))
    m = len(evidence)
    how = f"{'Bonferroni' if method == 'bonferroni' else 'Cauchy combination'} over {m} detector{'s' if m != 1 else ''}"
    level = alpha / m
    powered = tuple(e.detector for e in evidence if math.isfinite(e.planted_p_value) and e.planted_p_value < level)
    strongest = min(evidence, key=lambda e: (e.p_value, e.detector))
    if combined < alpha:
        label = "distilled"
        summary = (f"Distilled: the student is more teacher-like than independent models would be "
                   f"(p = {combined:.2g} < alpha = {alpha:g}, {how}; strongest: {strongest.detector}).")
    elif powered and all(e.rules_out for e in evidence if e.detector in powered):
        label = "not-distilled"
        summary = (f"Not distilled: no detector found the student more teacher-like than independent models "
                   f"(p = {combined:.2g}, {how}), and {len(powered)} detector(s) would have caught an effect as "
                   f"large as their margin and rule such an effect out ({', '.join(powered)}).")
    else:
        label = "inconclusive"
        why = ("no detector had the power to catch an effect the size of its margin with these probes and this panel"
               if not powered else "the data cannot rule out an effect the size of a detector's margin")
        summary = f"Inconclusive: no significant evidence of distillation (p = {combined:.2g}, {how}), but {why}."
    return Verdict(label, combined, alpha, method, summary, tuple(warnings), adjusted, powered)
