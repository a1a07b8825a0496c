"""Probe sets: the built-in set, user files, hashing and seeded sub-sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.errors import ProbeSetError
from audit.probes import load_probe_set


def test_builtin_default_set_is_large_diverse_and_hashed() -> None:
    ps = load_probe_set("default")
    assert ps.n_total >= 300 and len(set(ps.prompts)) == len(ps.prompts)
    assert all(p.strip() for p in ps.prompts)
    assert ps.version == "v1" and ps.hash == ps.full_hash and len(ps.hash) == 64
    assert load_probe_set("default").hash == ps.hash


def test_subsampling_is_seeded(tmp_path: Path) -> None:
    ps = load_probe_set("default")
    a, b, c = ps.subsample(50, seed=1), ps.subsample(50, seed=1), ps.subsample(50, seed=2)
    assert a.prompts == b.prompts and a.prompts != c.prompts and len(a.prompts) == 50
    assert a.hash != ps.hash and a.full_hash == ps.full_hash
    assert ps.subsample(10_000, seed=0) is ps


def test_txt_and_jsonl_files(tmp_path: Path) -> None:
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  second prompt  \n")
    assert load_probe_set(str(txt)).prompts == ("first prompt", "second prompt")
    jl = tmp_path / "p.jsonl"
    jl.write_text("\n".join(json.dumps({"prompt": p, "id": i}) for i, p in enumerate(["a b", "c d"])) + "\n")
    ps = load_probe_set(str(jl))
    assert ps.prompts == ("a b", "c d") and ps.source == str(jl)


@pytest.mark.parametrize("name,content,message", [
    ("empty.txt", "\n\n", "no prompts"),
    ("empty.jsonl", "", "no prompts"),
    ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "line 2: not valid JSON"),
    ("field.jsonl", '{"text": "wrong field"}\n', 'line 1: expected an object with a string "prompt"'),
    ("blank.jsonl", '{"prompt": "  "}\n', "line 1: empty prompt"),
    ("p.csv", "a,b\n", "unknown probe file type .csv"),
])
def test_bad_probe_files_give_one_clear_error(tmp_path: Path, name: str, content: str, message: str) -> None:
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(ProbeSetError, match=message):
        load_probe_set(str(f))


def test_unknown_name_and_binary_file(tmp_path: Path) -> None:
    with pytest.raises(ProbeSetError, match="not a built-in set"):
        load_probe_set("no-such-set")
    f = tmp_path / "bin.txt"
    f.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ProbeSetError, match="not UTF-8"):
        load_probe_set(str(f))
