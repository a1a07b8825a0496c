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
    assert len(pairs) == 22 and len({p.name for p in pairs}) == 22
    for w in worlds:
        mine = [p for p in pairs if p.world == w.name]
        assert sum(p.label for p in mine) == 5 and len(mine) == 11
        assert sum(not p.same_tokenizer for p in mine) == 2
        assert len(w.references) == TINY.n_references and len(w.probes) == TINY.n_probes
    assert all(p.student.is_dir() and (p.student / "config.json").exists() for p in pairs)


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
    assert again == [f"reusing zoo in {root / 'zoo-v2'}"]
    manifest = json.loads((root / "zoo-v2" / "zoo.json").read_text())
    assert [p["name"] for p in manifest["pairs"]] == [p.name for p in pairs]
    # Any change to the recipe invalidates the marker (a rebuild would follow).
    marker = json.loads((root / "zoo-v2" / "complete.json").read_text())
    assert marker != json.loads(json.dumps(zoo.asdict(replace(TINY, steps=3))))
    assert not list(root.glob(".zoo-v2.*"))  # no staging directory left behind


def test_every_model_loads_in_the_backend(built: tuple[Path, list[zoo.World], list[zoo.Pair], list[str]]) -> None:
    from audit.backends.hf import HFAdapter

    _, worlds, pairs, _ = built
    for path in [w.teacher for w in worlds] + [r for w in worlds for r in w.references] + [p.student for p in pairs]:
        adapter = HFAdapter.load(str(path))
        assert adapter.score(["Vunu tea peu."], top_k=3)


def test_build_is_deterministic(built: tuple[Path, list[zoo.World], list[zoo.Pair], list[str]],
                                tmp_path: Path) -> None:
    root, worlds, pairs, _ = built
    with _one_thread():
        zoo.build_zoo(tmp_path, progress=False, report=lambda msg: None, recipe=TINY)
    first, second = root / "zoo-v2", tmp_path / "zoo-v2"
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".jsonl"))
    assert len(files) == 2 * (2 + TINY.n_references + 11) + 6  # models; teacher, fresh and sibling logs
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
