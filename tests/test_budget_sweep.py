"""bench/budget_sweep.py end to end on a tiny checkpoint: every budget is run and printed with its ratio."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_the_sweep_runs_every_budget_and_prints_ratios(llama_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from bench import budget_sweep

    probes = tmp_path / "probes.txt"  # short enough for the tiny model's 64 positions with an answer
    probes.write_text("\n".join(["Kise peru", "Runo lee", "Vunu tea", "Dau neni", "Lile dani", "Zosa tiu"] * 3) + "\n")
    budget_sweep.main(["--model", str(llama_dir), "--cache", str(tmp_path), "--dtype", "float32", "--probes", "3",
                       "--probe-set", str(probes),
                       "--budgets", "64,256", "--generate-budgets", "128,512", "--threads", "1"])
    out = capsys.readouterr().out
    assert "21 texts to read (3 probes x 7 answers of 24 tokens)" in out
    score = [line for line in out.splitlines() if "score budget" in line]
    generate = [line for line in out.splitlines() if "generate budget" in line]
    assert len(score) == 2 and len(generate) == 2
    assert score[0].endswith("1.00x the first budget") and generate[0].endswith("1.00x the first budget")
