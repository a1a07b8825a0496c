"""The teacher's idiosyncrasies: does the student follow the teacher where the teacher departs from the crowd?

Idiosyncrasy: where the teacher's choice departs from what other models choose, an independent
model follows the crowd and a student distilled from the teacher follows the teacher. Those places
carry the most information, but choosing them with a model's own outputs and then testing that model
on them would be double dipping. Here each model's places are chosen by the *other* models only
(leave-one-out over the student and the references): the selection for model j never looks at j's
outputs, and because the rule treats the student and every reference alike, the student and the
references stay exchangeable under the null and the panel test remains valid.

(Content fingerprints of models and files, which identify *what* was audited, are in
``distill_audit/fingerprint.py``; the identity probes are in :mod:`distill_audit.detectors.identity`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from distill_audit.detectors import textsim
from distill_audit.detectors.base import Detector, DetectorContext, Evidence, PlanInputs, PlannedRequest
from distill_audit.detectors.output_similarity import greedy
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

SELECTION = (
    "leave-one-out: the places scored for each model are those where fewer than half of the other models "
    "(student and references, never the model itself) agree with the teacher"
)


@dataclass(frozen=True)
class IdiosyncrasyParams:
    max_new_tokens: int = 24
    temperature: float = 1.0  # teacher sampling, shared with the token-level similarity detectors
    n_words: int = 8  # text level: words of the teacher's greedy continuation examined
    text_tokens: int = 32  # text level: continuation length in each model's own tokens
    margin: float = 0.02  # text level; about the median effect of the zoo's distilled students
    n_examples: int = 3


@dataclass(frozen=True)
class TokenIdiosyncrasyParams(IdiosyncrasyParams):
    margin: float = 0.12  # token level


def _leave_one_out(choices: dict[str, np.ndarray], teacher: np.ndarray) -> dict[str, float]:
    """Per model: agreement with the teacher on the places where the *other* models mostly do not agree.

    ``choices[name]`` holds the model's choice at each place (NaN-free ints or strings) and ``teacher`` the
    teacher's; a model with no such place gets NaN.
    """
    agree = {name: (c == teacher) for name, c in choices.items()}
    names = list(choices)
    total = np.sum([agree[n] for n in names], axis=0)
    out = {}
    for name in names:
        others = (total - agree[name]) / (len(names) - 1)
        places = others < 0.5
        out[name] = float(np.mean(agree[name][places])) if places.any() else np.nan
    return out


class TokenIdiosyncrasy(Detector):
    name = "idiosyncrasy-tokens"
    summary = "Where the teacher's top-1 token departs from the other models', the student follows the teacher"
    requires = TEACHER_STEPS_NEEDS
    min_references = 2
    same_tokenizer = True
    Params = TokenIdiosyncrasyParams
    null = PANEL_NULL.format(what="likely to share the teacher's idiosyncratic next-token choices")

    def planned_requests(self, inputs: PlanInputs) -> tuple[PlannedRequest, ...]:
        return planned_teacher_steps(inputs, self.params.max_new_tokens, self.params.temperature)

    def run(self, ctx: DetectorContext) -> Evidence:
        p: IdiosyncrasyParams = self.params
        shared = teacher_steps(ctx, p.max_new_tokens, p.temperature)
        conts = shared.continuations
        values = {name: np.full(len(conts), np.nan) for name in shared.scored}
        places = 0
        for i, (c, pos) in enumerate(zip(conts, shared.steps)):
            if pos is None:
                continue
            choices = {name: s[i].topk_ids[pos, 0] for name, s in shared.scored.items()}
            for name, v in _leave_one_out(choices, c.topk_ids[:, 0]).items():
                values[name][i] = v
            places += len(pos)

        def examples(student: np.ndarray, ref: np.ndarray, ref_name: str) -> list[dict[str, Any]]:
            return [{"prompt": ctx.prompts[i], "teacher": conts[i].text,
                     "student_agreement_at_idiosyncrasies": round(float(student[i]), 4), "reference": ref_name,
                     "reference_agreement_at_idiosyncrasies": round(float(ref[i]), 4)}
                    for i in top_gaps(student, ref, p.n_examples)]

        return panel_evidence(
            self.name, ctx, values, null=self.null, statistic="agreement at the teacher's idiosyncrasies",
            margin=p.margin, examples=examples,
            details={"selection": SELECTION, "candidate_steps": places, "teacher_decoding": shared.params.to_dict()},
        )


class TextIdiosyncrasy(Detector):
    name = "idiosyncrasy-text"
    summary = "Where the teacher's greedy words depart from the other models', the student's words follow the teacher"
    requires = TEXT_NEEDS
    min_references = 2
    Params = IdiosyncrasyParams
    null = PANEL_NULL.format(what="likely to share the teacher's idiosyncratic word choices")

    def planned_requests(self, inputs: PlanInputs) -> tuple[PlannedRequest, ...]:
        return planned_greedy(inputs, self.params.text_tokens)

    def run(self, ctx: DetectorContext) -> Evidence:
        p: IdiosyncrasyParams = self.params
        params = greedy(ctx, p.text_tokens)
        teacher = [g.text for g in ctx.generate(ctx.teacher, ctx.prompts, params)]
        models = suspects(ctx)
        outputs = {m.name: [g.text for g in ctx.generate(m, ctx.prompts, params)] for m in models}
        values = {m.name: np.full(len(teacher), np.nan) for m in models}
        for i, t_text in enumerate(teacher):
            t_words = textsim.words(t_text)[: p.n_words]
            if not t_words:
                continue
            choices = {}
            for m in models:
                w = textsim.words(outputs[m.name][i])[: len(t_words)]
                choices[m.name] = np.array(w + [""] * (len(t_words) - len(w)), dtype=object)
            for name, v in _leave_one_out(choices, np.array(t_words, dtype=object)).items():
                values[name][i] = v

        def examples(student: np.ndarray, ref: np.ndarray, ref_name: str) -> list[dict[str, Any]]:
            return [{"prompt": ctx.prompts[i], "teacher": teacher[i], "student": outputs[ctx.student.name][i],
                     "reference": ref_name, "reference_output": outputs[ref_name][i]}
                    for i in top_gaps(student, ref, p.n_examples)]

        return panel_evidence(
            self.name, ctx, values, null=self.null, statistic="word agreement at the teacher's idiosyncrasies",
            margin=p.margin, examples=examples,
            details={"selection": SELECTION, "decoding": params.to_dict(), "n_words": p.n_words},
        )
