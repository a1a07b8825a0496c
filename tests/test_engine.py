"""The engine: batching under a token budget, order restored, cache, out-of-memory back-off."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch

from distill_audit.backends.base import AdapterWrapper, GenerateParams, ScoredText
from distill_audit.backends.hf import HFAdapter
from distill_audit.cache import InferenceCache
from distill_audit.engine import Engine, pack_batches, pack_shared_batches
from distill_audit.errors import ProbeTooLongError

TEXTS = [("Runo lee dau neni. " * (i % 5 + 1)).strip() for i in range(23)] + ["Kise", "Kise"]


def test_pack_batches_respects_the_budget_and_covers_every_item() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=300).tolist()
    batches = pack_batches(lengths, token_budget=1000)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * width <= 1000
    assert pack_batches([5000, 3], token_budget=100) == [[0], [1]]  # an item over budget still runs alone


PROBES = [f"Question {i}: Kise peru dani kilo zesa gona lonu sisa reno bilo mini, runo {i}?" for i in range(6)]
ANSWERS = ["Runo lee dau neni.", "Vunu tea loa", "Kise peru suni roso ria dani kilo", "Zesa", "mini pie zosa tiu"]
READINGS = [p + " " + a for p in PROBES for a in ANSWERS]


def test_pack_shared_batches_keeps_a_probes_readings_together() -> None:
    lengths = [len(t) // 3 for t in READINGS]
    batches = pack_shared_batches(READINGS, lengths, token_budget=120)
    assert sorted(i for b in batches for i in b) == list(range(len(READINGS)))
    probe_of = {i: i // len(ANSWERS) for i in range(len(READINGS))}
    split = sum(len({probe_of[i] for i in b}) for b in batches) - len(PROBES)
    assert split <= len(batches)  # a probe's readings are split at most at each batch boundary
    assert max(len(b) for b in batches) > 120 // max(lengths)  # more rows than whole texts would allow
    assert pack_shared_batches(["a" * 500, "b"], [400, 1], token_budget=100) == [[0], [1]]


def test_the_engine_runs_a_shared_beginning_once_with_the_same_numbers(llama_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = HFAdapter.load(str(llama_dir))
    fed: list[int] = []
    adapter.model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(int(kwargs["input_ids"].numel())), with_kwargs=True)
    shared = Engine(InferenceCache(None), token_budget=256).score(adapter, READINGS)
    tokens_shared = sum(fed)
    fed.clear()
    monkeypatch.setattr(HFAdapter, "shares_prefixes", property(lambda self: False))
    whole = Engine(InferenceCache(None), token_budget=256).score(adapter, READINGS)
    tokens_whole = sum(fed)
    assert tokens_shared < 0.7 * tokens_whole
    for a, b in zip(shared, whole):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_allclose(a.target_logprob, b.target_logprob, atol=2e-4, equal_nan=True)
        np.testing.assert_allclose(a.entropy, b.entropy, atol=2e-4, equal_nan=True)


def test_results_come_back_in_the_callers_order(llama_dir: Path) -> None:
    adapter = HFAdapter.load(str(llama_dir))
    engine = Engine(InferenceCache(None), token_budget=16)  # the texts share beginnings: a small budget, several batches
    results = engine.score(adapter, TEXTS)
    for text, r in zip(TEXTS, results):
        (single,) = adapter.score([text], engine.score_top_k)
        np.testing.assert_array_equal(r.token_ids, single.token_ids)
        np.testing.assert_allclose(r.target_logprob, single.target_logprob, atol=1e-4, equal_nan=True)
    assert engine.stats.batches > 1
    assert engine.stats.computed == len(set(TEXTS))  # the duplicate is computed once


def test_second_run_is_served_from_disk_with_no_forward_pass(tmp_path: Path, llama_dir: Path) -> None:
    adapter = HFAdapter.load(str(llama_dir))
    first = Engine(InferenceCache(tmp_path / "c.sqlite"))
    a = first.score(adapter, TEXTS)
    g = first.generate(adapter, TEXTS[:3], GenerateParams(max_new_tokens=5))
    first.cache.close()
    passes = adapter.forward_passes
    second = Engine(InferenceCache(tmp_path / "c.sqlite"))
    b = second.score(adapter, TEXTS)
    h = second.generate(adapter, TEXTS[:3], GenerateParams(max_new_tokens=5))
    assert adapter.forward_passes == passes
    assert second.stats.computed == 0 and second.stats.cache_hits == len(TEXTS) + 3
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.topk_ids, y.topk_ids)
        np.testing.assert_array_equal(x.target_logprob, y.target_logprob)
    assert [x.text for x in g] == [y.text for y in h]


def test_cache_keys_depend_on_parameters(tmp_path: Path, llama_dir: Path) -> None:
    adapter = HFAdapter.load(str(llama_dir))
    engine = Engine(InferenceCache(tmp_path / "c.sqlite"))
    engine.generate(adapter, TEXTS[:2], GenerateParams(max_new_tokens=4))
    engine.generate(adapter, TEXTS[:2], GenerateParams(max_new_tokens=4, do_sample=True, seed=1))
    assert engine.stats.computed == 4 and len(engine.cache) == 4


def test_no_cache_keeps_nothing_on_disk(tmp_path: Path, llama_dir: Path) -> None:
    adapter = HFAdapter.load(str(llama_dir))
    engine = Engine(InferenceCache(None))
    engine.score(adapter, TEXTS[:3])
    assert list(tmp_path.iterdir()) == []


class FakeOOMAdapter(AdapterWrapper):
    """A fake (no GPU here to run out of memory on): wraps a real adapter and raises CUDA's
    out-of-memory error whenever a batch exceeds ``limit`` padded tokens."""

    def __init__(self, inner: HFAdapter, limit: int):
        super().__init__(inner)
        self.limit, self.failures = limit, 0

    def score(self, texts: Sequence[str], top_k: int, on_result: Any = None) -> list[ScoredText]:
        if len(texts) * max(self.count_tokens(texts)) > self.limit:
            self.failures += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return self.inner.score(texts, top_k)


def test_out_of_memory_halves_the_batch_and_still_answers_everything(llama_dir: Path) -> None:
    real = HFAdapter.load(str(llama_dir))
    fake = FakeOOMAdapter(real, limit=60)
    engine = Engine(InferenceCache(None), token_budget=4096)
    results = engine.score(fake, TEXTS)  # type: ignore[arg-type]
    assert fake.failures > 0 and engine.stats.oom_retries == fake.failures
    assert engine.token_budget < 4096
    expected = Engine(InferenceCache(None)).score(real, TEXTS)
    for x, y in zip(results, expected):
        np.testing.assert_allclose(x.target_logprob, y.target_logprob, atol=1e-4, equal_nan=True)


def test_other_errors_are_not_mistaken_for_out_of_memory(llama_dir: Path) -> None:
    real = HFAdapter.load(str(llama_dir))

    class Broken(FakeOOMAdapter):
        def score(self, texts: Sequence[str], top_k: int, on_result: Any = None) -> list[ScoredText]:
            raise ValueError("a bug, not memory")

    with pytest.raises(ValueError, match="a bug"):
        Engine(InferenceCache(None)).score(Broken(real, 0), TEXTS)  # type: ignore[arg-type]


def test_inputs_longer_than_the_context_are_refused(llama_dir: Path) -> None:
    adapter = HFAdapter.load(str(llama_dir))  # context 64
    engine = Engine(InferenceCache(None))
    with pytest.raises(ProbeTooLongError, match="longer than its context of 64"):
        engine.generate(adapter, ["Kise " * 50], GenerateParams(max_new_tokens=8))
    with pytest.raises(ProbeTooLongError):
        engine.generate(adapter, ["Kise " * 30], GenerateParams(max_new_tokens=40))  # prompt fits, output does not


def test_the_default_budget_follows_the_device_and_the_dtype() -> None:
    from distill_audit.engine import default_token_budget

    assert default_token_budget(["cpu"]) == default_token_budget(["cpu"], ["float32"]) == 1024
    assert default_token_budget(["cpu", "cpu"], ["bfloat16", "bfloat16"]) == 4096
    assert default_token_budget(["cpu", "cpu"], ["bfloat16", "float32"]) == 1024  # a float32 model sets the pace
    assert default_token_budget(["cuda:0"], ["float32"]) == 16384
