"""Shared fixtures: tiny real checkpoints saved to disk, and the demo models built once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill_audit import synthetic

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    synthetic.build_tokenizer(synthetic.Grammar(), path)
    return path


def _save_untrained(tokenizer_dir: Path, out: Path, arch: str, seed: int) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = synthetic.new_model(tok, synthetic.TinyConfig(arch=arch, context=64), seed=seed)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A randomly initialised tiny Llama (RoPE), saved with save_pretrained as safetensors."""
    return _save_untrained(tokenizer_dir, tmp_path_factory.mktemp("llama"), "llama", seed=0)


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A randomly initialised tiny GPT-2 (learned absolute positions): left padding must fix position ids."""
    return _save_untrained(tokenizer_dir, tmp_path_factory.mktemp("gpt2"), "gpt2", seed=1)


def cli(*args: str, cwd: Path | None = None, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """Run the installed command line for real, as a user would."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "distill_audit", *args],
        capture_output=True, text=True, cwd=cwd or REPO, timeout=timeout, env=env,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Assert the CLI failed the way a user must see it: exit ``code``, one error line holding ``needles``."""
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("distill-audit: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """`distill-audit demo`, run once for the session: its output, its results and its models."""
    root = tmp_path_factory.mktemp("demo")
    cache, out = root / "cache", root / "out"
    proc = cli("demo", "--out", str(out), "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    models = cache / "demo-models-v3"
    return {
        "proc": proc,
        "out": out,
        "cache": cache,
        "models": models,
        "logs": models / "teacher-logs.jsonl",
        "distilled": json.loads((out / "distilled" / "result.json").read_text()),
        "control": json.loads((out / "control" / "result.json").read_text()),
    }


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
