"""The benchmark zoo, built with a miniature recipe: layout, labels, logs, caching and loading."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
import torch

from bench import zoo

# Same worlds and student recipes as the real zoo, a fraction of the training.
TINY = zoo.ZooRecipe(sentences=40, student_sentences=80, steps=2, n_references=2, n_probes=10, max_new_tokens=24)
VERSION_DIR = f"zoo-v{zoo.ZOO_VERSION}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[zoo.World], list[zoo.Pair], list[str]]:
    root = tmp_path_factory.mktemp("zoo")
    messages: list[str] = []
    with _one_thread():
        worlds, pairs = zoo.build_zoo(root, progress=False, report=messages.append, recipe=TINY)
    return root, worlds, pairs, messages


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Bit-identical builds need one fixed thread count; with several threads the math library may use fewer
    when the machine is busy, which changes float rounding."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_pairs_and_labels(built: tuple[Path, list[zoo.World], list[zoo.Pair], list[str]]) -> None:
    _, worlds, pairs, _ = built
    assert [w.name for w in worlds] == ["alpha", "beta"]
    assert len(pairs) == 38 and len({p.name for p in pairs}) == 38
    for w in worlds:
        mine = [p for p in pairs if p.world == w.name]
        assert sum(p.label for p in mine) == 12 and len(mine) == 19
        assert sum(not p.same_tokenizer for p in mine) == 2
        assert len(w.references) == TINY.n_references and len(w.probes) == TINY.n_probes
        counts = {c: sum(p.condition == c for p in mine) for c in zoo.CONDITIONS}
        assert counts == {"direct": 4, "dose-response": 5, "disguised": 3, "negative": 4, "hard-negative": 3}
        assert [p.name.split("/")[1] for p in mine][:11] == [  # the version-2 students keep their keys and seeds
            "logit-kd", "seq-kd", "seq-kd-mix", "seq-kd-other-tok", "logit-kd-gpt2", "independent", "independent-gpt2",
            "other-corpus", "sibling-logit-kd", "sibling-seq-kd", "independent-other-tok"]
    for p in pairs:
        assert p.condition in zoo.CONDITIONS
        assert p.label == (p.condition in ("direct", "dose-response", "disguised")), p.name
        assert p.share is None or 0.0 <= p.share <= 1.0
        assert (p.share == 0.0) == (p.label == 0), p.name  # a negative saw none of the teacher's outputs
    share = {p.name.split("/")[1]: p.share for p in pairs if p.world == "alpha"}
    assert [share[k] for k in zoo.DOSE_KEYS] == [0.01, 0.05, 0.10, 0.25, 0.5, 1.0]
    assert share["logit-kd"] is None and share["logit-kd-gpt2"] is None
    assert share["seq-kd-then-corpus"] == pytest.approx(TINY.steps / (TINY.steps + round(TINY.continue_fraction * TINY.steps)))
    assert all(p.student.is_dir() and (p.student / "config.json").exists() for p in pairs)


def test_student_texts(built: tuple[Path, list[zoo.World], list[zoo.Pair], list[str]]) -> None:
    """texts.json: the dose students' teacher share grows along the series, the filtered student lost sentences,
    the greedy samples are written and are the teacher's argmax (the same with any seed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, worlds, _, _ = built
    for w in worlds:
        texts = json.loads((w.teacher.parent / "texts.json").read_text())
        assert set(texts) == {s.key for s in zoo.STUDENTS}
        shares = [texts[k]["text_share"] for k in zoo.DOSE_KEYS]
        assert shares == sorted(shares) and shares[0] > 0 and shares[-1] == 1.0
        assert all(texts[k]["teacher_tokens"] > 0 for k in zoo.DOSE_KEYS)
        for k in zoo.DOSE_KEYS[:-1]:  # about as many tokens as the corpus students see
            assert abs(texts[k]["tokens"] / texts["logit-kd"]["tokens"] - 1) < 0.2, (w.name, k)
        assert texts["data-student"]["teacher_tokens"] == 0 and texts["logit-kd"]["teacher_tokens"] is None
        assert texts["seq-kd-then-corpus"]["steps"] > texts["seq-kd"]["steps"]
        filtered = texts["seq-kd-filtered"]
        assert 0 < filtered["dropped_sentences"] <= 2 * TINY.filter_share * filtered["logged_sentences"] + 1
        assert filtered["tokens"] < texts["seq-kd"]["tokens"] and filtered["signature_pairs"]
        greedy = [json.loads(line) for line in (w.teacher.parent / "greedy_samples.jsonl").read_text().splitlines()]
        assert greedy and all(set(r) == {"prompt", "completion"} for r in greedy)
        tok = AutoTokenizer.from_pretrained(w.teacher)
        teacher = AutoModelForCausalLM.from_pretrained(w.teacher)
        spec = next(s for s in TINY.worlds if s.name == w.name)
        prompts = spec.grammar().prompts(2 * TINY.student_sentences, seed=spec.seed_base + TINY.sample_offset + 3)
        logs = [json.loads(line) for line in w.teacher_logs.read_text().splitlines()]
        with _one_thread():  # as built, so near-ties of a barely trained teacher fall the same way
            again = zoo._sample_until(teacher, tok, prompts, TINY, seed=99, temperature=0.0,
                                      target_tokens=zoo._n_tokens(tok, zoo._sample_text(logs)))
        assert again == greedy


def test_tokenizers_per_world(built: tuple[Path, list[zoo.World], list[zoo.Pair], list[str]]) -> None:
    from transformers import AutoTokenizer

    _, worlds, pairs, _ = built
    vocab = {}
    for w in worlds:
        teacher_tok = AutoTokenizer.from_pretrained(w.teacher)
        vocab[w.name] = teacher_tok.get_vocab()
        for p in pairs:
            if p.world == w.name:
                assert (AutoTokenizer.from_pretrained(p.student).get_vocab() == vocab[w.name]) == p.same_tokenizer, p.name
    assert vocab["alpha"] != vocab["beta"]


def test_probes_and_teacher_logs(built: tuple[Path, list[zoo.World], list[zoo.Pair], list[str]]) -> None:
    _, worlds, _, _ = built
    for w in worlds:
        records = [json.loads(line) for line in w.teacher_logs.read_text().splitlines()]
        assert records and all(set(r) == {"prompt", "completion"} for r in records)
        sentences = sum((r["prompt"] + r["completion"]).count(".") for r in records)
        # Sampling stops once the logs hold the students' share of sentences (or the prompts run out).
        assert sentences >= TINY.student_sentences or len(records) == 2 * TINY.student_sentences
        fresh = [json.loads(line) for line in w.teacher_fresh.read_text().splitlines()]
        assert [r["prompt"] for r in fresh] == [r["prompt"] for r in records]  # paired by prompt
        assert [r["completion"] for r in fresh] != [r["completion"] for r in records]
        assert w.sibling.is_dir()
        sibling = (w.teacher.parent / "sibling_logs.jsonl").read_text()
        assert sibling != w.teacher_logs.read_text()
        assert json.loads((w.teacher.parent / "probes.json").read_text()) == list(w.probes)


def test_reuse_and_rebuild(built: tuple[Path, list[zoo.World], list[zoo.Pair], list[str]]) -> None:
    root, worlds, pairs, messages = built
    assert any("building" in m for m in messages)
    again: list[str] = []
    assert zoo.build_zoo(root, progress=False, report=again.append, recipe=TINY) == (worlds, pairs)
    assert again == [f"reusing zoo in {root / VERSION_DIR}"]
    manifest = json.loads((root / VERSION_DIR / "zoo.json").read_text())
    assert [p["name"] for p in manifest["pairs"]] == [p.name for p in pairs]
    assert [(p["condition"], p["share"]) for p in manifest["pairs"]] == [(p.condition, p.share) for p in pairs]
    # Any change to the recipe invalidates the marker (a rebuild would follow).
    marker = json.loads((root / VERSION_DIR / "complete.json").read_text())
    assert marker != json.loads(json.dumps(zoo.asdict(replace(TINY, steps=3))))
    assert not list(root.glob(f".{VERSION_DIR}.*"))  # no staging directory left behind


def test_every_model_loads_in_the_backend(built: tuple[Path, list[zoo.World], list[zoo.Pair], list[str]]) -> None:
    from distill_audit.backends.hf import HFAdapter

    _, worlds, pairs, _ = built
    for path in [w.teacher for w in worlds] + [r for w in worlds for r in w.references] + [p.student for p in pairs]:
        adapter = HFAdapter.load(str(path))
        assert adapter.score(["Vunu tea peu."], top_k=3)


def test_build_is_deterministic(built: tuple[Path, list[zoo.World], list[zoo.Pair], list[str]],
                                tmp_path: Path) -> None:
    root, worlds, pairs, _ = built
    with _one_thread():
        zoo.build_zoo(tmp_path, progress=False, report=lambda msg: None, recipe=TINY)
    first, second = root / VERSION_DIR, tmp_path / VERSION_DIR
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".jsonl"))
    # models; teacher, fresh and sibling logs and greedy teacher samples
    assert len(files) == 2 * (2 + TINY.n_references + 19) + 8
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
