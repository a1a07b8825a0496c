"""One audit, start to finish: plan -> load -> infer -> detect -> aggregate -> result document."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import platform
import sys
import time
from collections import defaultdict
from typing import Any, Callable, Iterator, Sequence

from distill_audit import __version__, omnibus
from distill_audit.aggregate import Verdict, primary_lines, verdict
from distill_audit.backends.base import Capability, GenerateParams, ModelAdapter
from distill_audit.backends.hf import HFAdapter, LoadOptions
from distill_audit.backends.restrict import restrict
from distill_audit.cache import InferenceCache
from distill_audit.detectors import REGISTRY, Available, Detector, DetectorContext, Evidence, ModelHandle
from distill_audit.detectors.base import DetectorSkipped
from distill_audit.detectors.identity import identity_observations
from distill_audit.detectors.membership import LoggedVsFresh
from distill_audit.engine import Engine, default_generate_budget, default_token_budget
from distill_audit.errors import CapabilityError, UsageError
from distill_audit.formats import SYSTEM_DEFAULT, SYSTEM_NONE, compared_note, resolve_format
from distill_audit.logs import LoggedOutput, LogPairs, distinct_outputs, load_outputs, pair_outputs
from distill_audit.options import validate_spec
from distill_audit.probes import ProbeSet, load_probe_set, prompts_hash
from distill_audit.result import SCHEMA_VERSION
from distill_audit.spec import AuditSpec, ModelSource, TranscriptSource, describe_source
from distill_audit.watermark import WatermarkInputs, read_key

log = logging.getLogger(__name__)
CACHE_FILE = "inference-v1.sqlite"
Loader = Callable[[str, LoadOptions, str], ModelAdapter]
# the stages of an audit besides the detectors, as the inference account names them
FRESH_ANSWERS, ATTRIBUTION, NEGATIVE_CONTROLS, IDENTITY_PROBES = (
    "fresh-answers", "attribution", "negative-controls", "identity-probes")


def _load_hf(source: str, options: LoadOptions, name: str) -> ModelAdapter:
    return HFAdapter.load(source, options, name=name)


# the option each seat's model is given with; its -url, -model and -tokenizer siblings follow from it
SEAT_FLAGS = {"teacher": "--teacher", "student": "--student", "reference": "--reference",
              "alternative": "--alternative-teacher"}


def connect(source: ModelSource, spec: AuditSpec, name: str, loader: Loader = _load_hf,
            seat: str | None = None) -> ModelAdapter:
    """The adapter for one model: a local checkpoint (through ``loader``), an HTTP API or a transcript.
    ``seat`` (teacher, student, reference, alternative; default: ``name``) names the options errors point to."""
    from distill_audit.backends.openai_compat import OpenAIAdapter, RemoteModel

    flag = SEAT_FLAGS[seat or name]
    if isinstance(source, RemoteModel):
        transcript = spec.transcript_dir / f"{name}.jsonl" if spec.transcript_dir is not None else None
        return OpenAIAdapter.connect(_asked_as(source, spec, seat or name), name, spec.http, transcript,
                                     flag=f"{flag}-url")
    if isinstance(source, TranscriptSource):
        from distill_audit.backends.remote import TokenMap
        from distill_audit.backends.transcript import TranscriptAdapter

        token_map = TokenMap.load(source.tokenizer, f"{flag}-tokenizer") if source.tokenizer else None
        return TranscriptAdapter.load(source.path, name=name, token_map=token_map)
    return loader(source, spec.load, name)


def _asked_as(source: Any, spec: AuditSpec, seat: str) -> Any:
    """An API model's configuration with the route its prompt format needs (chat: the chat route, plain: the
    completions route; auto: whichever discovery finds, completions first) and the system turn to send."""
    requested, flag = spec.format_for(seat)
    want = {"chat": "chat", "plain": "completions"}.get(requested)
    if want is not None and source.api not in ("auto", want):
        raise UsageError(f"{flag} {requested} needs the {want} route, and --api {source.api} was given")
    system = {SYSTEM_DEFAULT: None, SYSTEM_NONE: ""}.get(spec.system_prompt, spec.system_prompt)
    return dataclasses.replace(source, api=want or source.api, system_prompt=system)


def with_format(handle: ModelHandle, spec: AuditSpec, seat: str, probe: str) -> ModelHandle:
    """The handle with the prompt format its seat asks for, resolved against what the model offers."""
    requested, flag = spec.format_for(seat)
    return dataclasses.replace(handle, format=resolve_format(handle.adapter, requested, spec.system_prompt, flag, probe))


def _transcript_probes(adapter: ModelAdapter, path: str) -> ProbeSet:
    """The transcript's distinct prompts (its later entries for a prompt already asked count as repeats)."""
    prompts = adapter.logged_prompts or ()
    return ProbeSet("transcript", "file", path, prompts, prompts_hash(prompts), len(prompts), adapter.repeated_prompts)


def duplicate_warnings(probe_set: ProbeSet, pairs: LogPairs | None) -> list[str]:
    """Say in the result how much repeated input was counted once (repeats are not new evidence)."""
    out = []
    if probe_set.n_duplicates:
        out.append(f"{probe_set.n_duplicates} repeated probe(s) were dropped: identical prompts are one unit of "
                   f"evidence, so the tests use the {probe_set.n_total} distinct ones.")
    if pairs is not None:
        for side, count in (("logged", pairs.logged_duplicates_dropped), ("fresh", pairs.fresh_duplicates_dropped)):
            if count:
                out.append(f"{count} repeated {side} answer(s) (same prompt and same answer as an earlier line) "
                           "were dropped from the membership test: a repeat is not new evidence.")
    return out


def select_detectors(names: Sequence[str], spec: AuditSpec | None = None) -> list[Detector]:
    """The detectors to run, each with its parameters: the defaults, the audit file's ``[detectors.<name>]``
    values (checked against the Params fields when the file was read) and, for logged-vs-fresh, the spec's
    membership score."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UsageError(f"unknown detector {unknown[0]!r}; known: {', '.join(sorted(REGISTRY))}")
    chosen = list(names) or list(REGISTRY)
    out: list[Detector] = []
    for name in chosen:
        cls = REGISTRY[name]
        given = dict(spec.detector_params.get(name, {})) if spec is not None else {}
        if cls is LoggedVsFresh and spec is not None:
            given["score"] = spec.membership_score
        out.append(cls(cls.Params(**given)) if given else cls())
    return out


def environment() -> dict[str, str]:
    import numpy
    import scipy
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "platform": sys.platform,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }


def _check_spec(spec: AuditSpec) -> None:
    """Every field against its declared option, then the rules across fields (one mechanism: options.py)."""
    validate_spec(spec)


def load_watermark(spec: AuditSpec) -> WatermarkInputs | None:
    """The key (and texts) for watermark-radioactivity, read and checked before any model loads."""
    if spec.watermark_key is None:
        return None
    key = read_key(spec.watermark_key, "--watermark-key")
    texts = load_outputs(spec.watermark_texts, "--watermark-texts") if spec.watermark_texts is not None else None
    return WatermarkInputs(key, texts, str(spec.watermark_texts) if spec.watermark_texts is not None else None)


def sample_fresh(teacher: ModelHandle, logged: Sequence[LoggedOutput], engine: Engine, seed: int,
                 temperature: float) -> tuple[LoggedOutput, ...]:
    """A fresh teacher answer for every logged one: same prompt, same length in teacher tokens, seeded.

    The k-th repeat of a prompt gets its own seed, so repeated prompts get different fresh answers."""
    if Capability.GENERATE not in teacher.adapter.capabilities or not teacher.adapter.live:
        raise CapabilityError("fresh teacher answers cannot be drawn here (the teacher is a transcript, or cannot "
                              "generate), so give them with --teacher-fresh")
    logged = distinct_outputs(logged)[0]  # a repeated line would only get a fresh answer nobody pairs with it
    asked = [teacher.format.render(o.prompt, o.messages) for o in logged]  # what the teacher reads, per answer
    full = teacher.adapter.count_tokens([a + o.completion for a, o in zip(asked, logged)])
    prompt_only = teacher.adapter.count_tokens(asked)
    seen: dict[str, int] = defaultdict(int)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (o, n_full, n_prompt) in enumerate(zip(logged, full, prompt_only)):
        groups[max(1, n_full - n_prompt), seen[o.prompt]].append(i)
        seen[o.prompt] += 1
    fresh: list[LoggedOutput | None] = [None] * len(logged)
    for (length, repeat), idx in sorted(groups.items()):
        params = GenerateParams(max_new_tokens=length, do_sample=temperature > 0,
                                temperature=temperature if temperature > 0 else 1.0, top_k=1, seed=seed + 7919 * repeat)
        for i, g in zip(idx, engine.generate(teacher.adapter, [asked[i] for i in idx], params)):
            fresh[i] = LoggedOutput(logged[i].prompt, g.text, 0, logged[i].context)
    return tuple(f for f in fresh if f is not None)


def _run_detectors(detectors: Sequence[Detector], ctx: DetectorContext,
                   timings: dict[str, float] | None = None) -> tuple[list[Evidence], list[dict[str, str]]]:
    available = Available.of(ctx)
    evidence, skipped = [], []
    for det in detectors:
        reason = det.unmet(available)
        if reason is not None:
            skipped.append({"detector": det.name, "reason": reason})
            continue
        t0 = time.perf_counter()
        try:
            with ctx.engine.working_for(det.name):
                evidence.append(det.run(ctx))
        except DetectorSkipped as exc:
            skipped.append({"detector": det.name, "reason": exc.reason})
            continue
        if timings is not None:
            timings[det.name] = round(time.perf_counter() - t0, 3)
    return evidence, skipped


@dataclasses.dataclass(frozen=True)
class Assessment:
    """What the detectors found for one student seat: the evidence (omnibus included), the skips, the
    attribution among candidate teachers, and the verdict over the primary lines."""

    evidence: list[Evidence]
    skipped: list[dict[str, str]]
    attribution: dict[str, Any]
    verdict: Verdict


def assess(detectors: Sequence[Detector], ctx: DetectorContext, alternatives: Sequence[tuple[ModelHandle, str]],
           alpha: float, combination: str, warnings: Sequence[str] = (), teacher_source: str = "",
           timings: dict[str, float] | None = None) -> Assessment:
    """Run the detectors, combine the panel detectors into the omnibus test, run the omnibus components with
    each alternative teacher in the teacher's seat (attribution), and give the verdict."""
    evidence, skipped = _run_detectors(detectors, ctx, timings)
    access = omnibus.access_of(ctx.teacher.adapter)
    comp = omnibus.components(evidence, ctx, access)
    omni = omnibus.omnibus_evidence(comp, ctx)
    if omni is not None:
        evidence.insert(0, omni)
    candidates = []
    t0 = time.perf_counter()
    for handle, source in alternatives:
        alt_ctx = dataclasses.replace(ctx, teacher=handle, teacher_logs=None, watermark=None)
        with ctx.engine.working_for(ATTRIBUTION):
            alt_evidence, _ = _run_detectors([d for d in detectors if d.name in comp.tables], alt_ctx)
        candidates.append(omnibus.Candidate(handle.name, "alternative", source,
                                            omnibus.components(alt_evidence, alt_ctx, access)))
    if timings is not None and alternatives:
        timings["attribution"] = round(time.perf_counter() - t0, 3)
    table = omnibus.attribution(omnibus.Candidate("teacher", "teacher", teacher_source, comp), candidates, ctx, alpha)
    notes = list(warnings) + panel_warnings(omni, evidence, ctx, alpha, table)
    return Assessment(evidence, skipped, table, verdict(evidence, alpha, notes, method=combination, attribution=table))


def panel_warnings(omni: Evidence | None, evidence: Sequence[Evidence], ctx: DetectorContext, alpha: float,
                   attribution: dict[str, Any]) -> list[str]:
    """What the verdict must say about the panel: too few references for the omnibus to reach significance,
    and attribution not tested."""
    out = []
    if omni is not None:
        k = len(ctx.references)
        m = len(primary_lines(evidence, attribution))
        level = alpha / max(m, 1)
        ref_means = list(omni.details["reference_means"].values())
        needed = omnibus.references_needed(float(omni.details["student_mean"]), ref_means, level,
                                           floor_sd=float(omni.details.get("panel_floor_sd", 0.0)))
        if omni.details["panel_test_p_value"] >= level and (k < 4 or (needed is not None and needed > k)):
            spread = (f"at the observed spread of the references, the student's omnibus excess would need about "
                      f"{needed} references to reach alpha / {m} = {level:.2g}" if needed is not None else
                      "at the observed spread of the references, no number of references would make the student's "
                      "omnibus score significant")
            out.append(f"Only {k} reference model(s): the panel test has {k - 1} degree(s) of freedom, so it needs the "
                       f"student far outside the references' spread; {spread}. Add independent references of the "
                       "student's class.")
    if omni is not None and not attribution.get("tested"):
        out.append(str(attribution["note"]))
    elif omni is not None and float(attribution.get("versus_teacher_p_value", 1.0)) < alpha:
        out.append("The student's lean to the teacher over the alternatives is measured against the references' leans; "
                   "references trained on other data sit about equally far from a teacher and its siblings, so they "
                   "understate how far a model trained on the teacher's own data can lean to one of them by chance "
                   "(on the benchmark zoo a student of the teacher's training text was called distilled this way). "
                   "Where a model trained on the teacher's data, but not on its outputs, is a plausible explanation, "
                   "this verdict does not rule it out.")
    logs = next((e for e in evidence if e.detector == "logged-vs-fresh"), None)
    if logs is not None and not logs.details.get("calibrated", True):
        out.append("logged-vs-fresh is not calibrated against references (it needs 2 that can score text): a shift "
                   "between how the logged and the fresh answers were drawn, cut or post-processed would pass for "
                   "membership. Give --reference models to calibrate it.")
    return out


def negative_controls(detectors: Sequence[Detector], ctx: DetectorContext, alpha: float,
                      combination: str, alternatives: Sequence[tuple[ModelHandle, str]] = ()
                      ) -> tuple[list[dict[str, Any]], list[str]]:
    """Each reference in the student's seat, audited against the teacher and the rest of the panel.

    A reference is independent of the teacher by choice, so any reference that comes out distilled shows
    the panel is too weak (too few, or too unlike each other) for this audit's verdict to be trusted."""
    results, warnings = [], []
    if len(ctx.references) < 2:
        return [], ["Negative controls could not run: they need at least 2 reference models."]
    for i, ref in enumerate(ctx.references):
        rest = ctx.references[:i] + ctx.references[i + 1 :]
        seat = dataclasses.replace(ref, role="student")  # asked as the panel asks it (its own format)
        control_ctx = dataclasses.replace(ctx, student=seat, references=rest)
        a = assess(detectors, control_ctx, alternatives, alpha, combination)
        v = a.verdict
        results.append({
            "model": ref.name,
            "label": v.label,
            "p_value": v.p_value,
            "p_values": {e.detector: e.p_value for e in a.evidence},
            "skipped": a.skipped,
        })
        if v.label == "distilled":
            warnings.append(
                f"Negative control failed: {ref.name}, an independent reference, came out distilled "
                f"(p = {v.p_value:.2g}) when put in the student's seat; the reference panel is too weak for this "
                "verdict to be trusted. Add more, and more varied, references."
            )
    if all(not r["p_values"] for r in results):
        warnings.append("Negative controls could not run any detector with one reference fewer; use 3 or more references.")
    return results, warnings


def _runtime(adapter: ModelAdapter) -> dict[str, Any]:
    """The adapter's record of where and how it ran; a request transcript is bound by its sha256."""
    import hashlib
    from pathlib import Path

    runtime = dict(adapter.runtime)
    path = runtime.get("transcript")
    if isinstance(path, str) and Path(path).exists():
        runtime["transcript_sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return runtime


@dataclasses.dataclass(frozen=True)
class AuditPlan:
    """Everything an audit reads and checks before any model loads, so a bad file or flag fails in a second:
    the detectors, the probes, the logs, the watermark inputs and the warnings known so far."""

    spec: AuditSpec
    detectors: tuple[Detector, ...]
    probe_set: ProbeSet
    logged: tuple[LoggedOutput, ...] | None
    fresh_file: tuple[LoggedOutput, ...] | None
    watermark: WatermarkInputs | None
    warnings: tuple[str, ...]
    # a transcript teacher is read while planning (cheap, and it may supply the probes); open_models adopts it
    transcript_teacher: ModelAdapter | None = None


def plan_audit(spec: AuditSpec, loader: Loader = _load_hf) -> AuditPlan:
    """Check the spec, read every input file, and decide what can run, before any model loads."""
    _check_spec(spec)
    detectors = select_detectors(spec.detectors, spec)
    transcript_teacher = None
    if isinstance(spec.teacher, TranscriptSource):  # cheap to read: done first, it may supply the probes
        transcript_teacher = connect(spec.teacher, spec, "teacher", loader)
    try:
        if spec.probes is None and transcript_teacher is not None:
            probe_set = _transcript_probes(transcript_teacher, str(spec.teacher.path))  # type: ignore[union-attr]
        else:
            probe_set = load_probe_set(spec.probes or "default")
        probe_set = probe_set.subsample(spec.n_probes, spec.seed)
        logged = load_outputs(spec.teacher_logs, "--teacher-logs") if spec.teacher_logs else None
        fresh_file = load_outputs(spec.teacher_fresh, "--teacher-fresh") if spec.teacher_fresh else None
        if logged is not None and fresh_file is not None:
            pair_outputs(logged, fresh_file, str(spec.teacher_fresh))  # refuse unpaired files before loading models
        watermark = load_watermark(spec)
        inputs = Available(None, len(spec.references), logged is not None, watermark)
        reasons = {det.name: det.unmet(inputs) for det in detectors}
        for name in spec.detectors:
            if reasons.get(name) is not None:
                raise CapabilityError(f"detector {name} cannot run: {reasons[name]}")
        if all(reason is not None for reason in reasons.values()):
            raise CapabilityError(
                f"no selected detector can run with {len(spec.references)} reference model(s): the panel detectors "
                "need at least 2 (--reference, better 4 or more); only logged-vs-fresh (with --teacher-logs), "
                "watermark-radioactivity (with --watermark-key) and weight-lineage (both models' weights) need none"
            )
    except BaseException:
        if transcript_teacher is not None:
            transcript_teacher.close()
        raise
    warnings: list[str] = []
    if len(spec.references) < 2:
        warnings.append(
            f"Only {len(spec.references)} reference model(s): the panel detectors cannot run, and nothing shows "
            "whether an independent model of this class would look as teacher-like; use at least 2, better 4 or more."
        )
    return AuditPlan(spec, tuple(detectors), probe_set, logged, fresh_file, watermark, tuple(warnings),
                     transcript_teacher)


@dataclasses.dataclass(frozen=True)
class OpenModels:
    """The audit's models, open: the teacher (narrowed to its access mode), the student, the references and the
    alternative teachers (with how each was given), and how long opening them took."""

    teacher: ModelHandle
    student: ModelHandle
    references: tuple[ModelHandle, ...]
    alternatives: tuple[tuple[ModelHandle, str], ...]
    load_seconds: float

    @property
    def handles(self) -> list[ModelHandle]:
        """Every model, in the order the result lists them (the order of ``AuditSpec.sources``)."""
        return [self.teacher, self.student, *self.references, *(h for h, _ in self.alternatives)]


@contextlib.contextmanager
def open_models(plan: AuditPlan, loader: Loader = _load_hf) -> Iterator[OpenModels]:
    """Open every model of the plan; close each one opened, however the audit ends (a model that fails to load
    closes the connections already made)."""
    spec = plan.spec
    opened: list[ModelAdapter] = []

    def adopt(adapter: ModelAdapter) -> ModelAdapter:
        opened.append(adapter)
        return adapter

    t_load = time.perf_counter()
    try:
        if plan.transcript_teacher is not None:
            adopt(plan.transcript_teacher)
        teacher_adapter = plan.transcript_teacher or adopt(connect(spec.teacher, spec, "teacher", loader))
        teacher = ModelHandle("teacher", "teacher", restrict(teacher_adapter, spec.teacher_access))
        student = ModelHandle("student", "student", adopt(connect(spec.student, spec, "student", loader)))
        references = tuple(
            ModelHandle("reference", f"reference-{i + 1}",
                        adopt(connect(src, spec, f"reference-{i + 1}", loader, seat="reference")))
            for i, src in enumerate(spec.references)
        )
        alternatives = tuple(
            (ModelHandle("alternative", f"alternative-{i + 1}",
                         restrict(adopt(connect(src, spec, f"alternative-{i + 1}", loader, seat="alternative")),
                                  spec.teacher_access)),
             describe_source(src))
            for i, src in enumerate(spec.alternative_teachers)
        )
        probe = plan.probe_set.prompts[0] if plan.probe_set.prompts else ""
        teacher = with_format(teacher, spec, "teacher", probe)
        student = with_format(student, spec, "student", probe)
        references = tuple(with_format(h, spec, "reference", probe) for h in references)
        alternatives = tuple((with_format(h, spec, "alternative", probe), src) for h, src in alternatives)
        yield OpenModels(teacher, student, references, alternatives, time.perf_counter() - t_load)
    finally:
        for adapter in opened:
            adapter.close()


def model_warnings(models: OpenModels) -> list[str]:
    """What the verdict must say about the models themselves, known once they are open."""
    out = compared_note(models.teacher.format, {h.name: h.format for h in models.handles[1:]})
    teacher = models.teacher.adapter.fingerprint["model"]
    if teacher == models.student.adapter.fingerprint["model"]:
        out.append("The teacher and the student are the same model (identical fingerprints).")
    for h, _ in models.alternatives:
        if h.adapter.fingerprint["model"] == teacher:
            out.append(f"{h.name} is the teacher itself (identical fingerprints): it cannot tell them apart.")
    return out


@dataclasses.dataclass(frozen=True)
class AuditResult:
    """One audit's findings, typed; :meth:`to_dict` is the result document (``distill-audit schema``)."""

    created_at: str
    command: tuple[str, ...]
    models: tuple[dict[str, Any], ...]
    probe_set: ProbeSet
    teacher_logs: dict[str, Any] | None
    watermark: dict[str, Any] | None
    evidence: tuple[Evidence, ...]
    skipped: tuple[dict[str, str], ...]
    attribution: dict[str, Any]
    negative_controls: tuple[dict[str, Any], ...]
    observations: dict[str, Any]
    verdict: Verdict
    settings: dict[str, Any]
    environment: dict[str, str]
    load_seconds: float
    detector_seconds: dict[str, float]
    total_seconds: float
    inference: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool_version": __version__,
            "created_at": self.created_at,
            "command": list(self.command),
            "models": [dict(m) for m in self.models],
            "probe_sets": [self.probe_set.to_dict()],
            "teacher_logs": self.teacher_logs,
            "watermark": self.watermark,
            "evidence": [e.to_dict() for e in self.evidence],
            "skipped": list(self.skipped),
            "attribution": self.attribution,
            "negative_controls": list(self.negative_controls),
            "observations": self.observations,
            "verdict": self.verdict.to_dict(),
            "settings": self.settings,
            "environment": self.environment,
            "timings": {
                "load_seconds": round(self.load_seconds, 3),
                "detector_seconds": self.detector_seconds,
                "total_seconds": round(self.total_seconds, 3),
            },
            "inference": self.inference,
        }


def inference_record(engine: Engine) -> dict[str, Any]:
    """The result's ``inference``: the engine's totals, and its account by model and by detector (or stage)."""
    return {**engine.stats.to_dict(), **engine.account.to_dict()}


def execute(plan: AuditPlan, models: OpenModels, cache: InferenceCache, progress: bool | None = None,
            command: Sequence[str] = (), started: float | None = None, created_at: str | None = None) -> AuditResult:
    """Run the planned audit on the open models: fresh answers, detectors, the omnibus and attribution, the
    negative controls and the identity probes, then the verdict."""
    started = time.perf_counter() if started is None else started
    created_at = created_at or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    spec = plan.spec
    warnings = list(plan.warnings) + model_warnings(models)
    teacher, student = models.teacher, models.student
    devices = [str(h.adapter.runtime.get("device", "cpu")) for h in models.handles]
    dtypes = [str(h.adapter.runtime["dtype"]) for h in models.handles if "dtype" in h.adapter.runtime]
    token_budget = spec.token_budget or default_token_budget(devices, dtypes)
    generate_budget = spec.token_budget or default_generate_budget(devices)
    engine = Engine(cache, token_budget=token_budget, score_top_k=spec.score_top_k, progress=progress,
                    remote_max_age=spec.api_cache_ttl, generate_budget=generate_budget)
    for h in models.handles:
        engine.name_model(h.adapter, h.name)
    detector_seconds: dict[str, float] = {}
    controls: list[dict[str, Any]] = []
    observations: dict[str, Any] = {}
    pairs = None
    if plan.logged is not None:
        if plan.fresh_file is not None:
            pairs = pair_outputs(plan.logged, plan.fresh_file, str(spec.teacher_fresh))
        else:
            with engine.working_for(FRESH_ANSWERS):
                fresh = sample_fresh(teacher, plan.logged, engine, spec.seed, spec.fresh_temperature)
            pairs = pair_outputs(plan.logged, fresh, f"sampled from the teacher here (temperature "
                                 f"{spec.fresh_temperature:g}, seed {spec.seed}, logged lengths)")
        if plan.fresh_file is None and teacher.format.where == "server":
            longer = sum(len(o.context) > 1 for o in distinct_outputs(plan.logged)[0])
            if longer:
                warnings.append(
                    f"{longer} logged conversation(s) hold earlier turns or a system turn of their own; the teacher's "
                    "chat API was sent only their last user turn (after --system-prompt) for the fresh answers, so "
                    "those pairs compare answers to different conversations. Give --teacher-fresh answers drawn "
                    "with the whole conversations.")
        warnings.extend(duplicate_warnings(plan.probe_set, pairs))
        if pairs.unpaired_logged:
            warnings.append(f"{pairs.unpaired_logged} logged output(s) have no fresh output for the same prompt "
                            "and were left out of the membership test.")
    if pairs is None:
        warnings.extend(duplicate_warnings(plan.probe_set, None))
    ctx = DetectorContext(teacher, student, models.references, plan.probe_set.prompts, spec.seed, engine, pairs,
                          watermark=plan.watermark)
    assessment = assess(plan.detectors, ctx, models.alternatives, spec.alpha, spec.combination, warnings,
                        describe_source(spec.teacher), detector_seconds)
    evidence, skipped = assessment.evidence, assessment.skipped
    for item in skipped:
        log.warning("skipping %s: %s", item["detector"], item["reason"])
    if spec.negative_controls:
        ran = [d for d in plan.detectors if d.name in {e.detector for e in evidence}]
        t0 = time.perf_counter()
        with engine.working_for(NEGATIVE_CONTROLS):
            controls, control_warnings = negative_controls(ran, ctx, spec.alpha, spec.combination, models.alternatives)
        detector_seconds["negative_controls"] = round(time.perf_counter() - t0, 3)
        warnings.extend(control_warnings)
    if spec.teacher_names or student.format.kind == "chat":
        with engine.working_for(IDENTITY_PROBES):
            observations["identity"] = identity_observations(student, spec.teacher_names, engine, spec.seed)
    result_verdict = dataclasses.replace(assessment.verdict, warnings=tuple(warnings) + tuple(
        w for w in assessment.verdict.warnings if w not in warnings))
    records = tuple(
        {
            "role": h.role,
            "name": h.name,
            "source": describe_source(src),
            "fingerprint": h.adapter.fingerprint,
            "capabilities": sorted(c.value for c in h.adapter.capabilities),
            "context_length": h.adapter.context_length,
            "runtime": _runtime(h.adapter),
            "prompt_format": h.format.to_dict(),
        }
        for h, src in zip(models.handles, spec.sources)
    )
    return AuditResult(
        created_at=created_at,
        command=tuple(command),
        models=records,
        probe_set=plan.probe_set,
        teacher_logs=dict(pairs.to_dict(), logged_source=str(spec.teacher_logs)) if pairs is not None else None,
        watermark=plan.watermark.to_dict() if plan.watermark is not None else None,  # never the secret
        evidence=tuple(evidence),
        skipped=tuple(skipped),
        attribution=assessment.attribution,
        negative_controls=tuple(controls),
        observations=observations,
        verdict=result_verdict,
        settings=dict(spec.settings(), token_budget=token_budget, generate_budget=generate_budget),
        environment=environment(),
        load_seconds=models.load_seconds,
        detector_seconds=detector_seconds,
        total_seconds=time.perf_counter() - started,
        inference=inference_record(engine),
    )


def run_audit(
    spec: AuditSpec,
    progress: bool | None = None,
    command: Sequence[str] = (),
    loader: Loader = _load_hf,
) -> dict[str, Any]:
    """Run the audit described by ``spec`` and return the result document (not yet written):
    plan -> open the cache -> open the models -> execute."""
    started = time.perf_counter()
    created_at = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    plan = plan_audit(spec, loader)
    try:
        # opened before any model loads, so an unusable cache directory fails in a second, not after the loads
        cache = InferenceCache(spec.cache_dir / CACHE_FILE if spec.cache_dir else None)
    except BaseException:
        if plan.transcript_teacher is not None:
            plan.transcript_teacher.close()
        raise
    try:
        with open_models(plan, loader) as models:
            result = execute(plan, models, cache, progress, command, started, created_at)
    finally:
        cache.close()
    return result.to_dict()
