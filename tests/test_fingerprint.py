"""Fingerprints name the content, not the files it happens to be stored in."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from distill_audit import fingerprint as fp
from distill_audit.backends.hf import HFAdapter


def test_resharding_keeps_the_weights_fingerprint(tmp_path: Path, llama_dir: Path) -> None:
    adapter = HFAdapter.load(str(llama_dir))
    sharded = tmp_path / "sharded"
    adapter.model.save_pretrained(sharded, max_shard_size="20KB")
    adapter.tokenizer.save_pretrained(sharded)
    assert len(list(sharded.glob("*.safetensors"))) > 1
    again = HFAdapter.load(str(sharded))
    assert again.fingerprint == adapter.fingerprint


def test_one_changed_weight_changes_the_fingerprint(tmp_path: Path, llama_dir: Path) -> None:
    adapter = HFAdapter.load(str(llama_dir))
    with torch.no_grad():
        adapter.model.model.norm.weight[0] += 1e-3
    changed = tmp_path / "changed"
    adapter.model.save_pretrained(changed)
    adapter.tokenizer.save_pretrained(changed)
    other = HFAdapter.load(str(changed))
    assert other.fingerprint["weights"] != HFAdapter.load(str(llama_dir)).fingerprint["weights"]
    assert other.fingerprint["tokenizer"] == adapter.fingerprint["tokenizer"]


def test_tokenizer_fingerprint_survives_a_save_and_reload(tmp_path: Path, tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.save_pretrained(tmp_path / "copy")
    copy = AutoTokenizer.from_pretrained(tmp_path / "copy")
    assert fp.tokenizer_fingerprint(tok) == fp.tokenizer_fingerprint(copy)
    tok.add_tokens(["<extra>"])
    assert fp.tokenizer_fingerprint(tok) != fp.tokenizer_fingerprint(copy)


def test_gguf_and_other_files_are_hashed_as_files(tmp_path: Path, llama_dir: Path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    shutil.copy(llama_dir / "model.safetensors", a)
    shutil.copy(llama_dir / "model.safetensors", b)
    assert fp.file_fingerprint(a) == fp.file_fingerprint(b)
    b.write_bytes(b.read_bytes() + b"\0")
    assert fp.file_fingerprint(a) != fp.file_fingerprint(b)
