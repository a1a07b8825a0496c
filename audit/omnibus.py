"""One pre-registered panel test, and attribution among candidate teachers.

Most panel detectors measure one thing — how teacher-like a model is — from different angles. Testing
each at alpha / 12 throws most of their power away, so the verdict does not: it combines them *before*
testing, into one per-prompt score, and tests that score once against the reference panel.

The scale. For each component detector, every suspect model's (the student's and every reference's)
per-prompt values are centred on the median of the models' means and divided by the robust spread of
those means (1.4826 x their median absolute deviation): one unit is the typical difference between two
models, whatever the detector measures. A prompt where any model has no value for a detector gives that
detector no value for anyone. A model's omnibus score on a prompt is the mean of its standardized
values over the components that have one. The rule is one symmetric function
of all suspects' values, so a student exchangeable with the references under the null stays
exchangeable after it, and :func:`audit.stats.compare_to_panel` (the same two tests every panel detector
uses) keeps its level. The components are fixed per teacher access mode before any data is seen
(:data:`COMPONENTS`); those that could run on the models in hand are combined.

Attribution. With candidate teachers besides the accused one (``--alternative-teacher``), the same
components are run with each candidate in the teacher's seat. For every suspect and prompt, its
omnibus score towards the accused teacher minus its score towards the candidate (over the components
that ran for both) measures how far it leans to the accused teacher. The student's lean is tested
against the references' leans, again with :func:`~audit.stats.compare_to_panel`: a student distilled
from the candidate (a sibling trained on the same data, the same family's other size, another vendor)
leans to the candidate, no more to the accused teacher than independent models do, and is not blamed
on the accused teacher. This is the multi-candidate provenance question of Nikolic et al. 2025
("Model Provenance Testing for Large Language Models"), answered with the panel as the null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats as sps

from distill_audit import stats
from distill_audit.backends.base import Capability, ModelAdapter
from distill_audit.detectors.base import DetectorContext, Evidence
from distill_audit.detectors.panel import PANEL_TEST, comparison_evidence, round_list

NAME = "panel-omnibus"
# Smallest excess over the most teacher-like reference counted as distillation, in omnibus units (robust spreads
# of the model means): three times the spread between independent models, beyond the most teacher-like of them.
# The distilled students of the demo and the benchmark zoo stand 5 to 10 spreads out.
MARGIN = 3.0

_TOKEN = ("next-token-agreement", "top-k-overlap", "js-divergence", "idiosyncrasy-tokens", "teacher-text-likelihood")
# Pre-registered: which panel detectors the omnibus combines, per teacher access mode (what the teacher gives).
# Where the teacher shows its next-token distribution (white, gray), the token-level measures see it at every
# generated step, and teacher-text-likelihood (bits per byte on the teacher's writing) adds what the student
# absorbed of the teacher's text. With text only (black), teacher-text-likelihood and the character-level
# edit similarity; the word-level measures (greedy word agreement and its idiosyncratic places) are coarse for
# small models and repeat each other, so they stay supporting evidence, as do representation-similarity
# (one-sided) and the idiosyncrasy measures of text.
COMPONENTS: Mapping[str, tuple[str, ...]] = {
    "white": _TOKEN,
    "gray": _TOKEN,
    "black": ("teacher-text-likelihood", "text-edit-similarity"),
}
SCALE = (
    "per detector, every model's per-prompt value minus the median of the model means, divided by the robust "
    "spread of the model means (1.4826 x MAD over the student and the references, floored by the prompt-level "
    "standard error); averaged over the detectors per prompt. Units: spreads between models"
)


def access_of(adapter: ModelAdapter) -> str:
    """The teacher's access mode as the omnibus sees it: white (hidden states), gray (top-k of its own
    generations), black (text only)."""
    caps = adapter.capabilities
    if Capability.HIDDEN_STATES in caps:
        return "white"
    if Capability.GENERATE_TOPK in caps:
        return "gray"
    return "black"


def per_prompt(evidence: Evidence, models: Sequence[str], n_prompts: int) -> dict[str, np.ndarray] | None:
    """The detector's per-prompt values for ``models`` (NaN where it has none), or None when it has none."""
    table = evidence.details.get("per_prompt") if isinstance(evidence.details, Mapping) else None
    if not isinstance(table, Mapping) or any(m not in table for m in models):
        return None
    out = {m: np.array([math.nan if v is None else float(v) for v in table[m]], dtype=float) for m in models}
    if any(v.shape != (n_prompts,) for v in out.values()):
        return None
    return out


def standardize(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One detector's per-prompt values on the panel's scale: centred on the median model mean and divided by the
    robust spread of the model means (1.4826 x MAD, floored by the pooled prompt-level standard error of a mean).

    Prompts where any model has no value are NaN for every model. The centre and the scale are functions of the
    multiset of all models' values, so the rule is symmetric in the models; being medians, one far-out model (a
    distilled student) barely moves them."""
    names = list(values)
    grid = np.vstack([np.asarray(values[n], dtype=float) for n in names])  # models x prompts
    complete = np.all(np.isfinite(grid), axis=0)
    out = np.full(grid.shape, np.nan)
    if complete.any():
        g = grid[:, complete]
        means = g.mean(axis=1)
        centre = float(np.median(means))
        spread = 1.4826 * float(np.median(np.abs(means - centre)))
        prompt_se = float(np.sqrt(np.mean(g.var(axis=1, ddof=1)) / g.shape[1])) if g.shape[1] > 1 else 0.0
        out[:, complete] = (g - centre) / max(spread, prompt_se, 1e-12)
    return {n: out[i] for i, n in enumerate(names)}


def combine(tables: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Omnibus score per model and prompt: the mean standardized value over the component detectors (NaN: none)."""
    shares = [standardize(t) for t in tables.values()]
    names = list(next(iter(tables.values())))
    out = {}
    for n in names:
        stack = np.vstack([s[n] for s in shares])
        counts = np.isfinite(stack).sum(axis=0)
        sums = np.nansum(stack, axis=0)
        out[n] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


@dataclass(frozen=True)
class Components:
    """The component detectors' per-prompt values, by detector then model."""

    access: str
    tables: dict[str, dict[str, np.ndarray]]
    left_out: dict[str, str]  # component -> why it is not in the omnibus

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.tables)


def components(evidence: Sequence[Evidence], ctx: DetectorContext, access: str) -> Components:
    models = [ctx.student.name, *(r.name for r in ctx.references)]
    by_name = {e.detector: e for e in evidence}
    tables, left_out = {}, {}
    for name in COMPONENTS[access]:
        e = by_name.get(name)
        if e is None:
            left_out[name] = "did not run on these models"
            continue
        t = per_prompt(e, models, len(ctx.prompts))
        if t is None:
            left_out[name] = "gave no per-prompt values for every model"
            continue
        tables[name] = t
    if not tables:
        # none of the mode's components ran (the user chose other detectors with --detector, or the models do not
        # allow them): the panel detectors that did run are the pre-registered set, chosen before any data
        for e in evidence:
            t = per_prompt(e, models, len(ctx.prompts)) if e.detector != NAME else None
            if t is not None:
                tables[e.detector] = t
    return Components(access, tables, left_out)


def omnibus_evidence(comp: Components, ctx: DetectorContext) -> Evidence | None:
    """The omnibus panel test as one piece of evidence, or None when no component ran."""
    if not comp.tables:
        return None
    scores = combine(comp.tables)
    student = scores[ctx.student.name]
    refs = {r.name: scores[r.name] for r in ctx.references}
    cmp = stats.compare_to_panel(student, refs, ctx.rng(NAME), margin=MARGIN)
    usable = np.isfinite(student) & np.logical_and.reduce([np.isfinite(v) for v in refs.values()])
    excess = (student - refs[cmp.closest])[usable]
    floor_sd = float(excess.std(ddof=1) / math.sqrt(excess.size)) if excess.size > 1 else 0.0
    return comparison_evidence(
        NAME, cmp,
        test=("one pre-registered test: the component detectors' per-prompt teacher-likeness put on one scale "
              "(standardized by the robust spread between the suspect models, averaged over the detectors), then " + PANEL_TEST),
        null=("The student is no more teacher-like than an independent model on the combined scale: no higher than "
              "the most teacher-like reference across prompts, or within the spread of the reference panel."),
        effect_size_name=f"mean omnibus excess (in spreads between models) over the most teacher-like reference ({cmp.closest})",
        margin=MARGIN,
        details={
            "statistic": "omnibus score (spreads between models)",
            "access": comp.access,
            "components": list(comp.names),
            "components_left_out": dict(comp.left_out),
            "pre_registered_components": list(COMPONENTS[comp.access]),
            "scale": SCALE,
            "panel_floor_sd": floor_sd,
            "per_prompt": {k: round_list(v) for k, v in scores.items()},
        },
    )


@dataclass(frozen=True)
class Candidate:
    name: str  # teacher | alternative-N
    role: str  # teacher | alternative
    source: str
    comp: Components


def attribution(teacher: Candidate, alternatives: Sequence[Candidate], ctx: DetectorContext,
                alpha: float) -> dict[str, Any]:
    """The attribution table: each candidate teacher, how teacher-like the student is towards it against the
    panel, and (alternatives) whether the student leans to the accused teacher over it beyond the panel."""
    if not alternatives:
        return {
            "tested": False,
            "closest": None,
            "candidates": [],
            "note": ("Attribution among teachers trained on similar data was not tested: no alternative teacher was "
                     "given (--alternative-teacher). A model trained on the teacher's data, or distilled from a "
                     "sibling of the teacher, can look as teacher-like as a distilled student; give such models as "
                     "alternative teachers to tell them apart."),
        }
    refs = [r.name for r in ctx.references]
    s_name = ctx.student.name
    rows: list[dict[str, Any]] = []
    for cand in (teacher, *alternatives):
        if not cand.comp.tables:
            rows.append(_empty_row(cand, "no omnibus component ran with this candidate as the teacher"))
            continue
        scores = combine(cand.comp.tables)
        cmp = stats.compare_to_panel(scores[s_name], {r: scores[r] for r in refs}, ctx.rng(f"attribution/{cand.name}"))
        row = {
            "name": cand.name, "role": cand.role, "source": cand.source,
            "components": list(cand.comp.names),
            "student_score": stats.finite_or_none(cmp.student_mean),
            "reference_mean": stats.finite_or_none(float(np.mean(list(cmp.reference_means.values())))),
            "excess": stats.finite_or_none(cmp.effect),
            "panel_t": stats.finite_or_none(cmp.panel.statistic),
            "p_value": cmp.p_value,
            "versus_teacher_p_value": None,
            "versus_teacher_effect": None,
            "towards_alternative_p_value": None,
            "common_components": None,
        }
        if cand.role == "alternative":
            common = [c for c in teacher.comp.names if c in cand.comp.tables]
            if common:
                lean_t = combine({c: teacher.comp.tables[c] for c in common})
                lean_a = combine({c: cand.comp.tables[c] for c in common})
                lean = {m: lean_t[m] - lean_a[m] for m in lean_t}
                vs = stats.compare_to_panel(lean[s_name], {r: lean[r] for r in refs},
                                            ctx.rng(f"attribution/lean/{cand.name}"))
                back = stats.compare_to_panel(-lean[s_name], {r: -lean[r] for r in refs},
                                              ctx.rng(f"attribution/towards/{cand.name}"))
                row.update(versus_teacher_p_value=vs.p_value, versus_teacher_effect=stats.finite_or_none(vs.effect),
                           towards_alternative_p_value=back.p_value, common_components=common)
            else:
                row.update(versus_teacher_p_value=1.0, towards_alternative_p_value=1.0, common_components=[])
        rows.append(row)
    ranked = [r for r in rows if r["panel_t"] is not None]
    closest = max(ranked, key=lambda r: (r["panel_t"], r["role"] == "teacher"))["name"] if ranked else None
    leans = [r["versus_teacher_p_value"] for r in rows if r["role"] == "alternative"]
    lean_p = stats.intersection_union([1.0 if p is None else p for p in leans])
    if lean_p < alpha:
        note = (f"The student leans to the teacher over every alternative beyond what independent models show "
                f"(largest p = {lean_p:.2g}); of the candidates, the evidence points to the teacher.")
    elif closest is not None and closest != "teacher" and (_row(rows, closest)["towards_alternative_p_value"] or 1.0) < alpha:
        note = (f"The student leans to {closest} over the teacher beyond what independent models show (p = "
                f"{_row(rows, closest)['towards_alternative_p_value']:.2g}); the evidence does not point to the teacher.")
    else:
        note = (f"The student does not lean to the teacher over every alternative beyond what independent models show "
                f"(largest p = {lean_p:.2g}): the data cannot tell the teacher from the alternatives.")
    return {"tested": True, "closest": closest, "candidates": rows, "versus_teacher_p_value": lean_p, "note": note}


def _row(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for r in rows if r["name"] == name)


def _empty_row(cand: Candidate, why: str) -> dict[str, Any]:
    return {"name": cand.name, "role": cand.role, "source": cand.source, "components": [], "student_score": None,
            "reference_mean": None, "excess": None, "panel_t": None, "p_value": 1.0,
            "versus_teacher_p_value": 1.0 if cand.role == "alternative" else None, "versus_teacher_effect": None,
            "towards_alternative_p_value": 1.0 if cand.role == "alternative" else None,
            "common_components": [], "why": why}


def references_needed(student_mean: float, reference_means: Sequence[float], level: float,
                      floor_sd: float = 0.0, limit: int = 100) -> int | None:
    """How many references the panel prediction test would need to reach ``level`` if the student's mean and
    the references' mean and spread stayed as observed; None when even ``limit`` would not do."""
    values = np.asarray(reference_means, dtype=float)
    if values.size < 2 or not math.isfinite(student_mean):
        return None
    sd = max(float(values.std(ddof=1)), floor_sd, 1e-12)
    gap = student_mean - float(values.mean())
    if gap <= 0:
        return None
    for k in range(2, limit + 1):
        t = gap / (sd * math.sqrt(1.0 + 1.0 / k))
        if sps.t.sf(t, df=k - 1) < level:
            return k
    return None
