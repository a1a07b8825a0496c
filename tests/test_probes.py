"""Probe sets: the built-in set, user files, hashing and seeded sub-sampling."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from distill_audit.errors import ProbeSetError
from distill_audit.probes import ProbeSet, load_probe_set


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


# -- one prompt, one probe ---------------------------------------------------------------------------------------


def _twelve_prompts_thirty_times(tmp_path: Path, suffix: str) -> Path:
    prompts = [f"prompt number {i}" for i in range(12)]
    path = tmp_path / f"repeated{suffix}"
    lines = [p if suffix == ".txt" else json.dumps({"prompt": p, "copy": k}) for k in range(30) for p in prompts]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_repeated_prompts_are_one_probe_each_and_counted(tmp_path: Path, suffix: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="distill_audit.probes"):
        ps = load_probe_set(str(_twelve_prompts_thirty_times(tmp_path, suffix)))
    assert ps.prompts == tuple(f"prompt number {i}" for i in range(12))  # first occurrences, in file order
    assert (ps.n_total, ps.n_duplicates) == (12, 348)
    record = ps.to_dict()
    assert (record["n"], record["n_total"], record["n_duplicates"]) == (12, 12, 348)
    assert ps.hash == ps.full_hash == load_probe_set(str(_twelve_prompts_thirty_times(tmp_path, suffix))).hash
    assert "348 repeated prompt(s) dropped" in caplog.text and "repeated" + suffix in caplog.text


def test_identical_means_the_same_string(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": p}) for p in ["a b", "a b ", "A b", "a b", "a  b"]) + "\n")
    ps = load_probe_set(str(f))
    assert ps.prompts == ("a b", "a b ", "A b", "a  b") and ps.n_duplicates == 1
    txt = tmp_path / "p.txt"
    txt.write_text("a b\n  a b  \nA b\n")  # a .txt line is stripped first, so these two are the same prompt
    assert load_probe_set(str(txt)).prompts == ("a b", "A b")


def test_subsampling_draws_distinct_prompts_after_removing_repeats(tmp_path: Path) -> None:
    ps = load_probe_set(str(_twelve_prompts_thirty_times(tmp_path, ".txt")))
    sub = ps.subsample(10, seed=3)
    assert len(sub.prompts) == len(set(sub.prompts)) == 10 and set(sub.prompts) <= set(ps.prompts)
    assert (sub.n_total, sub.n_duplicates, sub.full_hash) == (12, 348, ps.full_hash)
    assert ps.subsample(20, seed=3) is ps  # more than there are distinct prompts: all of them


def test_a_set_from_prompts_counts_repeats_for_any_source() -> None:
    ps = ProbeSet.from_prompts("transcript", "file", "t.jsonl", ["q", "r", "q", "q"])
    assert ps.prompts == ("q", "r") and (ps.n_total, ps.n_duplicates) == (2, 2)
    assert ProbeSet("x", "file", "x", ("a",), "h", 1).n_duplicates == 0  # the old constructor still works


# -- the one reader of user files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_byte_order_mark_is_accepted(tmp_path: Path, suffix: str) -> None:
    f = tmp_path / f"bom{suffix}"
    body = "first prompt\nsecond prompt\n" if suffix == ".txt" else '{"prompt": "first prompt"}\n{"prompt": "second prompt"}\n'
    f.write_bytes(("\ufeff" + body).encode("utf-8"))
    assert load_probe_set(str(f)).prompts == ("first prompt", "second prompt")


def test_txt_lines_end_at_newlines_only(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_bytes("one\r\ntwo\rthree\nfour \u2028 still four\x0cand this\n".encode("utf-8"))
    assert load_probe_set(str(f)).prompts == ("one", "two", "three", "four \u2028 still four\x0cand this")


@pytest.mark.parametrize(("setup", "message"), [
    ("directory", "is a directory, expected a .txt or .jsonl file"),
    ("missing", "no such file"),
    ("parent is a file", "cannot read: Not a directory"),
])
def test_probe_files_fail_like_every_user_file(tmp_path: Path, setup: str, message: str) -> None:
    path = tmp_path / "p.jsonl"
    if setup == "directory":
        path.mkdir()
    elif setup == "parent is a file":
        (tmp_path / "f").write_text("x")
        path = tmp_path / "f" / "p.jsonl"
    with pytest.raises(ProbeSetError) as info:
        load_probe_set(str(path))
    assert str(info.value) == f"--probes {path}: {message}"


def test_a_lone_surrogate_or_a_runaway_line_is_one_error(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n{"prompt": "bad \\udc80 text"}\n')
    with pytest.raises(ProbeSetError, match=r"line 2: the prompt is not valid Unicode \(a lone surrogate U\+DC80"):
        load_probe_set(str(f))
    long_number = '{"prompt": ' + "9" * 5000 + "}"
    for line, reason in [("[" * 50_000, "nested too deeply"), (long_number, "a number with too many digits")]:
        f.write_text(line + "\n")
        with pytest.raises(ProbeSetError, match=f"line 1: not valid JSON \\({reason}\\)"):
            load_probe_set(str(f))


@pytest.mark.parametrize("name", ["x" * 300, "x" * 300 + ".txt", "~no-such-user-here/p.txt"])
def test_unusable_paths_are_one_error(tmp_path: Path, name: str) -> None:
    spec = name if name.startswith("~") else str(tmp_path / name)
    with pytest.raises(ProbeSetError) as info:
        load_probe_set(spec)
    assert len(str(info.value).splitlines()) == 1 and str(info.value).startswith("--probes ")
