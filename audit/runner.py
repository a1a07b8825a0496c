"""One audit, start to finish: plan -> load -> infer -> detect -> aggregate -> result document."""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import sys
import time
from typing import Any, Callable, Sequence

from audit import __version__
from audit.aggregate import verdict
from audit.backends.base import ModelAdapter
from audit.backends.hf import HFAdapter, LoadOptions
from audit.cache import InferenceCache
from audit.engine import Engine, default_token_budget
from audit.errors import CapabilityError, UsageError
from audit.probes import load_probe_set
from audit.result import SCHEMA_VERSION
from audit.spec import AuditSpec
from detectors import REGISTRY, Detector, DetectorContext, ModelHandle

log = logging.getLogger(__name__)
CACHE_FILE = "inference-v1.sqlite"
Loader = Callable[[str, LoadOptions, str], ModelAdapter]


def _load_hf(source: str, options: LoadOptions, name: str) -> ModelAdapter:
    return HFAdapter.load(source, options, name=name)


def select_detectors(names: Sequence[str]) -> list[Detector]:
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UsageError(f"unknown detector {unknown[0]!r}; known: {', '.join(sorted(REGISTRY))}")
    chosen = names or sorted(REGISTRY)
    return [REGISTRY[n]() for n in chosen]


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


def run_audit(
    spec: AuditSpec,
    progress: bool | None = None,
    command: Sequence[str] = (),
    loader: Loader = _load_hf,
) -> dict[str, Any]:
    """Run the audit described by ``spec`` and return the result document (not yet written)."""
    started = time.perf_counter()
    created_at = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    if not 0.0 < spec.alpha < 1.0:
        raise UsageError(f"--alpha must be between 0 and 1, got {spec.alpha}")
    detectors = select_detectors(spec.detectors)
    probe_set = load_probe_set(spec.probes).subsample(spec.n_probes, spec.seed)
    for det in detectors:
        if len(spec.references) < det.min_references:
            raise CapabilityError(
                f"detector {det.name} needs at least {det.min_references} reference model(s) "
                f"(--reference), got {len(spec.references)}"
            )
    warnings: list[str] = []
    if len(spec.references) < 2:
        warnings.append(
            f"Only {len(spec.references)} reference model(s): the panel cannot show whether an independent "
            "model of this class would look as teacher-like; use at least 2, better 4 or more."
        )

    t_load = time.perf_counter()
    teacher = ModelHandle("teacher", "teacher", loader(spec.teacher, spec.load, "teacher"))
    student = ModelHandle("student", "student", loader(spec.student, spec.load, "student"))
    references = tuple(
        ModelHandle("reference", f"reference-{i + 1}", loader(src, spec.load, f"reference-{i + 1}"))
        for i, src in enumerate(spec.references)
    )
    load_seconds = time.perf_counter() - t_load
    if teacher.adapter.fingerprint["model"] == student.adapter.fingerprint["model"]:
        warnings.append("The teacher and the student are the same model (identical fingerprints).")

    cache = InferenceCache(spec.cache_dir / CACHE_FILE if spec.cache_dir else None)
    devices = [str(getattr(h.adapter, "runtime", {}).get("device", "cpu")) for h in (teacher, student, *references)]
    token_budget = spec.token_budget or default_token_budget(devices)
    engine = Engine(cache, token_budget=token_budget, score_top_k=spec.score_top_k, progress=progress)
    ctx = DetectorContext(teacher, student, references, probe_set.prompts, spec.seed, engine)
    by_role = {
        "teacher": [teacher.adapter],
        "student": [student.adapter],
        "reference": [r.adapter for r in references],
    }
    evidence, skipped, detector_seconds = [], [], {}
    try:
        for det in detectors:
            reason = det.unmet_needs(by_role)
            if reason is not None:
                log.warning("skipping %s: %s", det.name, reason)
                skipped.append({"detector": det.name, "reason": reason})
                continue
            t0 = time.perf_counter()
            evidence.append(det.run(ctx))
            detector_seconds[det.name] = round(time.perf_counter() - t0, 3)
    finally:
        cache.close()
    result_verdict = verdict(evidence, spec.alpha, warnings)
    handles = [teacher, student, *references]
    sources = [spec.teacher, spec.student, *spec.references]
    return {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "created_at": created_at,
        "command": list(command),
        "models": [
            {
                "role": h.role,
                "name": h.name,
                "source": src,
                "fingerprint": h.adapter.fingerprint,
                "capabilities": sorted(c.value for c in h.adapter.capabilities),
                "context_length": h.adapter.context_length,
                "runtime": getattr(h.adapter, "runtime", {}),
            }
            for h, src in zip(handles, sources)
        ],
        "probe_sets": [probe_set.to_dict()],
        "evidence": [e.to_dict() for e in evidence],
        "skipped": skipped,
        "verdict": result_verdict.to_dict(),
        "settings": dict(spec.settings(), token_budget=token_budget),
        "environment": environment(),
        "timings": {
            "load_seconds": round(load_seconds, 3),
            "detector_seconds": detector_seconds,
            "total_seconds": round(time.perf_counter() - started, 3),
        },
        "inference": engine.stats.to_dict(),
    }
