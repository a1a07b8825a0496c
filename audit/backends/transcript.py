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
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from distill_audit.backends.base import Capability, GenerateParams, Generation, ModelAdapter, ScoredText, report_each
from distill_audit.backends.remote import TOKEN_ID_PREFIX, UNKNOWN_ID, TokenMap, parse_token_ids, remote_fingerprint
from distill_audit.errors import CapabilityError, UsageError
from distill_audit.logs import BadJSON, jsonl_lines, key_list, lone_surrogate, parse_json, read_user_file, shown

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # the cut rule when neither logged tokens nor a tokenizer say where tokens end
_MAX_REPORTED = 10  # malformed lines named in the one error; the rest are counted
_MAX_LOGPROB = 1e-4  # a log-prob is at most 0; this much above it is rounding, more is not a log-prob
_MAX_TOKEN_ID = 2**63 - 1  # a "token_id:N" string names an int64 id
_MIN_FLOAT32 = float(np.finfo(np.float32).min)

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

    @property
    def has_logprobs(self) -> bool:
        return self.tokens is not None

    @property
    def has_top(self) -> bool:
        return self.top is not None


class _Bad(Exception):
    """What is wrong with one line; collected, so one error names every bad line."""


# -- parsing ----------------------------------------------------------------------------------------------


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 80, 80, 80


def _short(value: Any, width: int = 40) -> str:
    """A bounded, escaped repr of a value from the log (never its whole size or depth)."""
    text = shown(_REPR.repr(value))
    return text if len(text) <= width else text[: width - 3] + "..."


def _number(value: Any, where: str) -> float:
    """A log-prob: a JSON number at most 0 (-inf allowed), or null (or NaN) for one the API did not give (NaN)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"{where} is not a number ({_short(value)})")
    try:
        number = float(value)
    except OverflowError:
        raise _Bad(f"{where} is not a log-prob ({_short(value)})") from None
    if number > _MAX_LOGPROB:
        raise _Bad(f"{where} is not a log-prob: above 0 ({_short(value)})")
    return number if number >= _MIN_FLOAT32 else -math.inf  # answers hold float32: below its range is -inf


def _sorted_top(pairs: list[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    # NaN sorts last; ties by token string so the order never depends on the log's key order
    return tuple(sorted(pairs, key=lambda p: (-p[1] if not math.isnan(p[1]) else math.inf, p[0])))


_Top = tuple[tuple[tuple[str, float], ...], ...]
# tokens, their log-probs, the alternatives at each step (None: not logged), each token's bytes (None: not logged)
_Logprobs = tuple[tuple[str, ...], tuple[float, ...], _Top | None, tuple[bytes, ...] | None]


def _completions_logprobs(obj: dict[str, Any]) -> _Logprobs:
    """The OpenAI completions shape: parallel ``tokens``, ``token_logprobs`` and ``top_logprobs`` lists."""
    tokens, lps = obj.get("tokens"), obj.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(lps, list):
        raise _Bad('"logprobs" needs lists "tokens" and "token_logprobs" (or a chat-style "content" list)')
    if len(tokens) != len(lps):
        raise _Bad(f'"logprobs" has {len(tokens)} tokens but {len(lps)} token_logprobs')
    for i, t in enumerate(tokens):
        if not isinstance(t, str):
            raise _Bad(f'"logprobs" token {i} is not a string ({_short(t)})')
    values = tuple(_number(v, f'"logprobs" token_logprobs[{i}]') for i, v in enumerate(lps))
    raw_top = obj.get("top_logprobs")
    top: _Top | None = None
    if raw_top is not None:
        if not isinstance(raw_top, list):
            raise _Bad('"logprobs" top_logprobs is not a list')
        if len(raw_top) != len(tokens):
            raise _Bad(f'"logprobs" has {len(tokens)} tokens but {len(raw_top)} top_logprobs entries')
        steps = []
        for i, step in enumerate(raw_top):
            if step is None:
                step = {}
            if not isinstance(step, dict):
                raise _Bad(f'"logprobs" top_logprobs[{i}] is not an object of token: logprob')
            steps.append(_sorted_top([(str(k), _number(v, f'"logprobs" top_logprobs[{i}][{k!r}]')) for k, v in step.items()]))
        top = tuple(steps) if any(steps) else None  # all empty: the request asked for no alternatives
    return tuple(tokens), values, top, None


def _chat_logprobs(content: Any) -> _Logprobs:
    """The OpenAI chat shape: a ``content`` list of {token, logprob, bytes, top_logprobs: [...]}."""
    if not isinstance(content, list):
        raise _Bad('"logprobs" "content" is not a list')
    tokens: list[str] = []
    values: list[float] = []
    steps: list[tuple[tuple[str, float], ...]] = []
    raw_bytes: list[bytes] = []
    has_bytes = True
    for i, item in enumerate(content):
        if not isinstance(item, dict) or not isinstance(item.get("token"), str):
            raise _Bad(f'"logprobs" content[{i}] has no string "token"')
        if "logprob" not in item:
            raise _Bad(f'"logprobs" content[{i}] has no "logprob"')
        tokens.append(item["token"])
        values.append(_number(item["logprob"], f'"logprobs" content[{i}].logprob'))
        b = item.get("bytes")
        if isinstance(b, list) and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 256 for x in b):
            raw_bytes.append(bytes(b))
        else:
            has_bytes = False
        alts = item.get("top_logprobs") or []
        if not isinstance(alts, list):
            raise _Bad(f'"logprobs" content[{i}].top_logprobs is not a list')
        pairs = []
        for j, alt in enumerate(alts):
            if not isinstance(alt, dict) or not isinstance(alt.get("token"), str):
                raise _Bad(f'"logprobs" content[{i}].top_logprobs[{j}] has no string "token"')
            pairs.append((alt["token"], _number(alt.get("logprob"), f'"logprobs" content[{i}].top_logprobs[{j}].logprob')))
        steps.append(_sorted_top(pairs))
    top = tuple(steps) if any(steps) else None
    return tuple(tokens), tuple(values), top, (tuple(raw_bytes) if has_bytes else None)


def _logprobs(obj: Any) -> _Logprobs | None:
    """Either log-prob shape, or None where the log has none (absent, null, or ``{"content": null}``)."""
    if obj is None:
        return None
    if isinstance(obj, list):
        return _chat_logprobs(obj)
    if not isinstance(obj, dict):
        raise _Bad(f'"logprobs" is not an object ({_short(obj)})')
    if "content" in obj:
        return None if obj["content"] is None else _chat_logprobs(obj["content"])
    return _completions_logprobs(obj)


def _text(content: Any, who: str) -> str:
    """A message's text: a string, or the text parts of a list joined by newlines (other parts ignored)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, dict):
                raise _Bad(f"the {who} content part {i} is not an object")
            if part.get("type", "text") == "text":
                if not isinstance(part.get("text"), str):
                    raise _Bad(f'the {who} content part {i} has no string "text"')
                texts.append(part["text"])
        if not texts:
            raise _Bad(f"the {who} message has no text part")
        return "\n".join(texts)
    if content is None:
        raise _Bad(f"the {who} message has no text content")
    raise _Bad(f"the {who} message content is neither a string nor a list of parts ({_short(content)})")


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
        choices = resp["choices"]
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Bad('"response" "choices" is not a non-empty list of objects')
        choice = choices[0]
        model = _model(resp.get("model"), '"response"')
        if "message" in choice:
            message = choice["message"]
            if not isinstance(message, dict):
                raise _Bad('"response" choices[0].message is not an object')
            return _text(message.get("content"), "assistant"), _logprobs(choice.get("logprobs")), model
        if isinstance(choice.get("text"), str):  # a text-completion object
            return choice["text"], _logprobs(choice.get("logprobs")), model
        raise _Bad('"response" choices[0] has neither "message" nor "text"')
    if "content" in resp:
        role = resp.get("role", "assistant")
        if role != "assistant":
            raise _Bad(f'"response" is a message from {_short(role)}, not from the assistant')
        return _text(resp["content"], "assistant"), _logprobs(resp.get("logprobs")), _model(resp.get("model"), '"response"')
    raise _Bad(f'"response" has neither "choices" nor "content" (keys: {key_list(resp)})')


def _last_user(messages: list[Any]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text(message.get("content"), "user")
    raise _Bad("no user message before the answer")


def _parse_line(obj: Any, line: int) -> TranscriptEntry:
    if not isinstance(obj, dict):
        raise _Bad(f"expected a JSON object, got {type(obj).__name__}")
    top_model = _model(obj.get("model"), "line")
    resp_model: str | None = None
    lp: _Logprobs | None = None
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _Bad('"messages" is not a list of message objects')
        if "response" in obj:
            completion, lp, resp_model = _response(obj["response"])
            prompt = _last_user(messages)
        else:
            if not messages or messages[-1].get("role") != "assistant":
                raise _Bad('no "response", and "messages" does not end with an assistant message')
            completion = _text(messages[-1].get("content"), "assistant")
            prompt = _last_user(messages[:-1])
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
        lp = _logprobs(obj.get("logprobs"))
    elif obj.get("logprobs") is not None:
        raise _Bad('log-probs both in "response" and at the top level; keep one')
    if lp is not None and not lp[0] and completion:
        lp = None  # an empty log-prob list for a non-empty answer says nothing about its tokens
    tokens, values, top, raw_bytes = lp if lp is not None else (None, None, None, None)
    entry = TranscriptEntry(prompt, completion, line, top_model or resp_model, tokens, values, top, raw_bytes)
    _check_text(entry)
    return entry


def _check_text(entry: TranscriptEntry) -> None:
    """The prompt is not blank (it becomes a probe), every string is Unicode text (JSON escapes can make lone
    surrogates) and every "token_id:N" names an int64 id."""
    if not entry.prompt.strip():
        raise _Bad("the prompt is empty")
    named = [("the prompt", entry.prompt), ("the answer", entry.completion), ('"model"', entry.model or "")]
    named += [(f"logged token {i}", t) for i, t in enumerate(entry.tokens or ())]
    named += [(f"alternative {j} at token {i}", t) for i, step in enumerate(entry.top or ()) for j, (t, _) in enumerate(step)]
    for what, text in named:
        problem = lone_surrogate(text)
        if problem:
            raise _Bad(f"{what} is not valid Unicode ({problem})")
        rest = text[len(TOKEN_ID_PREFIX):]
        if text.startswith(TOKEN_ID_PREFIX) and rest.isdigit() and not (rest.isascii() and int(rest) <= _MAX_TOKEN_ID):
            raise _Bad(f"{what} ({_short(text)}) is not a token id")


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

    def hidden_states(self, texts: Sequence[str], layers: Sequence[int]) -> list[np.ndarray]:
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
