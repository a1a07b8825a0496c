"""Integrity under faults: what a model is (fingerprint scope), what a cache may hand back (checksums, lifetimes),
what a checkpoint must hold (complete, undamaged weights), what an answer may contain (finite log-probs), and
where the output goes (checked first, written whole). Each case reproduces a way a wrong number could reach a
result, and shows it now cannot."""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from distill_audit.backends.hf import HFAdapter, LoadOptions
from distill_audit.cache import CacheError, InferenceCache
from distill_audit.cli import main
from distill_audit.engine import Engine
from distill_audit.errors import InvalidAnswerError, ModelLoadError, UsageError
from distill_audit.outputs import check_output_dir, write_together

TEXTS = [" ".join(["Runo lee dau neni."] * (i % 4 + 1) + ["Kise"] * (i // 4)) for i in range(12)]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _edit_weights(directory: Path, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    weights = load_file(directory / "model.safetensors")
    save_file(edit(weights), directory / "model.safetensors", metadata={"format": "pt"})


# -- what a model is: everything that changes its outputs ---------------------------------------------------

def test_a_config_edit_makes_another_model_that_never_shares_cache_entries(tmp_path: Path, llama_dir: Path) -> None:
    edited = _copy(llama_dir, tmp_path / "edited")
    _edit_json(edited / "config.json", hidden_act="gelu", rope_theta=500.0)
    original, copy = HFAdapter.load(str(llama_dir)), HFAdapter.load(str(edited))
    assert copy.fingerprint["weights"] == original.fingerprint["weights"]  # same tensors...
    assert copy.fingerprint["model"] != original.fingerprint["model"]  # ...but another model
    assert copy.fingerprint["config"] != original.fingerprint["config"]

    cache = tmp_path / "cache.sqlite"
    first = Engine(InferenceCache(cache)).score(original, TEXTS)
    engine = Engine(InferenceCache(cache))
    second = engine.score(copy, TEXTS)
    assert engine.stats.cache_hits == 0 and engine.stats.computed == len(set(TEXTS))
    assert not np.allclose(first[0].target_logprob[1:], second[0].target_logprob[1:])


@pytest.mark.parametrize("edit", ["generation", "chat_template", "tokenizer_config"])
def test_generation_config_chat_template_and_tokenizer_config_are_part_of_the_identity(
        tmp_path: Path, llama_dir: Path, edit: str) -> None:
    edited = _copy(llama_dir, tmp_path / "edited")
    if edit == "generation":
        _edit_json(edited / "generation_config.json", repetition_penalty=1.3)
    elif edit == "chat_template":
        (edited / "chat_template.jinja").write_text("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}")
    else:
        _edit_json(edited / "tokenizer_config.json", model_max_length=7)
    assert HFAdapter.load(str(edited)).fingerprint["model"] != HFAdapter.load(str(llama_dir)).fingerprint["model"]


def test_who_wrote_a_config_is_not_part_of_the_identity(tmp_path: Path, llama_dir: Path) -> None:
    resaved = _copy(llama_dir, tmp_path / "resaved")
    _edit_json(resaved / "config.json", transformers_version="9.99.0", _name_or_path="/somewhere/else")
    assert HFAdapter.load(str(resaved)).fingerprint == HFAdapter.load(str(llama_dir)).fingerprint


def test_another_dtype_never_reads_the_cache_of_the_first(tmp_path: Path, llama_dir: Path) -> None:
    fp32 = HFAdapter.load(str(llama_dir), LoadOptions(dtype="float32"))
    bf16 = HFAdapter.load(str(llama_dir), LoadOptions(dtype="bfloat16"))
    assert fp32.fingerprint["model"] == bf16.fingerprint["model"]  # the same model...
    assert fp32.fingerprint["numerics"] != bf16.fingerprint["numerics"]  # ...computed another way
    cache = tmp_path / "cache.sqlite"
    Engine(InferenceCache(cache)).score(fp32, TEXTS)
    engine = Engine(InferenceCache(cache))
    engine.score(bf16, TEXTS)
    assert engine.stats.cache_hits == 0


# -- what a checkpoint must hold ----------------------------------------------------------------------------

def _truncate(fraction: float) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        raw = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(raw[: int(len(raw) * fraction)])
    return apply


def _header(header: bytes, length: int | None = None) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header) if length is None else length)
                                              + header + b"\0" * 64)
    return apply


def _drop_block(d: Path) -> None:
    _edit_weights(d, lambda w: {k: v for k, v in w.items() if ".layers.1." not in k})


def _extra_tensor(d: Path) -> None:
    import torch

    _edit_weights(d, lambda w: dict(w, **{"model.layers.9.extra.weight": torch.zeros(3)}))


def _other_architecture(d: Path) -> None:
    _edit_json(d / "config.json", model_type="bert", architectures=["BertLMHeadModel"], is_decoder=True)


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty file": (_truncate(0.0), "damaged weights file"),
    "cut in the header": (_truncate(0.001), "damaged weights file"),
    "cut at 10%": (_truncate(0.1), "damaged weights file"),
    "cut at 50%": (_truncate(0.5), "damaged weights file"),
    "cut one byte short": (lambda d: _cut_last_byte(d), "damaged weights file"),
    "header length 2^40": (_header(b"{}", length=1 << 40), "damaged weights file"),
    "header not JSON": (_header(b"{not json"), "damaged weights file"),
    "header claims a huge tensor": (_header(json.dumps({"x": {"dtype": "F32", "shape": [1 << 20, 1 << 20],
                                                              "data_offsets": [0, 1 << 42]}}).encode()),
                                    "damaged weights file"),
    "header with a bad dtype": (_header(json.dumps({"x": {"dtype": "F99", "shape": [1],
                                                          "data_offsets": [0, 4]}}).encode()), "damaged weights file"),
    "one block missing": (_drop_block, "9 weight(s) missing"),
    "an unexpected tensor": (_extra_tensor, "1 weight(s) unexpected"),
    "config of another architecture": (_other_architecture, "does not match its config"),
}


def _cut_last_byte(d: Path) -> None:
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[:-1])


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_or_incomplete_checkpoint_is_refused_with_one_line(tmp_path: Path, llama_dir: Path,
                                                                     case: str) -> None:
    damage, message = DAMAGE[case]
    broken = _copy(llama_dir, tmp_path / "broken")
    damage(broken)
    with pytest.raises(ModelLoadError) as info:
        HFAdapter.load(str(broken))
    text = str(info.value)
    assert "\n" not in text and str(broken) in text and message in text, text


@pytest.mark.parametrize("target", ["config.json", "tokenizer.json", "tokenizer_config.json"])
def test_randomly_damaged_config_and_tokenizer_files_load_or_fail_with_one_line(tmp_path: Path, llama_dir: Path,
                                                                                target: str) -> None:
    rng = np.random.default_rng(0)
    original = (llama_dir / target).read_bytes()
    outcomes = set()
    for trial in range(6):
        broken = _copy(llama_dir, tmp_path / f"broken-{trial}")
        raw = bytearray(original)
        if trial % 2:
            raw = raw[: int(rng.integers(0, len(raw)))]
        else:
            for pos in rng.integers(0, len(raw), size=3):
                raw[int(pos)] = int(rng.integers(0, 256))
        (broken / target).write_bytes(bytes(raw))
        try:
            HFAdapter.load(str(broken))
            outcomes.add("loaded")
        except ModelLoadError as exc:
            assert "\n" not in str(exc) and str(broken) in str(exc), str(exc)
            outcomes.add("refused")
    assert "refused" in outcomes  # truncated JSON never loads


def test_a_pickle_the_safe_loader_refuses_is_one_line_even_with_allow_pickle(tmp_path: Path, llama_dir: Path) -> None:
    import pickle

    pickled = _copy(llama_dir, tmp_path / "pickled")
    (pickled / "model.safetensors").unlink()
    with open(pickled / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"weight": shutil.rmtree}, fh)  # an object a weights-only loader must not build
    with pytest.raises(ModelLoadError, match="safe loader"):
        HFAdapter.load(str(pickled), LoadOptions(allow_pickle=True))


# -- what an answer may contain -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_log_probs_are_an_error_naming_the_model_and_are_never_cached(
        tmp_path: Path, llama_dir: Path, bad: float) -> None:
    broken = _copy(llama_dir, tmp_path / "broken")

    def poison(w: dict[str, Any]) -> dict[str, Any]:
        w["model.norm.weight"][0] = bad
        return w

    _edit_weights(broken, poison)
    adapter = HFAdapter.load(str(broken), name="student")
    cache = InferenceCache(tmp_path / "cache.sqlite")
    with pytest.raises(InvalidAnswerError, match=r"^student: its score answer .*non-finite log-probs"):
        Engine(cache).score(adapter, TEXTS)
    assert len(cache) == 0


def _poisoned_audit(tmp_path: Path, llama_dir: Path) -> list[str]:
    broken = _copy(llama_dir, tmp_path / "nan-student")
    _edit_weights(broken, lambda w: dict(w, **{"model.norm.weight": w["model.norm.weight"] * float("nan")}))
    refs = [str(_copy(llama_dir, tmp_path / f"ref-{i}")) for i in range(2)]
    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join(TEXTS[:6]) + "\n")
    return ["run", "--teacher", str(llama_dir), "--student", str(broken), "--reference", refs[0], "--reference",
            refs[1], "--probes", str(probes), "--detector", "js-divergence", "--no-cache", "--no-negative-controls",
            "--out", str(tmp_path / "out")]


def test_an_audit_of_a_model_that_answers_nan_fails_with_one_line_and_writes_nothing(tmp_path: Path,
                                                                                    llama_dir: Path) -> None:
    result = CliRunner().invoke(main, _poisoned_audit(tmp_path, llama_dir), catch_exceptions=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert "student: its score answer" in lines[0] and "non-finite" in lines[0]
    assert not (tmp_path / "out").exists()


# -- what a cache may hand back -----------------------------------------------------------------------------

def test_values_swapped_between_entries_fail_their_checksum_and_are_recomputed(tmp_path: Path,
                                                                              llama_dir: Path) -> None:
    adapter = HFAdapter.load(str(llama_dir))
    path = tmp_path / "cache.sqlite"
    clean = Engine(InferenceCache(path)).score(adapter, TEXTS[:4])
    with sqlite3.connect(path) as conn:
        (k1, v1), (k2, v2) = conn.execute("SELECT key, value FROM entries ORDER BY key LIMIT 2").fetchall()
        conn.execute("UPDATE entries SET value = ? WHERE key = ?", (v2, k1))
        conn.execute("UPDATE entries SET value = ? WHERE key = ?", (v1, k2))
    engine = Engine(InferenceCache(path))
    again = engine.score(adapter, TEXTS[:4])
    assert engine.stats.cache_corrupt == 2 and engine.stats.computed == 2 and engine.stats.cache_hits == 2
    for a, b in zip(clean, again):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_allclose(a.target_logprob, b.target_logprob, equal_nan=True)


def test_a_value_that_passes_its_checksum_but_does_not_read_back_is_recomputed(tmp_path: Path,
                                                                              llama_dir: Path) -> None:
    from distill_audit.cache import checksum

    adapter = HFAdapter.load(str(llama_dir))
    path = tmp_path / "cache.sqlite"
    Engine(InferenceCache(path)).score(adapter, TEXTS[:3])
    with sqlite3.connect(path) as conn:
        (key,) = conn.execute("SELECT key FROM entries LIMIT 1").fetchone()
        conn.execute("UPDATE entries SET value = ?, checksum = ? WHERE key = ?", (b"junk", checksum(key, b"junk"), key))
    engine = Engine(InferenceCache(path))
    engine.score(adapter, TEXTS[:3])
    assert engine.stats.cache_corrupt == 1 and engine.stats.computed == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_cache_file_is_one_line_that_says_how_to_recover(tmp_path: Path, llama_dir: Path,
                                                                  damage: str) -> None:
    path = tmp_path / "cache.sqlite"
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    else:
        cache = InferenceCache(path)
        cache.put_many((f"k{i}", bytes(4000)) for i in range(300))
        cache.close()
        for side in path.parent.glob("cache.sqlite-*"):
            side.unlink()
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(CacheError) as info:
        cache = InferenceCache(path)
        cache.get_many([f"k{i}" for i in range(300)])
    assert "--no-cache" in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_an_unusable_cache_directory_fails_before_any_model_loads(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="--no-cache"):
        InferenceCache(blocker / "cache" / "inference.sqlite")


def test_answers_older_than_their_lifetime_are_not_used(tmp_path: Path) -> None:
    now = [1000.0]
    cache = InferenceCache(tmp_path / "c.sqlite", clock=lambda: now[0])
    cache.put_many([("k", b"v")])
    now[0] += 30
    assert cache.get_many(["k"], max_age=60).values == {"k": b"v"}
    assert cache.get_many(["k"]).values == {"k": b"v"}  # no lifetime: a local model's answer
    now[0] += 60
    stale = cache.get_many(["k"], max_age=60)
    assert stale.values == {} and stale.expired == 1


def test_api_cache_lifetime_flags() -> None:
    from distill_audit.options import parse_duration

    assert parse_duration("90") == 90 and parse_duration("30m") == 1800 and parse_duration("7d") == 7 * 86400
    assert parse_duration("forever") is None
    with pytest.raises(UsageError, match="--api-cache-ttl"):
        parse_duration("soon")
    with pytest.raises(UsageError, match=r"\[api\] api_cache_ttl 'soon'"):  # an audit file's key, named as such
        parse_duration("soon", "[api] api_cache_ttl")


# -- where the output goes ----------------------------------------------------------------------------------

def test_a_dangling_symlink_out_is_refused_before_anything_runs(tmp_path: Path, llama_dir: Path) -> None:
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="does not exist"):
        check_output_dir(link)
    args = _poisoned_audit(tmp_path, llama_dir)
    result = CliRunner().invoke(main, args[:-1] + [str(link)], catch_exceptions=False)
    assert result.exit_code == 2 and "symbolic link" in result.stderr  # the poisoned student never ran


def test_an_out_below_a_file_is_refused_and_the_check_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        check_output_dir(tmp_path / "file" / "out")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # proved writable, then removed again


def test_result_and_report_are_written_both_or_neither(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text("old result")
    (tmp_path / "report.html").mkdir()  # the report cannot be written
    with pytest.raises(IsADirectoryError):
        write_together({tmp_path / "result.json": "new result", tmp_path / "report.html": "new report"})
    assert (tmp_path / "result.json").read_text() == "old result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "result.json"]  # no temporary left


def test_a_failed_rename_puts_the_earlier_files_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    (tmp_path / "result.json").write_text("old result")
    real_replace, calls = os.replace, []

    def failing_replace(src: str, dst: str) -> None:
        calls.append(dst)
        if str(dst).endswith("report.html"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        write_together({tmp_path / "result.json": "new result", tmp_path / "report.html": "new report"})
    monkeypatch.setattr(os, "replace", real_replace)
    assert (tmp_path / "result.json").read_text() == "old result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0o027)
    try:
        write_together({tmp_path / "a.json": "x"})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


# -- evidence counted once ----------------------------------------------------------------------------------

def test_repeated_probes_are_one_unit_of_evidence_end_to_end(tmp_path: Path, tokenizer_dir: Path, llama_dir: Path,
                                                            gpt2_dir: Path) -> None:
    from tests.conftest import _save_untrained

    refs = [str(_save_untrained(tokenizer_dir, tmp_path / f"ref-{i}", "llama", seed=10 + i)) for i in range(2)]
    prompts = [f"Runo lee dau neni {'kise ' * i}".strip() for i in range(12)]
    results = {}
    for name, repeat in (("once", 1), ("repeated", 30)):
        probes = tmp_path / f"{name}.txt"
        probes.write_text("\n".join(prompts * repeat) + "\n")
        out = tmp_path / name
        args = ["run", "--teacher", str(llama_dir), "--student", str(gpt2_dir), "--reference", refs[0],
                "--reference", refs[1], "--probes", str(probes), "--detector", "text-word-agreement",
                "--detector", "js-divergence", "--no-negative-controls", "--cache-dir", str(tmp_path / "cache"),
                "--out", str(out)]
        proc = CliRunner().invoke(main, args, catch_exceptions=False)
        assert proc.exit_code == 0, proc.stderr
        results[name] = json.loads((out / "result.json").read_text())
    once, repeated = results["once"], results["repeated"]
    assert repeated["probe_sets"][0]["n"] == 12 and repeated["probe_sets"][0]["n_duplicates"] == 12 * 29
    assert [e["n"] for e in repeated["evidence"]] == [e["n"] for e in once["evidence"]]
    assert [e["p_value"] for e in repeated["evidence"]] == [e["p_value"] for e in once["evidence"]]
    assert any("348 repeated probe(s) were dropped" in w for w in repeated["verdict"]["warnings"])
    assert not any("repeated probe" in w for w in once["verdict"]["warnings"])


def test_repeated_logged_answers_are_named_in_the_warnings() -> None:
    from distill_audit.logs import LoggedOutput, pair_outputs
    from distill_audit.probes import ProbeSet
    from distill_audit.runner import duplicate_warnings

    logged = [LoggedOutput("p", "same answer", 1)] * 5 + [LoggedOutput("p", "another answer", 6)]
    fresh = [LoggedOutput("p", f"fresh {i}", i) for i in range(2)]
    pairs = pair_outputs(logged, fresh, "fresh.jsonl")
    warnings = duplicate_warnings(ProbeSet.from_prompts("x", "file", "x", ["a", "b"]), pairs)
    assert len(warnings) == 1 and warnings[0].startswith("4 repeated logged answer(s)")
    assert pairs.to_dict()["pairs"] == 2
