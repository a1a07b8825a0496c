"""One OpenAI schema, one strictness: a malformed log-prob is refused the same way whether a live server sent
it (the error names model and route) or a transcript logged it (the error names file and line)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from distill_audit.backends.transcript import load_transcript
from distill_audit.backends.wire import (
    LOGPROB_TOLERANCE,
    NonFiniteNumber,
    RemoteError,
    Route,
    chat_logprobs,
    choice,
    choice_text,
    completion_logprobs,
    parse_json,
)
from distill_audit.errors import UsageError

GOOD_COMPLETIONS = {"tokens": ["a", "b"], "token_logprobs": [-0.5, -1.0], "text_offset": [0, 1],
                    "top_logprobs": [{"a": -0.5, "c": -2.0}, {"b": -1.0}]}
GOOD_CHAT = {"content": [{"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": [{"token": "a", "logprob": -0.5}]},
                         {"token": "b", "logprob": -1.0, "bytes": [98], "top_logprobs": []}]}


def _with(base: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with the item at ``path`` replaced (or, for the value ``...``, the list cut by one)."""
    out = json.loads(json.dumps(base))
    target = out
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        target[path[-1]] = target[path[-1]][:-1]
    else:
        target[path[-1]] = value
    return out


# (form, malformed log-probs, what both errors say after their own context)
MALFORMED = [
    ("completions", _with(GOOD_COMPLETIONS, ("token_logprobs", 1), None),
     "logprobs.token_logprobs[1] = None (expected a number)"),
    ("completions", _with(GOOD_COMPLETIONS, ("token_logprobs", 0), "-0.5"),
     "logprobs.token_logprobs[0] = '-0.5' (expected a number)"),
    ("completions", _with(GOOD_COMPLETIONS, ("token_logprobs", 0), True),
     "logprobs.token_logprobs[0] = True (expected a number)"),
    ("completions", _with(GOOD_COMPLETIONS, ("token_logprobs", 1), 0.5),
     "logprobs.token_logprobs[1] = 0.5 (expected a log-probability, at most 0)"),
    ("completions", _with(GOOD_COMPLETIONS, ("token_logprobs", 1), 2 * LOGPROB_TOLERANCE),
     "(expected a log-probability, at most 0)"),
    ("completions", _with(GOOD_COMPLETIONS, ("token_logprobs", 1), 10**400),
     "(expected a finite number)"),
    ("completions", _with(GOOD_COMPLETIONS, ("token_logprobs",), ...),
     "logprobs.token_logprobs with 1 entries for 2 tokens (the lengths must agree)"),
    ("completions", _with(GOOD_COMPLETIONS, ("top_logprobs",), ...),
     "logprobs.top_logprobs with 1 entries for 2 tokens (the lengths must agree)"),
    ("completions", _with(GOOD_COMPLETIONS, ("top_logprobs", 1), None),
     "logprobs.top_logprobs[1] = None (expected a {token: logprob} object"),
    ("completions", _with(GOOD_COMPLETIONS, ("top_logprobs", 0, "c"), 3.0),
     "logprobs.top_logprobs[0]['c'] = 3.0 (expected a log-probability, at most 0)"),
    ("completions", _with(GOOD_COMPLETIONS, ("text_offset", 1), -1),
     "logprobs.text_offset[1] = -1 (expected a non-negative integer)"),
    ("completions", _with(GOOD_COMPLETIONS, ("tokens", 0), 7),
     "logprobs.tokens[0] = 7 (expected a token string)"),
    ("completions", _with(GOOD_COMPLETIONS, ("tokens", 0), "token_id:" + "9" * 25),
     "logprobs.tokens[0] = 'token_id:9999999999999999999999999' (expected a token id"),
    ("chat", _with(GOOD_CHAT, ("content", 1, "logprob"), None),
     "logprobs.content[1].logprob = None (expected a number)"),
    ("chat", _with(GOOD_CHAT, ("content", 0, "logprob"), 0.25),
     "logprobs.content[0].logprob = 0.25 (expected a log-probability, at most 0)"),
    ("chat", _with(GOOD_CHAT, ("content", 0, "top_logprobs", 0, "logprob"), "x"),
     "logprobs.content[0].top_logprobs[0].logprob = 'x' (expected a number)"),
    ("chat", _with(GOOD_CHAT, ("content", 0, "bytes"), [300]),
     "logprobs.content[0].bytes = [300] (expected a list of byte values 0-255)"),
    ("chat", _with(GOOD_CHAT, ("content",), {"token": "a"}),
     "logprobs.content = {'token': 'a'} (expected a list)"),
]


def _live(form: str, lp: dict[str, Any]) -> None:
    if form == "chat":
        chat_logprobs(lp, Route("teacher", "/chat/completions"))
    else:
        completion_logprobs(lp, Route("teacher", "/completions"), echo=False)


def _logged(tmp_path: Path, form: str, lp: dict[str, Any]) -> str:
    """The one error a transcript holding ``lp`` (in an API response object, as logged) gives."""
    text = "ab"
    message = {"message": {"role": "assistant", "content": text}} if form == "chat" else {"text": text}
    line = {"prompt": "p", "response": {"model": "m", "choices": [dict(message, logprobs=lp)]}}
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as err:
        load_transcript(path)
    return str(err.value)


@pytest.mark.parametrize("form, lp, said", MALFORMED)
def test_the_same_malformed_log_probs_are_refused_live_and_logged(tmp_path: Path, form: str, lp: dict[str, Any],
                                                                   said: str) -> None:
    with pytest.raises(RemoteError) as live:
        _live(form, lp)
    route = "/chat/completions" if form == "chat" else "/completions"
    assert str(live.value).startswith(f"teacher: {route} answered ") and said in str(live.value), str(live.value)
    logged = _logged(tmp_path, form, lp)
    assert "log.jsonl: 1 malformed line: line 1: response.choices[0]." in logged and said in logged, logged
    # the same words after each one's own context: one check, not two that happen to agree
    assert logged.split("response.choices[0].", 1)[1] == str(live.value).split(" answered ", 1)[1]


@pytest.mark.parametrize("form, lp", [("completions", GOOD_COMPLETIONS), ("chat", GOOD_CHAT)])
def test_well_formed_log_probs_read_the_same_live_and_logged(tmp_path: Path, form: str, lp: dict[str, Any]) -> None:
    rounded = _with(lp, ("token_logprobs", 0) if form == "completions" else ("content", 0, "logprob"),
                    LOGPROB_TOLERANCE / 2)  # rounding above 0 is read as 0 by both
    if form == "chat":
        live = chat_logprobs(rounded, Route("teacher", "/chat/completions"))
    else:
        live = completion_logprobs(rounded, Route("teacher", "/completions"), echo=False)
    assert live is not None and live.logprobs == [0.0, -1.0]
    message = {"message": {"role": "assistant", "content": "ab"}} if form == "chat" else {"text": "ab"}
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response": {"choices": [dict(message, logprobs=rounded)]}}) + "\n",
                    encoding="utf-8")
    (entry,) = load_transcript(path)
    assert entry.tokens == tuple(live.tokens) and entry.token_logprobs == (0.0, -1.0)
    assert entry.token_bytes == ((b"a", b"b") if form == "chat" else None)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_non_finite_json_numbers_are_refused_live_and_logged(tmp_path: Path, constant: str) -> None:
    raw = '{"prompt": "p", "completion": "a", "logprobs": {"tokens": ["a"], "token_logprobs": [%s]}}' % constant
    with pytest.raises(NonFiniteNumber):
        parse_json(raw.encode())
    path = tmp_path / "log.jsonl"
    path.write_text(raw + "\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"line 1: not valid JSON \(a non-finite number \(.+\), which JSON does not have"):
        load_transcript(path)


def test_the_answer_text_is_read_by_one_rule() -> None:
    route = Route("teacher", "/chat/completions")
    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "image_url"}, "b"]}}]}
    assert choice_text(choice(parts, route), route) == "a\nb"
    assert choice_text(choice({"choices": [{"text": "t"}]}, route), route) == "t"
    for answer, said in [({"choices": [{"message": {"content": None}}]}, "holds no generated text"),
                         ({"choices": [{"message": "x"}]}, "choices[0].message = 'x' (expected an object)"),
                         ({"choices": []}, "has no choices"),
                         ({"choices": [{"message": {"content": 5}}]}, "(expected a string or a list of content parts)")]:
        with pytest.raises(RemoteError, match="^teacher: /chat/completions") as err:
            choice_text(choice(answer, route), route)
        assert said in str(err.value)
    tiny = completion_logprobs({"tokens": ["a"], "token_logprobs": [-1e300]}, route, echo=False)
    assert tiny is not None and tiny.logprobs == [-math.inf]  # below float32's range: -inf, as it will be kept
