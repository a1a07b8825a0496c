"""One contract test over every registered detector, on the real demo models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import pytest

from distill_audit.backends.base import Capability, ModelAdapter
from distill_audit.backends.hf import HFAdapter
from distill_audit.cache import InferenceCache
from distill_audit.demo import demo_prompts
from distill_audit.detectors import REGISTRY, Available, Detector, DetectorContext, Evidence, ModelHandle
from distill_audit.engine import Engine
from distill_audit.logs import load_outputs, pair_outputs

ROLES = {"teacher", "student", "reference"}


def _context(models: Path, student: str, engine: Engine, n_probes: int = 100, n_logs: int | None = None
             ) -> DetectorContext:
    def handle(role: str, name: str) -> ModelHandle:
        return ModelHandle(role, name, HFAdapter.load(str(models / name), name=name))

    refs = tuple(handle("reference", f"reference-{i}") for i in range(1, 7))
    logged = load_outputs(models / "teacher-logs.jsonl", "--teacher-logs")[:n_logs]
    fresh = load_outputs(models / "teacher-fresh.jsonl", "--teacher-fresh")
    return DetectorContext(handle("teacher", "teacher"), handle("student", student), refs,
                           tuple(demo_prompts()[:n_probes]), 0, engine,
                           pair_outputs(logged, fresh, "file"))


@pytest.fixture(scope="module")
def contexts(demo_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, DetectorContext]:
    models = demo_run["models"]
    assert isinstance(models, Path)
    # one engine with an on-disk cache: the two contexts share the references' answers and per-model values
    engine = Engine(InferenceCache(tmp_path_factory.mktemp("detector-cache") / "cache.sqlite"))
    return {"distilled": _context(models, "student", engine), "control": _context(models, "control", engine)}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_detector_declares_its_contract(name: str) -> None:
    cls = REGISTRY[name]
    assert cls.name == name and cls.summary and cls.null.endswith(".")
    assert set(cls.requires) <= ROLES and all(isinstance(c, Capability) for caps in cls.requires.values() for c in caps)
    params = cls.Params()  # every hyper-parameter has a default
    assert dataclasses.is_dataclass(params) and cls.Params.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert cls().params == params


# watermark-radioactivity needs a watermark key and watermarked text, which the demo has not: it is tested in
# tests/test_watermark.py on models trained with and without watermarked teacher text
NEEDS_DEMO_INPUTS = sorted(set(REGISTRY) - {"watermark-radioactivity"})


@pytest.mark.parametrize("name", NEEDS_DEMO_INPUTS)
def test_detector_returns_valid_deterministic_evidence(name: str, contexts: dict[str, DetectorContext]) -> None:
    detector: Detector = REGISTRY[name]()
    ev = detector.run(contexts["distilled"])
    # a detector states its null in one declared sentence (logged-vs-fresh has a second for its calibrated form)
    declared = {REGISTRY[name].null, getattr(REGISTRY[name], "null_calibrated", REGISTRY[name].null)}
    assert isinstance(ev, Evidence) and ev.detector == name and ev.null in declared
    assert 0.0 <= ev.p_value <= 1.0 and ev.n > 0
    assert ev.ci_low <= ev.effect_size <= ev.ci_high
    if name != "weight-lineage":  # weights have no prompts to show; its block map is in details
        assert 0 < len(ev.examples) <= 5 and all("prompt" in e for e in ev.examples)
    json.dumps(ev.to_dict(), allow_nan=True)  # serialisable as it stands
    # again, in a fresh engine (nothing kept in memory) reading the answers back from the cache
    fresh = dataclasses.replace(contexts["distilled"], engine=Engine(contexts["distilled"].engine.cache))
    again = REGISTRY[name]().run(fresh)
    assert again == ev


# weight-lineage looks for weights copied from the teacher, which the demo student (trained from scratch) has not:
# its power is tested in tests/test_lineage.py on a layer-initialised student
SEPARATES_DEMO = [n for n in NEEDS_DEMO_INPUTS if n != "weight-lineage"]


@pytest.mark.parametrize("name", SEPARATES_DEMO)
def test_detector_separates_distilled_from_control(name: str, contexts: dict[str, DetectorContext]) -> None:
    """Power on a real distilled pair. The demo student learnt from the teacher's answers and log-probs,
    so every token-level and membership detector must catch it on the 100 demo probes and its 1500 logged
    answers; the text-level ones see a weaker signal (greedy text hides most of the distribution), and
    representation-similarity one that output distillation need not leave in hidden states, so they must at
    least rank it above the control."""
    distilled = REGISTRY[name]().run(contexts["distilled"])
    control = REGISTRY[name]().run(contexts["control"])
    assert distilled.effect_size > control.effect_size
    assert distilled.p_value < control.p_value
    assert control.p_value > 0.05
    if not name.startswith(("text-", "idiosyncrasy-text", "representation-")):
        assert distilled.p_value < 0.01


class FakeTextOnlyAdapter(ModelAdapter):
    """A fake standing in for a black-box backend (the real ones are tested over loopback HTTP in
    tests/test_backend_http.py): it declares generation only."""

    name = "text-only"
    capabilities = frozenset({Capability.GENERATE})
    fingerprint = {"model": "0" * 64, "tokenizer": "t"}

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_unmet_needs_are_reported_not_crashed_on(name: str, llama_dir: Path) -> None:
    detector = REGISTRY[name]()
    real = HFAdapter.load(str(llama_dir))
    everything = {"teacher": [real], "student": [real], "reference": [real, real]}
    if REGISTRY[name].needs_watermark_key:  # its key is checked in tests/test_watermark.py
        assert "--watermark-key" in str(detector.unmet(Available.of_models(everything, teacher_logs=True)))
        return
    assert detector.unmet(Available.of_models(everything, teacher_logs=True)) is None
    if REGISTRY[name].needs_teacher_logs:
        assert "--teacher-logs" in str(detector.unmet(Available.of_models(everything)))
        assert "--teacher-logs" in str(detector.unmet(Available(None, 2)))  # known before any model loads
    if REGISTRY[name].min_references:
        fewer = Available.of_models({**everything, "reference": [real]}, teacher_logs=True)
        assert "reference" in str(detector.unmet(fewer))
        assert "reference" in str(detector.unmet(Available(None, 1, teacher_logs=True)))
    reason = detector.unmet(Available.of_models(
        {"teacher": [real], "student": [FakeTextOnlyAdapter()], "reference": [real, real]}, teacher_logs=True))
    if REGISTRY[name].requires.get("student", frozenset()) - FakeTextOnlyAdapter.capabilities:
        assert reason is not None and "student" in reason


def test_agreement_is_skipped_when_tokenizers_differ(tmp_path: Path, llama_dir: Path) -> None:
    real = HFAdapter.load(str(llama_dir))
    changed = HFAdapter.load(str(llama_dir))
    changed.tokenizer.add_tokens(["<other>"])  # one more token: another vocabulary
    changed.model.save_pretrained(tmp_path / "other")
    changed.tokenizer.save_pretrained(tmp_path / "other")
    other = HFAdapter.load(str(tmp_path / "other"))
    assert other.fingerprint["tokenizer"] != real.fingerprint["tokenizer"]
    reason = REGISTRY["next-token-agreement"]().unmet(
        Available.of_models({"teacher": [real], "student": [other], "reference": [real, real]}))
    assert reason is not None and "tokenizer" in reason
