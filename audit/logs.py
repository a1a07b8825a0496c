"""Logged teacher outputs (``--teacher-logs``) and fresh ones for the same prompts (``--teacher-fresh``),
and the one reader every user JSONL file goes through (logs, transcripts, probe files).

A log is JSONL, one ``{"prompt": ..., "completion": ...}`` object per line (other keys are ignored), or a chat
log in the forms ``--teacher-transcript`` reads (``{"messages": [...], "response": ...}``), whose conversation
is kept: a chat model is then given the whole conversation the answer replied to.
Logged and fresh outputs are paired by prompt: the k-th logged answer to a prompt with the k-th fresh
answer to the same prompt. Pairing is the point: the membership test compares the student's loss on
two answers to the *same* prompt, which are exchangeable unless the student trained on one of them.
Unpaired member/non-member sets would measure a shift between the two sets' prompts instead.

A pair is one unit of evidence, so a repeated line (the same prompt *and* the same completion) counts
once: 30 copies of one answer are one observation of the student's loss on it, not 30. Repeated prompts
with different completions are separate samples and are all kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from distill_audit.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoggedOutput:
    """One teacher answer: the prompt, the completion, and the file line it came from (0: made here).

    A chat log's line also keeps its conversation before the answer (``context``: (role, text) turns, ending with
    the user turn ``prompt``), so a chat model can be given the conversation the answer replied to."""

    prompt: str
    completion: str
    line: int = 0
    context: tuple[tuple[str, str], ...] = ()

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": text} for role, text in self.context]


@dataclass(frozen=True)
class LogPairs:
    logged: tuple[LoggedOutput, ...]
    fresh: tuple[LoggedOutput, ...]  # fresh[i] answers the same prompt as logged[i]
    unpaired_logged: int
    unpaired_fresh: int
    fresh_source: str  # the file, or how the fresh answers were sampled
    logged_duplicates_dropped: int = 0  # logged answers that repeat an earlier one (same prompt and completion)
    fresh_duplicates_dropped: int = 0  # likewise among the fresh answers

    def to_dict(self) -> dict[str, object]:
        return {
            "pairs": len(self.logged),
            "unpaired_logged": self.unpaired_logged,
            "unpaired_fresh": self.unpaired_fresh,
            "logged_duplicates_dropped": self.logged_duplicates_dropped,
            "fresh_duplicates_dropped": self.fresh_duplicates_dropped,
            "fresh_source": self.fresh_source,
            "logged_hash": outputs_hash(self.logged),
            "fresh_hash": outputs_hash(self.fresh),
        }


def outputs_hash(outputs: Sequence[LoggedOutput]) -> str:
    data = json.dumps([[o.prompt, o.completion] + ([[list(t) for t in o.context]] if o.context else [])
                       for o in outputs], ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


# -- reading user files: one way for every JSONL (and text) file a user gives ------------------------------


class BadJSON(ValueError):
    """A line that is not one JSON value; the message is one line, fit to show the user."""


def shown(value: object) -> str:
    """User-controlled text (a path, a JSON key) fit for a one-line message: line breaks, control and format
    characters and lone surrogates are written as escapes, so a message can neither break nor reorder a line."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def read_user_file(path: Path, flag: str, expected: str = "a JSONL file",
                   error: type[UsageError] = UsageError) -> tuple[str, bytes]:
    """A user's text file as text (a leading byte-order mark dropped) and as the bytes read, or one ``error``
    line naming the flag and the file: missing, a directory, unreadable, not UTF-8."""
    where = f"{flag} {shown(path)}"
    try:
        if path.is_dir():
            raise error(f"{where}: is a directory, expected {expected}")
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{where}: no such file") from None
    except IsADirectoryError:
        raise error(f"{where}: is a directory, expected {expected}") from None
    except OSError as exc:
        raise error(f"{where}: cannot read: {exc.strerror or type(exc).__name__}") from None
    try:
        return data.decode("utf-8-sig"), data
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for every line that is not blank. Split on newlines only: JSON strings may hold a
    raw U+2028, which ``str.splitlines()`` would break on; a CR before the newline is JSON whitespace."""
    for number, raw in enumerate(text.split("\n"), start=1):
        if raw.strip():
            yield number, raw


class NonFiniteNumber(ValueError):
    """A JSON text held NaN, Infinity, or a number too large to be a finite float."""


def _refuse_constant(name: str) -> Any:
    raise NonFiniteNumber(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(text[:40])
    return value


def loads_strict(text: str) -> Any:
    """The JSON value in ``text``, read by the standard, not by Python's json module: NaN, Infinity and numbers
    that overflow to infinity (``1e999``) are :class:`NonFiniteNumber`, never floats handed on as evidence.
    Every JSON reader here (user files, API answers) goes through this, so none is laxer than another."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def parse_json(raw: str) -> Any:
    """One JSON value, or :class:`BadJSON` with a one-line reason (never another exception: integers too long
    to convert, nesting too deep for the parser and non-finite numbers are reasons too)."""
    try:
        return loads_strict(raw)
    except json.JSONDecodeError as exc:
        raise BadJSON(exc.msg) from None
    except RecursionError:
        raise BadJSON("nested too deeply") from None
    except NonFiniteNumber as exc:
        raise BadJSON(f"a non-finite number ({shown(exc)}), which JSON does not have") from None
    except ValueError:  # an integer longer than Python converts (4300 digits by default)
        raise BadJSON("a number with too many digits") from None


def lone_surrogate(text: str) -> str | None:
    """Why ``text`` is not valid Unicode text (JSON's ``\\ud800`` escape can make a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start}, which is not text"
    return None


def key_list(obj: dict[str, Any], most: int = 20, width: int = 40) -> str:
    """A JSON object's keys for a one-line message: sorted, escaped, each cut to ``width``, at most ``most``."""
    keys = [shown(k if len(k) <= width else k[: width - 3] + "...") for k in sorted(obj)[:most]]
    return (", ".join(keys) or "none") + (", ..." if len(obj) > most else "")


# -- logged outputs ----------------------------------------------------------------------------------------


def _output(obj: Any, line: int) -> LoggedOutput | str:
    """The output one parsed line holds, or what is wrong with it."""
    if not isinstance(obj, dict):
        return "expected a JSON object with \"prompt\" and \"completion\""
    if "messages" in obj:  # a chat log line: the transcript reader's forms, conversation kept
        from distill_audit.backends.transcript import parse_entry

        entry = parse_entry(obj, line)
        if isinstance(entry, str):
            return entry
        return LoggedOutput(entry.prompt, entry.completion, line, entry.context or ())
    missing = [k for k in ("prompt", "completion") if not isinstance(obj.get(k), str)]
    if missing:
        return (f"needs string fields \"prompt\" and \"completion\" "
                f"({' and '.join(repr(m) for m in missing)} missing or not a string; keys: {key_list(obj)})")
    for k in ("prompt", "completion"):
        problem = lone_surrogate(obj[k])
        if problem:
            return f"\"{k}\" is not valid Unicode ({problem})"
    return LoggedOutput(obj["prompt"], obj["completion"], line)


def load_outputs(path: Path, flag: str) -> tuple[LoggedOutput, ...]:
    """Read a JSONL file of prompt/completion objects; every problem is one error naming file and line.

    Every line is returned (with its number); repeats are dropped where the units are formed, by
    :func:`pair_outputs`. Their number is logged here, once per file."""
    text, _ = read_user_file(path, flag)
    out = []
    for number, raw in jsonl_lines(text):
        try:
            obj = parse_json(raw)
        except BadJSON as exc:
            raise UsageError(f"{shown(path)}:{number}: not valid JSON ({exc})") from None
        item = _output(obj, number)
        if isinstance(item, str):
            raise UsageError(f"{shown(path)}:{number}: {item}")
        out.append(item)
    if not out:
        raise UsageError(f"{flag} {shown(path)}: no logged outputs (the file is empty)")
    repeats = distinct_outputs(out)[1]
    if repeats:
        log.warning("%s %s: %d line(s) repeat an earlier line's prompt and completion; each counts once",
                    flag, shown(path), repeats)
    return tuple(out)


def distinct_outputs(outputs: Sequence[LoggedOutput]) -> tuple[tuple[LoggedOutput, ...], int]:
    """The outputs with repeats (same prompt and same completion as an earlier one) dropped, first occurrence
    kept, in order; and how many were dropped."""
    seen: set[tuple[object, ...]] = set()
    kept = []
    for item in outputs:
        key = (item.prompt, item.completion, item.context)
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return tuple(kept), len(outputs) - len(kept)


def pair_outputs(logged: Sequence[LoggedOutput], fresh: Sequence[LoggedOutput], fresh_source: str) -> LogPairs:
    """Pair the k-th distinct logged and the k-th distinct fresh answer to each prompt; refuse when no prompt is
    shared. Repeats on either side are dropped first (one unit each) and counted."""
    logged, logged_repeats = distinct_outputs(logged)
    fresh, fresh_repeats = distinct_outputs(fresh)
    by_prompt: dict[str, list[LoggedOutput]] = defaultdict(list)
    for f in fresh:
        by_prompt[f.prompt].append(f)
    seen: dict[str, int] = defaultdict(int)
    pairs_l, pairs_f = [], []
    for item in logged:
        k = seen[item.prompt]
        seen[item.prompt] += 1
        candidates = by_prompt.get(item.prompt, [])
        if k < len(candidates):
            pairs_l.append(item)
            pairs_f.append(candidates[k])
    if not pairs_l:
        raise UsageError(
            f"the logged and the fresh teacher outputs ({shown(fresh_source)}) share no prompt: the membership test "
            "compares two answers to the same prompt (unpaired member and non-member sets measure a difference "
            "between prompt sets, not membership); sample the fresh outputs for the logged prompts"
        )
    return LogPairs(tuple(pairs_l), tuple(pairs_f), len(logged) - len(pairs_l), len(fresh) - len(pairs_f),
                    fresh_source, logged_repeats, fresh_repeats)
