"""Membership: did the teacher's text reach the student's training data?

teacher-text-likelihood (no logs needed; any tokenizers, since everything is in bits per byte): every
model writes a continuation of every probe (seeded sampling), and every suspect model (the student and
each reference) reads the teacher's continuation and the other suspects' continuations. A student
trained on the teacher's text finds the teacher's writing easier than other models' writing, relative
to how independent models find it. Each model reads only the *other* models' writing, never its own
(models find their own samples easy), with one rule for the student and the references alike, so they
stay exchangeable under the null and the panel test applies.

logged-vs-fresh (needs ``--teacher-logs``): the student reads teacher answers that may have been used to
train it (the log) and fresh teacher answers to the same prompts, and the per-prompt difference of its
scores is the statistic. Logged and fresh answers can differ for reasons other than training (how each
was drawn, cut or post-processed), so with 2 or more references the same paired difference is computed
for every reference (they never saw the logs) and the student's is tested against theirs like a panel
detector: a shift between the two answer sets is part of the null. With fewer references the raw
one-sided Wilcoxon signed-rank test is used (valid only if the two answers to a prompt are exchangeable
for a model that never saw the log), and the result says it is not calibrated.
Scores: loss, Min-K%++ (Zhang et al. 2024) and zlib-normalised
loss (Carlini et al. 2021); one is the test, chosen beforehand, the others are shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill_audit import stats
from distill_audit.backends.base import Capability, ScoredText
from distill_audit.detectors import textsim
from distill_audit.detectors.base import (
    Detector,
    DetectorContext,
    Evidence,
    PlanInputs,
    PlannedRequest,
    ScoredAnswer,
)
from distill_audit.detectors.panel import (
    PANEL_NULL,
    PANEL_TEST,
    SUSPECT_ROLES,
    comparison_evidence,
    panel_evidence,
    round_list,
    sampled_share,
    sampled_what,
    suspects,
    teacher_sampling,
    top_gaps,
)


@dataclass(frozen=True)
class LikelihoodParams:
    max_new_tokens: int = 24
    temperature: float = 1.0
    margin: float = 0.03  # bits per byte; about the median effect of the zoo's distilled students
    n_examples: int = 3


class TeacherTextLikelihood(Detector):
    name = "teacher-text-likelihood"
    summary = "The student finds the teacher's writing easier (bits per byte) than other models' writing, beyond the references"
    requires = {
        "teacher": frozenset({Capability.GENERATE}),
        "student": frozenset({Capability.GENERATE, Capability.SCORE}),
        "reference": frozenset({Capability.GENERATE, Capability.SCORE}),
    }
    min_references = 2
    Params = LikelihoodParams
    null = PANEL_NULL.format(what="at ease with the teacher's text (in bits per byte, relative to other models' text)")

    def planned_requests(self, inputs: PlanInputs) -> tuple[PlannedRequest, ...]:
        p: LikelihoodParams = self.params
        share, n = sampled_share(p.max_new_tokens, p.temperature), inputs.n_probes
        return (
            *(PlannedRequest(role, "generate", n, sampled_what(p.max_new_tokens, p.temperature), share,
                             new_tokens=p.max_new_tokens) for role in ("teacher", *SUSPECT_ROLES)),
            *(PlannedRequest(role, "score", n, "each probe with the teacher's continuation", f"read-teacher-{share}",
                             of_teacher=True) for role in SUSPECT_ROLES),
            # every suspect reads every other suspect's writing: the student and the references but itself
            *(PlannedRequest(role, "score", n * inputs.n_references, "each probe with each other suspect model's "
                             "continuation", f"read-suspects-{share}") for role in SUSPECT_ROLES),
        )

    def run(self, ctx: DetectorContext) -> Evidence:
        p: LikelihoodParams = self.params
        params = teacher_sampling(ctx, p.max_new_tokens, p.temperature)
        models = suspects(ctx)
        writers = {"teacher": ctx.teacher, **{m.name: m for m in models}}
        writing = {name: [g.text for g in ctx.generate(m, ctx.prompts, params)] for name, m in writers.items()}
        bpb: dict[tuple[str, str], np.ndarray] = {}  # (reader, writer) -> per prompt
        for reader in models:
            for writer in writers:
                if writer == reader.name:
                    continue
                # each reader reads the writer's answer as an answer to the probe, asked in the reader's own format
                read = ctx.score_answers(reader, ctx.prompts, writing[writer])
                bpb[reader.name, writer] = np.array([textsim.bits_per_byte(a.scored, a.start, a.text) for a in read])
        values = reading_advantage(bpb, [m.name for m in models])

        def examples(student: np.ndarray, ref: np.ndarray, ref_name: str) -> list[dict[str, Any]]:
            s_name = ctx.student.name
            return [{"prompt": ctx.prompts[i], "teacher": writing["teacher"][i],
                     "student_bits_per_byte_on_teacher_text": round(float(bpb[s_name, "teacher"][i]), 4),
                     "reference": ref_name,
                     "reference_bits_per_byte_on_teacher_text": round(float(bpb[ref_name, "teacher"][i]), 4)}
                    for i in top_gaps(student, ref, p.n_examples)]

        return panel_evidence(
            self.name, ctx, values, null=self.null,
            statistic="bits-per-byte advantage on the teacher's text", margin=p.margin, examples=examples,
            details={
                "sampling": params.to_dict(),
                "mean_bits_per_byte_on_teacher_text": {m.name: float(np.nanmean(bpb[m.name, "teacher"])) for m in models},
                "reading": "each model reads the teacher's text and every other suspect model's text, never its own",
            },
        )


def reading_advantage(bpb: dict[tuple[str, str], np.ndarray], readers: list[str]) -> dict[str, np.ndarray]:
    """Per reader and prompt: mean bits per byte on the other readers' writing minus on the teacher's.

    ``bpb[reader, writer]``; writers are "teacher" and the readers. A reader never reads its own writing,
    and the rule is the same for every reader, so exchangeable readers get exchangeable values."""
    out = {}
    for reader in readers:
        others = [bpb[reader, w] for w in readers if w != reader]
        out[reader] = np.mean(others, axis=0) - bpb[reader, "teacher"]
    return out


# -- logged vs fresh -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedParams:
    score: str = "loss"  # loss | min-k++ | zlib: the test statistic, fixed before looking
    min_k_fraction: float = 0.2  # Min-K%++: the share of lowest-scoring tokens averaged
    margin: float = float("nan")  # nan: the score's default (see MARGINS)
    n_examples: int = 3


# Smallest advantage called membership, per score. loss: well under the median effect (0.17 nats per token) of
# the zoo students trained on the logs; the others are set to about the same share of their spread.
MARGINS = {"loss": 0.1, "min-k++": 0.2, "zlib": 0.01}
SCORES = tuple(MARGINS)


def _completion_positions(scored: ScoredText, prompt_chars: int) -> np.ndarray:
    idx = np.nonzero(scored.offsets[:, 1] > prompt_chars)[0]
    return idx[idx >= 1]


def membership_scores(scored: ScoredText, prompt: str, completion: str, min_k_fraction: float,
                      n_tokens: int | None = None) -> dict[str, float]:
    """Higher means "looks more like training data" for every score.

    ``n_tokens``: score only the completion's first ``n_tokens`` tokens, so both answers of a pair are
    scored on equally many tokens (per-token scores drift with length; a length difference between logged
    and fresh answers must not pass for membership)."""
    pos = _completion_positions(scored, len(prompt))[:n_tokens]
    if pos.size == 0:
        return {s: math.nan for s in SCORES}
    lp = scored.target_logprob[pos].astype(np.float64)
    out = {"loss": float(lp.mean())}  # minus the loss (nats per token)
    nll_bits = float(-lp.sum() / math.log(2))
    scored_text = (prompt + completion)[: int(scored.offsets[pos[-1], 1])][len(prompt):]
    out["zlib"] = -nll_bits / textsim.zlib_bits(scored_text or completion)
    if scored.logprob_var.size == scored.n_tokens:
        mu = -scored.entropy[pos].astype(np.float64)
        sd = np.sqrt(np.maximum(scored.logprob_var[pos].astype(np.float64), 1e-12))
        z = np.sort((lp - mu) / sd)
        k = max(1, int(math.ceil(min_k_fraction * z.size)))
        out["min-k++"] = float(z[:k].mean())
    else:
        out["min-k++"] = math.nan
    return out


class LoggedVsFresh(Detector):
    name = "logged-vs-fresh"
    summary = ("The student finds logged teacher answers easier than fresh answers to the same prompts, beyond what the "
               "references show (paired; raw without 2 references)")
    requires = {"student": frozenset({Capability.SCORE, Capability.SCORE_TOPK})}
    needs_teacher_logs = True
    Params = LoggedParams
    null = (
        "The student never trained on the logged teacher answers: for each prompt, its score on the logged answer "
        "and on a fresh answer drawn the same way are exchangeable."
    )
    null_calibrated = (
        "The student never trained on the logged teacher answers: its advantage on the logged answers over fresh "
        "ones is no larger than an independent reference's (which never saw the logs), across prompts and across "
        "the panel."
    )

    def planned_requests(self, inputs: PlanInputs) -> tuple[PlannedRequest, ...]:
        # the references read the answers too when there are 2 or more (calibration; all must be able to score)
        roles = SUSPECT_ROLES if inputs.n_references >= 2 else ("student",)
        return tuple(
            PlannedRequest(role, "score", inputs.n_logged, f"each {which} teacher answer after its prompt", share,
                           chars=chars)
            for role in roles
            for which, share, chars in (("logged", "logged-answers", inputs.logged_chars),
                                        ("fresh", "fresh-answers", inputs.fresh_chars))
        )

    def run(self, ctx: DetectorContext) -> Evidence:
        p: LoggedParams = self.params
        if p.score not in MARGINS:
            raise ValueError(f"unknown membership score {p.score!r}; known: {', '.join(SCORES)}")
        margin = MARGINS[p.score] if math.isnan(p.margin) else p.margin
        pairs = ctx.teacher_logs
        assert pairs is not None  # the runner skips this detector without logs
        need = self.requires["student"]
        calibrators = [r for r in ctx.references if need <= r.adapter.capabilities]
        calibrated = len(calibrators) >= 2 and len(calibrators) == len(ctx.references)
        readers = [ctx.student, *(calibrators if calibrated else ())]
        logged, fresh = {}, {}
        for m in readers:
            logged[m.name], fresh[m.name] = self._scores(ctx, m, pairs, p.min_k_fraction)
        s_logged, s_fresh = logged[ctx.student.name], fresh[ctx.student.name]
        per_score = {name: stats.paired_greater(s_logged[name], s_fresh[name]) for name in SCORES}
        raw = per_score[p.score]
        gap = s_logged[p.score] - s_fresh[p.score]  # per pair, NaN kept in place
        diff = gap[np.isfinite(gap)]
        details: dict[str, Any] = {
            "score": p.score,
            "calibrated": calibrated,
            "uncalibrated_p_value": raw.p_value,
            "other_scores_uncalibrated_p_value": {k: t.p_value for k, t in per_score.items() if k != p.score},
            "mean_logged": {k: _nanmean(v) for k, v in s_logged.items()},
            "mean_fresh": {k: _nanmean(v) for k, v in s_fresh.items()},
            "per_pair_difference": round_list(gap),
            "logs": pairs.to_dict(),
        }
        if calibrated:
            gaps = {name: logged[name][p.score] - fresh[name][p.score] for name in logged}
            cmp = stats.compare_to_panel(gaps[ctx.student.name], {r.name: gaps[r.name] for r in calibrators},
                                         ctx.rng(self.name), margin=margin)
            details.update(
                calibration=("the same paired statistic for every reference (they never saw the logs), so a shift "
                             "between how the logged and the fresh answers were drawn, cut or post-processed is part "
                             "of the null; tested like a panel detector"),
                reference_mean_difference={k: _nanmean(v) for k, v in gaps.items() if k != ctx.student.name},
                student_mean_difference=_nanmean(gap),
            )
            return comparison_evidence(
                self.name, cmp,
                test=("per logged prompt, the student's score on the logged answer minus on the fresh one (both scored "
                      "on the same number of tokens), set against the same difference for every reference: " + PANEL_TEST),
                null=self.null_calibrated,
                effect_size_name=(f"mean {p.score} advantage of the logged answers over fresh ones, beyond the reference "
                                  f"with the largest such advantage ({cmp.closest})"),
                margin=margin,
                examples=self._examples(pairs, gap, p.n_examples),
                details=details,
            )
        ci_low, ci_high = stats.bootstrap_mean_ci(diff, ctx.rng(self.name))
        planted = stats.paired_greater(diff - diff.mean() + margin, np.zeros_like(diff)).p_value if diff.size else math.nan
        details.update(
            calibration=("not calibrated: fewer than 2 references can score the logs, so a shift between how the logged "
                         "and the fresh answers were drawn, cut or post-processed would pass for membership"),
            smallest_possible_p_value=0.5 ** diff.size if diff.size else 1.0,
        )
        return Evidence(
            detector=self.name,
            test="one-sided Wilcoxon signed-rank test on per-prompt score differences (logged minus fresh), both "
                 "answers of a pair scored on the same number of tokens (not calibrated against references)",
            null=self.null,
            statistic=raw.statistic,
            statistic_name="Wilcoxon W+",
            p_value=raw.p_value,
            effect_size=float(diff.mean()) if diff.size else math.nan,
            effect_size_name=f"mean {p.score} advantage of the logged answers over fresh ones (higher: more member-like)",
            ci_low=ci_low,
            ci_high=ci_high,
            ci_level=0.95,
            n=int(diff.size),
            rules_out=bool(np.isfinite(ci_high) and ci_high < margin),
            margin=margin,
            planted_p_value=planted,
            examples=self._examples(pairs, gap, p.n_examples),
            details=details,
        )

    @staticmethod
    def _scores(ctx: DetectorContext, model: Any, pairs: Any, min_k_fraction: float
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """One model's membership scores on every logged and every fresh answer, per score name (computed once per
        audit: the negative controls ask for the same model's scores again)."""
        fp, hashes = model.adapter.fingerprint, pairs.to_dict()
        key = ("membership-scores", fp["model"], fp.get("numerics"), model.format.key, ctx.engine.score_top_k,
               hashes["logged_hash"], hashes["fresh_hash"], min_k_fraction)
        return ctx.engine.derived(key, lambda: LoggedVsFresh._compute_scores(ctx, model, pairs, min_k_fraction))

    @staticmethod
    def _compute_scores(ctx: DetectorContext, model: Any, pairs: Any, min_k_fraction: float
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        # each answer read in the conversation it replied to (a chat log's, kept), in the model's own format
        logged_scored = ctx.score_answers(model, [o.prompt for o in pairs.logged], [o.completion for o in pairs.logged],
                                          [o.messages for o in pairs.logged])
        fresh_scored = ctx.score_answers(model, [o.prompt for o in pairs.fresh], [o.completion for o in pairs.fresh],
                                         [o.messages for o in pairs.fresh])
        lengths = [
            min(_completion_positions(a.scored, a.start).size, _completion_positions(b.scored, b.start).size)
            for a, b in zip(logged_scored, fresh_scored)
        ]

        def table(scored: list[ScoredAnswer], outputs: Any) -> dict[str, np.ndarray]:
            rows = [membership_scores(a.scored, a.context, o.completion, min_k_fraction, n)
                    for a, o, n in zip(scored, outputs, lengths)]
            return {name: np.array([r[name] for r in rows]) for name in SCORES}

        return table(logged_scored, pairs.logged), table(fresh_scored, pairs.fresh)

    @staticmethod
    def _examples(pairs: Any, gap: np.ndarray, n: int) -> tuple[dict[str, Any], ...]:
        return tuple({"prompt": pairs.logged[i].prompt, "logged": pairs.logged[i].completion,
                      "fresh": pairs.fresh[i].completion, "log_line": pairs.logged[i].line,
                      "score_advantage": round(float(gap[i]), 4)} for i in top_gaps(gap, np.zeros_like(gap), n))


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan
