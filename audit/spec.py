"""What an audit is asked to do: a frozen value built from CLI flags or an audit file, recorded in every result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from distill_audit.backends.hf import LoadOptions
from distill_audit.backends.http import HTTPSettings
from distill_audit.backends.openai_compat import RemoteModel


@dataclass(frozen=True)
class TranscriptSource:
    """A closed teacher known only from a file of its logged answers."""

    path: Path
    tokenizer: str | None = None  # local copy of the teacher's tokenizer, to count and map its tokens

    def describe(self) -> str:
        return f"transcript {self.path}"


# A model on this machine (or on a hub): a checkpoint directory, a hub id or a .gguf file, as the user wrote it.
LocalSource = str
# Where a model comes from: on this machine, behind an API, or known only from a transcript of its answers.
ModelSource = LocalSource | RemoteModel | TranscriptSource


def describe_source(source: ModelSource) -> str:
    return source if isinstance(source, str) else source.describe()


@dataclass(frozen=True)
class AuditSpec:
    teacher: ModelSource
    student: ModelSource
    references: tuple[ModelSource, ...] = ()
    # other models that could have been the teacher (a sibling run, the family's other sizes, another vendor):
    # the verdict then asks whether the student leans to the teacher over each of them (attribution)
    alternative_teachers: tuple[ModelSource, ...] = ()
    probes: str | None = "default"  # None: the transcript's prompts for a transcript teacher, else "default"
    n_probes: int | None = None
    seed: int = 0
    alpha: float = 0.01
    detectors: tuple[str, ...] = ()  # empty: every registered detector
    # detector name -> {Params field: value}, set in an audit file's [detectors.<name>] tables (checked there)
    detector_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    load: LoadOptions = field(default_factory=LoadOptions)
    token_budget: int | None = None  # None: chosen for the device (see engine.default_token_budget)
    score_top_k: int = 10
    cache_dir: Path | None = None  # None: no on-disk cache
    # seconds a cached answer from a model behind an API is trusted before it is asked again (0: ask again
    # now, --refresh); None: for ever. Local models are content-addressed, so never go stale.
    api_cache_ttl: float | None = 7 * 24 * 3600.0
    teacher_logs: Path | None = None  # JSONL of logged teacher outputs (prompt, completion)
    teacher_fresh: Path | None = None  # JSONL of fresh teacher outputs for the same prompts; None: sample them
    fresh_temperature: float = 1.0  # sampling temperature for fresh outputs made here (match the logs')
    membership_score: str = "loss"  # logged-vs-fresh test statistic: loss | min-k++ | zlib
    teacher_names: tuple[str, ...] = ()  # names of the teacher and its maker, for the identity probes
    teacher_access: str = "white"  # white | gray | black: audit the teacher as if only this access existed
    combination: str = "bonferroni"  # bonferroni | cauchy
    negative_controls: bool = True  # each reference in the student's seat against the rest of the panel
    http: HTTPSettings = field(default_factory=HTTPSettings)  # for models behind an API
    transcript_dir: Path | None = None  # where API request/response transcripts go; None: not kept
    watermark_key: Path | None = None  # the teacher's private watermark key file (watermark-radioactivity)
    watermark_texts: Path | None = None  # JSONL of watermarked teacher texts, for its reading mode
    # how each model is asked (distill_audit.formats): auto | chat | plain, for every seat unless its own is set
    prompt_format: str = "auto"
    teacher_prompt_format: str | None = None  # the teacher and the alternative teachers
    student_prompt_format: str | None = None
    reference_prompt_format: str | None = None
    system_prompt: str = "default"  # default (the template's own) | none (an empty system turn) | its text

    def format_for(self, seat: str) -> tuple[str, str]:
        """The prompt format asked for a seat (teacher, alternative, student, reference), and the option it came
        from (for errors)."""
        own = {"teacher": "teacher", "alternative": "teacher"}.get(seat, seat)
        value = getattr(self, f"{own}_prompt_format")
        if value is not None:
            return value, f"--{own}-prompt-format"
        return self.prompt_format, "--prompt-format"

    @property
    def sources(self) -> tuple[ModelSource, ...]:
        return (self.teacher, self.student, *self.references, *self.alternative_teachers)

    @property
    def remote(self) -> bool:
        return any(not isinstance(s, str) for s in self.sources)

    def settings(self) -> dict[str, Any]:
        """The settings that decide the numbers (paths and cache location are recorded elsewhere); which ones is
        declared in the option table (``options.OPTIONS``, ``recorded``)."""
        from distill_audit.options import recorded_settings

        return recorded_settings(self)
