"""A closed teacher known only from its logged outputs (``--teacher-transcript``).

When the teacher cannot be queried at all, what it answered is still evidence: a JSONL log of prompts
and answers, with per-token log-probs where the API returned them. This backend serves that log as a
model that can only *generate*, and only for the prompts it logged. It cannot score text, has no weights
and usually no visible tokenizer; its fingerprint is the file's content and the model name it reports.

Accepted line shapes (other keys are ignored):

* plain: ``{"prompt": str, "completion": str}``, optionally ``"logprobs"`` in the OpenAI *completions*
  shape ``{"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}, ...]}``;
* chat log: ``{"messages": [...], "response": R}`` where R is a string, an assistant message, or a whole
  ``chat.completion`` object (its ``choices[0].logprobs.content`` gives the log-probs); log-probs may also
  sit at the line's top level as ``"logprobs": {"content": [...]}``;
* fine-tuning: ``{"messages": [..., {"role": "assistant", "content": ...}]}``.

Log-probs are read by the one OpenAI schema (:mod:`audit.backends.wire`), exactly as strictly as a live
server's: a null, NaN, infinite or positive log-prob, a wrong type or lists of different lengths make the line
malformed (a wrong number is worse than no number), and the error names the file, the line and the field.

For chat forms the prompt is the text of the last user message before the answer: system prompts and
earlier turns are not part of it, so the student is probed with that message alone.

A prompt logged several times is one probe, answered by its **first** logged entry; the later entries for
it are not used (``repeated_prompts`` counts them, and a log line says how many, and how many of those
held a different answer).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from distill_audit.backends.base import Capability, GenerateParams, Generation, ModelAdapter, ScoredText, report_each
from distill_audit.backends.remote import UNKNOWN_ID, TokenMap, parse_token_ids, remote_fingerprint
from distill_audit.backends.wire import (
    Row,
    chat_logprobs,
    choice,
    choice_text,
    completion_logprobs,
    content_text,
    shown_value,
)
from distill_audit.errors import CapabilityError, UsageError
from distill_audit.logs import BadJSON, jsonl_lines, key_list, lone_surrogate, parse_json, read_user_file, shown

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # the cut rule when neither logged tokens nor a tokenizer say where tokens end
_MAX_REPORTED = 10  # malformed lines named in the one error; the rest are counted

CUT_LOGGED = "the first max_new_tokens logged tokens"
CUT_TOKENIZER = "the first max_new_tokens tokens of the answer under the teacher's tokenizer (--teacher-tokenizer)"
CUT_CHARS = f"about {CHARS_PER_TOKEN} characters per token, cut at a whitespace boundary (no logged tokens, no tokenizer)"


@dataclass(frozen=True)
class TranscriptEntry:
    """One logged answer. Token fields are None when the log has no log-probs for it.

    ``top[i]`` holds the logged alternatives at generated step i as (token string, logprob), most likely
    first. ``token_bytes`` (OpenAI's ``bytes`` field) rebuilds the text when token strings cannot, as for
    tokens that end inside a multi-byte character."""

    prompt: str
    completion: str
    line: int
    model: str | None = None
    tokens: tuple[str, ...] | None = None
    token_logprobs: tuple[float, ...] | None = None
    top: tuple[tuple[tuple[str, float], ...], ...] | None = None
    token_bytes: tuple[bytes, ...] | None = None
    # a chat line's conversation before the answer, (role, text) per turn, ending with the user turn the answer
    # replies to; None for a prompt/completion line
    context: tuple[tuple[str, str], ...] | None = None

    @property
    def has_logprobs(self) -> bool:
        return self.tokens is not None

    @property
    def has_top(self) -> bool:
        return self.top is not None


class _Bad(Exception):
    """What is wrong with one line; collected, so one error names every bad line."""


# -- parsing ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _At:
    """Where in a line an answer sits (``"response"``, ``"response.choices[0]"``, or the line itself): the
    schema's errors (:class:`audit.backends.wire.Where`) name that place; the reader adds the file and line."""

    name: str = ""

    def _field(self, field: str) -> str:
        return f"{self.name}.{field}" if self.name else field

    def wrong(self, field: str, value: Any, expected: str) -> _Bad:
        return _Bad(f"{self._field(field)} = {shown_value(value)} (expected {expected})")

    def lengths(self, field: str, got: int, tokens: int) -> _Bad:
        return _Bad(f"{self._field(field)} with {got} entries for {tokens} tokens (the lengths must agree)")

    def unusable(self, what: str) -> _Bad:
        return _Bad(f"{self.name or 'the line'} {what}")


def _short(value: Any, width: int = 40) -> str:
    """A bounded, escaped repr of a value from the log (never its whole size or depth)."""
    return shown_value(value, width)


def _sorted_top(pairs: Row) -> tuple[tuple[str, float], ...]:
    # ties by token string so the order never depends on the log's key order
    return tuple(sorted(pairs, key=lambda p: (-p[1], p[0])))


_Top = tuple[tuple[tuple[str, float], ...], ...]
# tokens, their log-probs, the alternatives at each step (None: not logged), each token's bytes (None: not logged)
_Logprobs = tuple[tuple[str, ...], tuple[float, ...], _Top | None, tuple[bytes, ...] | None]


def _logprobs(obj: Any, at: _At) -> _Logprobs | None:
    """Either OpenAI log-prob shape, checked by the one schema (:mod:`audit.backends.wire`) as strictly as a
    live answer; None where the log has none (absent, null, or ``{"content": null}``). Besides the API's own
    shapes a bare chat ``content`` list is accepted, as loggers write it."""
    if obj is None:
        return None
    if isinstance(obj, list):
        got = chat_logprobs({"content": obj}, at)
    elif not isinstance(obj, dict):
        raise at.wrong("logprobs", obj, "an object")
    elif "content" in obj:
        got = chat_logprobs(obj, at)
    elif not isinstance(obj.get("tokens"), list) or not isinstance(obj.get("token_logprobs"), list):
        raise _Bad(f'{at._field("logprobs")} needs lists "tokens" and "token_logprobs" (or a chat-style "content" list)')
    else:
        got = completion_logprobs(obj, at, echo=False)
    if got is None:
        return None
    values = tuple(v for v in got.logprobs if v is not None)  # not an echo: every token has its log-prob
    top: _Top | None = None
    if got.top is not None:
        steps = tuple(() if row is None else _sorted_top(row) for row in got.top)
        top = steps if any(steps) else None  # all empty: the request asked for no alternatives
    raw_bytes = tuple(got.token_bytes) if got.token_bytes is not None else None
    return tuple(got.tokens), values, top, raw_bytes


def _text(content: Any, field: str) -> str:
    """A message's text: a string, or the text parts of a list joined by newlines (other parts ignored)."""
    if content is None:
        raise _Bad(f"{field} is null: the message has no text")
    return content_text(content, _At(), field)


def _model(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _Bad(f'{where} "model" is not a string ({_short(value)})')


def _response(resp: Any) -> tuple[str, _Logprobs | None, str | None]:
    """The answer text, its log-probs and model name from a string, a message, or an API response object."""
    if isinstance(resp, str):
        return resp, None, None
    if not isinstance(resp, dict):
        raise _Bad(f'"response" is neither a string nor an object ({_short(resp)})')
    if "choices" in resp:
        at = _At("response")
        chosen = choice(resp, at)
        model = _model(resp.get("model"), '"response"')
        return choice_text(chosen, at), _logprobs(chosen.get("logprobs"), _At("response.choices[0]")), model
    if "content" in resp:
        role = resp.get("role", "assistant")
        if role != "assistant":
            raise _Bad(f'"response" is a message from {_short(role)}, not from the assistant')
        return (_text(resp["content"], "response.content"), _logprobs(resp.get("logprobs"), _At("response")),
                _model(resp.get("model"), '"response"'))
    raise _Bad(f'"response" has neither "choices" nor "content" (keys: {key_list(resp)})')


def _last_user(messages: list[Any]) -> str:
    for i in reversed(range(len(messages))):
        if messages[i].get("role") == "user":
            return _text(messages[i].get("content"), f"messages[{i}].content")
    raise _Bad("no user message before the answer")


def _conversation(messages: list[Any]) -> tuple[tuple[str, str], ...]:
    """The turns up to and including the last user turn, as (role, text): what the answer replied to."""
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    out = []
    for i, m in enumerate(messages[: last + 1]):
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise _Bad(f"messages[{i}].role is {_short(role)}; expected system, user or assistant")
        out.append(("system" if role == "developer" else str(role), _text(m.get("content"), f"messages[{i}].content")))
    return tuple(out)


def parse_entry(obj: Any, line: int) -> TranscriptEntry | str:
    """One parsed JSON line of a log, in any of the accepted forms, or what is wrong with it (one line)."""
    try:
        return _parse_line(obj, line)
    except _Bad as exc:
        return str(exc)


def _parse_line(obj: Any, line: int) -> TranscriptEntry:
    if not isinstance(obj, dict):
        raise _Bad(f"expected a JSON object, got {type(obj).__name__}")
    top_model = _model(obj.get("model"), "line")
    resp_model: str | None = None
    lp: _Logprobs | None = None
    context: tuple[tuple[str, str], ...] | None = None
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _Bad('"messages" is not a list of message objects')
        if "response" in obj:
            completion, lp, resp_model = _response(obj["response"])
            before = messages
        else:
            if not messages or messages[-1].get("role") != "assistant":
                raise _Bad('no "response", and "messages" does not end with an assistant message')
            completion = _text(messages[-1].get("content"), f"messages[{len(messages) - 1}].content")
            before = messages[:-1]
        prompt = _last_user(before)
        context = _conversation(before)
    elif "prompt" in obj:
        if not isinstance(obj["prompt"], str):
            raise _Bad(f'"prompt" is not a string ({_short(obj["prompt"])})')
        prompt = obj["prompt"]
        if isinstance(obj.get("completion"), str):
            completion = obj["completion"]
        elif "completion" in obj:
            raise _Bad(f'"completion" is not a string ({_short(obj["completion"])})')
        elif "response" in obj:
            completion, lp, resp_model = _response(obj["response"])
        else:
            raise _Bad(f'no "completion" or "response" (keys: {key_list(obj)})')
    else:
        raise _Bad(f'needs "prompt" and "completion", or "messages" (keys: {key_list(obj)})')
    if lp is None:
        lp = _logprobs(obj.get("logprobs"), _At())
    elif obj.get("logprobs") is not None:
        raise _Bad('log-probs both in "response" and at the top level; keep one')
    if lp is not None and not lp[0] and completion:
        lp = None  # an empty log-prob list for a non-empty answer says nothing about its tokens
    tokens, values, top, raw_bytes = lp if lp is not None else (None, None, None, None)
    entry = TranscriptEntry(prompt, completion, line, top_model or resp_model, tokens, values, top, raw_bytes,
                            context)
    _check_text(entry)
    return entry


def _check_text(entry: TranscriptEntry) -> None:
    """The prompt is not blank (it becomes a probe) and every string is Unicode text (JSON escapes can make lone
    surrogates). Token strings were checked by the schema, as a live server's are."""
    if not entry.prompt.strip():
        raise _Bad("the prompt is empty")
    for what, text in [("the prompt", entry.prompt), ("the answer", entry.completion), ('"model"', entry.model or "")]:
        problem = lone_surrogate(text)
        if problem:
            raise _Bad(f"{what} is not valid Unicode ({problem})")


def load_transcript(path: Path, flag: str = "--teacher-transcript") -> tuple[TranscriptEntry, ...]:
    """Read a JSONL transcript. File problems are one error each; malformed lines are all collected and
    named in one error, so a user fixes a file in one pass instead of one line per run."""
    return _read(Path(path), flag)[0]


def _read(path: Path, flag: str) -> tuple[tuple[TranscriptEntry, ...], str]:
    text, data = read_user_file(path, flag)
    entries: list[TranscriptEntry] = []
    bad: list[str] = []
    for number, raw in jsonl_lines(text):
        try:
            entries.append(_parse_line(parse_json(raw), number))
        except BadJSON as exc:
            bad.append(f"line {number}: not valid JSON ({exc})")
        except _Bad as exc:
            bad.append(f"line {number}: {exc}")
    if bad:
        listed = "; ".join(bad[:_MAX_REPORTED])
        more = f"; and {len(bad) - _MAX_REPORTED} more" if len(bad) > _MAX_REPORTED else ""
        plural = "s" if len(bad) != 1 else ""
        raise UsageError(shown(f"{flag} {path}: {len(bad)} malformed line{plural}: {listed}{more}"))
    if not entries:
        raise UsageError(f"{flag} {shown(path)}: no transcript entries (the file is empty)")
    return tuple(entries), hashlib.sha256(data).hexdigest()


# -- cutting answers to a token budget ---------------------------------------------------------------------


def _cut_chars(text: str, n_tokens: int, chars_per_token: float) -> str:
    """The longest prefix of about ``n_tokens * chars_per_token`` characters that ends before whitespace;
    a hard cut when the first word alone is longer."""
    limit = int(n_tokens * chars_per_token)
    if len(text) <= limit:
        return text
    if limit <= 0:
        return ""
    cut = max((i for i in range(1, limit + 1) if text[i].isspace()), default=0)
    kept = text[:cut].rstrip()
    return kept if kept else text[:limit]


def _joined_prefix(entry: TranscriptEntry, m: int) -> str | None:
    """The text of the first m logged tokens, when the logged tokens spell the answer (or its start)."""
    assert entry.tokens is not None
    if entry.completion.startswith("".join(entry.tokens)):
        return "".join(entry.tokens[:m])
    if entry.token_bytes is not None and len(entry.token_bytes) == len(entry.tokens):
        whole = b"".join(entry.token_bytes).decode("utf-8", errors="replace")
        if entry.completion.startswith(whole):
            # a token may end inside a character: keep only the complete characters
            return b"".join(entry.token_bytes[:m]).decode("utf-8", errors="ignore")
    return None


class TranscriptAdapter(ModelAdapter):
    """A teacher that answers from a log: GENERATE (and GENERATE_TOPK when every answer has logged
    alternatives), for the logged prompts only."""

    def __init__(
        self,
        entries: Sequence[TranscriptEntry],
        path: str | Path,
        sha256: str,
        name: str = "teacher",
        token_map: TokenMap | None = None,
    ):
        if not entries:
            raise UsageError(f"{path}: no transcript entries")
        self.entries = tuple(entries)
        self.path = str(path)
        self.sha256 = sha256
        self.name = name
        self.token_map = token_map
        self._first: dict[str, TranscriptEntry] = {}
        for entry in self.entries:
            self._first.setdefault(entry.prompt, entry)
        self._repeats = len(self.entries) - len(self._first)  # later entries for a logged prompt: unused
        if self._repeats:
            self._log_duplicates()
        models = {entry.model for entry in self.entries}
        only = next(iter(models)) if len(models) == 1 else None
        self.model = only if only else "unknown"

    def _log_duplicates(self) -> None:
        differing = sum(entry.completion != self._first[entry.prompt].completion for entry in self.entries)
        log.warning("%s: %d entr%s repeat an earlier entry's prompt (%d with a different answer); each prompt is one "
                    "probe, answered by its first entry", shown(self.path), self._repeats,
                    "y" if self._repeats == 1 else "ies", differing)

    @classmethod
    def load(
        cls, path: str | Path, name: str = "teacher", token_map: TokenMap | None = None, flag: str = "--teacher-transcript"
    ) -> "TranscriptAdapter":
        entries, digest = _read(Path(path), flag)
        return cls(entries, path, digest, name, token_map)

    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = {Capability.GENERATE}
        if all(entry.has_top for entry in self.entries):
            caps.add(Capability.GENERATE_TOPK)
        return frozenset(caps)

    @property
    def fingerprint(self) -> dict[str, str]:
        """The file's content (not its path, so a moved file keeps its cache) and the reported model."""
        return remote_fingerprint(
            "transcript", self.sha256, self.model, self.token_map.fingerprint if self.token_map else None
        )

    @property
    def live(self) -> bool:
        return False  # fresh samples cannot be drawn: the runner must not ask for a second answer

    @property
    def fixed_format(self) -> str:
        """The answers were given to chat conversations (any chat line) or continued prompts: that is how the
        model was asked, whatever the audit would like."""
        return "chat" if any(e.context is not None for e in self.entries) else "plain"

    @property
    def logged_prompts(self) -> tuple[str, ...]:
        """The distinct logged prompts in file order: the probes a transcript teacher can answer."""
        return tuple(self._first)

    @property
    def repeated_prompts(self) -> int:
        return self._repeats

    def local_tokenizer(self) -> Any:
        return self.token_map.tokenizer if self.token_map is not None else None

    @property
    def cut_rule(self) -> str:
        """How answers are cut to ``max_new_tokens``, for the result's record."""
        logged = [entry.has_logprobs for entry in self.entries]
        other = CUT_TOKENIZER if self.token_map is not None else CUT_CHARS
        if all(logged):
            return CUT_LOGGED
        if any(logged):
            return f"{CUT_LOGGED} where the log has them, else {other}"
        return other

    @property
    def runtime(self) -> dict[str, Any]:
        return {
            "backend": "transcript",
            "path": self.path,
            "sha256": self.sha256,
            "entries": len(self.entries),
            "prompts": len(self._first),
            "duplicate_prompts": self._repeats,
            "model": self.model,
            "has_logprobs": all(entry.has_logprobs for entry in self.entries),
            "has_top_logprobs": all(entry.has_top for entry in self.entries),
            "cut": self.cut_rule,
        }

    @property
    def context_length(self) -> int | None:
        return None

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if self.token_map is None:
            raise CapabilityError(
                f"{self.name} is a transcript: counting its tokens needs its tokenizer (--teacher-tokenizer DIR)"
            )
        return self.token_map.count(texts)

    def score(self, texts: Sequence[str], top_k: int,
              on_result: Callable[[int, ScoredText], None] | None = None) -> list[ScoredText]:
        raise CapabilityError(f"{self.name} is a transcript: a transcript holds answers only; it cannot score text")

    def hidden_states(self, texts: Sequence[str], layers: Sequence[int],
                      spans: Sequence[Sequence[tuple[int, int]]] | None = None) -> list[np.ndarray]:
        raise CapabilityError(f"{self.name} is a transcript: a transcript holds answers only; it has no hidden states")

    def generate(self, prompts: Sequence[str], params: GenerateParams,
                 on_result: Callable[[int, Generation], None] | None = None) -> list[Generation]:
        """The first logged answer to each prompt, cut to ``params.max_new_tokens`` tokens.

        Sampling settings and the seed are ignored: the log holds what the teacher answered once, and
        every request for a prompt gets that same answer. A prompt the log does not hold is refused."""
        missing = [p for p in prompts if p not in self._first]
        if missing:
            distinct = list(dict.fromkeys(missing))
            raise CapabilityError(
                f"{self.name} is a transcript and can only answer the prompts it logged: "
                f"{len(distinct)} prompt{'s are' if len(distinct) != 1 else ' is'} not in {self.path} "
                f"(first: {_short(distinct[0], 60)})"
            )
        return report_each([self._answer(self._first[p], params) for p in prompts], on_result)

    def _answer(self, entry: TranscriptEntry, params: GenerateParams) -> Generation:
        budget = max(0, params.max_new_tokens)
        if entry.tokens is not None:
            return self._from_logged(entry, budget, params.top_k)
        empty = Generation("", np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        if self.token_map is not None:
            text, ids = self._cut_with_tokenizer(entry.completion, budget)
        else:
            text = _cut_chars(entry.completion, budget, CHARS_PER_TOKEN)
            # ids are unknown; their number is the rule's estimate, so a length check still sees tokens
            ids = np.full(min(budget, math.ceil(len(text) / CHARS_PER_TOKEN)), UNKNOWN_ID, dtype=np.int64)
        return Generation(text, ids, np.full(len(ids), np.nan, dtype=np.float32), empty.topk_ids, empty.topk_logprobs)

    def _cut_with_tokenizer(self, completion: str, budget: int) -> tuple[str, np.ndarray]:
        assert self.token_map is not None
        tok = self.token_map.tokenizer
        if getattr(tok, "is_fast", False):
            enc = tok(completion, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(enc["input_ids"])[:budget]
            if len(ids) == len(enc["input_ids"]):
                text = completion
            else:  # the answer's own characters up to the last kept token, never a re-decoded version
                text = completion[: enc["offset_mapping"][len(ids) - 1][1]] if ids else ""
        else:
            full = list(tok(completion, add_special_tokens=False)["input_ids"])
            ids = full[:budget]
            text = completion if len(ids) == len(full) else tok.decode(ids)
        return text, np.asarray(ids, dtype=np.int64)

    def _from_logged(self, entry: TranscriptEntry, budget: int, top_k: int) -> Generation:
        """Tokens, log-probs and alternatives exactly as logged; the text from them when they spell it."""
        assert entry.tokens is not None and entry.token_logprobs is not None
        m = min(budget, len(entry.tokens))
        kept = entry.tokens[:m]
        ids = parse_token_ids(kept, self.token_map)
        text = _joined_prefix(entry, m)
        if text is None:  # e.g. "token_id:N" strings: decode them, or cut the answer in proportion
            if m == len(entry.tokens):
                text = entry.completion
            elif self.token_map is not None and bool(np.all(ids != UNKNOWN_ID)):
                decoded = self.token_map.tokenizer.decode([int(i) for i in ids])
                text = decoded if entry.completion.startswith(decoded) else None
            if text is None:
                text = _cut_chars(entry.completion, m, len(entry.completion) / max(1, len(entry.tokens)))
        logprobs = np.asarray(entry.token_logprobs[:m], dtype=np.float32)
        if entry.top is None:
            return Generation(text, ids, logprobs)
        topk_ids = np.full((m, top_k), UNKNOWN_ID, dtype=np.int64)
        topk_lp = np.full((m, top_k), -np.inf, dtype=np.float32)
        for i, step in enumerate(entry.top[:m]):
            alts = step[:top_k]
            if alts:
                topk_ids[i, : len(alts)] = parse_token_ids([t for t, _ in alts], self.token_map)
                topk_lp[i, : len(alts)] = [lp for _, lp in alts]
        return Generation(text, ids, logprobs, topk_ids, topk_lp)
