"""The built-in demo: tiny models on a synthetic language, one of them distilled, audited end to end.

The story is the one in the news: a competitor trained a student on a teacher's API answers. The demo
builds a teacher, logs its answers to sentence openings (``teacher-logs.jsonl``, prompt and sampled
completion), and distils a student on those logged answers with the teacher's soft labels (logit KD,
as an API that returns log-probs allows). It also builds an independent control and four reference
models on the same language, saves each with ``save_pretrained`` under the cache directory (reused on
later runs), then audits the student and the control against the teacher, with the logs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from distill_audit import synthetic

log = logging.getLogger(__name__)

DEMO_VERSION = "3"
LOGS_FILE = "teacher-logs.jsonl"
FRESH_FILE = "teacher-fresh.jsonl"


@dataclass(frozen=True)
class DemoRecipe:
    """How each demo model is made. Changing anything here changes the build directory."""

    grammar_seed: int = 0
    sentences: int = 1500  # per independently trained model: a small sample, so each learns its own quirks
    logged_answers: int = 1500  # teacher API answers the student was distilled on (teacher's soft labels)
    answer_tokens: int = 40  # length of each logged answer, in teacher tokens
    kd_weight: float = 0.5  # student loss: this much KL to the teacher's log-probs, the rest cross-entropy on the answers
    steps: int = 300
    n_references: int = 6  # the panel t test has n_references - 1 degrees of freedom: power grows with each
    n_probes: int = 100
    probe_seed: int = 777


def _model_plan(recipe: DemoRecipe) -> list[tuple[str, int]]:
    names = [("teacher", 1), ("control", 4)] + [(f"reference-{i + 1}", 10 + i) for i in range(recipe.n_references)]
    return names + [("student", 5)]


def build_demo_models(root: Path, recipe: DemoRecipe = DemoRecipe(),
                      report: Callable[[str], None] = lambda msg: None,
                      progress: bool | None = None) -> dict[str, Path]:
    """Build (or reuse) the demo models under ``root``; returns role name -> checkpoint directory.

    ``progress``: a training progress bar on stderr (None: only when stderr is a terminal)."""
    from transformers import AutoTokenizer

    build_dir = root / f"demo-models-v{DEMO_VERSION}"
    marker = build_dir / "complete.json"
    paths = {name: build_dir / name for name, _ in _model_plan(recipe)}
    root.mkdir(parents=True, exist_ok=True)
    if marker.exists() and json.loads(marker.read_text()) == asdict(recipe):
        report(f"reusing demo models in {build_dir}")
        return paths
    plan_models = _model_plan(recipe)
    report(f"building {len(plan_models)} demo models in {build_dir} (first run only, about a minute on a CPU)")
    bar = tqdm(total=recipe.steps * len(plan_models), desc="training demo models", unit="step", leave=False,
               disable=(not progress) if progress is not None else None)
    # Build beside the final place and rename at the end, so a killed build leaves nothing half-made.
    staging = Path(tempfile.mkdtemp(prefix=f".{build_dir.name}.", dir=root))
    grammar = synthetic.Grammar(seed=recipe.grammar_seed)
    tok_dir = staging / "tokenizer"
    synthetic.build_tokenizer(grammar, tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    models: dict[str, Any] = {}
    for name, seed in plan_models:
        t0 = time.perf_counter()
        is_student = name == "student"
        if is_student:
            logs = teacher_answers(models["teacher"], tokenizer, grammar, recipe, seed)
            write_logs(staging / LOGS_FILE, logs)
            # Fresh answers to the same prompts, drawn the same way: what the auditor asks the teacher now.
            fresh = synthetic.sample_texts(models["teacher"], tokenizer, [p for p, _ in logs], recipe.answer_tokens,
                                           seed=90_000 + seed)
            write_logs(staging / FRESH_FILE, list(zip([p for p, _ in logs], fresh)))
            text = " ".join(prompt + completion for prompt, completion in logs)
        else:
            text = grammar.text(recipe.sentences, seed=seed)
        corpus = synthetic.encode_corpus(tokenizer, text)
        model = synthetic.new_model(tokenizer, synthetic.TinyConfig(), seed=seed)
        plan = synthetic.TrainPlan(steps=recipe.steps, seed=seed)
        models[name] = synthetic.train(model, corpus, plan, teacher=models["teacher"] if is_student else None,
                                       kd_weight=recipe.kd_weight, on_step=lambda: bar.update(1))
        models[name].save_pretrained(staging / name)
        tokenizer.save_pretrained(staging / name)
        with tqdm.external_write_mode():  # a line above the bar, not through it
            report(f"built {name:<12} in {time.perf_counter() - t0:4.1f}s")
    bar.close()
    (staging / marker.name).write_text(json.dumps(asdict(recipe)))
    if build_dir.exists():
        shutil.rmtree(build_dir)
    os.replace(staging, build_dir)
    return paths


def teacher_answers(teacher: Any, tokenizer: Any, grammar: synthetic.Grammar, recipe: DemoRecipe,
                    seed: int) -> list[tuple[str, str]]:
    """What the teacher's API answered: sampled continuations of sentence openings (not the probes)."""
    prompts = grammar.prompts(recipe.logged_answers, seed=50_000 + seed)
    completions = synthetic.sample_texts(teacher, tokenizer, prompts, recipe.answer_tokens, seed=seed)
    return list(zip(prompts, completions))


def write_logs(path: Path, logs: list[tuple[str, str]]) -> None:
    lines = [json.dumps({"prompt": p, "completion": c}, ensure_ascii=False) for p, c in logs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def demo_prompts(recipe: DemoRecipe = DemoRecipe()) -> list[str]:
    """``n_probes`` distinct sentence openings: short openings of a small language repeat, and an audit counts
    a repeated probe once, so repeats are drawn past rather than written to the probe file."""
    pool = synthetic.Grammar(seed=recipe.grammar_seed).prompts(8 * recipe.n_probes, seed=recipe.probe_seed)
    distinct = list(dict.fromkeys(pool))[: recipe.n_probes]
    if len(distinct) < recipe.n_probes:
        raise RuntimeError(f"the demo grammar gave only {len(distinct)} distinct prompts")
    return distinct
