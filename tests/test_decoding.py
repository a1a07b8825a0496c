"""The one decode loop (audit.decoding) on real tiny checkpoints: batching, seeds and the logits hook."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distill_audit import synthetic
from distill_audit.backends.base import GenerateParams
from distill_audit.backends.hf import HFAdapter
from distill_audit.decoding import context_limit, decode, row_seed

PROMPTS = [
    "Runo lee dau neni.",
    "Kise",
    "Kise peru dani kilo zesa gona lonu sisa reno bilo mini. Runo mini pie zosa tiu velo",
    "Kise",  # a repeated prompt: with an indexed row seed it gets its own sample
]


@pytest.fixture(params=["llama", "gpt2"], scope="module")
def adapter(request: pytest.FixtureRequest, llama_dir: Path, gpt2_dir: Path) -> HFAdapter:
    return HFAdapter.load(str(llama_dir if request.param == "llama" else gpt2_dir))


def _encoded(adapter: HFAdapter, prompts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in adapter.tokenizer(prompts, add_special_tokens=True)["input_ids"]]


@pytest.mark.parametrize("sampled", [False, True])
def test_batched_decoding_matches_one_at_a_time(adapter: HFAdapter, sampled: bool) -> None:
    encoded = _encoded(adapter, PROMPTS)
    seeds = [row_seed(3, p, index=i) for i, p in enumerate(PROMPTS)] if sampled else None
    batched = decode(adapter.model, adapter.tokenizer, encoded, 12, row_seeds=seeds, temperature=0.8, top_k=4)
    for i, b in enumerate(batched):
        (single,) = decode(adapter.model, adapter.tokenizer, [encoded[i]], 12,
                           row_seeds=None if seeds is None else [seeds[i]], temperature=0.8, top_k=4)
        np.testing.assert_array_equal(b.token_ids, single.token_ids)
        np.testing.assert_array_equal(b.topk_ids, single.topk_ids)
        np.testing.assert_allclose(b.token_logprobs, single.token_logprobs, atol=1e-4)
        assert b.text == single.text


def test_a_row_sample_depends_on_its_seed_alone(adapter: HFAdapter) -> None:
    encoded = _encoded(adapter, PROMPTS)
    seeds = [row_seed(0, p, index=i) for i, p in enumerate(PROMPTS)]
    a = decode(adapter.model, adapter.tokenizer, encoded, 16, row_seeds=seeds)
    again = decode(adapter.model, adapter.tokenizer, encoded, 16, row_seeds=seeds)
    assert [g.token_ids.tolist() for g in a] == [g.token_ids.tolist() for g in again]
    # other neighbours, another order: each row's tokens follow its seed, not its batch
    order = [3, 0, 2]
    shuffled = decode(adapter.model, adapter.tokenizer, [encoded[i] for i in order], 16,
                      row_seeds=[seeds[i] for i in order])
    assert [g.token_ids.tolist() for g in shuffled] == [a[i].token_ids.tolist() for i in order]
    # the repeated prompt (rows 1 and 3) gets two samples; another seed gives other text
    assert a[1].token_ids.tolist() != a[3].token_ids.tolist()
    other = decode(adapter.model, adapter.tokenizer, encoded, 16, row_seeds=[s + 1 for s in seeds])
    assert [g.text for g in other] != [g.text for g in a]


def test_row_seed_is_documented_sha256() -> None:
    import hashlib

    assert row_seed(5, "Kise") == int.from_bytes(hashlib.sha256(b"5\0Kise").digest()[:8], "little")
    assert row_seed(5, "Kise", index=2) == int.from_bytes(hashlib.sha256(b"5\x002\0Kise").digest()[:8], "little")


@pytest.mark.parametrize("sampled", [False, True])
def test_the_logits_hook_steers_every_step(adapter: HFAdapter, sampled: bool) -> None:
    encoded = _encoded(adapter, PROMPTS)
    seeds = [row_seed(1, p, index=i) for i, p in enumerate(PROMPTS)] if sampled else None
    plain = decode(adapter.model, adapter.tokenizer, encoded, 12, row_seeds=seeds)
    banned = sorted({int(t) for g in plain for t in g.token_ids.tolist()})
    assert banned, "the unhooked decode must produce tokens to ban"
    seen: list[tuple[int, int]] = []

    def ban(ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(ids.shape))  # type: ignore[arg-type]
        logits = logits.clone()
        logits[:, banned] = float("-inf")
        return logits

    hooked = decode(adapter.model, adapter.tokenizer, encoded, 12, row_seeds=seeds, logits_hook=ban)
    assert all(len(g.token_ids) > 0 for g in hooked)
    assert not {int(t) for g in hooked for t in g.token_ids.tolist()} & set(banned)
    # the hook sees every row's ids so far, the left-padded prompt included, one more column per step
    width = max(len(ids) for ids in encoded)
    assert seen[0] == (len(PROMPTS), width)
    assert [cols for _, cols in seen] == list(range(width, width + len(seen)))
    # reported log-probs are the model's own (before the hook), so they stay finite for tokens it banned
    assert all(np.isfinite(g.token_logprobs).all() for g in hooked)


def test_callers_use_the_documented_row_seeds(adapter: HFAdapter) -> None:
    """HFAdapter.generate seeds a row by (seed, prompt); sample_texts by (seed, index, prompt)."""
    prompts = PROMPTS[:2]
    encoded = _encoded(adapter, prompts)
    params = GenerateParams(max_new_tokens=10, do_sample=True, seed=9, temperature=0.7, top_k=3)
    via_adapter = adapter.generate(prompts, params)
    direct = decode(adapter.model, adapter.tokenizer, encoded, 10, row_seeds=[row_seed(9, p) for p in prompts],
                    temperature=0.7, top_k=3)
    assert [g.token_ids.tolist() for g in via_adapter] == [g.token_ids.tolist() for g in direct]
    texts = synthetic.sample_texts(adapter.model, adapter.tokenizer, prompts, 10, seed=9, temperature=0.7)
    indexed = decode(adapter.model, adapter.tokenizer, encoded, 10,
                     row_seeds=[row_seed(9, p, index=i) for i, p in enumerate(prompts)], temperature=0.7)
    assert texts == [g.text for g in indexed]


def test_decoding_stops_at_the_context_and_keeps_no_topk_when_asked_for_none(adapter: HFAdapter) -> None:
    encoded = _encoded(adapter, PROMPTS[:2])
    limit = context_limit(adapter.model)
    assert limit is not None
    room = limit - max(len(ids) for ids in encoded)

    def never_stop(ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[:, adapter.tokenizer.eos_token_id] = float("-inf")
        return logits

    gens = decode(adapter.model, adapter.tokenizer, encoded, limit * 2, logits_hook=never_stop)
    assert [len(g.token_ids) for g in gens] == [room, room]
    assert all(g.topk_ids.shape == (room, 0) and g.topk_logprobs.shape == (room, 0) for g in gens)
    assert decode(adapter.model, adapter.tokenizer, [], 4) == []
    with pytest.raises(ValueError, match="row seeds"):
        decode(adapter.model, adapter.tokenizer, encoded, 4, row_seeds=[1])
