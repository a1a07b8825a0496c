"""The remote-model flags of `distill-audit run`, as a user meets them: bad combinations get one line and
exit 2, an unreachable server one line and exit 1, and a transcript teacher audits with its own prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.conftest import one_line_error as _one_line_error


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--teacher", "a", "--teacher-url", "http://127.0.0.1:9/v1", "--student", "b"], ["exactly one of --teacher"]),
        (["--student", "b"], ["exactly one of --teacher, --teacher-url, --teacher-transcript", "none given"]),
        (["--teacher-url", "http://127.0.0.1:9/v1", "--student", "b"], ["--teacher-url needs --teacher-model"]),
        (["--teacher", "a", "--student", "b", "--teacher-tokenizer", "t"], ["a local model has its own"]),
        (["--teacher", "a", "--student", "b", "--reference-url", "http://x/v1", "--reference-url", "http://y/v1",
          "--reference-model", "m"], ["2 URL(s), 1 name(s)"]),
        (["--teacher", "a", "--student", "b", "--teacher-api-key-env", "K"], ["--teacher-api-key-env is for"]),
    ],
)
def test_bad_remote_flag_combinations_are_one_line_usage_errors(tmp_path: Path, args: list[str],
                                                                  needles: list[str]) -> None:
    _one_line_error(cli("run", *args, "--out", str(tmp_path / "out")), 2, *needles)


def test_an_unreachable_server_is_one_line_and_exit_1(tmp_path: Path, llama_dir: Path) -> None:
    proc = cli("run", "--teacher-url", "http://127.0.0.1:9/v1", "--teacher-model", "m", "--student", str(llama_dir),
               "--reference", str(llama_dir), "--reference", str(llama_dir), "--api-retries", "0",
               "--out", str(tmp_path / "out"))
    _one_line_error(proc, 1, "connection refused", "gave up after 1 attempts")
    assert not (tmp_path / "out" / "result.json").exists()


def _transcript(path: Path, n: int) -> Path:
    lines = []
    for i in range(n):
        prompt = f"Kise peru {i}"
        lines.append(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": prompt}],
                                 "response": {"model": "closed-1", "choices": [
                                     {"message": {"role": "assistant", "content": f"It is {i + 1}, then {i + 2}."}}]}}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_transcript_teacher_is_audited_on_its_own_prompts(tmp_path: Path, llama_dir: Path, gpt2_dir: Path) -> None:
    transcript = _transcript(tmp_path / "closed.jsonl", 12)
    common = ["--teacher-transcript", str(transcript), "--student", str(llama_dir), "--reference", str(gpt2_dir),
              "--reference", str(llama_dir), "--no-negative-controls", "--cache-dir", str(tmp_path / "cache")]
    proc = cli("-q", "run", *common, "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["probe_sets"][0]["name"] == "transcript" and result["probe_sets"][0]["n"] == 12
    teacher = result["models"][0]
    assert teacher["source"] == f"transcript {transcript}"
    assert teacher["capabilities"] == ["generate"] and teacher["runtime"]["backend"] == "transcript"
    ran = {e["detector"]: e for e in result["evidence"]}
    assert {"text-word-agreement", "text-edit-similarity", "teacher-text-likelihood"} <= set(ran)
    assert all(e["n"] == 12 for name, e in ran.items() if name.startswith("text-"))
    skipped = {s["detector"]: s["reason"] for s in result["skipped"]}
    assert "generate-topk" in skipped["next-token-agreement"]
    assert (tmp_path / "out" / "report.html").exists()

    # fresh answers cannot be drawn from a transcript
    logs = tmp_path / "logs.jsonl"
    logs.write_text(json.dumps({"prompt": "Kise peru 1", "completion": " 2"}) + "\n")
    _one_line_error(cli("run", *common, "--teacher-logs", str(logs), "--out", str(tmp_path / "o2")), 2,
                    "cannot draw fresh answers", "--teacher-fresh")
    # probes the transcript never answered
    probes = tmp_path / "probes.txt"
    probes.write_text("Kise peru 1\nNever asked\n")
    _one_line_error(cli("run", *common, "--probes", str(probes), "--out", str(tmp_path / "o3")), 2,
                    "transcript")
