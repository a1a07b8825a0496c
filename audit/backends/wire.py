"""What a model API's answer must be before anything uses it: strict JSON, no API key, well-formed log-probs.

Everything a server sends is checked at the door, once, here:

* :func:`parse_json` refuses NaN, Infinity and numbers that overflow to infinity (``1e999``), which
  Python's json module would otherwise accept and hand on as evidence;
* :func:`redact_counted` replaces every echo of the API key, in every string and object key;
* the log-prob parts of an answer are checked field by field: token lists hold strings (TGI's prefill:
  integer ids), log-probs are real numbers (not booleans, not strings), finite and not above 0 (a
  log-prob above 0 is a probability above 1; rounding may leave a tiny positive value, so up to
  :data:`LOGPROB_TOLERANCE` is accepted and read as 0), alternatives are ``{token: logprob}`` objects or
  lists of ``{token, logprob}``, offsets are non-negative integers, parallel lists agree in length.
  ``None`` stands only where the format has no value by design: the first token of an echoed prompt.

A violation is one :class:`RemoteError` naming the model, the route and the field, e.g. ``reference-1:
/completions answered logprobs.token_logprobs[3] = 'abc' (expected a number)``. It is not retried: the
server did answer, wrongly, and would most likely answer the same again. An absent part (no log-probs at
all) is not a violation here: the caller decides whether it needed it.

Also here: the few other things read from what a server sends (its Retry-After, its error text), and the
checked log-probs turned into the arrays the backends hand on.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from distill_audit.backends.remote import UNKNOWN_ID, TokenMap, parse_token_ids
from distill_audit.errors import AuditError

REDACTED = "[REDACTED]"
LOGPROB_TOLERANCE = 1e-3  # a log-prob up to this far above 0 is rounding (read as 0); beyond it, an error
_SHOWN = 60  # characters of a wrong value shown in an error

Pair = tuple[str, float]  # an alternative: token string, log-prob
Row = list[Pair]  # the alternatives at one position


class RemoteError(AuditError):
    """A remote model could not answer (after retries), or answered something unusable."""


# -- the JSON itself -----------------------------------------------------------------------------------


class NonFiniteNumber(ValueError):
    """A JSON answer held NaN, Infinity, or a number too large to be a finite float."""


def _refuse_constant(name: str) -> Any:
    raise NonFiniteNumber(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(text[:40])
    return value


def parse_json(raw: bytes) -> Any:
    """The JSON in ``raw``; NonFiniteNumber for NaN/Infinity/overflow, another ValueError for bad JSON or
    bad UTF-8, RecursionError for nesting too deep to read."""
    return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)


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


@dataclass(frozen=True)
class Route:
    """Which model answered on which route: what every error about an answer names."""

    model: str
    path: str  # "/completions", "/chat/completions", "/generate", "/tokenize"

    def wrong(self, field: str, value: Any, expected: str) -> RemoteError:
        shown = repr(value)
        shown = shown if len(shown) <= _SHOWN else shown[: _SHOWN - 3] + "..."
        return RemoteError(f"{self.model}: {self.path} answered {field} = {shown} (expected {expected})")

    def lengths(self, field: str, got: int, tokens: int) -> RemoteError:
        return RemoteError(f"{self.model}: {self.path} answered {field} with {got} entries for {tokens} tokens "
                           "(the lengths must agree)")

    def unusable(self, what: str) -> RemoteError:
        return RemoteError(f"{self.model}: {self.path}: the server's answer {what}; it does not speak the OpenAI "
                           "format this backend expects")


def choice(answer: Any, route: Route) -> dict[str, Any]:
    """The first choice of an OpenAI-shaped answer."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices:
        raise route.unusable("has no choices")
    if not isinstance(choices[0], dict):
        raise route.wrong("choices[0]", choices[0], "an object")
    return choices[0]


def logprob(value: Any, route: Route, field: str) -> float:
    """A log-prob as a float <= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise route.wrong(field, value, "a number")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise route.wrong(field, value, "a finite number")
    if number > LOGPROB_TOLERANCE:
        raise route.wrong(field, value, "a log-probability, at most 0")
    return min(number, 0.0)


def logprob_or_none(value: Any, route: Route, field: str, absent_ok: bool) -> float | None:
    """A log-prob, or None where the format has none by design (``absent_ok``)."""
    return None if value is None and absent_ok else logprob(value, route, field)


def token(value: Any, route: Route, field: str) -> str:
    if not isinstance(value, str):
        raise route.wrong(field, value, "a token string")
    return value


def integer(value: Any, route: Route, field: str, what: str = "a non-negative integer") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise route.wrong(field, value, what)
    return value


def listing(value: Any, route: Route, field: str, tokens: int | None = None) -> list[Any]:
    """``value`` as a list, of ``tokens`` entries when given."""
    if not isinstance(value, list):
        raise route.wrong(field, value, "a list")
    if tokens is not None and len(value) != tokens:
        raise route.lengths(field, len(value), tokens)
    return value


def top_row(row: Any, route: Route, field: str) -> Row:
    """One position's alternatives, from ``{token: logprob}`` or ``[{token, logprob}, ...]``."""
    if isinstance(row, dict):
        return [(tok, logprob(v, route, f"{field}[{tok!r}]")) for tok, v in row.items()]
    if isinstance(row, list):
        out: Row = []
        for j, alt in enumerate(row):
            if not isinstance(alt, dict):
                raise route.wrong(f"{field}[{j}]", alt, "a {token, logprob} object")
            out.append((token(alt.get("token"), route, f"{field}[{j}].token"),
                        logprob(alt.get("logprob"), route, f"{field}[{j}].logprob")))
        return out
    raise route.wrong(field, row, "a {token: logprob} object or a list of {token, logprob}")


@dataclass(frozen=True)
class TokenLogprobs:
    """The checked log-prob part of a generation or an echo: parallel lists, one entry per token."""

    tokens: list[str]
    logprobs: list[float | None]  # None only at the first token of an echoed prompt
    top: list[Row | None] | None  # None: no alternatives sent; a None row: none at that position
    offsets: list[int] | None  # character offsets (completions only)


def completion_logprobs(lp: Any, route: Route, echo: bool) -> TokenLogprobs | None:
    """The ``logprobs`` object of a /completions choice, checked; None when it holds no tokens at all.
    ``echo``: the prompt is echoed, so its first token may have no log-prob and no alternatives."""
    if lp is None:
        return None
    if not isinstance(lp, dict):
        raise route.wrong("logprobs", lp, "an object")
    if lp.get("tokens") is None:
        return None
    tokens = [token(t, route, f"logprobs.tokens[{i}]")
              for i, t in enumerate(listing(lp["tokens"], route, "logprobs.tokens"))]
    n = len(tokens)
    field = "logprobs.token_logprobs"
    lps = [logprob_or_none(v, route, f"{field}[{i}]", echo and i == 0)
           for i, v in enumerate(listing(lp.get("token_logprobs"), route, field, n))]
    top: list[Row | None] | None = None
    if lp.get("top_logprobs") is not None:
        field = "logprobs.top_logprobs"
        top = [None if row is None and echo and i == 0 else top_row(row, route, f"{field}[{i}]")
               for i, row in enumerate(listing(lp["top_logprobs"], route, field, n))]
    offsets = None
    if lp.get("text_offset") is not None:
        field = "logprobs.text_offset"
        offsets = [integer(o, route, f"{field}[{i}]") for i, o in enumerate(listing(lp["text_offset"], route, field, n))]
    return TokenLogprobs(tokens, lps, top, offsets)


def chat_logprobs(lp: Any, route: Route) -> TokenLogprobs | None:
    """The ``logprobs`` object of a /chat/completions choice (``{"content": [{token, logprob,
    top_logprobs}]}``), checked; None when it holds no content."""
    if lp is None:
        return None
    if not isinstance(lp, dict):
        raise route.wrong("logprobs", lp, "an object")
    if lp.get("content") is None:
        return None
    tokens: list[str] = []
    lps: list[float | None] = []
    top: list[Row | None] = []
    for i, item in enumerate(listing(lp["content"], route, "logprobs.content")):
        field = f"logprobs.content[{i}]"
        if not isinstance(item, dict):
            raise route.wrong(field, item, "an object")
        tokens.append(token(item.get("token"), route, f"{field}.token"))
        lps.append(logprob(item.get("logprob"), route, f"{field}.logprob"))
        row = item.get("top_logprobs")
        top.append(None if row is None else top_row(row, route, f"{field}.top_logprobs"))
    return TokenLogprobs(tokens, lps, top if any(r is not None for r in top) else None, None)


@dataclass(frozen=True)
class Prefill:
    """TGI's ``details.prefill``, checked: the prompt's tokens with their log-probs (no alternatives)."""

    ids: list[int | None]  # None where TGI sent no id
    texts: list[str]
    logprobs: list[float | None]  # None only at the first token


def tgi_prefill(answer: Any, route: Route) -> Prefill | None:
    """The prefill details of a TGI /generate answer; None when it has none."""
    details = answer.get("details") if isinstance(answer, dict) else None
    prefill = details.get("prefill") if isinstance(details, dict) else None
    if not prefill:
        return None
    ids: list[int | None] = []
    texts: list[str] = []
    lps: list[float | None] = []
    for i, item in enumerate(listing(prefill, route, "details.prefill")):
        field = f"details.prefill[{i}]"
        if not isinstance(item, dict):
            raise route.wrong(field, item, "an object")
        ids.append(None if item.get("id") is None else integer(item["id"], route, f"{field}.id", "a token id"))
        texts.append("" if item.get("text") is None else token(item["text"], route, f"{field}.text"))
        lps.append(logprob_or_none(item.get("logprob"), route, f"{field}.logprob", i == 0))
    return Prefill(ids, texts, lps)


def token_ids(values: Any, route: Route, field: str = "tokens") -> list[int]:
    """A list of token ids (a /tokenize answer's ``tokens``)."""
    return [integer(v, route, f"{field}[{i}]", "a token id") for i, v in enumerate(listing(values, route, field))]


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
