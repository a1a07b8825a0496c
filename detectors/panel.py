"""What the panel-based detectors share: one per-prompt similarity per model, one test against the panel.

A panel detector computes, for the student and for every reference, a per-prompt measure of how
teacher-like that model is. The null is "the student is no more teacher-like than an independent
model", tested by :func:`audit.stats.compare_to_panel` (prompt-level Wilcoxon against every reference
and a model-level prediction test against the spread of the panel; both must reject).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from distill_audit import stats
from distill_audit.backends.base import Capability, GenerateParams, Generation, ScoredText
from distill_audit.detectors.base import DetectorContext, Evidence, ModelHandle, PlanInputs, PlannedRequest

PANEL_TEST = (
    "intersection-union of (a) one-sided Wilcoxon signed-rank across prompts against each reference and "
    "(b) one-sided t prediction test of the student's mean against the reference panel"
)
PANEL_NULL = (
    "The student is no more {what} than an independent model: no higher than the most teacher-like "
    "reference across prompts, or within the spread of the reference panel."
)


SUSPECT_ROLES = ("student", "reference")  # the seats of :func:`suspects`, as planned requests name them


def suspects(ctx: DetectorContext) -> tuple[ModelHandle, ...]:
    """The models whose teacher-likeness is measured: the student first, then the references."""
    return (ctx.student, *ctx.references)


def panel_evidence(
    name: str,
    ctx: DetectorContext,
    values: Mapping[str, np.ndarray],
    *,
    null: str,
    statistic: str,
    margin: float,
    details: Mapping[str, Any] | None = None,
    examples: Callable[[np.ndarray, np.ndarray, str], Sequence[Mapping[str, Any]]] | None = None,
) -> Evidence:
    """Evidence from per-prompt values keyed by model name (the student's under ``ctx.student.name``).

    ``examples(student, closest_reference, closest_name)`` picks the prompts to show."""
    student = values[ctx.student.name]
    refs = {r.name: values[r.name] for r in ctx.references}
    cmp = stats.compare_to_panel(student, refs, ctx.rng(name), margin=margin)
    return comparison_evidence(
        name, cmp,
        test=PANEL_TEST,
        null=null,
        effect_size_name=f"mean {statistic} excess over the most teacher-like reference ({cmp.closest})",
        margin=margin,
        examples=tuple(examples(student, refs[cmp.closest], cmp.closest)) if examples and cmp.n else (),
        details={
            "statistic": statistic,
            "per_prompt": {k: round_list(v) for k, v in values.items()},
            **(details or {}),
        },
    )


def comparison_evidence(
    name: str,
    cmp: stats.PanelComparison,
    *,
    test: str,
    null: str,
    effect_size_name: str,
    margin: float,
    examples: Sequence[Mapping[str, Any]] = (),
    details: Mapping[str, Any] | None = None,
) -> Evidence:
    """Evidence from one :func:`audit.stats.compare_to_panel` result: the panel prediction t as the statistic, the
    excess over the closest reference as the effect against ``margin``, and the comparison's parts in the details
    (before ``details``, which may add to them)."""
    return Evidence(
        detector=name,
        test=test,
        null=null,
        statistic=cmp.panel.statistic,
        statistic_name=f"panel prediction t ({cmp.panel.df} df)",
        p_value=cmp.p_value,
        effect_size=cmp.effect,
        effect_size_name=effect_size_name,
        ci_low=cmp.ci_low,
        ci_high=cmp.ci_high,
        ci_level=0.95,
        n=cmp.n,
        rules_out=bool(np.isfinite(cmp.ci_high) and cmp.ci_high < margin),
        margin=margin,
        planted_p_value=cmp.planted_p_value,
        examples=tuple(examples),
        details={
            "student_mean": cmp.student_mean,
            "reference_means": cmp.reference_means,
            "per_reference_p_value": {k: t.p_value for k, t in cmp.per_reference.items()},
            "per_reference_wilcoxon_w": {k: t.statistic for k, t in cmp.per_reference.items()},
            "prompt_test_p_value": cmp.p_prompts,
            "panel_test_p_value": cmp.panel.p_value,
            **(details or {}),
        },
    )


def top_gaps(student: np.ndarray, reference: np.ndarray, n: int) -> list[int]:
    """Prompts where the student is most teacher-like beyond the reference (finite values only)."""
    gap = np.nan_to_num(np.asarray(student, float) - np.asarray(reference, float), nan=-np.inf)
    return [int(i) for i in np.argsort(-gap, kind="stable") if np.isfinite(gap[i])][:n]


def round_list(values: np.ndarray) -> list[float | None]:
    """Per-prompt values as JSON: six decimals, None where there is no finite value."""
    return [None if not np.isfinite(v) else round(float(v), 6) for v in np.asarray(values, float)]


# -- teacher continuations shared by the token-level detectors -------------------------------------------

# What a detector over the teacher's generated steps needs (see :func:`teacher_steps`): the teacher's sampled
# continuations with its top-k at every step, and every suspect model's top-k on them
# text-level detectors: every model only needs to answer in text
TEXT_NEEDS: Mapping[str, frozenset[Capability]] = {role: frozenset({Capability.GENERATE})
                                                   for role in ("teacher", "student", "reference")}

TEACHER_STEPS_NEEDS: Mapping[str, frozenset[Capability]] = {
    "teacher": frozenset({Capability.GENERATE, Capability.GENERATE_TOPK}),
    "student": frozenset({Capability.SCORE_TOPK}),
    "reference": frozenset({Capability.SCORE_TOPK}),
}


def teacher_sampling(ctx: DetectorContext, max_new_tokens: int, temperature: float) -> GenerateParams:
    """Seeded sampling (or greedy at temperature 0), keeping as many alternatives as scoring does, so every
    token-level detector shares one teacher generation."""
    return GenerateParams(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else 1.0,
        top_k=ctx.engine.score_top_k,
        seed=ctx.seed,
    )


@dataclass(frozen=True)
class TeacherSteps:
    """The teacher's sampled continuations, every suspect model's scores of them, and per prompt the
    positions that are the teacher's generated steps (None: left out, see :func:`aligned_steps`)."""

    params: GenerateParams
    continuations: list[Generation]
    scored: dict[str, list[ScoredText]]
    steps: list[np.ndarray | None]


def sampled_share(max_new_tokens: int, temperature: float) -> str:
    """The planned-request share of :func:`teacher_sampling`'s generations (one request set per model)."""
    return f"sampled:{max_new_tokens}:{temperature:g}"


def sampled_what(max_new_tokens: int, temperature: float) -> str:
    how = f"sampled at temperature {temperature:g}, seeded" if temperature > 0 else "greedy"
    return f"continuations of the probes ({how})"


def planned_teacher_steps(inputs: PlanInputs, max_new_tokens: int, temperature: float) -> tuple[PlannedRequest, ...]:
    """What :func:`teacher_steps` asks for: the teacher continues every probe, every suspect scores the probe with
    the teacher's continuation."""
    share = sampled_share(max_new_tokens, temperature)
    n = inputs.n_probes
    return (
        PlannedRequest("teacher", "generate", n, sampled_what(max_new_tokens, temperature), share,
                       new_tokens=max_new_tokens),
        *(PlannedRequest(role, "score", n, "each probe with the teacher's continuation", f"read-teacher-{share}",
                         of_teacher=True) for role in SUSPECT_ROLES),
    )


def planned_greedy(inputs: PlanInputs, max_new_tokens: int) -> tuple[PlannedRequest, ...]:
    """Every model continues every probe greedily (the text-level detectors)."""
    return tuple(PlannedRequest(role, "generate", inputs.n_probes, "greedy continuations of the probes",
                                f"greedy:{max_new_tokens}", new_tokens=max_new_tokens)
                 for role in ("teacher", *SUSPECT_ROLES))


def teacher_steps(ctx: DetectorContext, max_new_tokens: int, temperature: float) -> TeacherSteps:
    """One teacher generation and one scoring pass per suspect, shared (through the engine's cache) by every
    token-level detector with the same settings."""
    params = teacher_sampling(ctx, max_new_tokens, temperature)
    continuations = ctx.generate(ctx.teacher, ctx.prompts, params)
    answers = [c.text for c in continuations]
    # every model reads the teacher's answer after the probe in its own format, which the needs check made one
    # format for all (same tokenizer, same rendered template), so positions line up across models
    scored = {m.name: [a.scored for a in ctx.score_answers(m, ctx.prompts, answers)] for m in suspects(ctx)}
    steps = [aligned_steps(s, c) for s, c in zip(scored[ctx.student.name], continuations)]
    return TeacherSteps(params, continuations, scored, steps)


def aligned_steps(scored: ScoredText, generation: Generation) -> np.ndarray | None:
    """Positions of ``scored`` (prompt, as the model reads it, + continuation, re-tokenised) that are the teacher's
    generated steps.

    When re-tokenising the joined text does not give back the prompt's tokens followed by exactly the
    generated tokens (a merge across the boundary), the prompt is left out: None. Whether it is left out
    depends only on the teacher's text and the shared tokenizer, the same for every model compared.
    """
    m = int(generation.token_ids.shape[0])
    n = scored.n_tokens
    if m == 0 or m >= n or not np.array_equal(scored.token_ids[n - m :], generation.token_ids):
        return None
    return np.arange(n - m, n)
