"""The synthetic language's tokenizers and the seeded teacher sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill_audit import synthetic

# Ids of the default tokenizer (byte-level BPE on Grammar(seed=0)) for two fixed sentences, recorded
# before tokenizer kinds were added: the demo's cached models depend on them staying the same.
_SENTENCES = [
    "Vunu tea peu tola mini bone rane daa zosa gonu zise gino loa lile nuri nunu zise dasi tine.",
    "Lasi lili suni pune posi zesa peu zusa gona lui susa reno.",
]
_BPE_IDS = [
    [1, 334, 381, 344, 437, 407, 374, 321, 392, 401, 342, 408, 428, 341, 312, 355, 402, 408, 379, 382, 16],
    [1, 330, 322, 387, 370, 377, 376, 344, 346, 390, 351, 455, 433, 16],
]
_BPE_OUT_OF_LANGUAGE = [1, 74, 71, 78, 301, 223, 89, 81, 84, 78, 70, 16, 223, 60, 90, 3]  # "hello world. Zx!"


def _load(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    grammar = synthetic.Grammar(seed=0)
    out = {}
    for name, kwargs in (("default", {}), ("bpe", {"kind": "bpe"}), ("unigram", {"kind": "unigram"})):
        path = tmp_path_factory.mktemp(f"tok-{name}")
        synthetic.build_tokenizer(grammar, path, **kwargs)
        out[name] = _load(path)
    return out


def test_default_tokenizer_unchanged(tokenizers: dict[str, object]) -> None:
    assert synthetic.Grammar(seed=0).sentences(2, seed=123) == _SENTENCES
    for name in ("default", "bpe"):
        tok = tokenizers[name]
        assert len(tok) == 457  # BPE trained to at most 512; the language saturates it at 457
        assert [tok(s)["input_ids"] for s in _SENTENCES] == _BPE_IDS
        assert tok("hello world. Zx!")["input_ids"] == _BPE_OUT_OF_LANGUAGE


def test_unigram_tokenizer_loads_and_differs(tokenizers: dict[str, object]) -> None:
    bpe, uni = tokenizers["bpe"], tokenizers["unigram"]
    assert uni.is_fast
    assert len(uni) == 192
    assert (uni.bos_token, uni.eos_token, uni.pad_token) == ("<s>", "</s>", "<pad>")
    for s in _SENTENCES:
        ids = uni(s)["input_ids"]
        assert ids[0] == uni.bos_token_id  # the same "<s> $A" template as the BPE
        assert ids != bpe(s)["input_ids"]
    text = " ".join(_SENTENCES)
    assert synthetic.encode_corpus(uni, text) != synthetic.encode_corpus(bpe, text)


@pytest.mark.parametrize("kind", synthetic.TOKENIZER_KINDS)
@pytest.mark.parametrize("grammar", [synthetic.Grammar(seed=0), synthetic.Grammar(seed=22, n_words=128, n_topics=6,
                                                                                   n_successors=4)])
def test_tokenizers_round_trip_the_language(tmp_path: Path, kind: str, grammar: synthetic.Grammar) -> None:
    synthetic.build_tokenizer(grammar, tmp_path, kind=kind)
    tok = _load(tmp_path)
    sentences = grammar.sentences(200, seed=3)
    for s in sentences + [grammar.text(5, seed=4)]:
        assert tok.decode(tok(s)["input_ids"], skip_special_tokens=True) == s


@pytest.mark.parametrize("kind", synthetic.TOKENIZER_KINDS)
def test_tokenizers_are_deterministic(tmp_path: Path, kind: str) -> None:
    grammar = synthetic.Grammar(seed=22, n_words=128, n_topics=6, n_successors=4)
    synthetic.build_tokenizer(grammar, tmp_path / "a", kind=kind)
    synthetic.build_tokenizer(grammar, tmp_path / "b", kind=kind)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_unknown_tokenizer_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        synthetic.build_tokenizer(synthetic.Grammar(), tmp_path, kind="wordpiece")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny_model(request: pytest.FixtureRequest, tokenizers: dict[str, object]) -> tuple[object, object]:
    tok = tokenizers["bpe"]
    model = synthetic.new_model(tok, synthetic.TinyConfig(arch=request.param, context=64), seed=0)
    model.eval()
    return model, tok


def test_sample_texts_is_seeded(tiny_model: tuple[object, object]) -> None:
    model, tok = tiny_model
    prompts = synthetic.Grammar(seed=0).prompts(12, seed=5)
    a = synthetic.sample_texts(model, tok, prompts, max_new_tokens=8, seed=1)
    assert len(a) == len(prompts) and all(isinstance(x, str) for x in a)
    assert sum(bool(x) for x in a) >= len(a) // 2  # an untrained model may pick </s> at once, rarely
    torch.manual_seed(12345)  # the global RNG plays no part
    assert synthetic.sample_texts(model, tok, prompts, max_new_tokens=8, seed=1) == a
    # Nor does batch composition: each prompt has its own noise.
    assert synthetic.sample_texts(model, tok, prompts, max_new_tokens=8, seed=1, batch_size=5) == a
    b = synthetic.sample_texts(model, tok, prompts, max_new_tokens=8, seed=2)
    assert b != a
    assert sum(x != y for x, y in zip(a, b)) >= len(prompts) // 2
    # The same prompt twice gets two different samples.
    twice = synthetic.sample_texts(model, tok, [prompts[0], prompts[0]], max_new_tokens=8, seed=1)
    assert twice[0] != twice[1]


def test_sample_texts_greedy_matches_an_unpadded_loop(tiny_model: tuple[object, object]) -> None:
    model, tok = tiny_model
    prompts = synthetic.Grammar(seed=0).prompts(6, seed=5)  # 2 to 5 words: left padding is exercised
    greedy = synthetic.sample_texts(model, tok, prompts, max_new_tokens=6, seed=0, temperature=0)
    for prompt, completion in zip(prompts, greedy):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            for _ in range(6):
                ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert tok.decode(ids[0], skip_special_tokens=True) == prompt + completion


def test_sample_texts_stays_within_context(tiny_model: tuple[object, object]) -> None:
    model, tok = tiny_model
    positions: list[int] = []

    def record(module: object, args: tuple, kwargs: dict) -> None:
        positions.append(int(kwargs["position_ids"].max()))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        synthetic.sample_texts(model, tok, ["Vunu tea", "Vunu tea peu tola"], max_new_tokens=500, seed=0)
    finally:
        handle.remove()
    prompt_width = len(tok("Vunu tea peu tola")["input_ids"])
    assert len(positions) == 64 - prompt_width  # generation stops at the context length
    assert max(positions) <= 63
