"""Identity probes (chat models): "who made you?", "what model are you?".

A student that answers with the teacher's name or maker is worth showing a reviewer, but the answer is not a
test statistic: it is recorded as an observation, never turned into a p-value (a model may name another
because that name filled its training data, distilled or not).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from distill_audit.backends.base import Capability, GenerateParams
from distill_audit.detectors.base import ModelHandle

IDENTITY_QUESTIONS = (
    "Who created you?",
    "What model are you?",
    "What is your name?",
    "Which company trained you?",
    "Which large language model are you based on?",
    "Who is your developer, and what is your model version?",
)


IDENTITY_MAX_NEW_TOKENS = 48  # tokens of each answer


def identity_observations(model: ModelHandle, names: Sequence[str], engine: Any, seed: int,
                          max_new_tokens: int = IDENTITY_MAX_NEW_TOKENS) -> dict[str, Any]:
    """Ask the model who it is (greedy) and record each answer, marking those that name the teacher or its
    maker. ``names`` are the teacher's names and its maker's, as the user gives them."""
    adapter = model.adapter
    if Capability.GENERATE not in adapter.capabilities:
        return {"ran": False, "reason": f"the {model.role} backend cannot generate"}
    # asked the way the audit asks this model (its prompt format): a chat model a user turn through its template
    # or chat route, a plain model a question-and-answer text it can continue
    chat = model.format.kind == "chat"
    prompts = [model.format.render(q) if chat else f"Question: {q}\nAnswer:" for q in IDENTITY_QUESTIONS]
    params = GenerateParams(max_new_tokens=max_new_tokens, do_sample=False, top_k=1, seed=seed)
    answers = engine.generate(adapter, prompts, params)
    patterns = [(n, re.compile(r"(?<!\w)" + re.escape(n) + r"(?!\w)", re.IGNORECASE)) for n in names if n.strip()]
    rows = []
    for q, a in zip(IDENTITY_QUESTIONS, answers):
        named = [n for n, pat in patterns if pat.search(a.text)]
        rows.append({"question": q, "answer": a.text, "names_teacher": named})
    return {
        "ran": True,
        "model": model.name,
        "chat_template": chat,
        "prompt_format": model.format.kind,
        "teacher_names": list(names),
        "answers": rows,
        "answers_naming_teacher": sum(bool(r["names_teacher"]) for r in rows),
        "note": "Self-descriptions are shown as observations, not as evidence with a p-value: a model may "
                "name another because that name filled its training data, distilled or not.",
    }
