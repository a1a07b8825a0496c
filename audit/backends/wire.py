"""What an OpenAI-shaped answer must be before anything uses it: strict JSON, no API key, well-formed log-probs.

The one schema of the OpenAI wire format, for both places it arrives: a live server's answer
(:mod:`audit.backends.openai_compat`) and a closed teacher's logged answer (:mod:`audit.backends.transcript`).
Both are evidence, so both are held to the same rules; only the error's context differs. Every check takes a
:class:`Where`, which makes the error: :class:`Route` names the model and the route of a live answer, the
transcript reader names the file, the line and where in the line the answer sits.

Everything a server sends is checked at the door, once, here:

* :func:`parse_json` refuses NaN, Infinity and numbers that overflow to infinity (``1e999``), which
  Python's json module would otherwise accept and hand on as evidence;
* :func:`redact_counted` replaces every echo of the API key, in every string and object key;
* the log-prob parts of an answer are checked field by field: token lists hold strings (TGI's prefill:
  integer ids; vLLM's ``token_id:N`` strings are strings here), log-probs are real numbers (not booleans, not
  strings, not null), finite and not above 0 (a
  log-prob above 0 is a probability above 1; rounding may leave a tiny positive value, so up to
  :data:`LOGPROB_TOLERANCE` is accepted and read as 0), alternatives are ``{token: logprob}`` objects or
  lists of ``{token, logprob}``, offsets are non-negative integers, a token's ``bytes`` are byte values,
  parallel lists agree in length. ``None`` stands only where the format has no value by design: the first
  token of an echoed prompt.

A violation from a live server is one :class:`RemoteError` naming the model, the route and the field, e.g.
``reference-1: /completions answered logprobs.token_logprobs[3] = 'abc' (expected a number)``. It is not
retried: the server did answer, wrongly, and would most likely answer the same again. An absent part (no
log-probs at all) is not a violation here: the caller decides whether it needed it.

Also here: the few other things read from what a server sends (its Retry-After, its error text), and the
checked log-probs turned into the arrays the backends hand on.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import hashlib
import json
import math
import reprlib
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from distill_audit.backends.remote import TOKEN_ID_PREFIX, UNKNOWN_ID, TokenMap, parse_token_ids
from distill_audit.errors import AuditError
from distill_audit.logs import NonFiniteNumber, loads_strict, lone_surrogate, shown

__all__ = ["LOGPROB_TOLERANCE", "REDACTED", "NonFiniteNumber", "Prefill", "RemoteError", "Route", "Row", "TokenLogprobs",
           "Where", "byte_values", "chat_logprobs", "choice", "choice_text", "completion_logprobs", "content_text",
           "integer", "listing", "logprob", "logprob_array", "logprob_or_none", "parse_json", "positive_int",
           "redact", "redact_counted", "retry_after", "server_message", "shown_value", "stable_field", "tgi_prefill",
           "token", "token_ids", "top_arrays", "top_row"]

REDACTED = "[REDACTED]"
LOGPROB_TOLERANCE = 1e-4  # a log-prob up to this far above 0 is rounding (read as 0); beyond it, an error
_SHOWN = 60  # characters of a wrong value shown in an error
_MAX_TOKEN_ID = 2**63 - 1  # a "token_id:N" string names an int64 id
_MIN_FLOAT32 = float(np.finfo(np.float32).min)  # answers are kept as float32: below its range is -inf
_REPR = reprlib.Repr()  # a wrong value is shown bounded in size and depth, whatever a file or server sent
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 80, 80, 80

Pair = tuple[str, float]  # an alternative: token string, log-prob
Row = list[Pair]  # the alternatives at one position


class RemoteError(AuditError):
    """A remote model could not answer (after retries), or answered something unusable."""


# -- the JSON itself -----------------------------------------------------------------------------------


def parse_json(raw: bytes) -> Any:
    """The JSON in ``raw``, read as strictly as every other JSON here (:func:`audit.logs.loads_strict`):
    NonFiniteNumber for NaN/Infinity/overflow, another ValueError for bad JSON or bad UTF-8, RecursionError
    for nesting too deep to read."""
    return loads_strict(raw.decode("utf-8"))


def redact(value: Any, secret: str | None) -> Any:
    """``value`` with every occurrence of ``secret`` in its strings replaced."""
    return redact_counted(value, secret)[0]


def redact_counted(value: Any, secret: str | None) -> tuple[Any, int]:
    """``value`` with every occurrence of ``secret`` in its strings and object keys replaced by
    :data:`REDACTED`, and how many occurrences were replaced."""
    if not secret:
        return value, 0
    if isinstance(value, str):
        hits = value.count(secret)
        return (value.replace(secret, REDACTED), hits) if hits else (value, 0)
    if isinstance(value, list):
        items = [redact_counted(v, secret) for v in value]
        return [v for v, _ in items], sum(n for _, n in items)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        total = 0
        for k, v in value.items():
            (k2, a), (v2, b) = redact_counted(k, secret), redact_counted(v, secret)
            out[k2] = v2
            total += a + b
        return out, total
    return value, 0


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return max(0.0, (when - _dt.datetime.now(_dt.timezone.utc)).total_seconds())


def server_message(body: bytes) -> str:
    """The server's error text, short and on one line."""
    text = body.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
        err = obj.get("error", obj) if isinstance(obj, dict) else obj
        if isinstance(err, dict):
            text = str(err.get("message") or err.get("detail") or err)
        else:
            text = str(err)
    except (ValueError, AttributeError, RecursionError):
        pass
    text = " ".join(text.split())
    return text[:300] + ("..." if len(text) > 300 else "")


# -- the shapes of answers -------------------------------------------------------------------------------


def shown_value(value: Any, width: int = _SHOWN) -> str:
    """A wrong value for a one-line error: a bounded, escaped repr, never its whole size or depth."""
    text = shown(_REPR.repr(value))
    return text if len(text) <= width else text[: width - 3] + "..."


class Where(Protocol):
    """Where an answer came from, which makes the errors about it: every check below raises what this makes,
    so a live answer's error names the model and route, and a logged answer's the file, line and field."""

    def wrong(self, field: str, value: Any, expected: str) -> Exception: ...

    def lengths(self, field: str, got: int, tokens: int) -> Exception: ...

    def unusable(self, what: str) -> Exception: ...


@dataclass(frozen=True)
class Route:
    """Which model answered on which route: what every error about a live answer names."""

    model: str
    path: str  # "/completions", "/chat/completions", "/generate", "/tokenize"

    def wrong(self, field: str, value: Any, expected: str) -> RemoteError:
        return RemoteError(f"{self.model}: {self.path} answered {field} = {shown_value(value)} (expected {expected})")

    def lengths(self, field: str, got: int, tokens: int) -> RemoteError:
        return RemoteError(f"{self.model}: {self.path} answered {field} with {got} entries for {tokens} tokens "
                           "(the lengths must agree)")

    def unusable(self, what: str) -> RemoteError:
        return RemoteError(f"{self.model}: {self.path}: the server's answer {what}; it does not speak the OpenAI "
                           "format this backend expects")


def choice(answer: Any, where: Where) -> dict[str, Any]:
    """The first choice of an OpenAI-shaped answer."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices:
        raise where.unusable("has no choices")
    if not isinstance(choices[0], dict):
        raise where.wrong("choices[0]", choices[0], "an object")
    return choices[0]


def choice_text(chosen: dict[str, Any], where: Where) -> str:
    """The generated text of a choice: ``message.content`` (chat) or ``text`` (completions)."""
    if "message" in chosen:
        message = chosen["message"]
        if not isinstance(message, dict):
            raise where.wrong("choices[0].message", message, "an object")
        if message.get("content") is None:
            raise where.unusable("holds no generated text (choices[0].message.content is null)")
        return content_text(message["content"], where, "choices[0].message.content")
    if isinstance(chosen.get("text"), str):
        return str(chosen["text"])
    raise where.unusable("holds no generated text (choices[0] has neither a message nor a text)")


def content_text(content: Any, where: Where, field: str) -> str:
    """A message's text: a string, or the text parts of a list of parts joined by newlines (image and other
    parts carry no text and are left out)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise where.wrong(field, content, "a string or a list of content parts")
    texts = []
    for i, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
        elif not isinstance(part, dict):
            raise where.wrong(f"{field}[{i}]", part, "a content part object")
        elif part.get("type", "text") == "text":
            if not isinstance(part.get("text"), str):
                raise where.wrong(f"{field}[{i}].text", part.get("text"), "a string")
            texts.append(part["text"])
    if not texts:
        raise where.unusable(f"holds no text part in {field}")
    return "\n".join(texts)


def logprob(value: Any, where: Where, field: str) -> float:
    """A log-prob as a float <= 0 (-inf below float32's range, as it will be kept). A wrong number is worse
    than none: null, NaN, infinities and values above 0 beyond rounding are errors, never read as missing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.wrong(field, value, "a number")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise where.wrong(field, value, "a finite number")
    if number > LOGPROB_TOLERANCE:
        raise where.wrong(field, value, "a log-probability, at most 0")
    return -math.inf if number < _MIN_FLOAT32 else min(number, 0.0)


def logprob_or_none(value: Any, where: Where, field: str, absent_ok: bool) -> float | None:
    """A log-prob, or None where the format has none by design (``absent_ok``)."""
    return None if value is None and absent_ok else logprob(value, where, field)


def token(value: Any, where: Where, field: str) -> str:
    """A token string: Unicode text (a JSON escape can make a lone surrogate), and when it has vLLM's
    ``token_id:N`` form with digits, N an int64 id (a longer or non-ASCII number would silently map to no id)."""
    if not isinstance(value, str):
        raise where.wrong(field, value, "a token string")
    problem = lone_surrogate(value)
    if problem:
        raise where.wrong(field, value, f"Unicode text, not {problem}")
    rest = value[len(TOKEN_ID_PREFIX):]
    if value.startswith(TOKEN_ID_PREFIX) and rest.isdigit() and not (rest.isascii() and int(rest) <= _MAX_TOKEN_ID):
        raise where.wrong(field, value, f"a token id {TOKEN_ID_PREFIX}N with N at most {_MAX_TOKEN_ID}")
    return value


def integer(value: Any, where: Where, field: str, what: str = "a non-negative integer") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise where.wrong(field, value, what)
    return value


def listing(value: Any, where: Where, field: str, tokens: int | None = None) -> list[Any]:
    """``value`` as a list, of ``tokens`` entries when given."""
    if not isinstance(value, list):
        raise where.wrong(field, value, "a list")
    if tokens is not None and len(value) != tokens:
        raise where.lengths(field, len(value), tokens)
    return value


def top_row(row: Any, where: Where, field: str) -> Row:
    """One position's alternatives, from ``{token: logprob}`` or ``[{token, logprob}, ...]``."""
    if isinstance(row, dict):
        return [(token(tok, where, f"{field} key {tok!r}"), logprob(v, where, f"{field}[{tok!r}]"))
                for tok, v in row.items()]
    if isinstance(row, list):
        out: Row = []
        for j, alt in enumerate(row):
            if not isinstance(alt, dict):
                raise where.wrong(f"{field}[{j}]", alt, "a {token, logprob} object")
            out.append((token(alt.get("token"), where, f"{field}[{j}].token"),
                        logprob(alt.get("logprob"), where, f"{field}[{j}].logprob")))
        return out
    raise where.wrong(field, row, "a {token: logprob} object or a list of {token, logprob}")


@dataclass(frozen=True)
class TokenLogprobs:
    """The checked log-prob part of a generation or an echo: parallel lists, one entry per token."""

    tokens: list[str]
    logprobs: list[float | None]  # None only at the first token of an echoed prompt
    top: list[Row | None] | None  # None: no alternatives sent; a None row: none at that position
    offsets: list[int] | None  # character offsets (completions only)
    token_bytes: list[bytes] | None = None  # each token's UTF-8 bytes (chat only; None unless every token has them)


def completion_logprobs(lp: Any, where: Where, echo: bool) -> TokenLogprobs | None:
    """The ``logprobs`` object of a /completions choice, checked; None when it holds no tokens at all.
    ``echo``: the prompt is echoed, so its first token may have no log-prob and no alternatives."""
    if lp is None:
        return None
    if not isinstance(lp, dict):
        raise where.wrong("logprobs", lp, "an object")
    if lp.get("tokens") is None:
        return None
    tokens = [token(t, where, f"logprobs.tokens[{i}]")
              for i, t in enumerate(listing(lp["tokens"], where, "logprobs.tokens"))]
    n = len(tokens)
    field = "logprobs.token_logprobs"
    lps = [logprob_or_none(v, where, f"{field}[{i}]", echo and i == 0)
           for i, v in enumerate(listing(lp.get("token_logprobs"), where, field, n))]
    top: list[Row | None] | None = None
    if lp.get("top_logprobs") is not None:
        field = "logprobs.top_logprobs"
        top = [None if row is None and echo and i == 0 else top_row(row, where, f"{field}[{i}]")
               for i, row in enumerate(listing(lp["top_logprobs"], where, field, n))]
    offsets = None
    if lp.get("text_offset") is not None:
        field = "logprobs.text_offset"
        offsets = [integer(o, where, f"{field}[{i}]") for i, o in enumerate(listing(lp["text_offset"], where, field, n))]
    return TokenLogprobs(tokens, lps, top, offsets)


def chat_logprobs(lp: Any, where: Where) -> TokenLogprobs | None:
    """The ``logprobs`` object of a /chat/completions choice (``{"content": [{token, logprob,
    top_logprobs}]}``), checked; None when it holds no content."""
    if lp is None:
        return None
    if not isinstance(lp, dict):
        raise where.wrong("logprobs", lp, "an object")
    if lp.get("content") is None:
        return None
    tokens: list[str] = []
    lps: list[float | None] = []
    top: list[Row | None] = []
    raw: list[bytes | None] = []
    for i, item in enumerate(listing(lp["content"], where, "logprobs.content")):
        field = f"logprobs.content[{i}]"
        if not isinstance(item, dict):
            raise where.wrong(field, item, "an object")
        tokens.append(token(item.get("token"), where, f"{field}.token"))
        lps.append(logprob(item.get("logprob"), where, f"{field}.logprob"))
        row = item.get("top_logprobs")
        top.append(None if row is None else top_row(row, where, f"{field}.top_logprobs"))
        raw.append(None if item.get("bytes") is None else byte_values(item["bytes"], where, f"{field}.bytes"))
    spelled = [b for b in raw if b is not None]
    return TokenLogprobs(tokens, lps, top if any(r is not None for r in top) else None, None,
                         spelled if len(spelled) == len(tokens) else None)


def byte_values(value: Any, where: Where, field: str) -> bytes:
    """A token's ``bytes`` field: a list of byte values (0-255)."""
    if not isinstance(value, list) or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256
                                              for b in value):
        raise where.wrong(field, value, "a list of byte values 0-255")
    return bytes(value)


@dataclass(frozen=True)
class Prefill:
    """TGI's ``details.prefill``, checked: the prompt's tokens with their log-probs (no alternatives)."""

    ids: list[int | None]  # None where TGI sent no id
    texts: list[str]
    logprobs: list[float | None]  # None only at the first token


def tgi_prefill(answer: Any, where: Where) -> Prefill | None:
    """The prefill details of a TGI /generate answer; None when it has none."""
    details = answer.get("details") if isinstance(answer, dict) else None
    prefill = details.get("prefill") if isinstance(details, dict) else None
    if not prefill:
        return None
    ids: list[int | None] = []
    texts: list[str] = []
    lps: list[float | None] = []
    for i, item in enumerate(listing(prefill, where, "details.prefill")):
        field = f"details.prefill[{i}]"
        if not isinstance(item, dict):
            raise where.wrong(field, item, "an object")
        ids.append(None if item.get("id") is None else integer(item["id"], where, f"{field}.id", "a token id"))
        texts.append("" if item.get("text") is None else token(item["text"], where, f"{field}.text"))
        lps.append(logprob_or_none(item.get("logprob"), where, f"{field}.logprob", i == 0))
    return Prefill(ids, texts, lps)


def token_ids(values: Any, where: Where, field: str = "tokens") -> list[int]:
    """A list of token ids (a /tokenize answer's ``tokens``)."""
    return [integer(v, where, f"{field}[{i}]", "a token id") for i, v in enumerate(listing(values, where, field))]


def positive_int(value: Any) -> int | None:
    """``value`` when it is a positive integer (a context length), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# -- checked answers as arrays ----------------------------------------------------------------------------


def top_arrays(rows: Sequence[Row | None], k: int, token_map: TokenMap | None) -> tuple[np.ndarray, np.ndarray]:
    """[n, k] ids and log-probs of each position's k most likely alternatives (checked rows; None: none)."""
    ids = np.full((len(rows), k), UNKNOWN_ID, dtype=np.int64)
    lps = np.full((len(rows), k), -np.inf, dtype=np.float32)
    for i, row in enumerate(rows):
        if row is None:
            ids[i], lps[i] = UNKNOWN_ID, np.nan
            continue
        pairs = sorted(row, key=lambda tv: -tv[1])[:k]
        if pairs:
            ids[i, : len(pairs)] = parse_token_ids([t for t, _ in pairs], token_map)
            lps[i, : len(pairs)] = [v for _, v in pairs]
    return ids, lps


def stable_field(value: Any) -> Any:
    """A /models field as recorded: short scalars as they are, anything else by its sha256."""
    if value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 256):
        return value
    return "sha256:" + hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8", "surrogatepass")).hexdigest()


def logprob_array(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float32)
