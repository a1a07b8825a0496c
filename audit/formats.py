"""How each model is asked: its prompt format (``--prompt-format``, ``--system-prompt``).

A chat model's users never see a raw continuation of the probe text: they send a user turn through the
model's chat template and read the assistant's answer. A student trained on a chat teacher's answers learned
those answers, so the text-level evidence must compare answers to the same user turn, each model asked in
its own format. One :class:`PromptFormat` per model says how:

* ``plain``: the probe text is continued as it is (base models, completions APIs, prompt/completion logs);
* ``chat`` rendered here: the probe is one user turn through the model's own chat template (with
  ``add_generation_prompt``), optionally after a system turn; the rendered text is what the model reads,
  so it is also what the inference cache is keyed on;
* ``chat`` rendered elsewhere: a chat API (the server applies its template; the probe is sent as one user
  message) or a chat log (the answers were given to the logged user turns).

Formats are resolved once per audit, when the models are open (:func:`resolve_format`), and recorded in the
result per model, with the hash of the rendered template and the first probe as the model received it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from distill_audit.backends.base import ModelAdapter
from distill_audit.errors import UsageError

FORMATS = ("auto", "chat", "plain")
# --system-prompt: "default" leaves the conversation to the template's own default (what a user who sends no
# system prompt gets); "none" sends an empty system turn, which stops templates that insert a default system
# prompt of their own (SmolLM2, Qwen) from doing so; anything else is the system turn's text.
SYSTEM_DEFAULT = "default"
SYSTEM_NONE = "none"
# the placeholder user turn whose rendering is hashed: the template and the system turn, without any probe
_PLACEHOLDER = "\x00probe\x00"

Message = Mapping[str, str]


@dataclass(frozen=True)
class PromptFormat:
    """How one model is asked. ``render`` turns a probe (and, for a logged chat, the conversation before it)
    into the text the model is given; the identity of a format is :attr:`key`."""

    kind: str  # "plain" | "chat"
    where: str  # "plain" | "template" (rendered here) | "server" (a chat API renders it) | "logged" (a chat log)
    system: str = SYSTEM_DEFAULT  # default | none | the system turn's text (chat only)
    template_sha256: str | None = None  # sha256 of the template rendered around a placeholder turn (template only)
    example: str = ""  # the audit's first probe as this model received it
    _chat: Callable[[Sequence[Message]], str | None] | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        """Equal for two models exactly when they are given the same text for the same probe (template rendered
        here), or are asked the same way elsewhere."""
        if self.where == "template":
            return f"chat:{self.template_sha256}"
        return self.kind if self.kind == "plain" else f"chat:{self.where}:{self.system}"

    def messages(self, prompt: str, context: Sequence[Message] = ()) -> list[Message]:
        """The conversation for a probe: a logged conversation as it was (it ends with the user turn), else one
        user turn after the system turn the settings ask for."""
        if context:
            turns = list(context)
            if self.system != SYSTEM_DEFAULT and not any(m.get("role") == "system" for m in turns):
                turns.insert(0, {"role": "system", "content": _system_text(self.system)})
            return turns
        return _messages(self.system, prompt)

    def render(self, prompt: str, context: Sequence[Message] = ()) -> str:
        """The text this model is given for ``prompt``. A plain model continues the probe itself; a chat model
        rendered here reads its template's rendering; a chat API or chat log is given the probe (its user turn),
        which the server sends, or the log matched, as the user message."""
        if self.where != "template" or self._chat is None:
            return prompt
        text = self._chat(self.messages(prompt, context))
        if text is None:
            raise UsageError(f"the chat template stopped rendering a conversation it rendered before "
                             f"(probe {prompt[:40]!r})")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.kind, "rendered": self.where, "system_prompt": self.system if self.kind == "chat"
                else None, "template_sha256": self.template_sha256, "example": self.example}

    def describe(self) -> str:
        if self.kind == "plain":
            return "plain text continued"
        return {"template": "chat, through its own chat template", "server": "chat, through the API's chat route",
                "logged": "chat, as its log recorded"}[self.where]


PLAIN = PromptFormat("plain", "plain")


def _system_text(system: str) -> str:
    return "" if system == SYSTEM_NONE else system


def check_format(value: str, flag: str) -> str:
    if value not in FORMATS:
        raise UsageError(f"{flag} must be one of {', '.join(FORMATS)} (got {value!r})")
    return value


def resolve_format(adapter: ModelAdapter, requested: str, system: str, flag: str, probe: str) -> PromptFormat:
    """How ``adapter`` is asked, given the format the user requested for its seat (``flag`` names the option in
    errors) and the ``--system-prompt`` setting; ``probe`` is the audit's first probe, shown as the example."""
    check_format(requested, flag)
    fixed = adapter.fixed_format
    if fixed is not None:  # an API route or a log: the format is what the server offers or the log holds
        if requested not in ("auto", fixed):
            how = "answers through a chat API only" if fixed == "chat" and adapter.live else (
                "was logged as chat conversations" if fixed == "chat" else
                "is a completions API" if adapter.live else "was logged as prompt/completion pairs")
            raise UsageError(f"{flag} {requested}: {adapter.name} {how}, so it can only be asked in {fixed} format")
        if fixed == "plain":
            return dataclasses.replace(PLAIN, example=probe)
        where = "server" if adapter.live else "logged"
        return PromptFormat("chat", where, system if where == "server" else SYSTEM_DEFAULT, None, probe)
    if requested == "plain":
        return dataclasses.replace(PLAIN, example=probe)
    placeholder = adapter.chat_prompt(_messages(system, _PLACEHOLDER))
    example = adapter.chat_prompt(_messages(system, probe))
    if placeholder is None or example is None:
        if requested == "chat":
            raise UsageError(f"{flag} chat: {adapter.name} has no chat template that renders a user turn"
                             f"{'' if system == SYSTEM_DEFAULT else ' after a system turn'}; ask it with "
                             f"{flag} plain")
        return dataclasses.replace(PLAIN, example=probe)
    digest = hashlib.sha256(json.dumps([placeholder], ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return PromptFormat("chat", "template", system, digest.hexdigest(), example, adapter.chat_prompt)


def _messages(system: str, prompt: str) -> list[Message]:
    head = [] if system == SYSTEM_DEFAULT else [{"role": "system", "content": _system_text(system)}]
    return [*head, {"role": "user", "content": prompt}]


def compared_note(teacher: PromptFormat, others: Mapping[str, PromptFormat]) -> list[str]:
    """What the verdict must say when the teacher and a suspect were asked in different formats: which answers
    the text-level detectors compared, and that token-level detectors need one format."""
    out = []
    for name, fmt in others.items():
        if fmt.kind != teacher.kind:
            out.append(
                f"The teacher was asked {teacher.describe()} and {name} {fmt.describe()}: the text-level detectors "
                f"compare the teacher's {'answers' if teacher.kind == 'chat' else 'continuations'} with {name}'s "
                f"{'answers' if fmt.kind == 'chat' else 'continuations'} to the same probes. If {name} is a base "
                "model, its continuations are the closest it comes to answering; a student that learned the "
                "teacher's answers shows them best when asked as it was trained (--student-prompt-format).")
    return out
