"""Watermark radioactivity: did the student train on text the teacher watermarked with a secret key?

The model owner watermarks the teacher's outputs (:mod:`audit.watermark`): each (context, token) tuple is
"green" with probability gamma under the key, and generation favours green tokens. A student trained on
that text learns the bias and, when it writes or predicts, picks green tokens more often than gamma
(Sander et al. 2024, "Watermarking Makes Language Models Radioactive"). No reference model is needed:
without the key a model's tuples are green with probability exactly gamma, so the test is an exact
binomial test over distinct tuples.

Two modes, chosen automatically:

* **reading** (the student scores text and shares the key's tokenizer, and watermarked teacher texts are
  given with ``--watermark-texts``): the student reads each prompt + completion; at every completion
  position its top-1 prediction is scored with the context from the actual text. Tuples that occur in
  that text are dropped (a good language model predicts the text, and the text is green-biased).
* **generation** (the student only writes text): it continues the probes (seeded sampling); its text is
  re-tokenised with the teacher's tokenizer, and tuples that occur in any probe are dropped.

In both, each distinct tuple is scored once (dropped repeats are counted in ``details``). Dropping the
input's tuples makes reading mode conservative: a green tuple is likelier to occur in the watermarked text
and be dropped, so a model that never saw the watermark scores below gamma there (about -0.07 in the tests).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

from distill_audit import fingerprint as fp
from distill_audit.backends.base import Capability, ModelAdapter
from distill_audit.detectors.base import Available, Detector, DetectorContext, Evidence, PlanInputs, PlannedRequest
from distill_audit.detectors.panel import sampled_share, sampled_what, teacher_sampling
from distill_audit.errors import CapabilityError
from distill_audit.watermark import (
    Pair,
    ScoredTokens,
    WatermarkInputs,
    binomial_p,
    completion_pairs,
    pairs_of,
    score_pairs,
    teacher_tokenizer,
    tuples_in,
)

MODES = ("auto", "reading", "generation")


@dataclass(frozen=True)
class RadioactivityParams:
    mode: str = "auto"  # auto: reading when its inputs are there, else generation
    max_new_tokens: int = 64  # generation mode: tokens the student writes per probe
    temperature: float = 1.0  # generation mode: seeded sampling (0: greedy)
    margin: float = 0.02  # green fraction above gamma counted as radioactive
    n_examples: int = 3


class WatermarkRadioactivity(Detector):
    name = "watermark-radioactivity"
    summary = ("The student's tokens lean towards the teacher's secret watermark green lists (exact binomial test "
               "on distinct tuples, no references)")
    requires: ClassVar[Mapping[str, frozenset[Capability]]] = {}  # the student generates OR scores: see below
    needs_watermark_key = True
    Params = RadioactivityParams
    null = ("The student never trained on text watermarked with this key: each distinct scored (context, token) "
            "tuple is green with probability gamma, independently.")

    def unmet_by_models(self, models: Mapping[str, Sequence[ModelAdapter]], available: Available) -> str | None:
        watermark = available.watermark
        assert watermark is not None  # needs_watermark_key: unmet() checked it
        key = watermark.key
        for teacher in models.get("teacher", ()):
            tok = teacher_tokenizer(teacher)
            if tok is None:
                return ("the teacher has no local tokenizer to map text to the watermark key's token ids "
                        "(give --teacher-tokenizer)")
            if fp.tokenizer_fingerprint(tok) != key.tokenizer_sha256:
                return (f"the teacher's tokenizer is not the one the watermark key was made for (key: tokenizer "
                        f"sha256 {key.tokenizer_sha256[:12]}..., teacher: {fp.tokenizer_fingerprint(tok)[:12]}...)")
        for student in models.get("student", ()):
            mode, why = self.choose_mode(student, watermark)
            if mode is None:
                return why
        return None

    def choose_mode(self, student: ModelAdapter, watermark: WatermarkInputs) -> tuple[str | None, str]:
        """(mode, why): reading when asked or possible, else generation; (None, reason) when neither can run."""
        mode = self.params.mode
        if mode not in MODES:
            raise ValueError(f"unknown radioactivity mode {mode!r}; known: {', '.join(MODES)}")
        caps = student.capabilities
        if watermark.texts is None:
            no_reading = "no watermarked teacher texts were given (--watermark-texts)"
        elif Capability.SCORE_TOPK not in caps:
            no_reading = f"the student backend ({student.name}) cannot give score-topk"
        elif student.fingerprint.get("tokenizer") != watermark.key.tokenizer_sha256:
            no_reading = "the student does not share the tokenizer the watermark key was made for"
        else:
            no_reading = ""
        if mode in ("auto", "reading") and not no_reading:
            return "reading", "the student scored the watermarked teacher texts"
        if mode == "reading":
            return None, f"reading mode cannot run: {no_reading}"
        if Capability.GENERATE not in caps:
            return None, (f"the student backend ({student.name}) cannot generate, and reading mode cannot run: "
                          f"{no_reading or 'not chosen'}")
        return "generation", f"the student continued the probes ({no_reading})" if no_reading else \
            "the student continued the probes"

    def planned_requests(self, inputs: PlanInputs) -> tuple[PlannedRequest, ...]:
        p: RadioactivityParams = self.params
        if p.mode == "reading" or (p.mode == "auto" and inputs.n_watermark_texts):
            return (PlannedRequest("student", "score", inputs.n_watermark_texts, "each watermarked teacher text after "
                                   "its prompt (auto: the probes' continuations instead where the student cannot read "
                                   "them)", "watermark-texts", chars=inputs.watermark_chars),)
        return (PlannedRequest("student", "generate", inputs.n_probes, sampled_what(p.max_new_tokens, p.temperature),
                               sampled_share(p.max_new_tokens, p.temperature), new_tokens=p.max_new_tokens),)

    def run(self, ctx: DetectorContext) -> Evidence:
        p: RadioactivityParams = self.params
        wm = ctx.watermark
        if wm is None:  # the runner skips this detector without a key
            raise CapabilityError(f"{self.name} needs the teacher's watermark key (--watermark-key)")
        key = wm.key
        mode, why = self.choose_mode(ctx.student.adapter, wm)
        if mode is None:
            raise ValueError(why)
        details: dict[str, Any] = {"mode": mode, "mode_reason": why, "key": key.public()}
        if mode == "reading":
            result, examples = self._reading(ctx, wm)
            assert wm.texts is not None
            details["texts"] = wm.to_dict()["texts"]
            test_where = ("the student's top-1 prediction at each completion position of the watermarked teacher texts, "
                          "context from the text; tuples occurring in that text dropped")
        else:
            result, examples = self._generation(ctx, wm)
            details["sampling"] = teacher_sampling(ctx, p.max_new_tokens, p.temperature).to_dict()
            test_where = ("the student's continuations of the probes, re-tokenised with the teacher's tokenizer; "
                          "tuples occurring in any probe dropped")
        details.update(result.to_dict())
        low, high = result.ci(0.95)
        n = result.n_scored
        planted = binomial_p(int(round((key.gamma + p.margin) * n)), n, key.gamma) if n else math.nan
        effect = result.green_fraction - key.gamma if n else math.nan
        return Evidence(
            detector=self.name,
            test=f"exact one-sided binomial test (Sander et al. 2024) over distinct (context, token) tuples: {test_where}",
            null=self.null,
            statistic=float(result.n_green),
            statistic_name=f"green tuples of {n} distinct scored",
            p_value=result.p_value,
            effect_size=effect,
            effect_size_name=f"green fraction minus gamma ({key.gamma:g})",
            ci_low=low - key.gamma if n else math.nan,
            ci_high=high - key.gamma if n else math.nan,
            ci_level=0.95,
            n=n,
            rules_out=bool(n and high - key.gamma < p.margin),
            margin=p.margin,
            planted_p_value=planted,
            examples=tuple(examples),
            details=details,
        )

    def _reading(self, ctx: DetectorContext, wm: WatermarkInputs) -> tuple[ScoredTokens, list[dict[str, Any]]]:
        assert wm.texts is not None
        w = wm.key.context_width
        # the student reads each watermarked answer after its prompt, in the student's own format
        read = ctx.score_answers(ctx.student, [t.prompt for t in wm.texts], [t.completion for t in wm.texts],
                                 [t.messages for t in wm.texts])
        kept: list[Pair] = []
        spans: list[tuple[int, int]] = []  # each text's slice of ``kept``
        in_text = 0
        for answer in read:
            s = answer.scored
            own = set(pairs_of(s.token_ids.tolist(), w))
            start = len(kept)
            ids = s.token_ids
            for i in range(w, s.n_tokens):
                if s.offsets[i, 1] <= answer.start or s.topk_ids.shape[1] == 0:
                    continue
                predicted = int(s.topk_ids[i, 0])
                if not 0 <= predicted < wm.key.vocab_size:  # an unmapped API token, or a padding row of the head
                    continue
                pair = (*(int(t) for t in ids[i - w : i]), predicted)
                if pair in own:
                    in_text += 1
                else:
                    kept.append(pair)
            spans.append((start, len(kept)))
        result = dataclasses.replace(score_pairs(wm.key, kept), n_in_prompt=in_text)
        shown = [(item, a, b) for item, (a, b) in zip(wm.texts, spans) if b > a][: self.params.n_examples]
        examples = [{"prompt": item.prompt, "completion": item.completion[:200], "scored_positions": b - a,
                     "green_fraction": _fraction(wm, kept[a:b])} for item, a, b in shown]
        return result, examples

    def _generation(self, ctx: DetectorContext, wm: WatermarkInputs) -> tuple[ScoredTokens, list[dict[str, Any]]]:
        p: RadioactivityParams = self.params
        w = wm.key.context_width
        tokenizer = teacher_tokenizer(ctx.teacher.adapter)
        assert tokenizer is not None  # unmet() checked it
        gens = ctx.generate(ctx.student, ctx.prompts, teacher_sampling(ctx, p.max_new_tokens, p.temperature))
        pairs: list[Pair] = []
        heads: list[list[int]] = []
        spans = []
        for prompt, g in zip(ctx.prompts, gens):
            new, head = completion_pairs(tokenizer, prompt, g.text, w)
            spans.append((len(pairs), len(pairs) + len(new)))
            pairs.extend(new)
            heads.append(head)
        result = score_pairs(wm.key, pairs, tuples_in(heads, w))
        shown = [(prompt, g, a, b) for prompt, g, (a, b) in zip(ctx.prompts, gens, spans) if b > a][: p.n_examples]
        examples = [{"prompt": prompt, "student": g.text[:200], "tokens": b - a,
                     "green_fraction": _fraction(wm, pairs[a:b])} for prompt, g, a, b in shown]
        return result, examples


def _fraction(wm: WatermarkInputs, pairs: list[Pair]) -> float:
    """Green fraction of one text's tuples (all of them, repeats included): for reading, not for testing."""
    s = score_pairs(wm.key, pairs, deduplicate=False)
    return round(s.green_fraction, 3) if s.n_scored else math.nan
