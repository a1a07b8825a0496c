"""What remote and transcript backends share: fingerprints that hide the location, and TokenMap with real tokenizers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distill_audit import fingerprint as fp
from distill_audit import synthetic
from distill_audit.backends.remote import UNKNOWN_ID, TokenMap, parse_token_ids, remote_fingerprint
from distill_audit.errors import ModelLoadError


@pytest.fixture(scope="module")
def unigram_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("unigram")
    synthetic.build_tokenizer(synthetic.Grammar(), path, kind="unigram")
    return path


def server_pieces(tok: Any, prompt: str, completion: str) -> tuple[list[int], list[str]]:
    """The generated ids and the strings an OpenAI-compatible server returns for them: the text each token
    adds after everything before it (the prompt included, as a server detokenizes incrementally)."""
    ids = tok(prompt + completion, add_special_tokens=False)["input_ids"]
    start = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert ids[:start] == tok(prompt, add_special_tokens=False)["input_ids"], "the prompt must tokenize alone the same"
    pieces = [tok.decode(ids[: i + 1])[len(tok.decode(ids[:i])):] for i in range(start, len(ids))]
    return ids[start:], pieces


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_token_map_gives_back_the_ids_of_server_token_strings(kind: str, tokenizer_dir: Path, unigram_dir: Path) -> None:
    token_map = TokenMap.load(tokenizer_dir if kind == "bpe" else unigram_dir)
    tok = token_map.tokenizer
    grammar = synthetic.Grammar()
    prompt = grammar.prompts(1, seed=2)[0]
    completion = " " + " ".join(grammar.sentences(3, seed=8))
    ids, pieces = server_pieces(tok, prompt, completion)
    assert len(ids) > 10 and "".join(pieces) == completion
    assert sum(p.startswith(" ") for p in pieces) > 5  # leading spaces are part of the pieces
    assert token_map.ids(pieces).tolist() == ids
    assert parse_token_ids(pieces, token_map).tolist() == ids


def test_token_map_unigram_reads_metaspace_as_a_leading_space(unigram_dir: Path) -> None:
    token_map = TokenMap.load(unigram_dir)
    tok = token_map.tokenizer
    word_id = tok.convert_tokens_to_ids("\u2581lile")
    assert word_id != tok.unk_token_id
    assert token_map.ids([" lile", "\u2581lile"]).tolist() == [word_id, UNKNOWN_ID]


def test_token_id_strings_unknown_strings_and_no_tokenizer(tokenizer_dir: Path) -> None:
    token_map = TokenMap.load(tokenizer_dir)
    assert token_map.ids(["token_id:17"]).tolist() == [17]
    assert parse_token_ids(["token_id:17", "token_id:x", "Kise"], None).tolist() == [17, UNKNOWN_ID, UNKNOWN_ID]
    # a hostile server's ids: non-ASCII digits and ids past int64 are unknown, not a crash
    assert parse_token_ids(["token_id:\u00b2", "token_id:" + "9" * 30], None).tolist() == [UNKNOWN_ID, UNKNOWN_ID]
    out = token_map.ids(["\u4e2d\u6587-not-in-vocab", "token_id:3"])
    assert out.dtype == np.int64 and out.tolist() == [UNKNOWN_ID, 3]
    assert UNKNOWN_ID < 0  # never a real id


def test_count_and_encode_use_the_tokenizer_with_its_specials(tokenizer_dir: Path) -> None:
    token_map = TokenMap.load(tokenizer_dir)
    text = "Kise lile dani."
    plain = token_map.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert token_map.encode(text) == [token_map.tokenizer.bos_token_id, *plain]
    assert token_map.count([text, ""]) == [len(plain) + 1, 1]


def test_token_map_fingerprint_is_the_tokenizer_fingerprint(tokenizer_dir: Path, unigram_dir: Path) -> None:
    bpe, unigram = TokenMap.load(tokenizer_dir), TokenMap.load(unigram_dir)
    assert bpe.fingerprint == fp.tokenizer_fingerprint(bpe.tokenizer)
    assert bpe.fingerprint != unigram.fingerprint
    assert bpe.source == str(tokenizer_dir)


def test_remote_fingerprint_differs_by_location_model_and_tokenizer() -> None:
    secret_url = "https://api.example.com/v1?api_key=sk-SECRET123"
    base = remote_fingerprint("openai", secret_url, "gpt-x", None)
    assert remote_fingerprint("openai", secret_url, "gpt-x", None) == base
    assert remote_fingerprint("openai", "https://other.example.com/v1", "gpt-x", None)["model"] != base["model"]
    assert remote_fingerprint("openai", secret_url, "gpt-y", None)["model"] != base["model"]
    assert remote_fingerprint("transcript", secret_url, "gpt-x", None)["model"] != base["model"]
    with_tok = remote_fingerprint("openai", secret_url, "gpt-x", "abc123")
    assert with_tok["model"] != base["model"] and with_tok["tokenizer"] == "abc123"
    assert base["tokenizer"].startswith("unknown:")
    assert set(base) == {"model", "weights", "tokenizer", "format"}
    assert base["format"] == "openai" and base["weights"].startswith("unknown")
    for value in (*base.values(), *with_tok.values()):
        assert "SECRET" not in value and "example.com" not in value and "gpt-x" not in value


def test_token_map_load_refuses_what_is_not_a_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"^--teacher-tokenizer .*absent: not a directory"):
        TokenMap.load(tmp_path / "absent", flag="--teacher-tokenizer")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="cannot load a tokenizer"):
        TokenMap.load(empty)
