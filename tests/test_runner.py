"""The runner's stages: plan (inputs checked before any model loads) -> open models -> execute."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from distill_audit.backends.base import AdapterWrapper, ModelAdapter
from distill_audit.backends.hf import HFAdapter, LoadOptions
from distill_audit.errors import CapabilityError, ModelLoadError
from distill_audit.runner import open_models, plan_audit
from distill_audit.spec import AuditSpec


class _Counted(AdapterWrapper):
    """A real local model that records being closed (the runner must close every model it opened)."""

    closed: list[str] = []

    def close(self) -> None:
        _Counted.closed.append(self.name)
        super().close()


def test_a_model_that_fails_to_load_closes_those_already_open(llama_dir: Path, tmp_path: Path) -> None:
    _Counted.closed = []

    def loader(source: str, options: LoadOptions, name: str) -> ModelAdapter:
        if source == "broken":
            raise ModelLoadError(f"{source}: not a model")
        return _Counted(HFAdapter.load(source, options, name=name))

    spec = AuditSpec(teacher=str(llama_dir), student=str(llama_dir), references=(str(llama_dir), "broken"))
    plan = plan_audit(spec, loader)
    with pytest.raises(ModelLoadError, match="not a model"):
        with open_models(plan, loader):
            pass
    assert _Counted.closed == ["teacher", "student", "reference-1"]
    _Counted.closed = []
    with open_models(plan_audit(dataclasses.replace(spec, references=(str(llama_dir),) * 2), loader), loader) as models:
        assert [h.name for h in models.handles] == ["teacher", "student", "reference-1", "reference-2"]
        assert _Counted.closed == []
    assert _Counted.closed == ["teacher", "student", "reference-1", "reference-2"]


def test_a_chosen_detector_whose_inputs_are_missing_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    loaded: list[str] = []

    def loader(source: str, options: LoadOptions, name: str) -> ModelAdapter:
        loaded.append(name)
        raise AssertionError("no model may load")

    nowhere = str(tmp_path / "nowhere")
    refs = (nowhere, nowhere)
    for detectors, needle in ((("logged-vs-fresh",), "--teacher-logs"),
                              (("watermark-radioactivity",), "--watermark-key"),
                              (("top-k-overlap",), "at least 2 reference model(s) (--reference), got 1")):
        spec = AuditSpec(teacher=nowhere, student=nowhere, references=refs[: 1 if "reference" in needle else 2],
                         detectors=detectors)
        with pytest.raises(CapabilityError, match=r"detector .* cannot run: .*" + needle.replace("(", r"\(")
                           .replace(")", r"\)")):
            plan_audit(spec, loader)
    # left to choose, the runner plans the detectors that can run (weight-lineage needs no reference)
    plan = plan_audit(AuditSpec(teacher=nowhere, student=nowhere), loader)
    assert "weight-lineage" in {d.name for d in plan.detectors} and any("Only 0 reference" in w for w in plan.warnings)
    assert loaded == []
