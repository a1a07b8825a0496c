"""A labelled zoo of teacher/student pairs on synthetic languages, for benchmarking distillation detectors.

    python -m bench.zoo --root DIR [--agreement] [--threads N]

Two worlds, each with its own language (a :class:`~audit.synthetic.Grammar`) and its own teacher
tokenizer kind (alpha: byte-level BPE, beta: Unigram). In each world: a teacher T, a sibling teacher T'
(same text as T, another init seed), six independent references and nineteen students, twelve distilled
from T (label 1) and seven not (label 0, among them hard negatives that share T's data or are distilled
from T'). Everything is seeded; the zoo is built once under ``DIR`` (staging directory renamed at the
end, marker file with the recipe, so a changed recipe rebuilds) and reused afterwards. Every model
directory holds ``save_pretrained`` weights plus its tokenizer, so ``HFAdapter.load(dir)`` opens it.

Each student has a condition and a share (the teacher-output share of its training tokens; None for
logit KD, where every token carries the teacher's distribution):

* direct (label 1): logit KD (None); sequence KD on text sampled from T (1.0); sequence KD into the
  other tokenizer (1.0); logit KD into GPT-2 (None).
* dose-response (label 1): ``dose-01``, ``dose-05``, ``dose-10``, ``dose-25`` and ``seq-kd-mix``: teacher
  log records (in log order, so the logs hold what they saw) making up 1, 5, 10, 25 and 50% of the
  training tokens (counted with T's tokenizer), the rest corpus sentences, shuffled by unit (record or
  sentence); as many tokens in all as a corpus text of ``student_sentences`` sentences. With ``seq-kd``
  (100%) they form the dose series :data:`DOSE_KEYS`.
* disguised (label 1): ``seq-kd-then-corpus`` (sequence KD on the logs, then the same model trained
  on corpus text for half as many steps again; share = its teacher steps over all its steps);
  ``seq-kd-filtered`` (sequence KD on the logs with T's signature phrases removed: word pairs ranked by
  how far above the language's own rate (from a corpus sample) T's logged sentences use them, and every
  logged sentence holding one of the top pairs dropped, pair after pair, until ``filter_share`` of the
  logged sentences are gone; the analogue of stripping a teacher's identity statements and pet phrases
  before training on its outputs: the blatant tells go, the teacher's milder preferences stay);
  ``seq-kd-greedy`` (sequence KD on greedy, temperature-0 teacher continuations of fresh prompts,
  as many tokens as the logs; written to ``greedy_samples.jsonl``, not in the logs).
* negative (label 0): independent (Llama and GPT-2), the other world's corpus with this world's
  tokenizer, independent with the other tokenizer (share 0).
* hard-negative (label 0): logit KD and sequence KD from T' (share 0 of T's output), and
  ``data-student``: trained on T's own training text (the same sentences, not T's outputs), with its
  own init and data order (share 0).

``World.teacher_logs`` holds the (prompt, completion) pairs sampled from T that the sequence-KD students
trained on (the dose-response ones on a prefix of them, the filtered one on a subset). Each world's
``texts.json`` records, per student, the tokens it trained on and how many of them came from T.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
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

from distill_audit import synthetic  # noqa: E402

ZOO_VERSION = "3"


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
    condition: str  # direct | dose-response | disguised | negative | hard-negative
    share: float | None  # teacher-output share of the student's training tokens; None: not meaningful (logit KD)


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
    continue_fraction: float = 0.5  # seq-kd-then-corpus: corpus steps after sequence KD, as a share of steps
    filter_share: float = 0.2  # seq-kd-filtered: share of the logged sentences dropped (the most teacher-like)
    # greedy teacher prompts: seed_base + sample_offset + 3 (fresh answers to the logs use + 2)


@dataclass(frozen=True)
class _Student:
    key: str
    label: int
    condition: str  # direct | dose-response | disguised | negative | hard-negative
    kind: str
    # corpus | teacher-samples | mix | other-corpus | sibling-samples | teacher-text | filtered-samples | greedy-samples
    text: str
    share: float | None = None  # teacher-output share of the text's tokens (mix: the dose); None: logit KD
    teacher: str | None = None  # teacher | sibling (logit KD)
    tokenizer: str = "teacher"  # teacher | other
    arch: str = "llama"
    student_size: bool = True  # student_sentences of text (else sentences, like an independent model)
    then_corpus: bool = False  # afterwards trained on corpus text for continue_fraction * steps more steps


# Existing students keep their place (their seeds are seed_base + 20 + index); new ones go at the end.
STUDENTS: tuple[_Student, ...] = (
    _Student("logit-kd", 1, "direct", "logit KD", "corpus", teacher="teacher"),
    _Student("seq-kd", 1, "direct", "sequence KD", "teacher-samples", share=1.0),
    _Student("seq-kd-mix", 1, "dose-response", "sequence KD, 50% of tokens teacher text", "mix", share=0.5),
    _Student("seq-kd-other-tok", 1, "direct", "sequence KD, other tokenizer", "teacher-samples", share=1.0,
             tokenizer="other"),
    _Student("logit-kd-gpt2", 1, "direct", "logit KD, gpt2 architecture", "corpus", teacher="teacher", arch="gpt2"),
    _Student("independent", 0, "negative", "independent, same corpus", "corpus", share=0.0, student_size=False),
    _Student("independent-gpt2", 0, "negative", "independent, gpt2 architecture", "corpus", share=0.0, arch="gpt2",
             student_size=False),
    _Student("other-corpus", 0, "negative", "independent, other world's corpus, same tokenizer", "other-corpus",
             share=0.0, student_size=False),
    _Student("sibling-logit-kd", 0, "hard-negative", "logit KD from sibling teacher", "corpus", share=0.0,
             teacher="sibling"),
    _Student("sibling-seq-kd", 0, "hard-negative", "sequence KD from sibling teacher", "sibling-samples", share=0.0),
    _Student("independent-other-tok", 0, "negative", "independent, other tokenizer", "corpus", share=0.0,
             tokenizer="other", student_size=False),
    _Student("dose-01", 1, "dose-response", "sequence KD, 1% of tokens teacher text", "mix", share=0.01),
    _Student("dose-05", 1, "dose-response", "sequence KD, 5% of tokens teacher text", "mix", share=0.05),
    _Student("dose-10", 1, "dose-response", "sequence KD, 10% of tokens teacher text", "mix", share=0.10),
    _Student("dose-25", 1, "dose-response", "sequence KD, 25% of tokens teacher text", "mix", share=0.25),
    _Student("seq-kd-then-corpus", 1, "disguised", "sequence KD, then trained on corpus text", "teacher-samples",
             share=1.0, then_corpus=True),
    _Student("seq-kd-filtered", 1, "disguised", "sequence KD, teacher's signature phrases filtered out",
             "filtered-samples", share=1.0),
    _Student("seq-kd-greedy", 1, "disguised", "sequence KD on greedy (temperature 0) teacher text", "greedy-samples",
             share=1.0),
    _Student("data-student", 0, "hard-negative", "trained on the teacher's own training text", "teacher-text",
             share=0.0),
)
CONDITIONS = ("direct", "dose-response", "disguised", "negative", "hard-negative")
DOSE_KEYS = ("dose-01", "dose-05", "dose-10", "dose-25", "seq-kd-mix", "seq-kd")  # the dose series, by share


def _continue_steps(recipe: ZooRecipe) -> int:
    return max(1, round(recipe.continue_fraction * recipe.steps))


def _steps(s: _Student, recipe: ZooRecipe) -> int:
    return recipe.steps + (_continue_steps(recipe) if s.then_corpus else 0)


def _pair_share(s: _Student, recipe: ZooRecipe) -> float | None:
    """The teacher-output share of the tokens the student trained on (a continued student: of its steps)."""
    if s.share is None or not s.then_corpus:
        return s.share
    return s.share * recipe.steps / _steps(s, recipe)


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
                              kind=s.kind, same_tokenizer=s.tokenizer == "teacher", condition=s.condition,
                              share=_pair_share(s, recipe)))
    return worlds, pairs


def _sample_until(model: Any, tokenizer: Any, prompts: list[str], recipe: ZooRecipe, seed: int,
                  target_sentences: int | None = None, target_tokens: int | None = None,
                  temperature: float | None = None) -> list[dict[str, str]]:
    """Teacher samples, one chunk of prompts at a time, until they hold ``target_sentences`` sentences (or
    ``target_tokens`` tokens of ``tokenizer``, counted as in the joined training text).

    Each completion is cut after its last full stop, so the joined training text stays sentence-aligned;
    a completion with no full stop is kept whole. ``temperature``: the recipe's unless given (0: greedy)."""
    records: list[dict[str, str]] = []
    count = 0
    for chunk_no, start in enumerate(range(0, len(prompts), recipe.sample_chunk)):
        chunk = prompts[start : start + recipe.sample_chunk]
        completions = synthetic.sample_texts(model, tokenizer, chunk, recipe.max_new_tokens, seed=seed * 1000 + chunk_no,
                                             temperature=recipe.temperature if temperature is None else temperature)
        for prompt, completion in zip(chunk, completions):
            completion = _cut(completion)
            records.append({"prompt": prompt, "completion": completion})
            if target_tokens is not None:
                count += _n_tokens(tokenizer, " " + prompt + completion)
                if count >= target_tokens:
                    return records
            else:
                count += (prompt + completion).count(".")
                if target_sentences is not None and count >= target_sentences:
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


def _n_tokens(tokenizer: Any, text: str) -> int:
    return len(synthetic.encode_corpus(tokenizer, text))


def _mix(tokenizer: Any, records: list[dict[str, str]], grammar: synthetic.Grammar, share: float, n: int,
         seed: int) -> tuple[str, int]:
    """Training text with as many tokens as a corpus text of ``n`` sentences, ``share`` of them from teacher log
    records (whole records, in log order, as near the share as whole records get, one at least), the rest corpus
    sentences, shuffled by unit. Tokens are counted with ``tokenizer`` (the teacher's), each unit as it sits in the joined
    text (after a space). Returns the text and its teacher tokens."""
    corpus = grammar.sentences(2 * n, seed=seed)  # the first n are grammar.text(n, seed): the size reference
    total = _n_tokens(tokenizer, " ".join(corpus[:n]))
    target = share * total
    units: list[str] = []
    teacher_tokens = 0
    for r in records:
        unit = r["prompt"] + r["completion"]
        size = _n_tokens(tokenizer, " " + unit)
        if units and teacher_tokens + size / 2 > target:  # overshooting by more than leaving it out falls short
            break
        units.append(unit)
        teacher_tokens += size
    if len(units) == len(records) and teacher_tokens < 0.95 * target:
        raise ValueError(f"the teacher logs hold {teacher_tokens} tokens, fewer than {target:.0f}")
    corpus_tokens = 0
    for sentence in corpus:
        if teacher_tokens + corpus_tokens >= total:
            break
        units.append(sentence)
        corpus_tokens += _n_tokens(tokenizer, " " + sentence)
    order = np.random.default_rng(seed).permutation(len(units))
    return " ".join(units[i] for i in order), teacher_tokens


def _sentences(text: str) -> list[str]:
    return [x for x in re.split(r"(?<=\.)\s+", text.strip()) if x]


def _word_pairs(sentence: str) -> set[tuple[str, str]]:
    words = sentence.rstrip(".").split()
    return set(zip(words, words[1:]))


def _filter_signature(records: list[dict[str, str]], grammar: synthetic.Grammar, drop_share: float,
                      seed: int) -> tuple[list[str], dict[str, Any]]:
    """The logged sentences with the teacher's signature phrases taken out.

    Word pairs are ranked by how far the number of logged sentences holding them, t, lies above the number
    expected from the language, e (a corpus sample of 4 times as many sentences, its count divided by 4), in
    standard errors: (t - e) / sqrt(t + e / 4), so frequent strong preferences of the teacher come first. Every
    sentence holding the top pair is dropped, then the next pair's, until ``drop_share`` of the sentences are
    gone (a pair that would take the dropped share past twice that is passed over). Returns the kept sentences,
    in log order, and what was done."""
    from collections import Counter

    sentences = [x for r in records for x in _sentences(r["prompt"] + r["completion"])]
    logged = [_word_pairs(x) for x in sentences]
    in_logs: Counter[tuple[str, str]] = Counter(p for pairs in logged for p in pairs)
    k = 4
    in_corpus: Counter[tuple[str, str]] = Counter(
        p for x in grammar.sentences(k * len(sentences), seed=seed) for p in _word_pairs(x))

    def z(pair: tuple[str, str]) -> float:
        t, e = in_logs[pair], in_corpus[pair] / k
        return (t - e) / math.sqrt(t + e / k)

    ranked = sorted((p for p in in_logs if z(p) > 0), key=lambda p: (-z(p), p))
    target = drop_share * len(sentences)
    dropped: set[int] = set()
    chosen: list[tuple[str, str]] = []
    for pair in ranked:
        if len(dropped) >= target:
            break
        hit = {i for i, pairs in enumerate(logged) if pair in pairs} - dropped
        if len(dropped) + len(hit) > 2 * target:
            continue
        dropped |= hit
        chosen.append(pair)
    kept = [x for i, x in enumerate(sentences) if i not in dropped]
    info = {"logged_sentences": len(sentences), "dropped_sentences": len(dropped),
            "signature_pairs": [" ".join(p) for p in chosen],
            "signature_counts": [[in_logs[p], round(in_corpus[p] / k, 2)] for p in chosen]}
    return kept, info


def _write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _fit(wdir: Path, name: str, tokenizer: Any, seed: int, text: str, recipe: ZooRecipe, on_step: Callable[[], None],
         say: Callable[[str], None], arch: str = "llama", teacher: Any = None, init_seed: int | None = None,
         then_text: str | None = None, then_steps: int = 0) -> Any:
    """Train one tiny model (init seed ``init_seed`` or ``seed``; data order ``seed``) and save it with its tokenizer.

    ``then_text``: afterwards the same model is trained on it for ``then_steps`` more steps (a fresh optimizer
    and learning-rate schedule, as a separate fine-tuning run would have)."""
    t0 = time.perf_counter()
    model = synthetic.new_model(tokenizer, synthetic.TinyConfig(arch=arch), seed=seed if init_seed is None else init_seed)
    plan = synthetic.TrainPlan(steps=recipe.steps, seed=seed)
    model = synthetic.train(model, synthetic.encode_corpus(tokenizer, text), plan, teacher=teacher, on_step=on_step)
    if then_text is not None:
        model = synthetic.train(model, synthetic.encode_corpus(tokenizer, then_text),
                                synthetic.TrainPlan(steps=then_steps, seed=seed + 1), on_step=on_step)
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
    # Greedy teacher text for fresh prompts (not in the logs), as many tokens as the logs hold.
    seed = base + recipe.sample_offset + 3
    samples["greedy"] = _sample_until(teacher, tok, grammar.prompts(2 * recipe.student_sentences, seed=seed), recipe,
                                      seed, target_tokens=_n_tokens(tok, _sample_text(samples["teacher"])),
                                      temperature=0.0)
    _write_jsonl(wdir / "greedy_samples.jsonl", samples["greedy"])
    say(f"sampled {spec.name} teacher, sibling and greedy teacher text ({len(samples['teacher'])}, "
        f"{len(samples['sibling'])} and {len(samples['greedy'])} prompts) in {time.perf_counter() - t0:4.1f}s")
    (wdir / "probes.json").write_text(json.dumps(list(_probes(spec, recipe)), indent=1))

    texts: dict[str, dict[str, Any]] = {}
    for index, s in enumerate(STUDENTS):
        seed = base + 20 + index
        n = recipe.student_sentences if s.student_size else recipe.sentences
        info: dict[str, Any] = {}
        teacher_tokens: int | None = None
        if s.text == "corpus":
            text = grammar.text(n, seed=seed)
        elif s.text == "other-corpus":
            text = other_spec.grammar().text(n, seed=seed)
        elif s.text == "teacher-text":
            text = teacher_text
        elif s.text in ("teacher-samples", "sibling-samples", "greedy-samples"):
            text = _sample_text(samples[s.text.split("-")[0]])
        elif s.text == "filtered-samples":
            kept, info = _filter_signature(samples["teacher"], grammar, recipe.filter_share, seed)
            text = " ".join(kept)
        elif s.text == "mix":
            assert s.share is not None
            text, teacher_tokens = _mix(tok, samples["teacher"], grammar, s.share, n, seed)
        else:
            raise AssertionError(s.text)
        kd_teacher = {"teacher": teacher, "sibling": sibling, None: None}[s.teacher]
        then_text = grammar.text(recipe.student_sentences, seed=seed + 1) if s.then_corpus else None
        _fit(wdir, s.key, tokenizers[s.tokenizer], seed, text, recipe, on_step, say, arch=s.arch, teacher=kd_teacher,
             then_text=then_text, then_steps=_continue_steps(recipe))
        tokens = _n_tokens(tok, text)  # counted with the teacher's tokenizer, whatever the student's
        if teacher_tokens is None and s.share is not None:
            teacher_tokens = round(s.share * tokens)
        texts[s.key] = {"tokens": tokens, "teacher_tokens": teacher_tokens,
                        "text_share": None if teacher_tokens is None else round(teacher_tokens / tokens, 4),
                        "steps": _steps(s, recipe),
                        **({"then_corpus_tokens": _n_tokens(tok, then_text)} if then_text is not None else {}), **info}
    (wdir / "texts.json").write_text(json.dumps(texts, indent=1))


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
    n_steps = len(recipe.worlds) * ((2 + recipe.n_references) * recipe.steps + sum(_steps(s, recipe) for s in STUDENTS))
    report(f"building {n_models} zoo models in {build_dir} (first run only, a few minutes on a CPU)")
    bar = tqdm(total=n_steps, desc="training zoo models", unit="step", leave=False,
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
                        "sibling_logs": f"{w.name}/sibling_logs.jsonl",
                        "greedy_samples": f"{w.name}/greedy_samples.jsonl", "texts": f"{w.name}/texts.json"}
                       for w in worlds],
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
    texts = {w.name: json.loads((w.teacher.parent / "texts.json").read_text()) for w in worlds}
    print(f"{'pair':<28} label {'condition':<14} {'share':>6} {'text share':>10} {'tokens':>7} same_tok  kind")
    for p in pairs:
        t = texts[p.world][p.name.split("/", 1)[1]]
        share = "-" if p.share is None else f"{p.share:.3g}"
        text_share = "-" if t["text_share"] is None else f"{t['text_share']:.3g}"
        print(f"{p.name:<28} {p.label:>5} {p.condition:<14} {share:>6} {text_share:>10} {t['tokens']:>7} "
              f"{str(p.same_tokenizer):<9} {p.kind}")
    for w in worlds:
        f = texts[w.name]["seq-kd-filtered"]
        print(f"{w.name}: seq-kd-filtered dropped {f['dropped_sentences']} of {f['logged_sentences']} logged sentences "
              f"holding the signature pairs {', '.join(f['signature_pairs'])}")
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
