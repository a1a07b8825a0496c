"""The Hugging Face backend on real tiny checkpoints: batching must not change a single number."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distill_audit.backends.base import Capability, GenerateParams
from distill_audit.backends.hf import HFAdapter, LoadOptions
from distill_audit.errors import ModelLoadError

TEXTS = [
    "Runo lee dau neni.",
    "Kise",
    "Kise peru dani kilo zesa gona lonu sisa reno bilo mini. Runo mini pie zosa tiu velo",
    "text outside the language: 42 + é ✓",
]


@pytest.fixture(params=["llama", "gpt2"], scope="module")
def adapter(request: pytest.FixtureRequest, llama_dir: Path, gpt2_dir: Path) -> HFAdapter:
    return HFAdapter.load(str(llama_dir if request.param == "llama" else gpt2_dir))


def test_declares_every_capability(adapter: HFAdapter) -> None:
    assert adapter.capabilities == frozenset(Capability)
    assert adapter.context_length == 64


def test_batched_scoring_matches_one_at_a_time(adapter: HFAdapter) -> None:
    batched = adapter.score(TEXTS, top_k=5)
    for text, b in zip(TEXTS, batched):
        (single,) = adapter.score([text], top_k=5)
        np.testing.assert_array_equal(b.token_ids, single.token_ids)
        np.testing.assert_allclose(b.target_logprob, single.target_logprob, atol=1e-4, equal_nan=True)
        np.testing.assert_allclose(b.topk_logprobs, single.topk_logprobs, atol=1e-4, equal_nan=True)
        np.testing.assert_allclose(b.entropy, single.entropy, atol=1e-4, equal_nan=True)
        np.testing.assert_array_equal(b.topk_ids[1:, 0], single.topk_ids[1:, 0])


def test_scoring_matches_a_plain_forward_pass(adapter: HFAdapter) -> None:
    (scored,) = adapter.score([TEXTS[2]], top_k=3)
    ids = torch.from_numpy(scored.token_ids)[None]
    with torch.no_grad():
        logp = torch.log_softmax(adapter.model(input_ids=ids).logits[0].float(), -1)
    expected_target = logp[:-1].gather(1, ids[0, 1:, None])[:, 0].numpy()
    np.testing.assert_allclose(scored.target_logprob[1:], expected_target, atol=1e-5)
    assert np.isnan(scored.target_logprob[0])
    expected_entropy = -(logp.exp() * logp).sum(-1)[:-1].numpy()
    np.testing.assert_allclose(scored.entropy[1:], expected_entropy, atol=1e-4)
    np.testing.assert_array_equal(scored.topk_ids[1:], logp[:-1].topk(3).indices.numpy())
    p = logp.exp()
    expected_var = (p * logp.square()).sum(-1) - (p * logp).sum(-1).square()
    np.testing.assert_allclose(scored.logprob_var[1:], expected_var[:-1].numpy(), rtol=1e-3, atol=1e-4)


SHARED = "Kise peru dani kilo zesa gona lonu sisa reno bilo mini. Runo"
READINGS = [SHARED + " mini pie zosa tiu velo", SHARED + " lee dau", SHARED + " mini pie", "Vunu tea loa lile dani",
            SHARED[:30] + " dau neni kilo", "Runo lee dau neni. Kise peru"]


def test_texts_that_begin_alike_are_scored_through_one_shared_beginning(adapter: HFAdapter) -> None:
    """The shared-prefix path (the beginning run once, each text's own tokens on its KV cache) gives the numbers of
    scoring each text whole, on both architectures, and it is the path taken: fewer tokens through the model."""
    from distill_audit.backends import hf

    assert adapter.shares_prefixes  # the architecture passed its load-time check
    groups = hf.prefix_groups(adapter._encode(READINGS), hf._MIN_SHARED_TOKENS)
    assert any(len(rows) >= 3 for _, rows in groups)
    calls: list[int] = []
    original = adapter._shared_prefix_statistics

    def counting(encoded: list[list[int]], groups: list[tuple[int, list[int]]], k: int) -> list[tuple[np.ndarray, ...]]:
        calls.append(len(encoded))
        return original(encoded, groups, k)

    adapter._shared_prefix_statistics = counting  # type: ignore[method-assign]
    try:
        batched = adapter.score(READINGS, top_k=5)
    finally:
        del adapter._shared_prefix_statistics
    assert calls == [len(READINGS)]
    for text, b in zip(READINGS, batched):
        (single,) = adapter.score([text], top_k=5)
        np.testing.assert_array_equal(b.token_ids, single.token_ids)
        np.testing.assert_array_equal(b.offsets, single.offsets)
        for name in ("target_logprob", "topk_logprobs", "entropy", "logprob_var"):
            np.testing.assert_allclose(getattr(b, name), getattr(single, name), atol=2e-4, rtol=1e-4, equal_nan=True)
        np.testing.assert_array_equal(b.topk_ids[1:, 0], single.topk_ids[1:, 0])


def test_a_long_shared_beginning_and_a_long_own_ending_in_one_batch_stay_inside_the_context(adapter: HFAdapter) -> None:
    """Every text fits the 64-token context, but the longest shared beginning plus the longest own ending does not:
    the padding of the shorter endings must not be given positions past the context (absolute position embeddings
    index out of range), and the numbers still equal scoring each text whole."""
    from distill_audit.backends import hf

    words = "kise peru dani kilo zesa gona lonu sisa reno bilo mini runo lee dau neni vunu tea loa lile".split() * 8

    def grown(start: str, tokens: int) -> str:  # the longest run of words from `start` within `tokens` tokens
        text = start
        for word in words:
            if len(adapter._encode([f"{text} {word}"])[0]) > tokens:
                break
            text = f"{text} {word}"
        return text

    long_shared = grown("Kise", 50)
    short_shared = grown("Runo", 20)
    own_words = "vunu tea loa lile dani zosa tiu velo pie " * 6
    texts = [long_shared + " mini", long_shared + " dau", short_shared + " " + own_words[: own_words.index(" ", 150)],
             short_shared + " pie zosa"]
    while len(adapter._encode([texts[2]])[0]) > 62:
        texts[2] = texts[2].rsplit(" ", 1)[0]
    encoded = adapter._encode(texts)
    assert all(len(ids) <= adapter.context_length for ids in encoded)
    groups = hf.prefix_groups(encoded, hf._MIN_SHARED_TOKENS)
    longest_shared = max(shared for shared, rows in groups if len(rows) > 1)
    longest_own = max(len(ids) - shared for shared, rows in groups for ids in (encoded[r] for r in rows))
    assert longest_shared + longest_own > adapter.context_length  # the case that overflowed
    batched = adapter.score(texts, top_k=5)
    for text, b in zip(texts, batched):
        (single,) = adapter.score([text], top_k=5)
        np.testing.assert_allclose(b.target_logprob, single.target_logprob, atol=2e-4, rtol=1e-4, equal_nan=True)
        np.testing.assert_allclose(b.entropy, single.entropy, atol=2e-4, rtol=1e-4, equal_nan=True)


def test_prefix_groups_keep_probes_apart_and_leave_every_row_a_token() -> None:
    from distill_audit.backends.hf import prefix_groups

    system = list(range(100, 130))
    probe_a = [system + list(range(1, 36)) + [200 + j, 7, 8] for j in range(5)]
    probe_b = [system + list(range(40, 75)) + [300 + j] for j in range(4)]
    groups = prefix_groups(probe_b + probe_a + [system + [9]], 8)
    by_rows = {tuple(sorted(rows)): shared for shared, rows in groups}
    assert by_rows[tuple(range(4, 9))] == 65 and by_rows[tuple(range(4))] == 65  # one group per probe
    unrelated = [system + [400 + j] * 20 for j in range(4)]  # only the system turn in common: shared once
    assert prefix_groups(unrelated, 8) == [(30, [0, 1, 2, 3])]
    whole = [system + [1], system + [1, 2]]  # one text is the other's beginning: each keeps a token of its own
    assert prefix_groups(whole, 8) == [(30, [0, 1])]
    assert prefix_groups([[1, 2], [3, 4, 5]], 8) == [(1, [0]), (2, [1])]


def test_offsets_locate_tokens_in_the_text(adapter: HFAdapter) -> None:
    (scored,) = adapter.score([TEXTS[0]], top_k=1)
    pieces = [TEXTS[0][s:e] for s, e in scored.offsets[1:]]  # skip <s>
    assert "".join(pieces) == TEXTS[0]


@pytest.mark.parametrize("params", [
    GenerateParams(max_new_tokens=12),
    GenerateParams(max_new_tokens=12, do_sample=True, seed=7, temperature=0.9),
])
def test_batched_generation_matches_one_at_a_time(adapter: HFAdapter, params: GenerateParams) -> None:
    batched = adapter.generate(TEXTS, params)
    for text, b in zip(TEXTS, batched):
        (single,) = adapter.generate([text], params)
        np.testing.assert_array_equal(b.token_ids, single.token_ids)
        np.testing.assert_allclose(b.token_logprobs, single.token_logprobs, atol=1e-4)
        np.testing.assert_allclose(b.topk_logprobs, single.topk_logprobs, atol=1e-4)
        assert b.text == single.text


def test_greedy_generation_follows_the_argmax_of_scoring(adapter: HFAdapter) -> None:
    (gen,) = adapter.generate([TEXTS[0]], GenerateParams(max_new_tokens=6, top_k=3))
    prompt_ids = adapter._encode([TEXTS[0]])[0]
    full = list(prompt_ids) + gen.token_ids.tolist()
    with torch.no_grad():
        logits = adapter.model(input_ids=torch.tensor([full])).logits[0]
    expected = logits[len(prompt_ids) - 1 : -1].argmax(-1).numpy()
    np.testing.assert_array_equal(gen.token_ids, expected)
    np.testing.assert_array_equal(gen.topk_ids[:, 0], gen.token_ids)


def test_seeded_sampling_is_reproducible_and_seed_dependent(adapter: HFAdapter) -> None:
    p0 = GenerateParams(max_new_tokens=16, do_sample=True, seed=0)
    p1 = GenerateParams(max_new_tokens=16, do_sample=True, seed=1)
    a, b, c = (adapter.generate(TEXTS, p) for p in (p0, p0, p1))
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.text for g in a] != [g.text for g in c]


def test_hidden_states_batched_match_single(adapter: HFAdapter) -> None:
    batched = adapter.hidden_states(TEXTS, layers=[0, -1])
    for text, b in zip(TEXTS, batched):
        (single,) = adapter.hidden_states([text], layers=[0, -1])
        assert b.shape == single.shape and b.shape[0] == 2 and b.shape[2] == 64
        np.testing.assert_allclose(b, single, atol=1e-4)


# -- loading rules ---------------------------------------------------------------------------------

def test_pickle_checkpoints_refused_unless_allowed(tmp_path: Path, llama_dir: Path) -> None:
    safe = HFAdapter.load(str(llama_dir))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(safe.model.state_dict(), pickled / "pytorch_model.bin")  # the legacy pickle format
    shutil.copy(llama_dir / "config.json", pickled / "config.json")
    safe.tokenizer.save_pretrained(pickled)
    with pytest.raises(ModelLoadError, match="pickle.*--allow-pickle"):
        HFAdapter.load(str(pickled))
    loaded = HFAdapter.load(str(pickled), LoadOptions(allow_pickle=True))
    assert loaded.fingerprint["format"] == "pickle"
    (a,), (b,) = loaded.score([TEXTS[0]], 3), safe.score([TEXTS[0]], 3)
    np.testing.assert_allclose(a.target_logprob, b.target_logprob, atol=1e-6, equal_nan=True)


def test_missing_path_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file or directory"):
        HFAdapter.load(str(tmp_path / "nope"))


def test_hub_id_not_in_local_cache_is_refused_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        HFAdapter.load("some-org/some-model")


def test_directory_without_tokenizer(tmp_path: Path, llama_dir: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(llama_dir / f, bare / f)
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        HFAdapter.load(str(bare))


def test_not_a_causal_lm(tmp_path: Path, tokenizer_dir: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    path = tmp_path / "distilbert"  # an encoder: no causal LM head exists for it
    DistilBertModel(DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(path)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, path / f.name)
    with pytest.raises(ModelLoadError, match="not a causal"):
        HFAdapter.load(str(path))


def test_gguf_without_the_gguf_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail as if not installed
    with pytest.raises(ModelLoadError, match=r"pip install 'distill-audit\[gguf\]'"):
        HFAdapter.load(str(fake))


def test_other_file_types_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "weights.txt"
    f.write_text("x")
    with pytest.raises(ModelLoadError, match="not a model directory or a .gguf file"):
        HFAdapter.load(str(f))


def test_device_and_dtype_defaults_on_cpu(llama_dir: Path) -> None:
    adapter = HFAdapter.load(str(llama_dir))
    if not torch.cuda.is_available():
        assert adapter.runtime["device"] in ("cpu", "mps")
        assert adapter.runtime["dtype"] == "float32"
    bf16 = HFAdapter.load(str(llama_dir), LoadOptions(device="cpu", dtype="bfloat16"))
    assert bf16.runtime["dtype"] == "bfloat16"
    (scored,) = bf16.score([TEXTS[0]], 2)
    assert np.isfinite(scored.target_logprob[1:]).all()


def test_hub_id_already_in_the_local_cache_loads_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          llama_dir: Path) -> None:
    """The layout huggingface_hub leaves after a download: models--org--name/{refs/main, snapshots/REV}."""
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(llama_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    adapter = HFAdapter.load("acme/tiny-llama")
    assert adapter.fingerprint == HFAdapter.load(str(llama_dir)).fingerprint


def test_checkpoint_code_is_not_run_without_trust_remote_code(tmp_path: Path, llama_dir: Path) -> None:
    import json

    path = tmp_path / "custom"
    shutil.copytree(llama_dir, path)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="acme-custom", auto_map={"AutoConfig": "configuration_acme.AcmeConfig",
                                                      "AutoModelForCausalLM": "modeling_acme.AcmeModel"})
    (path / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-ran"
    (path / "configuration_acme.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(ModelLoadError, match="ships its own model code.*--trust-remote-code"):
        HFAdapter.load(str(path))
    assert not marker.exists()


def test_offsets_without_a_fast_tokenizer_come_from_decoding(llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = HFAdapter.load(str(llama_dir))
    (fast,) = adapter.score([TEXTS[0]], 2)
    monkeypatch.setattr(type(adapter.tokenizer), "is_fast", property(lambda self: False))
    (slow,) = adapter.score([TEXTS[0]], 2)
    np.testing.assert_array_equal(slow.token_ids, fast.token_ids)
    assert [TEXTS[0][s:e] for s, e in slow.offsets[1:]] == [TEXTS[0][s:e] for s, e in fast.offsets[1:]]
