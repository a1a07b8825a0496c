"""bench/audit_cost.py runs end to end on a tiny model (the same code path as on SmolLM2-135M, with a short probe
file): it builds the noised panel once, audits cold then from the cache, and reports the account of both runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_audit_cost_on_a_tiny_model(tmp_path: Path, llama_dir: Path) -> None:
    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join(f"Kise peru dani {w}" for w in ("kilo", "zesa", "gona", "lonu", "sisa", "reno")) + "\n")
    root = tmp_path / "root"
    out = tmp_path / "figures.json"
    command = [sys.executable, str(REPO / "bench" / "audit_cost.py"), "--root", str(root), "--model", str(llama_dir),
               "--threads", "1", "--json", str(out), "--", "--probes", str(probes), "--detector",
               "teacher-text-likelihood", "--detector", "weight-lineage", "--detector", "representation-similarity"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    cold, cached = figures["runs"]["cold"], figures["runs"]["cached"]
    assert cold["total"]["computed"] > 0 and cold["total"]["forward_passes"] > 0
    assert cached["total"]["computed"] == 0 and cached["total"]["forward_passes"] == 0  # everything from the cache
    assert cached["total"]["cache_hits"] == cached["total"]["requests"] <= cold["total"]["requests"]
    assert figures["verdicts_agree"]
    assert {"teacher-text-likelihood", "weight-lineage"} <= set(cold["detectors_run"])
    assert "cold" in proc.stdout and "x the" in proc.stdout
    # the student and the references: the teacher's weights plus seeded noise, a little for the student, more for
    # the references, each with the teacher's tokenizer
    from safetensors.numpy import load_file

    def weights(path: Path) -> dict[str, np.ndarray]:
        return load_file(str(next(path.glob("*.safetensors"))))

    teacher = weights(llama_dir)
    name = next(k for k, v in teacher.items() if v.ndim == 2 and "mlp" in k)
    spread = float(teacher[name].std())
    for model, sigma in (("student", 0.02), ("reference-1", 0.08)):
        copy = weights(root / "models" / model)
        noise = float((copy[name] - teacher[name]).std())
        assert 0.7 * sigma * spread < noise < 1.3 * sigma * spread
        assert (root / "models" / model / "tokenizer.json").exists()
    assert not np.array_equal(weights(root / "models" / "reference-1")[name], weights(root / "models" / "reference-2")[name])
