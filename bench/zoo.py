"""A labelled zoo of teacher/student pairs on synthetic languages, for benchmarking distillation detectors.

    python -m bench.zoo --root DIR [--agreement] [--threads N]

Two worlds, each with its own language (a :class:`~audit.synthetic.Grammar`) and its own teacher
tokenizer kind (alpha: byte-level BPE, beta: Unigram). In each world: a teacher T, a sibling teacher T'
(same text as T, another init seed), four independent references and eleven students, five distilled
from T (label 1) and six not (label 0, among them hard negatives distilled from T'). Everything is
seeded; the zoo is built once under ``DIR`` (staging directory renamed at the end, marker file with the
recipe, so a changed recipe rebuilds) and reused afterwards. Every model directory holds
``save_pretrained`` weights plus its tokenizer, so ``HFAdapter.load(dir)`` opens it.

Students: (a) logit KD, (b) sequence KD on text sampled from T, (c) half T-sampled text and half corpus
text, (d) sequence KD into another tokenizer, (e) logit KD into GPT-2; controls: (f) independent,
(g) independent GPT-2, (h) the other world's corpus with this world's tokenizer, (i) logit KD from T',
(j) sequence KD from T', (k) independent with the other tokenizer. ``World.teacher_logs`` holds the
(prompt, completion) pairs sampled from T that (b) and (d) trained on ((c) on a prefix of them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit import synthetic  # noqa: E402

ZOO_VERSION = "2"


@dataclass(frozen=True)
class World:
    name: str  # e.g. "alpha", "beta"
    teacher: Path  # checkpoint dir
    references: tuple[Path, ...]  # independent reference models (teacher's tokenizer, same language)
    probes: tuple[str, ...]  # probe prompts (sentence openings) not used in any training
    teacher_logs: Path  # JSONL of {"prompt", "completion"}: the teacher samples the sequence-KD students trained on
    teacher_fresh: Path  # JSONL: fresh teacher samples for the logged prompts, drawn and cut exactly as the logs were
    sibling: Path  # trained on the teacher's exact text in the same order, another init: a data-matched reference


@dataclass(frozen=True)
class Pair:
    name: str  # unique, e.g. "alpha/logit-kd"
    world: str  # World.name; the teacher of the pair is that world's teacher
    student: Path
    label: int  # 1 distilled from the world's teacher, 0 not
    kind: str  # short description, e.g. "logit KD", "sequence KD, other tokenizer"
    same_tokenizer: bool  # student shares the teacher's tokenizer


@dataclass(frozen=True)
class WorldSpec:
    name: str
    grammar_seed: int
    n_words: int
    n_topics: int
    n_successors: int
    tokenizer: str  # the teacher's tokenizer kind; the "other" kind is the remaining one
    seed_base: int  # model/text seeds are seed_base + small offsets, disjoint across worlds

    def grammar(self) -> synthetic.Grammar:
        return synthetic.Grammar(seed=self.grammar_seed, n_words=self.n_words, n_topics=self.n_topics,
                                 n_successors=self.n_successors)

    @property
    def other_tokenizer(self) -> str:
        return next(k for k in synthetic.TOKENIZER_KINDS if k != self.tokenizer)


@dataclass(frozen=True)
class ZooRecipe:
    """How each zoo model is made. Changing anything here rebuilds the zoo."""

    worlds: tuple[WorldSpec, ...] = (
        WorldSpec("alpha", grammar_seed=11, n_words=96, n_topics=8, n_successors=5, tokenizer="bpe", seed_base=1000),
        WorldSpec("beta", grammar_seed=22, n_words=128, n_topics=6, n_successors=4, tokenizer="unigram", seed_base=2000),
    )
    sentences: int = 1500  # per independently trained model (teachers, references, controls)
    student_sentences: int = 3000  # text each student sees (corpus or teacher samples)
    steps: int = 300
    n_references: int = 6  # the panel t test has n_references - 1 degrees of freedom: power grows with each
    n_probes: int = 100
    probe_offset: int = 777  # probe prompt seed = seed_base + probe_offset
    sample_offset: int = 500  # teacher sample prompt seed = seed_base + sample_offset; sibling's + 1
    sample_chunk: int = 64  # prompts sampled per call, until the samples hold student_sentences sentences
    max_new_tokens: int = 96
    temperature: float = 1.0


@dataclass(frozen=True)
class _Student:
    key: str
    label: int
    kind: str
    text: str  # corpus | teacher-samples | mix | other-corpus | sibling-samples
    teacher: str | None = None  # teacher | sibling (logit KD)
    tokenizer: str = "teacher"  # teacher | other
    arch: str = "llama"
    student_size: bool = True  # student_sentences of text (else sentences, like an independent model)


STUDENTS: tuple[_Student, ...] = (
    _Student("logit-kd", 1, "logit KD", "corpus", teacher="teacher"),
    _Student("seq-kd", 1, "sequence KD", "teacher-samples"),
    _Student("seq-kd-mix", 1, "sequence KD, 50/50 with corpus text", "mix"),
    _Student("seq-kd-other-tok", 1, "sequence KD, other tokenizer", "teacher-samples", tokenizer="other"),
    _Student("logit-kd-gpt2", 1, "logit KD, gpt2 architecture", "corpus", teacher="teacher", arch="gpt2"),
    _Student("independent", 0, "independent, same corpus", "corpus", student_size=False),
    _Student("independent-gpt2", 0, "independent, gpt2 architecture", "corpus", arch="gpt2", student_size=False),
    _Student("other-corpus", 0, "independent, other world's corpus, same tokenizer", "other-corpus", student_size=False),
    _Student("sibling-logit-kd", 0, "logit KD from sibling teacher", "corpus", teacher="sibling"),
    _Student("sibling-seq-kd", 0, "sequence KD from sibling teacher", "sibling-samples"),
    _Student("independent-other-tok", 0, "independent, other tokenizer", "corpus", tokenizer="other", student_size=False),
)


def _recipe_json(recipe: ZooRecipe) -> Any:
    return json.loads(json.dumps(asdict(recipe)))


def _probes(spec: WorldSpec, recipe: ZooRecipe) -> tuple[str, ...]:
    return tuple(spec.grammar().prompts(recipe.n_probes, seed=spec.seed_base + recipe.probe_offset))


def _layout(build_dir: Path, recipe: ZooRecipe) -> tuple[list[World], list[Pair]]:
    worlds, pairs = [], []
    for spec in recipe.worlds:
        wdir = build_dir / spec.name
        worlds.append(World(
            name=spec.name,
            teacher=wdir / "teacher",
            references=tuple(wdir / f"reference-{i + 1}" for i in range(recipe.n_references)),
            probes=_probes(spec, recipe),
            teacher_logs=wdir / "teacher_logs.jsonl",
            teacher_fresh=wdir / "teacher_fresh.jsonl",
            sibling=wdir / "sibling",
        ))
        for s in STUDENTS:
            pairs.append(Pair(name=f"{spec.name}/{s.key}", world=spec.name, student=wdir / s.key, label=s.label,
                              kind=s.kind, same_tokenizer=s.tokenizer == "teacher"))
    return worlds, pairs


def _sample_until(model: Any, tokenizer: Any, prompts: list[str], recipe: ZooRecipe, seed: int,
                  target_sentences: int) -> list[dict[str, str]]:
    """Teacher samples, one chunk of prompts at a time, until they hold ``target_sentences`` sentences.

    Each completion is cut after its last full stop, so the joined training text stays sentence-aligned;
    a completion with no full stop is kept whole."""
    records: list[dict[str, str]] = []
    count = 0
    for chunk_no, start in enumerate(range(0, len(prompts), recipe.sample_chunk)):
        chunk = prompts[start : start + recipe.sample_chunk]
        completions = synthetic.sample_texts(model, tokenizer, chunk, recipe.max_new_tokens,
                                             seed=seed * 1000 + chunk_no, temperature=recipe.temperature)
        for prompt, completion in zip(chunk, completions):
            completion = _cut(completion)
            records.append({"prompt": prompt, "completion": completion})
            count += (prompt + completion).count(".")
            if count >= target_sentences:
                return records
    return records  # every prompt used: a weak teacher writes few full stops


def _cut(completion: str) -> str:
    """After the last full stop, if there is one: the logs' post-processing, which fresh samples must share."""
    return completion[: completion.rindex(".") + 1] if "." in completion else completion


def _fresh(model: Any, tokenizer: Any, records: list[dict[str, str]], recipe: ZooRecipe, seed: int) -> list[dict[str, str]]:
    """Fresh teacher answers to the logged prompts, sampled and cut exactly as the logs were (another seed)."""
    prompts = [r["prompt"] for r in records]
    completions = synthetic.sample_texts(model, tokenizer, prompts, recipe.max_new_tokens, seed=seed,
                                         temperature=recipe.temperature)
    return [{"prompt": p, "completion": _cut(c)} for p, c in zip(prompts, completions)]


def _sample_text(records: list[dict[str, str]]) -> str:
    return " ".join(r["prompt"] + r["completion"] for r in records)


def _prefix_with_sentences(records: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    count = 0
    for i, r in enumerate(records):
        count += (r["prompt"] + r["completion"]).count(".")
        if count >= n:
            return records[: i + 1]
    return records


def _write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _fit(wdir: Path, name: str, tokenizer: Any, seed: int, text: str, recipe: ZooRecipe, on_step: Callable[[], None],
         say: Callable[[str], None], arch: str = "llama", teacher: Any = None, init_seed: int | None = None) -> Any:
    """Train one tiny model (init seed ``init_seed`` or ``seed``; data order ``seed``) and save it with its tokenizer."""
    t0 = time.perf_counter()
    model = synthetic.new_model(tokenizer, synthetic.TinyConfig(arch=arch), seed=seed if init_seed is None else init_seed)
    plan = synthetic.TrainPlan(steps=recipe.steps, seed=seed)
    model = synthetic.train(model, synthetic.encode_corpus(tokenizer, text), plan, teacher=teacher, on_step=on_step)
    model.save_pretrained(wdir / name)
    tokenizer.save_pretrained(wdir / name)
    say(f"built {wdir.name}/{name:<22} in {time.perf_counter() - t0:4.1f}s")
    return model


def _build_world(wdir: Path, spec: WorldSpec, other_spec: WorldSpec, recipe: ZooRecipe,
                 on_step: Callable[[], None], say: Callable[[str], None]) -> None:
    from transformers import AutoTokenizer

    grammar, base = spec.grammar(), spec.seed_base
    wdir.mkdir()
    tokenizers = {}
    for role, kind in (("teacher", spec.tokenizer), ("other", spec.other_tokenizer)):
        synthetic.build_tokenizer(grammar, wdir / f"tokenizer-{kind}", kind=kind)
        tokenizers[role] = AutoTokenizer.from_pretrained(wdir / f"tokenizer-{kind}")
    tok = tokenizers["teacher"]

    teacher_text = grammar.text(recipe.sentences, seed=base + 1)
    teacher = _fit(wdir, "teacher", tok, base + 1, teacher_text, recipe, on_step, say)
    # The sibling: same text in the same order, another init.
    sibling = _fit(wdir, "sibling", tok, base + 1, teacher_text, recipe, on_step, say, init_seed=base + 2)
    for i in range(recipe.n_references):
        _fit(wdir, f"reference-{i + 1}", tok, base + 10 + i, grammar.text(recipe.sentences, seed=base + 10 + i),
             recipe, on_step, say)

    t0 = time.perf_counter()
    samples = {}
    for role, model, seed in (("teacher", teacher, base + recipe.sample_offset),
                              ("sibling", sibling, base + recipe.sample_offset + 1)):
        prompts = grammar.prompts(2 * recipe.student_sentences, seed=seed)  # sampling stops at the target
        samples[role] = _sample_until(model, tok, prompts, recipe, seed, recipe.student_sentences)
    _write_jsonl(wdir / "teacher_logs.jsonl", samples["teacher"])
    _write_jsonl(wdir / "teacher_fresh.jsonl", _fresh(teacher, tok, samples["teacher"], recipe,
                                                      base + recipe.sample_offset + 2))
    _write_jsonl(wdir / "sibling_logs.jsonl", samples["sibling"])
    say(f"sampled {spec.name} teacher and sibling logs ({len(samples['teacher'])} and "
        f"{len(samples['sibling'])} prompts) in {time.perf_counter() - t0:4.1f}s")
    (wdir / "probes.json").write_text(json.dumps(list(_probes(spec, recipe)), indent=1))

    for index, s in enumerate(STUDENTS):
        seed = base + 20 + index
        n = recipe.student_sentences if s.student_size else recipe.sentences
        if s.text == "corpus":
            text = grammar.text(n, seed=seed)
        elif s.text == "other-corpus":
            text = other_spec.grammar().text(n, seed=seed)
        elif s.text == "teacher-samples":
            text = _sample_text(samples["teacher"])
        elif s.text == "sibling-samples":
            text = _sample_text(samples["sibling"])
        elif s.text == "mix":
            half = _prefix_with_sentences(samples["teacher"], n // 2)
            units = [r["prompt"] + r["completion"] for r in half] + grammar.sentences(n - n // 2, seed=seed)
            order = np.random.default_rng(seed).permutation(len(units))
            text = " ".join(units[i] for i in order)
        else:
            raise AssertionError(s.text)
        kd_teacher = {"teacher": teacher, "sibling": sibling, None: None}[s.teacher]
        _fit(wdir, s.key, tokenizers[s.tokenizer], seed, text, recipe, on_step, say, arch=s.arch, teacher=kd_teacher)


def build_zoo(root: Path, progress: bool | None = None, report: Callable[[str], None] = print,
              recipe: ZooRecipe = ZooRecipe()) -> tuple[list[World], list[Pair]]:
    """Build (or reuse) the zoo under ``root``; returns its worlds and its labelled pairs.

    ``progress``: a training progress bar on stderr (None: only when stderr is a terminal)."""
    root = Path(root)
    build_dir = root / f"zoo-v{ZOO_VERSION}"
    marker = build_dir / "complete.json"
    worlds, pairs = _layout(build_dir, recipe)
    root.mkdir(parents=True, exist_ok=True)
    if marker.exists() and json.loads(marker.read_text()) == _recipe_json(recipe):
        report(f"reusing zoo in {build_dir}")
        return worlds, pairs
    n_models = len(recipe.worlds) * (2 + recipe.n_references + len(STUDENTS))
    report(f"building {n_models} zoo models in {build_dir} (first run only, a few minutes on a CPU)")
    bar = tqdm(total=recipe.steps * n_models, desc="training zoo models", unit="step", leave=False,
               disable=(not progress) if progress is not None else None)
    staging = Path(tempfile.mkdtemp(prefix=f".{build_dir.name}.", dir=root))
    from transformers.utils import logging as hf_logging

    hf_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # save_pretrained's shard bars would break through ours

    def say(msg: str) -> None:
        with tqdm.external_write_mode():  # a line above the bar, not through it
            report(msg)

    try:
        for w_index, spec in enumerate(recipe.worlds):
            _build_world(staging / spec.name, spec, recipe.worlds[(w_index + 1) % len(recipe.worlds)], recipe,
                         on_step=lambda: bar.update(1), say=say)
        bar.close()
        manifest = {
            "recipe": _recipe_json(recipe),
            "worlds": [{"name": w.name, "teacher": w.teacher.relative_to(build_dir).as_posix(),
                        "sibling": f"{w.name}/sibling",
                        "references": [p.relative_to(build_dir).as_posix() for p in w.references],
                        "probes": f"{w.name}/probes.json", "teacher_logs": f"{w.name}/teacher_logs.jsonl",
                        "teacher_fresh": f"{w.name}/teacher_fresh.jsonl",
                        "sibling_logs": f"{w.name}/sibling_logs.jsonl"} for w in worlds],
            "pairs": [{**asdict(p), "student": p.student.relative_to(build_dir).as_posix()} for p in pairs],
        }
        (staging / "zoo.json").write_text(json.dumps(manifest, indent=1))
        (staging / marker.name).write_text(json.dumps(_recipe_json(recipe)))
        if build_dir.exists():
            shutil.rmtree(build_dir)
        os.replace(staging, build_dir)
    except BaseException:
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if hf_bars:
            hf_logging.enable_progress_bar()
    return worlds, pairs


def teacher_agreement(world: World, students: dict[str, Path], n_texts: int = 100,
                      seed: int = 4242) -> dict[str, tuple[float, float]]:
    """A sanity check, not a detector: for each same-tokenizer model, the fraction of positions where its
    next-token argmax equals the teacher's, on (probe + teacher continuation) and on the teacher logs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world.teacher)
    teacher = AutoModelForCausalLM.from_pretrained(world.teacher).eval()
    probes = list(world.probes[:n_texts])
    held_out = [p + c for p, c in zip(probes, synthetic.sample_texts(teacher, tok, probes, 48, seed=seed))]
    logs = [json.loads(line) for line in world.teacher_logs.read_text().splitlines()[:n_texts]]
    train_texts = [r["prompt"] + r["completion"] for r in logs]

    def argmaxes(model: Any, texts: list[str]) -> tuple[Any, Any]:
        enc = tok(texts, add_special_tokens=True, padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        mask = enc["attention_mask"].bool().clone()
        mask[:, 0] = False  # the prediction after <s> alone says little
        return logits.argmax(-1), mask

    ref = {name: argmaxes(teacher, texts) for name, texts in (("held", held_out), ("train", train_texts))}
    out = {}
    for name, path in students.items():
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        scores = []
        for key, texts in (("held", held_out), ("train", train_texts)):
            t_arg, mask = ref[key]
            s_arg, _ = argmaxes(model, texts)
            scores.append(float((s_arg == t_arg)[mask].float().mean()))
        out[name] = (scores[0], scores[1])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="cache directory for the zoo")
    parser.add_argument("--agreement", action="store_true",
                        help="also print each same-tokenizer model's argmax agreement with its teacher")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch CPU threads (models are bit-identical only for the same thread count)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    worlds, pairs = build_zoo(args.root, report=lambda msg: print(msg, file=sys.stderr))
    elapsed = time.perf_counter() - t0
    for p in pairs:
        print(f"{p.name:<30} label={p.label} same_tokenizer={str(p.same_tokenizer):<5} {p.kind}")
    print(f"zoo: {len(worlds)} worlds, {len(pairs)} pairs in {args.root} ({elapsed:.1f}s)")
    if args.agreement:
        for w in worlds:
            wdir = w.teacher.parent
            models = {"sibling (0)": wdir / "sibling"}
            models.update({f"{r.name} (ref)": r for r in w.references})
            models.update({f"{p.name.split('/')[1]} ({p.label})": p.student for p in pairs
                           if p.world == w.name and p.same_tokenizer})
            print(f"\n{w.name}: argmax agreement with teacher   held-out probe text   teacher-log text")
            for name, (held, train) in teacher_agreement(w, models).items():
                print(f"  {name:<28} {held:18.3f} {train:18.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
