"""From evidence to one verdict: a few independent lines of evidence, a combination valid under dependence.

The verdict's *primary* tests are the independent lines of evidence only (:data:`PRIMARY`): the omnibus
panel test (:mod:`audit.omnibus`, which combines the panel detectors before testing, so they are not
divided among themselves), ``logged-vs-fresh`` (when logs are given), ``watermark-radioactivity`` (when a
key is given) and ``weight-lineage`` (when both models' weights are open). The multiplicity correction
runs over those. With alternative teachers, the omnibus line is the intersection-union of "more
teacher-like than the panel" and "leans to the teacher over every alternative beyond the panel": a
student of a sibling teacher is not blamed on the teacher. Every individual detector stays in the result
as supporting evidence, with its own p-value and Holm adjustment over all of them.

The default combination is Bonferroni's global test (m times the smallest p), which Holm's procedure
shares as its first step: valid under any dependence. The Cauchy combination (Liu & Xie 2020) is offered
too; its validity under dependence holds for small alpha (asymptotically), so it is an explicit choice.

Labels:

* ``distilled``: the combined p-value over the primary lines is below alpha.
* ``not-distilled``: only with a power statement behind it. Each line reports the p-value it would have
  given had the student shown an effect of exactly its margin (``planted_p_value``). A line is *powered*
  when that planted p-value is below alpha / m. The label needs at least one powered line, every powered
  line's confidence interval must exclude its margin, and no line's estimated effect may reach its margin.
* ``inconclusive``: anything else (and, with alternatives, when the evidence points to an alternative).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from distill_audit import stats
from distill_audit.detectors.base import Evidence
from distill_audit.stats import finite_or_none

OMNIBUS = "panel-omnibus"
LABELS = ("distilled", "inconclusive", "not-distilled")
COMBINATIONS = {
    "bonferroni": "Bonferroni global test (Holm's first step): m x smallest p, valid under any dependence",
    "cauchy": "Cauchy combination test (Liu & Xie 2020): valid under dependence for small alpha",
}
# The verdict's primary lines of evidence, in report order, with what each tests in one sentence.
PRIMARY: dict[str, str] = {
    OMNIBUS: "The student is more teacher-like than independent reference models, over the pre-registered panel "
             "detectors combined (and, with alternative teachers, leans to the teacher over each of them).",
    "logged-vs-fresh": "The student finds the teacher answers in the logs easier than fresh answers to the same prompts, "
                       "beyond what the references show.",
    "watermark-radioactivity": "The student's text carries the teacher's watermark.",
    "weight-lineage": "The student's weights were initialised from the teacher's.",
}


@dataclass(frozen=True)
class Verdict:
    label: str
    p_value: float
    alpha: float
    method: str
    summary: str
    warnings: tuple[str, ...] = ()
    adjusted: dict[str, float] = field(default_factory=dict)  # Holm-adjusted p per individual detector
    powered: tuple[str, ...] = ()  # primary lines that would have caught an effect of their margin
    primary: tuple[dict[str, Any], ...] = ()  # the primary lines, as in the result
    attributed_to: str | None = None  # the candidate teacher the evidence points to, when it points to one

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "combination": self.method,
            "combination_description": COMBINATIONS[self.method],
            "primary": [dict(p) for p in self.primary],
            "attributed_to": self.attributed_to,
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


def primary_lines(evidence: Sequence[Evidence], attribution: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The primary lines among ``evidence``; the omnibus line's p-value also needs the student to lean to the
    teacher over every alternative (intersection-union) when alternatives were tested."""
    by_name = {e.detector: e for e in evidence}
    lines = []
    for name, description in PRIMARY.items():
        e = by_name.get(name)
        if e is None:
            continue
        p = e.p_value
        line: dict[str, Any] = {"line": name, "detector": name, "description": description}
        if name == OMNIBUS and attribution and attribution.get("tested"):
            lean = float(attribution.get("versus_teacher_p_value", 1.0))
            line["panel_p_value"] = p
            line["attribution_p_value"] = lean
            p = stats.intersection_union([p, lean])
        line.update(p_value=p, effect_size=finite_or_none(e.effect_size), effect_size_name=e.effect_size_name,
                    ci_low=finite_or_none(e.ci_low), ci_high=finite_or_none(e.ci_high), margin=finite_or_none(e.margin),
                    planted_p_value=finite_or_none(e.planted_p_value), rules_out=e.rules_out)
        lines.append(line)
    return lines


def verdict(evidence: Sequence[Evidence], alpha: float, warnings: Sequence[str] = (),
            method: str = "bonferroni", attribution: Mapping[str, Any] | None = None) -> Verdict:
    """The verdict over the primary lines among ``evidence``; the rest is supporting evidence (Holm)."""
    if method not in COMBINATIONS:
        raise ValueError(f"unknown combination {method!r}; known: {', '.join(COMBINATIONS)}")
    individual = [e for e in evidence if e.detector != OMNIBUS]
    adjusted = dict(zip((e.detector for e in individual), stats.holm([e.p_value for e in individual])))
    lines = primary_lines(evidence, attribution)
    if not lines:
        why = ("no detector could run on these models" if not evidence else
               "no primary line of evidence (omnibus panel test, logs, watermark, weights) could run")
        return Verdict("inconclusive", 1.0, alpha, method, f"Inconclusive: {why}.", tuple(warnings), adjusted)
    p_values = [line["p_value"] for line in lines]
    for line, adj in zip(lines, stats.holm(p_values)):
        line["adjusted_p_value"] = adj
    combined = combine(p_values, method)
    m = len(lines)
    how = (f"{'Bonferroni' if method == 'bonferroni' else 'Cauchy combination'} over {m} primary "
           f"line{'s' if m != 1 else ''} of evidence")
    level = alpha / m
    powered = tuple(line["line"] for line in lines
                    if line["planted_p_value"] is not None and line["planted_p_value"] < level)
    strongest = min(lines, key=lambda line: (line["p_value"], line["line"]))["line"]
    tested = bool(attribution and attribution.get("tested"))
    attributed: str | None = None
    if combined < alpha:
        label, attributed = "distilled", "teacher"
        which = " Of the candidate teachers, the evidence points to the teacher." if tested else ""
        summary = (f"Distilled: the student shows the teacher's mark beyond what independent models would "
                   f"(p = {combined:.2g} < alpha = {alpha:g}, {how}; strongest: {strongest}).{which}")
    else:
        alternative = _pointing_to_alternative(attribution, alpha) if tested else None
        if alternative is not None:
            label, attributed = "inconclusive", alternative["name"]
            summary = (f"Inconclusive for this teacher: the student is more like {alternative['name']} "
                       f"({alternative['source']}) than like the teacher, and more like it than independent models "
                       f"are (p = {alternative['p_value']:.2g}); the evidence points to {alternative['name']}, not "
                       f"to the teacher (p = {combined:.2g} for the teacher, {how}).")
        elif (powered and all(line["rules_out"] for line in lines if line["line"] in powered)
              and not (beyond := _beyond_margin(lines))):
            label = "not-distilled"
            summary = (f"Not distilled: no line of evidence found the student more teacher-like than independent "
                       f"models (p = {combined:.2g}, {how}), and {len(powered)} line(s) would have caught an effect "
                       f"as large as their margin and rule such an effect out ({', '.join(powered)}).")
        else:
            label = "inconclusive"
            beyond = _beyond_margin(lines)
            if beyond:
                why = (f"{', '.join(beyond)} shows an effect at least the size of its margin that is not significant "
                       "against the reference panel")
            elif not powered:
                why = ("no line of evidence had the power to catch an effect the size of its margin with these probes "
                       "and this panel")
            else:
                why = "the data cannot rule out an effect the size of a margin"
            summary = f"Inconclusive: no significant evidence of distillation (p = {combined:.2g}, {how}), but {why}."
    return Verdict(label, combined, alpha, method, summary, tuple(warnings), adjusted, powered, tuple(lines),
                   attributed)


def _beyond_margin(lines: Sequence[Mapping[str, Any]]) -> list[str]:
    """Lines whose estimated effect reaches their margin: never part of a not-distilled verdict."""
    return [line["line"] for line in lines if line["effect_size"] is not None and line["margin"] is not None
            and line["effect_size"] >= line["margin"]]


def _pointing_to_alternative(attribution: Mapping[str, Any] | None, alpha: float) -> dict[str, Any] | None:
    """The alternative the student is closest to, when the student is more like it than independent models are
    and leans to it over the teacher beyond the panel, both at ``alpha``."""
    if not attribution:
        return None
    closest = attribution.get("closest")
    for row in attribution.get("candidates", ()):
        if (row.get("name") == closest and row.get("role") == "alternative" and row.get("p_value", 1.0) < alpha
                and (row.get("towards_alternative_p_value") or 1.0) < alpha):
            return dict(row)
    return None
