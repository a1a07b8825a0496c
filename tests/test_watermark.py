"""Watermark radioactivity: the key file, the green-list scheme and its exact test, the detector, the CLI.

Models are tiny and trained here on the synthetic language: a clean teacher (corpus text only), and a
student trained on text the teacher wrote with the watermark. The teacher itself is the model that never
saw watermarked text (the null)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from distill_audit import synthetic
from distill_audit import watermark as wm
from distill_audit.backends.base import AdapterWrapper, Capability, ModelAdapter
from distill_audit.backends.hf import HFAdapter
from distill_audit.cache import InferenceCache
from distill_audit.cli import main
from distill_audit.detectors import REGISTRY, Available, DetectorContext, ModelHandle
from distill_audit.detectors.radioactivity import RadioactivityParams, WatermarkRadioactivity
from distill_audit.engine import Engine
from distill_audit.errors import UsageError
from distill_audit.logs import LoggedOutput
from distill_audit.runner import _run_detectors
from tests.conftest import cli

GRAMMAR = synthetic.Grammar()  # the language tokenizer_dir was built on


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    """One thread here (overrides conftest's): the tests stay fast beside other work, and reproducible."""
    torch.set_num_threads(1)


def _key(base: wm.WatermarkKey, n: int) -> wm.WatermarkKey:
    """A key with a fixed secret, so every p-value in these tests is the same on every run."""
    return dataclasses.replace(base, secret=hashlib.sha256(f"test key {n}".encode()).digest())


def _fit(tok: Any, text: str, seed: int, out: Path) -> Path:
    model = synthetic.new_model(tok, synthetic.TinyConfig(context=128), seed=seed)
    synthetic.train(model, synthetic.encode_corpus(tok, text), synthetic.TrainPlan(steps=150, batch=16, seed=seed))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@dataclasses.dataclass(frozen=True)
class World:
    tok: Any
    key: wm.WatermarkKey
    key_file: Path
    teacher: Path  # trained on corpus text only: never saw watermarked text
    student: Path  # trained on watermarked teacher text only
    held_out: tuple[LoggedOutput, ...]  # watermarked teacher texts no model trained on
    plain: tuple[LoggedOutput, ...]  # the same prompts, the teacher without the watermark
    probes: tuple[str, ...]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> World:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("watermark")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    key = _key(wm.new_key(tok), 0)
    wm.write_key(key, root / "key.json")
    teacher_dir = _fit(tok, GRAMMAR.text(1500, seed=1), 1, root / "teacher")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    prompts = GRAMMAR.prompts(256, seed=50)
    written = wm.generate_watermarked(teacher, tok, key, prompts, 64, seed=0)
    student_dir = _fit(tok, " ".join(p + c for p, c in zip(prompts, written)), 7, root / "student")
    held = GRAMMAR.prompts(64, seed=60)
    held_out = tuple(LoggedOutput(p, c) for p, c in zip(held, wm.generate_watermarked(teacher, tok, key, held, 64, seed=1)))
    plain = tuple(LoggedOutput(p, c) for p, c in zip(held, synthetic.sample_texts(teacher, tok, held, 64, seed=1)))
    return World(tok, key, root / "key.json", teacher_dir, student_dir, held_out, plain,
                 tuple(GRAMMAR.prompts(100, seed=777)))


# -- the key file ---------------------------------------------------------------------------------------------


def test_key_file_round_trip_is_private(tmp_path: Path, tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    key = wm.new_key(tok, gamma=0.3, delta=1.5, context_width=2)
    path = tmp_path / "k.json"
    wm.write_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert wm.read_key(path) == key
    assert len(key.secret) == 32 and key.vocab_size == len(tok)
    assert key.fingerprint == hashlib.sha256(key.secret).hexdigest()
    assert key.secret.hex() not in repr(key) and key.secret.hex() not in json.dumps(key.public())
    assert wm.new_key(tok).secret != key.secret  # fresh randomness every time
    with pytest.raises(UsageError, match="refusing to overwrite"):
        wm.write_key(wm.new_key(tok), path)
    assert wm.read_key(path) == key  # untouched


def _good_key_json(tmp_path: Path, tokenizer_dir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    path = tmp_path / "good.json"
    wm.write_key(_key(wm.new_key(AutoTokenizer.from_pretrained(tokenizer_dir)), 1), path)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("directory", "is a directory"),
    ("not-json", "not JSON"),
    ("list", "expected a JSON object"),
    ("no-gamma", "missing field 'gamma'"),
    ("string-delta", "field 'delta' must be a number"),
    ("version", "key file version 2; this distill-audit reads version 1"),
    ("gamma-range", "gamma (the green fraction) must be a number between 0 and 1"),
    ("delta-range", "delta (the green logit bias) must be a positive number"),
    ("short-secret", "field 'secret' must be 64 hexadecimal digits"),
])
def test_bad_key_files_are_one_clear_line(tmp_path: Path, tokenizer_dir: Path, case: str, message: str) -> None:
    data = _good_key_json(tmp_path, tokenizer_dir)
    secret = data["secret"]
    path = tmp_path / "bad.json"
    if case == "directory":
        path.mkdir()
    elif case == "not-json":
        path.write_text(secret + " {")
    elif case == "list":
        path.write_text("[1, 2]")
    elif case != "missing":
        changes: dict[str, dict[str, Any]] = {"no-gamma": {}, "string-delta": {"delta": "2"}, "version": {"version": 2},
                   "gamma-range": {"gamma": 1.0}, "delta-range": {"delta": -1.0}, "short-secret": {"secret": secret[:-2]}}
        data.update(changes[case])
        if case == "no-gamma":
            del data["gamma"]
        path.write_text(json.dumps(data))
    with pytest.raises(UsageError) as info:
        wm.read_key(path, "--watermark-key")
    text = str(info.value)
    assert message in text and text.startswith(f"--watermark-key {path}") and "\n" not in text
    assert secret not in text and secret[:-2] not in text


# -- the scheme and its exact test --------------------------------------------------------------------------------


def test_green_lists_are_seeded_by_the_secret_and_the_context(world: World) -> None:
    key, other = world.key, _key(world.key, 1)
    masks = [wm.green_mask(key, [c]) for c in range(50)]
    assert all(m.shape == (key.vocab_size,) and m.dtype == bool for m in masks)
    assert np.array_equal(wm.green_mask(key, [7]), wm.green_mask(key, [3, 7]))  # width 1: the last id only
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[0], wm.green_mask(other, [0]))
    share = np.mean(masks)
    assert abs(share - key.gamma) < 4 * np.sqrt(key.gamma * (1 - key.gamma) / (50 * key.vocab_size))
    assert wm.is_green(key, [5], int(np.argmax(masks[5]))) and not wm.is_green(key, [5], int(np.argmin(masks[5])))


def test_watermarked_text_is_detected_and_other_text_is_not(world: World) -> None:
    marked = wm.score_texts(world.key, world.tok, world.held_out)
    assert marked.n_scored + marked.n_duplicates + marked.n_in_prompt > 2000  # a few thousand tokens
    assert marked.p_value < 1e-4 and marked.green_fraction > world.key.gamma + 0.1
    plain = wm.score_texts(world.key, world.tok, world.plain)
    assert plain.p_value > 0.01
    other_key = wm.score_texts(_key(world.key, 1), world.tok, world.held_out)
    assert other_key.p_value > 0.01
    # the same watermarked generation is reproducible: same seed, same text
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(world.teacher).eval()
    prompts = [t.prompt for t in world.held_out[:4]]
    again = wm.generate_watermarked(teacher, world.tok, world.key, prompts, 64, seed=1)
    assert again == [t.completion for t in world.held_out[:4]]
    # a wider context: the green list follows the last two ids
    wide = dataclasses.replace(world.key, context_width=2)
    prompts = [t.prompt for t in world.held_out[:32]]
    completions = wm.generate_watermarked(teacher, world.tok, wide, prompts, 64, seed=2)
    written = [LoggedOutput(p, c) for p, c in zip(prompts, completions)]
    assert wm.score_texts(wide, world.tok, written).p_value < 1e-4
    assert wm.score_texts(world.key, world.tok, written).p_value > 0.01  # the width-1 lists are other lists


def _fixed_text_ids(tok: Any, n_sentences: int, seed: int) -> list[int]:
    return synthetic.encode_corpus(tok, GRAMMAR.text(n_sentences, seed=seed))


def test_the_test_keeps_its_level_over_random_keys(world: World) -> None:
    """Fixed unwatermarked text, 400 keys: the exact test rejects at most alpha of the time (+3 SE)."""
    ids = _fixed_text_ids(world.tok, 300, seed=123)
    assert len(ids) > 2000
    results = [wm.score_tokens(_key(world.key, 1000 + i), [ids]) for i in range(400)]
    assert results[0].n_duplicates > results[0].n_scored // 2  # the language repeats itself a lot
    rate = np.mean([r.p_value < 0.05 for r in results])
    assert rate <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 400), rate
    assert abs(np.mean([r.green_fraction for r in results]) - world.key.gamma) < 0.01


def test_without_deduplication_repetitive_text_looks_radioactive(world: World) -> None:
    """One sentence written 60 times: counting every repeat multiplies one key's luck, and the test rejects
    far more often than alpha; scoring each distinct tuple once keeps the level."""
    sentence = " ".join([GRAMMAR.sentences(1, seed=5)[0]] * 60)
    ids = synthetic.encode_corpus(world.tok, sentence)
    keys = [_key(world.key, 5000 + i) for i in range(300)]
    naive = np.mean([wm.score_tokens(k, [ids], deduplicate=False).p_value < 0.05 for k in keys])
    dedup = np.mean([wm.score_tokens(k, [ids]).p_value < 0.05 for k in keys])
    assert naive > 0.25, naive  # five times alpha
    assert dedup <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 300), dedup


class _CopyingReader(AdapterWrapper):
    """A model that never saw watermarked text but copies in context, as real language models do (induction
    heads): where the current context occurred earlier in the text, it predicts the token that followed it
    then; elsewhere it predicts what the wrapped model predicts."""

    def __init__(self, inner: HFAdapter):
        super().__init__(inner)
        self.name = "copying-reader"

    @property
    def fingerprint(self) -> dict[str, str]:
        return dict(self.inner.fingerprint, model="c" * 64)

    def score(self, texts: Any, top_k: int, on_result: Any = None) -> list[Any]:
        out = []
        for s in self.inner.score(texts, top_k):
            ids, top = s.token_ids.tolist(), s.topk_ids.copy()
            last: dict[int, int] = {}  # context (width 1) -> the token that followed it most recently
            for i in range(1, len(ids)):
                if ids[i - 1] in last:
                    top[i, 0] = last[ids[i - 1]]
                last[ids[i - 1]] = ids[i]
            out.append(dataclasses.replace(s, topk_ids=top))
        return out


def test_tuples_in_the_input_must_be_dropped_in_reading_mode(world: World) -> None:
    """A reader that copies from its input copies the text's green-biased tuples: scored naively it looks
    radioactive though it never saw watermarked text; the detector drops the text's own tuples and keeps its level."""
    reader = _CopyingReader(HFAdapter.load(str(world.teacher)))
    scored = reader.score([t.prompt + t.completion for t in world.held_out], top_k=1)
    naive = [(*s.token_ids[i - 1 : i].tolist(), int(s.topk_ids[i, 0])) for s in scored for i in range(1, s.n_tokens)]
    assert wm.score_pairs(world.key, naive).p_value < 1e-3
    ctx = dataclasses.replace(_context(world, world.teacher),
                              student=ModelHandle("student", "reader", reader))  # type: ignore[arg-type]
    ev = WatermarkRadioactivity(RadioactivityParams(mode="reading")).run(ctx)
    assert ev.details["n_in_prompt"] > 500 and ev.p_value > 0.05, ev.details


# -- the detector ----------------------------------------------------------------------------------------------


def _context(world: World, student: Path, texts: bool = True, key: wm.WatermarkKey | None = None) -> DetectorContext:
    def handle(role: str, path: Path) -> ModelHandle:
        return ModelHandle(role, role, HFAdapter.load(str(path), name=role))

    inputs = wm.WatermarkInputs(key or world.key, world.held_out if texts else None, "held-out.jsonl" if texts else None)
    return DetectorContext(handle("teacher", world.teacher), handle("student", student), (), world.probes, 0,
                           Engine(InferenceCache(None)), watermark=inputs)


@pytest.mark.parametrize("mode", ["reading", "generation"])
def test_student_trained_on_watermarked_text_is_flagged_and_a_clean_model_is_not(world: World, mode: str) -> None:
    det = WatermarkRadioactivity(RadioactivityParams(mode=mode))
    flagged = det.run(_context(world, world.student))
    clean = det.run(_context(world, world.teacher))
    for ev in (flagged, clean):
        assert ev.details["mode"] == mode and ev.n == ev.details["n_scored"] > 100
        assert ev.details["n_duplicates"] > 0 and ev.details["n_in_prompt"] > 0
        assert ev.ci_low <= ev.effect_size <= ev.ci_high
        assert ev.details["key"]["fingerprint"] == world.key.fingerprint
    assert flagged.p_value < 1e-3 and flagged.effect_size > 0 and not flagged.rules_out
    assert clean.p_value > 0.05 and clean.effect_size < flagged.effect_size
    json.dumps(flagged.to_dict(), allow_nan=True)
    assert world.key.secret.hex() not in json.dumps(flagged.to_dict(), allow_nan=True)
    assert det.run(_context(world, world.student)) == flagged  # deterministic


def test_mode_is_reading_with_texts_and_generation_without(world: World) -> None:
    det = WatermarkRadioactivity()
    assert det.run(_context(world, world.teacher)).details["mode"] == "reading"
    assert det.run(_context(world, world.teacher, texts=False)).details["mode"] == "generation"


class _TextOnly(ModelAdapter):
    """A black-box student: generates text, scores nothing."""

    name = "text-only"
    capabilities = frozenset({Capability.GENERATE})
    fingerprint = {"model": "0" * 64, "tokenizer": "t"}

    def count_tokens(self, texts: Any) -> list[int]:
        return [len(t.split()) for t in texts]


def test_skip_reasons(world: World, tmp_path: Path) -> None:
    teacher = HFAdapter.load(str(world.teacher))
    models: dict[str, Any] = {"teacher": [teacher], "student": [teacher]}
    det = WatermarkRadioactivity()
    inputs = wm.WatermarkInputs(world.key, world.held_out)
    assert det.unmet(Available.of_models(models, watermark=inputs)) is None
    assert "--watermark-key" in str(det.unmet(Available.of_models(models)))
    assert "--watermark-key" in str(det.unmet(Available(None, 0)))  # known before any model loads
    wrong = dataclasses.replace(world.key, tokenizer_sha256="0" * 64)
    reason = det.unmet(Available.of_models(models, watermark=wm.WatermarkInputs(wrong)))
    assert "not the one the watermark key was made for" in str(reason)
    text_only: dict[str, Any] = {"teacher": [teacher], "student": [_TextOnly()]}
    assert det.unmet(Available.of_models(text_only, watermark=inputs)) is None  # falls back to generation mode
    forced = WatermarkRadioactivity(RadioactivityParams(mode="reading"))
    assert "score-topk" in str(forced.unmet(Available.of_models(text_only, watermark=inputs)))
    ctx = _context(world, world.teacher)
    _, skipped = _run_detectors([det], dataclasses.replace(ctx, watermark=None))
    assert skipped == [{"detector": "watermark-radioactivity", "reason": "no watermark key was given (--watermark-key)"}]
    assert "watermark-radioactivity" in REGISTRY


# -- the command line ------------------------------------------------------------------------------------------


def _invoke(args: list[str]) -> Any:
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_run_records_the_key_fingerprint_never_the_secret(world: World, tmp_path: Path) -> None:
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"prompt": t.prompt, "completion": t.completion}) + "\n" for t in world.held_out))
    out = tmp_path / "out"
    result = _invoke(["run", "--teacher", str(world.teacher), "--student", str(world.student), "--n-probes", "20",
                      "--detector", "watermark-radioactivity", "--watermark-key", str(world.key_file),
                      "--watermark-texts", str(texts), "--no-cache", "--out", str(out)])
    assert result.exit_code == 0, result.output
    raw = (out / "result.json").read_text()
    doc = json.loads(raw)
    assert doc["watermark"]["key"] == json.loads(json.dumps(world.key.public()))
    assert doc["watermark"]["texts"]["n"] == len(world.held_out)
    (ev,) = doc["evidence"]
    assert ev["detector"] == "watermark-radioactivity" and ev["details"]["mode"] == "reading" and ev["p_value"] < 1e-3
    secret = world.key.secret.hex()
    for text in (raw, (out / "report.html").read_text(), result.output, result.stderr):
        assert secret not in text


def test_run_refuses_a_bad_key_before_loading_models(tmp_path: Path) -> None:
    bad = tmp_path / "key.json"
    bad.write_text("not json")
    for extra, message in ((["--watermark-key", str(bad)], "not a watermark key file (not JSON)"),
                           (["--watermark-texts", str(bad)], "--watermark-texts needs --watermark-key")):
        result = _invoke(["run", "--teacher", str(tmp_path / "nowhere"), "--student", str(tmp_path / "nowhere"),
                          "--detector", "watermark-radioactivity", *extra, "--out", str(tmp_path / "out")])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_cli_keygen_generate_detect_round_trip(world: World, tmp_path: Path, tokenizer_dir: Path) -> None:
    key_file = tmp_path / "owner.key"
    made = cli("watermark", "keygen", "--tokenizer", str(tokenizer_dir), "--key-file", str(key_file), "--gamma", "0.25")
    assert made.returncode == 0, made.stderr
    key = wm.read_key(key_file)
    assert key.fingerprint in made.stdout and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(GRAMMAR.prompts(48, seed=90)) + "\n")
    texts = tmp_path / "marked.jsonl"
    generated = cli("watermark", "generate", "--model", str(world.teacher), "--key-file", str(key_file),
                    "--prompts", str(prompts), "--out", str(texts), "--max-new-tokens", "64", "--seed", "3")
    assert generated.returncode == 0, generated.stderr
    lines = [json.loads(line) for line in texts.read_text().splitlines()]
    assert len(lines) == 48 and all(set(r) == {"prompt", "completion"} and r["completion"] for r in lines)
    found = cli("watermark", "detect", "--key-file", str(key_file), "--texts", str(texts), "--tokenizer", str(tokenizer_dir))
    assert found.returncode == 0, found.stderr
    assert "carries the watermark at alpha 0.01" in found.stdout
    for proc in (made, generated, found):
        assert key.secret.hex() not in proc.stdout + proc.stderr
    # the same texts against another key: no watermark
    other = _invoke(["watermark", "detect", "--key-file", str(world.key_file), "--texts", str(texts),
                     "--tokenizer", str(tokenizer_dir)])
    assert other.exit_code == 0 and "no evidence of the watermark" in other.output
    # keygen never overwrites, and says so in one line
    again = _invoke(["watermark", "keygen", "--tokenizer", str(tokenizer_dir), "--key-file", str(key_file)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.stderr and len(again.stderr.splitlines()) == 1
    assert wm.read_key(key_file) == key


def test_cli_refuses_a_model_or_tokenizer_the_key_was_not_made_for(world: World, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    other_tok = tmp_path / "other-tok"
    tok = AutoTokenizer.from_pretrained(world.teacher)
    tok.add_tokens(["<other>"])
    tok.save_pretrained(other_tok)
    texts = tmp_path / "t.jsonl"
    texts.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    result = _invoke(["watermark", "detect", "--key-file", str(world.key_file), "--texts", str(texts),
                      "--tokenizer", str(other_tok)])
    assert result.exit_code == 2 and "not the tokenizer the key was made for" in result.stderr
    missing = _invoke(["watermark", "detect", "--key-file", str(tmp_path / "none.key"), "--texts", str(texts),
                       "--tokenizer", str(other_tok)])
    assert missing.exit_code == 2
    assert missing.stderr.strip() == f"distill-audit: error: --key-file {tmp_path / 'none.key'}: no such file"
    assert os.path.exists(world.key_file)
