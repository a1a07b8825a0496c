"""From per-detector evidence to one verdict, with a combination valid under dependence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from audit import stats
from detectors.base import Evidence

LABELS = ("distilled", "inconclusive", "not-distilled")
COMBINATION = "bonferroni"


@dataclass(frozen=True)
class Verdict:
    label: str
    p_value: float
    alpha: float
    method: str
    summary: str
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "combination": self.method,
            "summary": self.summary,
            "warnings": list(self.warnings),
        }


def verdict(evidence: Sequence[Evidence], alpha: float, warnings: Sequence[str] = ()) -> Verdict:
    """``distilled`` when the combined p-value is below alpha; ``not-distilled`` only when every detector's
    confidence interval rules out an effect as large as its margin; ``inconclusive`` otherwise."""
    if not evidence:
        return Verdict("inconclusive", 1.0, alpha, COMBINATION,
                       "Inconclusive: no detector could run on these models.", tuple(warnings))
    combined = stats.bonferroni_global([e.p_value for e in evidence])
    m = len(evidence)
    how = f"Bonferroni over {m} detector{'s' if m != 1 else ''}"
    strongest = min(evidence, key=lambda e: (e.p_value, e.detector))
    if combined < alpha:
        label = "distilled"
        summary = (f"Distilled: the student is more teacher-like than the reference models "
                   f"(p = {combined:.2g} < alpha = {alpha:g}, {how}; strongest: {strongest.detector}).")
    elif all(e.rules_out for e in evidence):
        label = "not-distilled"
        summary = (f"Not distilled: no detector found the student more teacher-like than the references, "
                   f"and each one's 95% interval rules out an effect as large as its margin (p = {combined:.2g}, {how}).")
    else:
        label = "inconclusive"
        summary = (f"Inconclusive: no significant evidence of distillation (p = {combined:.2g}, {how}), "
                   "but the data cannot rule out a small effect.")
    return Verdict(label, combined, alpha, COMBINATION, summary, tuple(warnings))
