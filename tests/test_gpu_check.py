"""bench/gpu_check.py, the prepared GPU check, runs end to end as a CPU dry run (tiny model, same code path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, timeout=1800, env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CPU dry run: no GPU figures" in proc.stdout
    result = json.loads(out.read_text())
    assert (tmp_path / "x.txt").read_text().splitlines() == result["summary"]
    assert result["cpu_dry_run"] is True and result["label"] == "CPU dry run: no GPU figures"
    assert result["exit_code"] == 0 and "error" not in result
    assert result["passed"] is True
    assert result["checks"] == {"score_engine_packed": True, "score_one_padded_batch": True, "greedy_generation": True}
    eq = result["equality"]
    for name in ("score_engine_packed", "score_one_padded_batch"):
        stats = eq[name]["stats"]
        assert eq[name]["passed"] and all(eq[name]["checks"].values())
        assert stats["positions"] > 0 and stats["token_id_mismatches"] == 0
        assert stats["max_abs_logprob_diff"] <= result["tolerances"]["score_max_abs_nats"]
    gen = eq["greedy_generation"]
    assert gen["passed"] and gen["stats"]["rows"] == gen["prompts"] > 0
    assert gen["stats"]["generated_tokens_single"] > 0
    # every stage ran and reported its figures
    assert set(result["stages"]) == {"build+load", "matmul peak", "equality", "throughput", "budget sweep"}
    assert result["peak"]["measured_tflops"] > 0 and result["peak"]["nominal_tflops"] is None
    assert result["throughput"]["score"]["tokens_per_s"] > 0
    assert result["throughput"]["generate"]["generated_tokens"] > 0
    assert [r["budget"] for r in result["budget_sweep"]["rows"]] == result["plan"]["budgets"]
    assert result["model"]["config"]["model_type"] == "llama" and result["model"]["dtype"] == "torch.bfloat16"
