"""Next-token agreement with the teacher, set against a reference panel (same tokenizer).

The teacher continues every probe (seeded sampling, so continuations explore many contexts rather
than falling into the same greedy loops). On each continuation token, each model's top-1 prediction
is compared with the teacher's. A student distilled from the teacher shares its choices where the
language leaves room for choice; an independent model does not.

Two sources of chance are tested, and the detector rejects only when both tests do (intersection-
union: the p-value is the larger of the two):

* prompts: per prompt, the student's agreement is paired with each reference's; a one-sided Wilcoxon
  signed-rank test per reference, and the student must beat every reference (largest p);
* models: independent models differ in how teacher-like they are, and with enough prompts the most
  teacher-like of several independent models beats the others significantly. The references are a
  sample of independent models, so a one-sided t prediction test asks whether the student's mean
  agreement lies beyond what one more independent model would give. This needs two or more
  references and gains power with each one added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from audit import stats
from audit.backends.base import Capability, GenerateParams, ScoredText
from detectors.base import Detector, DetectorContext, Evidence, ModelHandle


@dataclass(frozen=True)
class AgreementParams:
    max_new_tokens: int = 24  # teacher continuation length per probe
    temperature: float = 1.0  # teacher sampling temperature (seeded); 0 means greedy
    margin: float = 0.05  # an agreement excess below this is too small to call distillation
    n_examples: int = 3


class NextTokenAgreement(Detector):
    name = "next-token-agreement"
    summary = "Student's top-1 next-token choices on teacher continuations match the teacher's more than any reference's do"
    requires = {
        "teacher": frozenset({Capability.GENERATE, Capability.SCORE_TOPK}),
        "student": frozenset({Capability.SCORE_TOPK}),
        "reference": frozenset({Capability.SCORE_TOPK}),
    }
    min_references = 2
    same_tokenizer = True
    Params = AgreementParams
    null = (
        "The student is no more teacher-like than an independent model: its top-1 agreement with the teacher "
        "is no higher than the most teacher-like reference's across prompts, or within the spread of the "
        "reference panel."
    )

    def run(self, ctx: DetectorContext) -> Evidence:
        p: AgreementParams = self.params
        gen = GenerateParams(
            max_new_tokens=p.max_new_tokens,
            do_sample=p.temperature > 0,
            temperature=p.temperature if p.temperature > 0 else 1.0,
            top_k=1,
            seed=ctx.seed,
        )
        continuations = ctx.generate(ctx.teacher, ctx.prompts, gen)
        texts = [prompt + c.text for prompt, c in zip(ctx.prompts, continuations)]
        teacher_scores = ctx.score(ctx.teacher, texts)
        positions = [_continuation_positions(s, len(prompt)) for s, prompt in zip(teacher_scores, ctx.prompts)]
        teacher_top1 = [s.topk_ids[:, 0] for s in teacher_scores]

        def agreement(model: ModelHandle) -> np.ndarray:
            scored = ctx.score(model, texts)
            return np.array(
                [
                    float(np.mean(s.topk_ids[pos, 0] == t[pos])) if pos.size else np.nan
                    for s, t, pos in zip(scored, teacher_top1, positions)
                ]
            )

        student = agreement(ctx.student)
        refs = {r.name: agreement(r) for r in ctx.references}
        cmp = stats.compare_to_panel(student, refs, ctx.rng(self.name))
        return Evidence(
            detector=self.name,
            test=(
                "intersection-union of (a) one-sided Wilcoxon signed-rank across prompts against each "
                "reference and (b) one-sided t prediction test of the student against the reference panel"
            ),
            null=self.null,
            statistic=cmp.panel.statistic,
            statistic_name=f"panel prediction t ({cmp.panel.df} df)",
            p_value=cmp.p_value,
            effect_size=cmp.effect,
            effect_size_name=f"mean agreement excess over the most teacher-like reference ({cmp.closest})",
            ci_low=cmp.ci_low,
            ci_high=cmp.ci_high,
            ci_level=0.95,
            n=cmp.n,
            rules_out=bool(np.isfinite(cmp.ci_high) and cmp.ci_high < p.margin),
            examples=self._examples(ctx, student, refs[cmp.closest], cmp.closest, continuations),
            details={
                "student_agreement": cmp.student_mean,
                "reference_agreement": cmp.reference_means,
                "per_reference_p_value": {name: t.p_value for name, t in cmp.per_reference.items()},
                "per_reference_wilcoxon_w": {name: t.statistic for name, t in cmp.per_reference.items()},
                "prompt_test_p_value": cmp.p_prompts,
                "panel_test_p_value": cmp.panel.p_value,
                "panel_test_t": cmp.panel.statistic,
                "margin": p.margin,
                "scored_tokens": int(sum(pos.size for pos in positions)),
                "teacher_decoding": gen.to_dict(),
            },
        )

    def _examples(
        self,
        ctx: DetectorContext,
        student: np.ndarray,
        reference: np.ndarray,
        reference_name: str,
        continuations: list[Any],
    ) -> tuple[dict[str, Any], ...]:
        """The prompts where the student follows the teacher most beyond the closest reference.
        Prompts with no scored continuation (NaN agreement) are never examples."""
        gap = np.nan_to_num(student - reference, nan=-np.inf)
        order = [i for i in np.argsort(-gap, kind="stable") if np.isfinite(gap[i])][: self.params.n_examples]
        return tuple(
            {
                "prompt": ctx.prompts[i],
                "teacher_continuation": continuations[i].text,
                "student_agreement": round(float(student[i]), 4),
                "reference": reference_name,
                "reference_agreement": round(float(reference[i]), 4),
            }
            for i in order
        )


def _continuation_positions(scored: ScoredText, prompt_chars: int) -> np.ndarray:
    """Token positions (with a prediction) that lie in the continuation, i.e. end after the prompt."""
    ends = scored.offsets[:, 1]
    idx = np.nonzero(ends > prompt_chars)[0]
    return idx[idx >= 1]
