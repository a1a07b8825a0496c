"""One conformance test over every backend: each honours the whole ModelAdapter contract.

Real parts only: a tiny transformers checkpoint saved to disk, the same model behind a real OpenAI-style HTTP
server on loopback (tests/openai_server.py), a transcript file of its answers, and a --teacher-access wrapper.
Each adapter must give what it declares in the declared shapes, refuse what it does not declare with a
CapabilityError (never an AttributeError), report each answer through ``on_result`` and close cleanly.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from distill_audit.backends.base import (
    AdapterWrapper,
    Capability,
    GenerateParams,
    Generation,
    ModelAdapter,
    ScoredText,
)
from distill_audit.backends.hf import HFAdapter
from distill_audit.backends.openai_compat import OpenAIAdapter, RemoteModel
from distill_audit.backends.remote import TokenMap
from distill_audit.backends.restrict import ACCESS_MODES, RestrictedAdapter, restrict
from distill_audit.backends.transcript import TranscriptAdapter
from distill_audit.errors import CapabilityError
from tests.test_backend_http import FAST, serve

PROMPTS = ["the cat sat on", "a dog ran to the"]
TEXTS = ["the cat sat on the mat .", "a dog ran to the park and back ."]


def _members() -> list[str]:
    """Every public member the contract declares (methods and properties), besides ``name``."""
    return sorted(n for n, v in vars(ModelAdapter).items()
                  if not n.startswith("_") and (callable(v) or isinstance(v, property)))


@pytest.fixture(scope="module")
def adapters(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModelAdapter]]:
    local = HFAdapter.load(str(llama_dir), name="local")
    answers = local.generate(PROMPTS, GenerateParams(max_new_tokens=6, top_k=3))
    path = tmp_path_factory.mktemp("transcript") / "teacher.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": g.text}) + "\n" for p, g in zip(PROMPTS, answers)))
    transcript = TranscriptAdapter.load(path, name="logged", token_map=TokenMap.load(str(llama_dir), "--teacher-tokenizer"))
    with serve(llama_dir) as served:
        remote = OpenAIAdapter.connect(RemoteModel(served.url, "tiny", tokenizer=str(llama_dir)), "remote",
                                       FAST)
        gray = restrict(HFAdapter.load(str(llama_dir), name="gray"), "gray")
        yield {"hf": local, "openai-compatible": remote, "transcript": transcript, "gray-box": gray}
        remote.close()


KINDS = ["hf", "openai-compatible", "transcript", "gray-box"]


@pytest.mark.parametrize("kind", KINDS)
def test_identity_and_declared_members(adapters: dict[str, ModelAdapter], kind: str) -> None:
    a = adapters[kind]
    assert isinstance(a, ModelAdapter) and isinstance(a.name, str) and a.name
    assert a.capabilities <= frozenset(Capability) and Capability.GENERATE in a.capabilities
    assert len(a.fingerprint["model"]) == 64 and int(a.fingerprint["model"], 16) >= 0
    json.dumps(a.runtime)  # the result records it as it is
    assert isinstance(a.live, bool) and isinstance(a.streams_results, bool)
    assert a.context_length is None or a.context_length > 0
    assert isinstance(a.n_layers, int) and a.n_layers >= 0
    counts = a.count_tokens(TEXTS)
    assert len(counts) == 2 and all(isinstance(c, int) and c > 0 for c in counts) and counts[0] < counts[1]
    assert a.local_tokenizer() is not None  # every adapter here was given the model's tokenizer
    logged = a.logged_prompts
    assert (logged == tuple(PROMPTS)) if kind == "transcript" else logged is None
    assert a.repeated_prompts == 0
    turn = [{"role": "user", "content": "hi"}]
    assert a.chat_prompt(turn) is None or isinstance(a.chat_prompt(turn), str)
    assert a.fixed_format in (None, "chat", "plain")


@pytest.mark.parametrize("kind", KINDS)
def test_declared_capabilities_answer_and_the_rest_refuse(adapters: dict[str, ModelAdapter], kind: str) -> None:
    a = adapters[kind]
    calls: dict[Capability, Any] = {
        Capability.SCORE: lambda: a.score(TEXTS, 3),
        Capability.GENERATE: lambda: a.generate(PROMPTS, GenerateParams(max_new_tokens=4, top_k=3)),
        Capability.HIDDEN_STATES: lambda: a.hidden_states(TEXTS, [0, -1]),
        Capability.WEIGHTS: lambda: a.mlp_weights(),
    }
    for cap, call in calls.items():
        if cap not in a.capabilities:
            with pytest.raises(CapabilityError):
                call()
            continue
        out = call()
        if cap is Capability.SCORE:
            assert [type(s) for s in out] == [ScoredText, ScoredText]
            for s, n in zip(out, a.count_tokens(TEXTS)):
                assert s.n_tokens == n and s.offsets.shape == (n, 2)
                lp = s.target_logprob[1:]
                assert np.isfinite(lp).all() and (lp <= 0).all()
                if Capability.SCORE_TOPK in a.capabilities:
                    assert s.topk_ids.shape[0] == n and s.topk_logprobs.shape == s.topk_ids.shape
        elif cap is Capability.GENERATE:
            assert [type(g) for g in out] == [Generation, Generation]
            for g in out:
                assert isinstance(g.text, str) and 0 < len(g.token_ids) <= 4
                if Capability.GENERATE_TOPK in a.capabilities:
                    assert g.topk_ids.shape == (len(g.token_ids), 3)
                    assert np.isfinite(g.topk_logprobs).all() and (g.topk_logprobs <= 0).all()
        elif cap is Capability.HIDDEN_STATES:
            for h, n in zip(out, a.count_tokens(TEXTS)):
                assert h.dtype == np.float32 and h.shape[:2] == (2, n)
        else:
            assert out and all(w.ndim == 2 for w in out) and len(out) == a.n_layers


@pytest.mark.parametrize("kind", KINDS)
def test_every_answer_is_reported_as_it_arrives(adapters: dict[str, ModelAdapter], kind: str) -> None:
    a = adapters[kind]
    seen: dict[int, Generation] = {}
    out = a.generate(PROMPTS, GenerateParams(max_new_tokens=4, top_k=1), on_result=seen.__setitem__)
    assert sorted(seen) == [0, 1] and all(seen[i] is out[i] for i in seen)
    if Capability.SCORE in a.capabilities:
        scored: dict[int, ScoredText] = {}
        got = a.score(TEXTS, 3, on_result=scored.__setitem__)
        assert sorted(scored) == [0, 1] and all(scored[i] is got[i] for i in scored)


def test_the_gray_wrapper_gives_less_but_forwards_the_rest(adapters: dict[str, ModelAdapter]) -> None:
    gray, full = adapters["gray-box"], adapters["hf"]
    assert isinstance(gray, RestrictedAdapter)
    assert gray.capabilities == ACCESS_MODES["gray"] and gray.runtime["access"] == "gray-box"
    assert gray.fingerprint == full.fingerprint and gray.n_layers == full.n_layers > 0
    assert gray.local_tokenizer() is not None and gray.count_tokens(TEXTS) == full.count_tokens(TEXTS)


def test_the_wrapper_forwards_every_member_of_the_contract() -> None:
    """A member added to ModelAdapter must be forwarded by AdapterWrapper, or a wrapped model would silently
    fall back to the base class's default (e.g. lose its tokenizer or its chat template)."""
    missing = [n for n in _members() if vars(AdapterWrapper).get(n) is None]
    assert missing == []
    assert _members()  # the contract is not empty: the test above tests something
    abstract = {n for n, v in vars(ModelAdapter).items() if getattr(v, "__isabstractmethod__", False)}
    assert abstract == {"capabilities", "fingerprint", "count_tokens"}
    for kind in (HFAdapter, OpenAIAdapter, TranscriptAdapter, RestrictedAdapter):
        assert issubclass(kind, ModelAdapter) and not inspect.isabstract(kind)
