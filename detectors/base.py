"""The detector contract: named, typed, declares what access it needs, returns Evidence.

A detector is a pure function of inference results. It never loads a model, prints, or keeps state
between runs; it asks the :class:`DetectorContext` for batched, cached inference.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

import numpy as np

from distill_audit.backends.base import Capability, GenerateParams, Generation, ModelAdapter, ScoredText
from distill_audit.engine import Engine
from distill_audit.formats import PLAIN, Message, PromptFormat
from distill_audit.logs import LogPairs
from distill_audit.watermark import WatermarkInputs

T = TypeVar("T")


class DetectorSkipped(Exception):
    """Raised by :meth:`Detector.run` when the inputs turn out not to allow the test (found only once the
    data is in hand, e.g. probes too short to pool into words). The runner records the reason as a skip."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Evidence:
    """What one detector found. ``p_value`` is valid under ``null``; ``effect_size`` has a CI."""

    detector: str
    test: str  # the statistical test, named so a specialist can check it
    null: str  # the null hypothesis in one sentence
    statistic: float
    statistic_name: str
    p_value: float
    effect_size: float
    effect_size_name: str
    ci_low: float
    ci_high: float
    ci_level: float
    n: int  # independent units behind the p-value (prompts)
    rules_out: bool  # the CI excludes an effect as large as the detector's margin: supports "not distilled"
    margin: float = float("nan")  # smallest effect (in effect-size units) this detector counts as distillation
    # Power check: the p-value the test would have given had the student shown an effect of exactly the
    # margin with the same noise. Below the verdict's per-detector level means an effect that size would
    # have been caught, so a null result from this detector means something.
    planted_p_value: float = float("nan")
    examples: tuple[Mapping[str, Any], ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["examples"] = [dict(e) for e in self.examples]
        out["details"] = dict(self.details)
        return out


@dataclass(frozen=True)
class ModelHandle:
    role: str  # teacher | student | reference
    name: str
    adapter: ModelAdapter
    format: PromptFormat = PLAIN  # how this model is asked (--prompt-format); see distill_audit.formats


@dataclass(frozen=True)
class ScoredAnswer:
    """An answer scored in the context a model reads it in: ``scored`` covers ``text`` (the rendered context,
    then the answer); the answer's characters start at ``start``."""

    scored: ScoredText
    text: str
    start: int

    @property
    def context(self) -> str:
        return self.text[: self.start]


@dataclass(frozen=True)
class DetectorContext:
    """Everything a detector may use: the models, the prompts, the seed, and batched cached inference."""

    teacher: ModelHandle
    student: ModelHandle
    references: tuple[ModelHandle, ...]
    prompts: tuple[str, ...]
    seed: int
    engine: Engine
    teacher_logs: LogPairs | None = None  # logged teacher outputs paired with fresh ones for the same prompts
    watermark: WatermarkInputs | None = None  # the teacher's watermark key and optional watermarked texts

    def score(self, model: ModelHandle, texts: Sequence[str]) -> list[ScoredText]:
        """Statistics of texts read as they are (not as answers: see :meth:`score_answers`)."""
        return self.engine.score(model.adapter, texts)

    def generate(self, model: ModelHandle, prompts: Sequence[str], params: GenerateParams,
                 contexts: Sequence[Sequence[Message]] | None = None) -> list[Generation]:
        """Each model's answer to each probe, asked in its own format (a chat model through its template: the
        answer is the assistant turn). ``contexts``: a logged conversation per probe, kept for chat models."""
        fmt = model.format
        rendered = [fmt.render(p, c) for p, c in zip(prompts, contexts or [()] * len(prompts))]
        return self.engine.generate(model.adapter, rendered, params)

    def score_answers(self, model: ModelHandle, prompts: Sequence[str], answers: Sequence[str],
                      contexts: Sequence[Sequence[Message]] | None = None) -> list[ScoredAnswer]:
        """How ``model`` scores each answer given its probe, in the model's own format: a plain model reads the
        probe then the answer, a chat model its template's rendering of the user turn then the answer."""
        fmt = model.format
        if fmt.kind == "chat" and fmt.where != "template":
            raise DetectorSkipped(f"{model.name} is asked through a chat API or log, which renders the conversation "
                                  "elsewhere, so an answer cannot be scored in the context it reads it in")
        heads = [fmt.render(p, c) for p, c in zip(prompts, contexts or [()] * len(prompts))]
        texts = [h + a for h, a in zip(heads, answers)]
        return [ScoredAnswer(s, t, len(h)) for s, t, h in zip(self.engine.score(model.adapter, texts), texts, heads)]

    def memo(self, what: object, model: ModelHandle, compute: Callable[[], T]) -> T:
        """A per-model value that depends only on the teacher, that model, the prompts and the seed (not on which
        seat the model sits in, nor on the other models), computed once per audit: the negative controls and the
        attribution runs ask for the same model's values again. ``what`` names the rest it depends on (the
        detector and its parameters)."""
        t, m = self.teacher.adapter, model.adapter
        key = ("per-model", what, t.fingerprint["model"], t.fingerprint.get("numerics"), frozenset(t.capabilities),
               self.teacher.format.key, m.fingerprint["model"], m.fingerprint.get("numerics"),
               frozenset(m.capabilities), model.format.key, self.prompts, self.seed, self.engine.score_top_k)
        return self.engine.derived(key, compute)

    def rng(self, detector: str) -> np.random.Generator:
        """A generator seeded by (run seed, detector name): detectors do not disturb each other's draws."""
        return np.random.default_rng([self.seed, *detector.encode()])


@dataclass(frozen=True)
class Available:
    """What an audit gives its detectors to work with, in the one shape every needs check reads."""

    models: Mapping[str, Sequence[ModelAdapter]] | None  # adapters by role; None before any model is open
    n_references: int
    teacher_logs: bool = False
    watermark: WatermarkInputs | None = None
    formats: Mapping[str, Sequence[PromptFormat]] | None = None  # how each model is asked, by role

    @classmethod
    def of(cls, ctx: DetectorContext) -> Available:
        handles = {"teacher": [ctx.teacher], "student": [ctx.student], "reference": list(ctx.references)}
        return cls({role: [h.adapter for h in hs] for role, hs in handles.items()}, len(ctx.references),
                   ctx.teacher_logs is not None, ctx.watermark,
                   {role: [h.format for h in hs] for role, hs in handles.items()})

    @classmethod
    def of_models(cls, models: Mapping[str, Sequence[ModelAdapter]], teacher_logs: bool = False,
                  watermark: WatermarkInputs | None = None,
                  formats: Mapping[str, Sequence[PromptFormat]] | None = None) -> Available:
        return cls(models, len(models.get("reference", ())), teacher_logs, watermark, formats)


@dataclass(frozen=True)
class PlanInputs:
    """What an audit gives its detectors, counted before any model loads: what :meth:`Detector.planned_requests`
    reads. Characters are of the texts as given (a chat model reads them through its template: a little more)."""

    n_probes: int
    probe_chars: int
    n_references: int
    n_logged: int = 0  # logged teacher answers (distinct)
    logged_chars: int = 0  # their prompts and answers
    fresh_chars: int | None = None  # the fresh answers given with --teacher-fresh; None: drawn from the teacher here
    n_watermark_texts: int = 0
    watermark_chars: int = 0


@dataclass(frozen=True)
class PlannedRequest:
    """Inference a detector will ask for, declared before any model loads: ``count`` requests of ``kind`` to each model
    in ``role`` (teacher, student, or every reference).

    ``new_tokens``: the most new tokens one generate request asks for (None: set by the data, e.g. a logged answer's
    length). ``chars``: characters of text the requests read, where known before any model runs (None: it reads
    answers not yet written). ``share`` names the request set: the same share on the same model is the same requests
    (the engine computes them once, whichever detector asks first); ``of_teacher`` marks requests that read the
    teacher's answers, which are new work when another model takes the teacher's seat."""

    role: str  # teacher | student | reference
    kind: str  # generate | score | hidden
    count: int
    what: str
    share: str
    new_tokens: int | None = 0
    chars: int | None = None
    of_teacher: bool = False


@dataclass(frozen=True)
class NoParams:
    pass


class Detector(abc.ABC):
    """Subclasses set the class attributes and implement :meth:`run`.

    ``requires`` maps a role (teacher, student, reference) to the capabilities that role's backend must
    have. ``Params`` is a frozen dataclass of hyper-parameters with defaults; the constructor only
    stores them (scikit-learn style).
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `distill-audit detectors`
    null: ClassVar[str]  # the null hypothesis its p-value is valid under, in one sentence
    requires: ClassVar[Mapping[str, frozenset[Capability]]]
    min_references: ClassVar[int] = 0
    same_tokenizer: ClassVar[bool] = False  # compares token ids, so every model must share one vocabulary
    needs_teacher_logs: ClassVar[bool] = False  # runs only when the user gives logged teacher outputs
    needs_watermark_key: ClassVar[bool] = False  # runs only when the user gives the teacher's watermark key
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def requirements(cls) -> list[str]:
        """What this detector needs besides the capabilities in ``requires``, in words (for ``distill-audit
        detectors``); read from the same declarations :meth:`unmet` checks."""
        out = [f"at least {cls.min_references} reference(s)"] if cls.min_references else []
        if cls.same_tokenizer:
            out.append("one tokenizer shared by all models")
        if cls.needs_teacher_logs:
            out.append("logged teacher outputs (--teacher-logs)")
        if cls.needs_watermark_key:
            out.append("the teacher's watermark key (--watermark-key)")
        return out

    def unmet(self, available: Available) -> str | None:
        """Why this detector cannot run with what is available, or None when it can: the one place where a
        detector's declared needs are checked (before any model loads, with ``available.models`` None, only the
        inputs are; once the models are open, their capabilities and tokenizers too)."""
        if self.needs_teacher_logs and not available.teacher_logs:
            return "no logged teacher outputs were given (--teacher-logs)"
        if self.needs_watermark_key and available.watermark is None:
            return "no watermark key was given (--watermark-key)"
        if available.n_references < self.min_references:
            return (f"it needs at least {self.min_references} reference model(s) (--reference), "
                    f"got {available.n_references}")
        models = available.models
        if models is None:
            return None
        for role, needed in self.requires.items():
            for adapter in models.get(role, ()):
                missing = needed - adapter.capabilities
                if missing:
                    names = ", ".join(sorted(c.value for c in missing))
                    return f"the {role} backend ({adapter.name}) cannot give: {names}"
        if self.same_tokenizer:
            hashes = {a.fingerprint.get("tokenizer") for role in models.values() for a in role}
            if len(hashes) > 1:
                return "it compares token ids, and the models do not all share one tokenizer"
            formats = {f.key: f for role in (available.formats or {}).values() for f in role}
            if len(formats) > 1:
                return ("it compares token ids at the same positions, and the models were not all asked in one "
                        f"prompt format ({', '.join(sorted({f.describe() for f in formats.values()}))})")
        return self.unmet_by_models(models, available)

    def unmet_by_models(self, models: Mapping[str, Sequence[ModelAdapter]], available: Available) -> str | None:
        """A detector's own needs that only the open models can show (e.g. weights of matching shapes), checked
        after the declared ones; None when met. Override, do not replace :meth:`unmet`."""
        return None

    def planned_requests(self, inputs: PlanInputs) -> tuple[PlannedRequest, ...] | None:
        """The inference this detector asks for with its parameters (``distill-audit run --plan``), declared here
        beside :meth:`run` so the two change together (a test runs real audits and holds every detector's computed
        requests to its plan). None: not declared; an empty tuple: it asks for no inference."""
        return None

    @abc.abstractmethod
    def run(self, ctx: DetectorContext) -> Evidence: ...
