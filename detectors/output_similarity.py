"""Output similarity: is the student's output more like the teacher's than independent models' are?

Token level (one shared tokenizer; the teacher needs only top-k log-probs of its own generated tokens,
so it works gray-box): the teacher continues every probe with seeded sampling, and on each generated
step the student's and each reference's next-token distribution (scored on the same text) is compared
with the teacher's: top-1 agreement, top-k overlap, Jensen-Shannon divergence.

Text level (any tokenizers, black-box: the teacher only has to answer): every model continues every
probe greedily and the continuations are compared with the teacher's as words and as characters.

Each detector gives, per prompt, one similarity per model; the test is the panel comparison of
:mod:`detectors.panel`.
"""

from __future__ import annotations

import abc
import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from distill_audit.backends.base import GenerateParams
from distill_audit.detectors import textsim
from distill_audit.detectors.base import Detector, DetectorContext, Evidence, PlanInputs, PlannedRequest
from distill_audit.detectors.panel import (
    PANEL_NULL,
    TEACHER_STEPS_NEEDS,
    TEXT_NEEDS,
    panel_evidence,
    planned_greedy,
    planned_teacher_steps,
    suspects,
    teacher_steps,
    top_gaps,
)

# -- token level -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenParams:
    max_new_tokens: int = 24  # teacher continuation length per probe
    temperature: float = 1.0  # teacher sampling temperature (seeded); 0 means greedy
    # An excess below the margin is too small to call distillation. Defaults: about the median effect of the
    # distilled students in the benchmark zoo (bench/detection.py), so a "not-distilled" verdict backed by
    # this detector rules out distillation as strong as a typical one there.
    margin: float = 0.05
    top_k: int = 5  # for top-k overlap
    n_examples: int = 3


class _TokenLevel(Detector):
    """Per generated step of the teacher, a similarity between a model's distribution and the teacher's."""

    requires = TEACHER_STEPS_NEEDS
    min_references = 2
    same_tokenizer = True
    Params = TokenParams
    statistic: ClassVar[str]

    @abc.abstractmethod
    def step_similarity(self, t_ids: np.ndarray, t_lp: np.ndarray, m_ids: np.ndarray, m_lp: np.ndarray) -> np.ndarray:
        """Per teacher step: the similarity of a model's top-k to the teacher's (both [steps, k])."""

    def planned_requests(self, inputs: PlanInputs) -> tuple[PlannedRequest, ...]:
        return planned_teacher_steps(inputs, self.params.max_new_tokens, self.params.temperature)

    def run(self, ctx: DetectorContext) -> Evidence:
        p: TokenParams = self.params
        shared = teacher_steps(ctx, p.max_new_tokens, p.temperature)
        continuations, steps = shared.continuations, shared.steps

        def per_prompt(scored: list[Any]) -> np.ndarray:
            out = np.full(len(steps), np.nan)
            for i, (s, c, pos) in enumerate(zip(scored, continuations, steps)):
                if pos is not None:
                    sim = self.step_similarity(c.topk_ids, c.topk_logprobs, s.topk_ids[pos], s.topk_logprobs[pos])
                    out[i] = float(np.mean(sim))
            return out

        values = {m.name: ctx.memo((self.name, p), m, functools.partial(per_prompt, shared.scored[m.name]))
                  for m in suspects(ctx)}

        def examples(student: np.ndarray, ref: np.ndarray, ref_name: str) -> list[dict[str, Any]]:
            return [
                {
                    "prompt": ctx.prompts[i],
                    "teacher": continuations[i].text,
                    f"student_{self.statistic_key}": round(float(student[i]), 4),
                    "reference": ref_name,
                    f"reference_{self.statistic_key}": round(float(ref[i]), 4),
                }
                for i in top_gaps(student, ref, p.n_examples)
            ]

        return panel_evidence(
            self.name, ctx, values, null=self.null, statistic=self.statistic, margin=p.margin, examples=examples,
            details={
                "scored_steps": int(sum(len(s) for s in steps if s is not None)),
                "prompts_left_out": sum(s is None for s in steps),
                "teacher_decoding": shared.params.to_dict(),
            },
        )

    @property
    def statistic_key(self) -> str:
        return self.statistic.split(" (")[0].replace(" ", "_").replace("-", "_")


@dataclass(frozen=True)
class AgreementParams(TokenParams):
    margin: float = 0.12


class NextTokenAgreement(_TokenLevel):
    name = "next-token-agreement"
    summary = "The student's top-1 next token on the teacher's continuations matches the teacher's more than any reference's"
    statistic = "top-1 agreement"
    Params = AgreementParams
    null = PANEL_NULL.format(what="likely to pick the teacher's top-1 next token")

    def step_similarity(self, t_ids: np.ndarray, t_lp: np.ndarray, m_ids: np.ndarray, m_lp: np.ndarray) -> np.ndarray:
        return (m_ids[:, 0] == t_ids[:, 0]).astype(float)


class TopKOverlap(_TokenLevel):
    name = "top-k-overlap"
    summary = "The student's k most likely next tokens overlap the teacher's more than any reference's do"
    statistic = "top-k overlap"
    null = PANEL_NULL.format(what="overlapping with the teacher's top-k next tokens")

    def step_similarity(self, t_ids: np.ndarray, t_lp: np.ndarray, m_ids: np.ndarray, m_lp: np.ndarray) -> np.ndarray:
        k = min(self.params.top_k, t_ids.shape[1], m_ids.shape[1])
        hits = (m_ids[:, :k, None] == t_ids[:, None, :k]).any(-1).sum(-1)
        return hits / k


@dataclass(frozen=True)
class JSParams(TokenParams):
    margin: float = 0.025  # in 1 - JSD (bits)


class JensenShannon(_TokenLevel):
    name = "js-divergence"
    summary = "The student's next-token distribution is closer (Jensen-Shannon) to the teacher's than any reference's"
    statistic = "1 - JS divergence (bits)"
    null = PANEL_NULL.format(what="close to the teacher's next-token distribution")
    Params = JSParams

    def step_similarity(self, t_ids: np.ndarray, t_lp: np.ndarray, m_ids: np.ndarray, m_lp: np.ndarray) -> np.ndarray:
        return np.array([1.0 - topk_js_divergence(t_ids[j], t_lp[j], m_ids[j], m_lp[j]) for j in range(len(t_ids))])


def topk_js_divergence(a_ids: np.ndarray, a_lp: np.ndarray, b_ids: np.ndarray, b_lp: np.ndarray) -> float:
    """Jensen-Shannon divergence (bits, in [0, 1]) of two next-token distributions known by their top-k.

    Both are coarsened onto the same categories: the union of the two top-k lists plus "everything else".
    A token outside one model's top-k gets the smaller of that model's k-th probability and an equal share
    of its remaining mass; "everything else" takes what is left. Coarsening never increases the
    divergence, and every model is measured against the teacher the same way.
    """
    union = list(dict.fromkeys([*a_ids.tolist(), *b_ids.tolist()]))

    def coarse(ids: np.ndarray, lp: np.ndarray) -> np.ndarray:
        probs = dict(zip(ids.tolist(), np.exp(lp.astype(float)).tolist()))
        rest = max(0.0, 1.0 - sum(probs.values()))
        unknown = [t for t in union if t not in probs]
        fill = min(min(probs.values()), rest / (len(unknown) + 1)) if unknown else 0.0
        vec = np.array([probs.get(t, fill) for t in union] + [0.0])
        vec[-1] = max(0.0, 1.0 - vec[:-1].sum())
        return vec / vec.sum()

    p, q = coarse(a_ids, a_lp), coarse(b_ids, b_lp)
    m = 0.5 * (p + q)

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return min(1.0, max(0.0, 0.5 * kl(p) + 0.5 * kl(q)))


# -- text level ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextParams:
    max_new_tokens: int = 32  # continuation length per probe, in each model's own tokens
    n_words: int = 8  # words of the teacher's continuation compared
    n_chars: int = 64  # characters of each continuation compared by edit similarity
    margin: float = 0.02  # about the median effect of the zoo's distilled students
    n_examples: int = 3


def greedy(ctx: DetectorContext, max_new_tokens: int) -> GenerateParams:
    return GenerateParams(max_new_tokens=max_new_tokens, do_sample=False, top_k=1, seed=ctx.seed)


class _TextLevel(Detector):
    requires = TEXT_NEEDS
    min_references = 2
    Params = TextParams
    statistic: ClassVar[str]

    @abc.abstractmethod
    def similarity(self, teacher: str, other: str) -> float:
        """How close ``other``'s continuation is to the teacher's, in [0, 1] (NaN: nothing to compare)."""

    def planned_requests(self, inputs: PlanInputs) -> tuple[PlannedRequest, ...]:
        return planned_greedy(inputs, self.params.max_new_tokens)

    def run(self, ctx: DetectorContext) -> Evidence:
        p: TextParams = self.params
        params = greedy(ctx, p.max_new_tokens)
        teacher = [g.text for g in ctx.generate(ctx.teacher, ctx.prompts, params)]
        outputs: dict[str, list[str]] = {m.name: [g.text for g in ctx.generate(m, ctx.prompts, params)] for m in suspects(ctx)}

        def similarities(texts: list[str]) -> np.ndarray:
            return np.array([self.similarity(t, o) for t, o in zip(teacher, texts)])

        values = {m.name: ctx.memo((self.name, p), m, functools.partial(similarities, outputs[m.name]))
                  for m in suspects(ctx)}

        def examples(student: np.ndarray, ref: np.ndarray, ref_name: str) -> list[dict[str, Any]]:
            return [
                {
                    "prompt": ctx.prompts[i],
                    "teacher": teacher[i],
                    "student": outputs[ctx.student.name][i],
                    "reference": ref_name,
                    "reference_output": outputs[ref_name][i],
                    "student_similarity": round(float(student[i]), 4),
                    "reference_similarity": round(float(ref[i]), 4),
                }
                for i in top_gaps(student, ref, p.n_examples)
            ]

        return panel_evidence(
            self.name, ctx, values, null=self.null, statistic=self.statistic, margin=p.margin, examples=examples,
            details={"decoding": params.to_dict(), "n_words": p.n_words, "n_chars": p.n_chars},
        )


class TextWordAgreement(_TextLevel):
    name = "text-word-agreement"
    summary = "The student's greedy continuations repeat the teacher's words, position by position, more than any reference's"
    statistic = "word agreement"
    null = PANEL_NULL.format(what="likely to continue a prompt with the teacher's words")

    def similarity(self, teacher: str, other: str) -> float:
        return textsim.word_agreement(textsim.words(teacher)[: self.params.n_words], textsim.words(other))


class TextEditSimilarity(_TextLevel):
    name = "text-edit-similarity"
    summary = "The student's greedy continuations are closer in edit distance to the teacher's than any reference's"
    statistic = "edit similarity"
    null = PANEL_NULL.format(what="close in characters to the teacher's continuations")

    def similarity(self, teacher: str, other: str) -> float:
        n = self.params.n_chars
        a, b = textsim.normalise(teacher)[:n], textsim.normalise(other)[:n]
        return math.nan if not a else textsim.edit_similarity(a, b)

