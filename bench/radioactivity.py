"""Watermark radioactivity benchmark: how much watermarked teacher text in a student's training data shows?

    python bench/radioactivity.py [--root DIR] [--json out.json] [--threads N]

A teacher is trained on synthetic-language text (:class:`audit.synthetic.Grammar`) and writes watermarked
text with a fixed benchmark key (:mod:`audit.watermark`). Students are trained from scratch on corpus text
mixed with 0%, 1%, 5%, 10% and 50% watermarked teacher text (by tokens, every student on the same number
of tokens); the 0% students, trained with several seeds, are the null. Each student is audited by the
``watermark-radioactivity`` detector in both modes:

* reading: the student reads held-out watermarked teacher texts (written with the key, in no student's
  training data) and its top-1 predictions are scored;
* generation: the student continues probe prompts and its text is scored.

Printed: per student, the distinct tuples scored, the green fraction and the exact p-value in each mode;
then the false-positive rate of the 0% students at alpha 0.01, and the test's level measured on them with
``--null-keys`` other keys (new watermarked texts for each key in reading mode). Everything is seeded; the models are built
once under ``--root`` (a marker file holds the recipe, so a changed recipe rebuilds) and reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_audit import synthetic  # noqa: E402
from distill_audit import watermark as wm  # noqa: E402
from distill_audit.logs import LoggedOutput  # noqa: E402

BENCH_VERSION = "1"
ALPHA = 0.01


@dataclass(frozen=True)
class Recipe:
    """How every model and text is made. Changing anything here rebuilds."""

    grammar_seed: int = 0
    teacher_sentences: int = 1500
    teacher_seed: int = 1
    student_tokens: int = 40_000  # training text per student, corpus and watermarked together
    fractions: tuple[float, ...] = (0.0, 0.01, 0.05, 0.1, 0.5)
    null_seeds: int = 4  # students at 0%
    steps: int = 300
    wm_prompts: int = 600  # teacher prompts written with the watermark for training (the pool)
    held_out_prompts: int = 200  # watermarked texts no student trained on (reading mode)
    probes: int = 200  # generation mode prompts
    max_new_tokens: int = 64
    key_seed: int = 0  # the benchmark key's secret is sha256 of this, so every run is identical
    gamma: float = 0.25
    delta: float = 2.0


def _key(tok: Any, recipe: Recipe) -> wm.WatermarkKey:
    base = wm.new_key(tok, gamma=recipe.gamma, delta=recipe.delta)
    return dataclasses.replace(base, secret=hashlib.sha256(f"radioactivity bench key {recipe.key_seed}".encode()).digest())


def _students(recipe: Recipe) -> list[tuple[str, float, int]]:
    """(name, watermarked fraction, seed)."""
    out = [(f"f0-seed{s}", 0.0, 100 + s) for s in range(recipe.null_seeds)]
    out += [(f"f{f:g}", f, 200 + i) for i, f in enumerate(recipe.fractions) if f > 0]
    return out


def _mix(tok: Any, grammar: synthetic.Grammar, pool: list[str], fraction: float, total: int, seed: int) -> tuple[str, int]:
    """Training text of about ``total`` tokens, ``fraction`` of them from watermarked teacher texts (whole
    texts, in pool order), the rest corpus sentences, shuffled. Returns the text and its watermarked tokens."""
    units: list[str] = []
    marked = 0
    for text in pool:
        if marked >= fraction * total:
            break
        units.append(text)
        marked += len(synthetic.encode_corpus(tok, text))
    if marked < fraction * total:
        raise ValueError(f"the watermarked pool holds {marked} tokens, fewer than {fraction * total:.0f}")
    corpus = 0
    sentences = iter(grammar.sentences(total // 4, seed=seed))  # a sentence has at least 5 tokens: enough
    while marked + corpus < total:
        sentence = next(sentences)
        units.append(sentence)
        corpus += len(synthetic.encode_corpus(tok, " " + sentence))
    order = np.random.default_rng(seed).permutation(len(units))
    return " ".join(units[i] for i in order), marked


def build(root: Path, recipe: Recipe, say: Any = print) -> Path:
    """Build (or reuse) the teacher, the texts and the students under ``root``; returns the build directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's shard bars, one per model
    build_dir = root / f"radioactivity-v{BENCH_VERSION}"
    marker = build_dir / "complete.json"
    recipe_json = json.loads(json.dumps(asdict(recipe)))
    if marker.exists() and json.loads(marker.read_text()) == recipe_json:
        say(f"reusing models in {build_dir}")
        return build_dir
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{build_dir.name}.", dir=root))
    try:
        grammar = synthetic.Grammar(seed=recipe.grammar_seed)
        synthetic.build_tokenizer(grammar, staging / "tokenizer")
        tok = AutoTokenizer.from_pretrained(staging / "tokenizer")
        key = _key(tok, recipe)
        wm.write_key(key, staging / "key.json")

        def fit(name: str, text: str, seed: int) -> None:
            t0 = time.perf_counter()
            model = synthetic.new_model(tok, synthetic.TinyConfig(), seed=seed)
            synthetic.train(model, synthetic.encode_corpus(tok, text), synthetic.TrainPlan(steps=recipe.steps, seed=seed))
            model.save_pretrained(staging / name)
            tok.save_pretrained(staging / name)
            say(f"built {name:<12} in {time.perf_counter() - t0:4.1f}s")

        fit("teacher", grammar.text(recipe.teacher_sentences, seed=recipe.teacher_seed), recipe.teacher_seed)
        teacher = AutoModelForCausalLM.from_pretrained(staging / "teacher").eval()
        texts = {}
        for name, n, seed in (("pool", recipe.wm_prompts, 50), ("held-out", recipe.held_out_prompts, 60)):
            prompts = grammar.prompts(n, seed=seed)
            written = wm.generate_watermarked(teacher, tok, key, prompts, recipe.max_new_tokens, seed=seed)
            texts[name] = [{"prompt": p, "completion": c} for p, c in zip(prompts, written)]
            (staging / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in texts[name]))
        pool = [r["prompt"] + r["completion"] for r in texts["pool"]]
        mixes = {}
        for name, fraction, seed in _students(recipe):
            text, marked = _mix(tok, grammar, pool, fraction, recipe.student_tokens, seed)
            mixes[name] = {"fraction": fraction, "seed": seed, "watermarked_tokens": marked,
                           "tokens": len(synthetic.encode_corpus(tok, text))}
            fit(name, text, seed)
        (staging / "students.json").write_text(json.dumps(mixes, indent=1))
        marker_tmp = staging / marker.name
        marker_tmp.write_text(json.dumps(recipe_json))
        if build_dir.exists():
            shutil.rmtree(build_dir)
        os.replace(staging, build_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return build_dir


def audit_students(build_dir: Path, recipe: Recipe) -> list[dict[str, Any]]:
    """The detector on every student, in both modes, as the runner would call it."""
    from distill_audit.backends.hf import HFAdapter
    from distill_audit.cache import InferenceCache
    from distill_audit.detectors import DetectorContext, ModelHandle
    from distill_audit.detectors.radioactivity import RadioactivityParams, WatermarkRadioactivity
    from distill_audit.engine import Engine

    grammar = synthetic.Grammar(seed=recipe.grammar_seed)
    key = wm.read_key(build_dir / "key.json")
    held = tuple(LoggedOutput(r["prompt"], r["completion"], i + 1) for i, r in
                 enumerate(json.loads(line) for line in (build_dir / "held-out.jsonl").read_text().splitlines()))
    inputs = wm.WatermarkInputs(key, held, "held-out.jsonl")
    probes = tuple(grammar.prompts(recipe.probes, seed=777))
    teacher = ModelHandle("teacher", "teacher", HFAdapter.load(str(build_dir / "teacher"), name="teacher"))
    mixes = json.loads((build_dir / "students.json").read_text())
    teacher_text = wm.score_texts(key, teacher.adapter.tokenizer, held)  # type: ignore[attr-defined]
    rows: list[dict[str, Any]] = [{"student": "teacher text (held out)", "fraction": None, "reading": teacher_text.to_dict()}]
    for name, _, _ in _students(recipe):
        student = ModelHandle("student", name, HFAdapter.load(str(build_dir / name), name=name))
        row: dict[str, Any] = {"student": name, **mixes[name]}
        for mode in ("reading", "generation"):
            ctx = DetectorContext(teacher, student, (), probes, 0, Engine(InferenceCache(None)), watermark=inputs)
            ev = WatermarkRadioactivity(RadioactivityParams(mode=mode, max_new_tokens=recipe.max_new_tokens)).run(ctx)
            row[mode] = {"n_scored": ev.n, "green_fraction": ev.details["green_fraction"], "p_value": ev.p_value,
                         "ci": [ev.ci_low, ev.ci_high], "n_duplicates": ev.details["n_duplicates"],
                         "n_in_prompt": ev.details["n_in_prompt"]}
        rows.append(row)
    return rows


def null_level(build_dir: Path, recipe: Recipe, n_keys: int) -> dict[str, dict[str, float]]:
    """The test's level on the 0% students over ``n_keys`` other keys: for each key the teacher writes new
    held-out watermarked texts (reading mode) and the students' continuations are scored (generation mode)."""
    from transformers import AutoModelForCausalLM

    from distill_audit.backends.hf import HFAdapter
    from distill_audit.cache import InferenceCache
    from distill_audit.detectors import DetectorContext, ModelHandle
    from distill_audit.detectors.radioactivity import RadioactivityParams, WatermarkRadioactivity
    from distill_audit.engine import Engine

    grammar = synthetic.Grammar(seed=recipe.grammar_seed)
    base = wm.read_key(build_dir / "key.json")
    teacher = ModelHandle("teacher", "teacher", HFAdapter.load(str(build_dir / "teacher"), name="teacher"))
    teacher_model = AutoModelForCausalLM.from_pretrained(build_dir / "teacher").eval()
    nulls = [(ModelHandle("student", name, HFAdapter.load(str(build_dir / name), name=name)), Engine(InferenceCache(None)))
             for name, fraction, _ in _students(recipe) if fraction == 0.0]
    prompts = grammar.prompts(recipe.held_out_prompts, seed=60)
    probes = tuple(grammar.prompts(recipe.probes, seed=777))
    found: dict[str, list[tuple[float, float]]] = {"reading": [], "generation": []}
    for k in range(n_keys):
        key = dataclasses.replace(base, secret=hashlib.sha256(f"radioactivity bench null key {k}".encode()).digest())
        written = wm.generate_watermarked(teacher_model, teacher.adapter.tokenizer, key, prompts,  # type: ignore[attr-defined]
                                          recipe.max_new_tokens, seed=1000 + k)
        inputs = wm.WatermarkInputs(key, tuple(LoggedOutput(p, c) for p, c in zip(prompts, written)))
        for student, engine in nulls:  # one engine per student: its continuations are drawn once for all keys
            ctx = DetectorContext(teacher, student, (), probes, 0, engine, watermark=inputs)
            for mode in found:
                ev = WatermarkRadioactivity(RadioactivityParams(mode=mode, max_new_tokens=recipe.max_new_tokens)).run(ctx)
                found[mode].append((ev.p_value, ev.details["green_fraction"]))
    return {mode: {"audits": len(v), "keys": n_keys, "reject_0.05": float(np.mean([p < 0.05 for p, _ in v])),
                   "reject_0.01": float(np.mean([p < 0.01 for p, _ in v])),
                   "mean_green_fraction": float(np.mean([g for _, g in v]))} for mode, v in found.items()}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'student':<24} {'wm tokens':>10}   {'reading: n':>10} {'green':>6} {'p':>9}   "
             f"{'generation: n':>13} {'green':>6} {'p':>9}"]
    for r in rows:
        if r["fraction"] is None:
            t = r["reading"]
            lines.append(f"{r['student']:<24} {'':>10}   {t['n_scored']:>10} {t['green_fraction']:>6.3f} "
                         f"{t['p_value']:>9.2g}")
            continue
        cells = []
        for mode, width in (("reading", 10), ("generation", 13)):
            m = r[mode]
            cells.append(f"{m['n_scored']:>{width}} {m['green_fraction']:>6.3f} {m['p_value']:>9.2g}")
        share = f"{r['watermarked_tokens'] / r['tokens']:.1%}"
        lines.append(f"{r['student'] + ' (' + format(r['fraction'], '.0%') + ')':<24} {share:>10}   "
                     + "   ".join(cells))
    null = [r for r in rows if r["fraction"] == 0.0]
    for mode in ("reading", "generation"):
        hits = sum(r[mode]["p_value"] < ALPHA for r in null)
        lines.append(f"FPR at alpha {ALPHA:g}, {mode} mode: {hits}/{len(null)} students trained on 0% watermarked text")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="where the models are built and reused [default: the user cache directory]")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch CPU threads (models are bit-identical only for the same thread count)")
    parser.add_argument("--null-keys", type=int, default=25,
                        help="other keys the 0%% students are audited with, to measure the test's level")
    args = parser.parse_args(argv)
    import torch

    from distill_audit.cli import default_cache_dir

    torch.set_num_threads(args.threads)
    recipe = Recipe()
    root = args.root or default_cache_dir() / "bench"
    t0 = time.perf_counter()
    build_dir = build(root, recipe, say=lambda msg: print(msg, file=sys.stderr))
    t_build = time.perf_counter() - t0
    rows = audit_students(build_dir, recipe)
    print(table(rows))
    level = null_level(build_dir, recipe, args.null_keys)
    for mode, v in level.items():
        print(f"level, {mode} mode, 0% students x {v['keys']} other keys ({v['audits']} audits): rejected at 0.05: "
              f"{v['reject_0.05']:.3f}, at 0.01: {v['reject_0.01']:.3f}; mean green fraction "
              f"{v['mean_green_fraction']:.3f} (gamma {recipe.gamma:g})")
    print(f"(build {t_build:.0f}s, audits {time.perf_counter() - t0 - t_build:.0f}s; models in {build_dir})")
    if args.json is not None:
        args.json.write_text(json.dumps({"recipe": asdict(recipe), "rows": rows, "null_level": level}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
