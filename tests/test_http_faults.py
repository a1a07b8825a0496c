"""What a model API answers is checked at the door (issue 11: integrity under faults and hostile input), against
the real loopback server of tests/openai_server.py with injected faults: an echoed key is redacted before
anything downstream sees it; non-finite and wrongly typed log-probs are one clear error, not evidence; a
trickling or huge answer is cut off by the request's deadline and size bound; a redirect is not followed;
and the fingerprint covers what discovery found, so a server replaced behind the same URL is a new model to
the cache. Timing checks are generous hang guards only: these run on slow, busy machines."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from distill_audit.backends.base import GenerateParams
from distill_audit.backends.http import HTTPSettings, RedirectError, RemoteError
from distill_audit.backends.openai_compat import OpenAIAdapter, RemoteModel
from distill_audit.backends.transcript import load_transcript
from distill_audit.backends.wire import Route, chat_logprobs, completion_logprobs, parse_json, tgi_prefill
from distill_audit.cache import unpack_arrays
from distill_audit.errors import UsageError
from tests.conftest import cli
from tests.conftest import one_line_error as _one_line_error
from tests.openai_server import spoil
from tests.test_backend_http import FAST, PROMPTS, Served, connect, serve

SECRET = "sk-test-9c4e1b7d2a6f"
MiB = 1 << 20
ROOMY = HTTPSettings(concurrency=1, timeout=600, max_retries=3, backoff_base=0.05)  # big answers on a slow machine


@pytest.fixture(scope="module")
def server(llama_dir: Path) -> Iterator[Served]:  # one server for this module's tests, reset between them
    with serve(llama_dir) as s:
        yield s


@pytest.fixture()
def fresh(server: Served) -> Served:
    server.reset()
    return server


def _no_sleep(adapter: OpenAIAdapter) -> None:
    adapter.client._sleep = lambda seconds: None


def _completions_sent(served: Served) -> int:
    return sum(1 for e in served.log() if e["path"] == "/v1/completions")


# -- 1. an echoed key is redacted at the door ---------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, object keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)


def _cache_values(db: Path) -> Iterator[bytes]:
    """Every value blob of an inference cache, whichever the table is called (``entries``, once ``results``)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        (table,) = tables & {"entries", "results"}
        for (blob,) in conn.execute(f"SELECT value FROM {table}"):
            yield bytes(blob)


def _array_text(blob: bytes) -> str:
    """All string and bytes content of a cached value, as text."""
    parts: list[str] = []
    for arr in unpack_arrays(blob).values():
        if arr.dtype.kind == "U":
            parts.extend(str(x) for x in arr.ravel().tolist())
        elif arr.dtype.kind == "S":
            parts.extend(x.decode("utf-8", "replace") for x in arr.ravel().tolist())
    return "\n".join(parts)


def test_an_echoed_key_is_redacted_before_anything_sees_it(llama_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("AUDIT_TEST_KEY", SECRET)
    with serve(llama_dir, "--key", SECRET) as s:
        # every answer, from /models on, carries the key: in text, in top-log-prob keys, in extra fields
        s.faults({"kind": "key_in_text", "times": 10**6})
        with caplog.at_level(logging.WARNING, logger="distill_audit.backends.http"):
            remote = connect(s, llama_dir, api_key_env="AUDIT_TEST_KEY", transcript=tmp_path / "t.jsonl")
            assert remote.runtime["discovery"]["models_entry"]["owned_by"] == "[REDACTED]"
            gens = remote.generate(PROMPTS, GenerateParams(max_new_tokens=5, top_k=3))
            assert all(g.text.endswith(" [REDACTED]") and SECRET not in g.text for g in gens)
            assert all(g.topk_ids.shape == (len(g.token_ids), 3) for g in gens)  # the planted alternative is not top-3
            scored = remote.score(PROMPTS, 3)
            assert all(np.isfinite(sc.target_logprob[1:]).all() for sc in scored)
            # the client's answer itself is clean: every string, every key
            raw = remote.client.post("/completions", {"model": "tiny", "prompt": "A B", "max_tokens": 2,
                                                      "logprobs": 2, "temperature": 0})
            strings = list(_strings(raw))
            assert not any(SECRET in x for x in strings)
            assert "[REDACTED]" in strings  # as a top_logprobs key
        assert remote.runtime["redactions"] >= 2 * len(PROMPTS)
        assert sum("holds the API key" in r.getMessage() for r in caplog.records) == 1  # warned once
        assert SECRET not in (tmp_path / "t.jsonl").read_text()
        assert SECRET not in json.dumps(remote.runtime) + json.dumps(remote.fingerprint)


def test_an_audit_against_an_echoing_server_leaves_the_key_nowhere(llama_dir: Path, gpt2_dir: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_TEST_KEY", SECRET)
    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join(f"A {i} B" for i in range(6)) + "\n")  # short: the teacher's texts grow by the key
    cache, out = tmp_path / "cache", tmp_path / "out"
    with serve(llama_dir, "--key", SECRET) as s:
        s.faults({"kind": "key_in_text", "times": 10**6})
        proc = cli("run", "--teacher-url", s.url, "--teacher-model", "tiny", "--teacher-api-key-env", "AUDIT_TEST_KEY",
                   "--teacher-tokenizer", str(llama_dir), "--student", str(llama_dir), "--reference", str(gpt2_dir),
                   "--reference", str(llama_dir), "--detector", "text-word-agreement", "--detector",
                   "next-token-agreement", "--probes", str(probes), "--no-negative-controls", "--cache-dir", str(cache),
                   "--out", str(out))
        assert any(e["fault"] == "key_in_text" and e["method"] == "POST" for e in s.log())
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["models"][0]["runtime"]["redactions"] > 0
    files = [out / "result.json", out / "report.html", *sorted((out / "transcripts").glob("*"))]
    assert len(files) >= 3
    for path in files:
        assert SECRET not in path.read_text(), path
    dbs = sorted(cache.glob("*.sqlite"))
    assert dbs
    values = [blob for db in dbs for blob in _cache_values(db)]
    assert values  # the teacher's answers were cached
    texts = [_array_text(blob) for blob in values]
    assert any("[REDACTED]" in t for t in texts)  # the generated texts, as redacted at the door
    for blob, text in zip(values, texts):
        assert SECRET not in text
        assert SECRET.encode() not in blob and SECRET.encode("utf-32-le") not in blob


# -- 2. non-finite and wrongly typed values -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_log_prob_is_refused_not_retried(fresh: Served, value: str) -> None:
    remote = connect(fresh)
    _no_sleep(remote)
    fresh.faults({"path": "/v1/completions", "kind": "nonfinite", "value": value, "times": 100})
    before = _completions_sent(fresh)
    with pytest.raises(RemoteError) as err:
        remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=4, top_k=3))
    assert str(err.value) == (f"teacher: /completions answered a non-finite number ({value}) in its JSON; "
                              "refusing to use it as evidence")
    assert _completions_sent(fresh) == before + 1 and remote.client.retries == 0


@pytest.mark.parametrize("fault, needle", [
    ({"field": "token_logprobs", "index": 1, "value": "abc"},
     "/completions answered logprobs.token_logprobs[1] = 'abc' (expected a number)"),
    ({"field": "token_logprobs", "index": 1, "value": True},
     "logprobs.token_logprobs[1] = True (expected a number)"),
    ({"field": "token_logprobs", "index": 2, "value": None},
     "logprobs.token_logprobs[2] = None (expected a number)"),
    ({"field": "token_logprobs", "index": 0, "value": 0.5},
     "logprobs.token_logprobs[0] = 0.5 (expected a log-probability, at most 0)"),
    ({"field": "token_logprobs", "index": 3, "value": 10**400},  # an integer no float can hold
     "(expected a finite number)"),
    ({"field": "top_logprobs", "value": {"a": -1.0}},
     "logprobs.top_logprobs = {'a': -1.0} (expected a list)"),
    ({"field": "top_logprobs", "index": 1, "value": [-1.0, -2.0]},
     "logprobs.top_logprobs[1][0] = -1.0 (expected a {token, logprob} object)"),
    ({"field": "top_logprobs", "index": 1, "value": {"x": "-1"}},
     "logprobs.top_logprobs[1]['x'] = '-1' (expected a number)"),
    ({"field": "tokens", "index": 0, "value": 7},
     "logprobs.tokens[0] = 7 (expected a token string)"),
    ({"field": "token_logprobs", "drop": 1},
     "logprobs.token_logprobs with 3 entries for 4 tokens (the lengths must agree)"),
])
def test_a_wrongly_typed_generation_answer_names_the_field(fresh: Served, fault: dict[str, Any], needle: str) -> None:
    remote = connect(fresh)
    _no_sleep(remote)
    fresh.faults(dict(fault, path="/v1/completions", kind="mutate", times=100))
    with pytest.raises(RemoteError) as err:
        remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=4, top_k=3))
    message = str(err.value)
    assert message.startswith("teacher: /completions answered ") and needle in message, message
    assert "\n" not in message and remote.client.retries == 0


@pytest.mark.parametrize("fault, needle", [
    ({"field": "token_logprobs", "index": 2, "value": None}, "logprobs.token_logprobs[2] = None (expected a number)"),
    ({"field": "text_offset", "index": 1, "value": "3"}, "logprobs.text_offset[1] = '3' (expected a non-negative integer)"),
    ({"field": "text_offset", "drop": 2}, "logprobs.text_offset with "),
    ({"field": "top_logprobs", "index": 2, "value": None}, "logprobs.top_logprobs[2] = None (expected a {token: logprob}"),
])
def test_a_wrongly_typed_echo_answer_names_the_field(fresh: Served, fault: dict[str, Any], needle: str) -> None:
    remote = connect(fresh)
    _no_sleep(remote)
    assert remote.score(PROMPTS[:1], 3)[0].target_logprob.size  # None at the first echoed token is by design
    fresh.faults(dict(fault, path="/v1/completions", kind="mutate", times=100))
    with pytest.raises(RemoteError, match="^teacher: /completions answered ") as err:
        remote.score(PROMPTS[:1], 3)
    assert needle in str(err.value), str(err.value)


@pytest.mark.parametrize("fault", [
    {"field": "token_logprobs", "index": 1, "value": 0.5},
    {"field": "token_logprobs", "index": 0, "value": None},
    {"field": "top_logprobs", "index": 1, "value": {"x": "-1"}},
    {"field": "token_logprobs", "drop": 1},
])
def test_a_logged_copy_of_a_wrong_answer_is_refused_by_the_same_words(fresh: Served, tmp_path: Path,
                                                                      fault: dict[str, Any]) -> None:
    """The transcript reader and the live backend read answers through one schema: the same spoiled answer,
    sent by the server or logged to a file, is refused with the same words after each one's context."""
    remote = connect(fresh)
    _no_sleep(remote)
    body = {"model": remote.config.model, "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0, "logprobs": 3}
    logged = remote.client.post("/completions", body)
    spoil(logged, dict(fault, kind="mutate"), SECRET)
    path = tmp_path / "teacher.jsonl"
    path.write_text(json.dumps({"prompt": PROMPTS[0], "response": logged}) + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as from_file:
        load_transcript(path)
    fresh.faults(dict(fault, path="/v1/completions", kind="mutate", times=100))
    with pytest.raises(RemoteError) as from_server:
        remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=4, top_k=3))
    live, file = str(from_server.value), str(from_file.value)
    assert live.startswith("teacher: /completions answered logprobs."), live
    assert "teacher.jsonl: 1 malformed line: line 1: response.choices[0].logprobs." in file, file
    assert file.split("response.choices[0].", 1)[1] == live.split(" answered ", 1)[1]


def test_a_nan_answer_stops_an_audit_with_one_line(llama_dir: Path, gpt2_dir: Path, tmp_path: Path) -> None:
    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join(f"Short prompt number {i} is" for i in range(4)) + "\n")
    with serve(llama_dir) as s:
        connect(s, llama_dir)  # count the completions requests that connecting takes
        probing = _completions_sent(s)
        s.reset()
        s.faults({"path": "/v1/completions", "kind": "nonfinite", "value": "NaN", "after": probing, "times": 1000})
        proc = cli("-q", "run", "--teacher-url", s.url, "--teacher-model", "tiny", "--teacher-tokenizer", str(llama_dir),
                   "--student", str(llama_dir), "--reference", str(gpt2_dir), "--reference", str(llama_dir),
                   "--detector", "next-token-agreement", "--probes", str(probes), "--no-negative-controls",
                   "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    _one_line_error(proc, 1, "teacher: /completions answered a non-finite number (NaN) in its JSON; "
                             "refusing to use it as evidence")
    assert not (tmp_path / "out" / "result.json").exists()


def test_the_answer_checks_cover_chat_and_tgi_shapes() -> None:
    route = Route("reference-1", "/chat/completions")
    good = {"content": [{"token": "a", "logprob": -0.5, "top_logprobs": [{"token": "a", "logprob": -0.5}]},
                        {"token": "b", "logprob": 0.00004, "top_logprobs": [{"token": "b", "logprob": -1e-9}]}]}
    got = chat_logprobs(good, route)
    assert got is not None and got.tokens == ["a", "b"] and got.logprobs == [-0.5, 0.0]  # rounding read as 0
    assert chat_logprobs(None, route) is None and chat_logprobs({"content": None}, route) is None
    bad = [({"content": {"token": "a"}}, "logprobs.content = {'token': 'a'} (expected a list)"),
           ({"content": [{"token": "a", "logprob": "x"}]}, "logprobs.content[0].logprob = 'x' (expected a number)"),
           ({"content": [{"token": None, "logprob": -1}]}, "logprobs.content[0].token = None (expected a token string)"),
           ({"content": [{"token": "a", "logprob": -1, "top_logprobs": {"a": 2.0}}]},
            "logprobs.content[0].top_logprobs['a'] = 2.0 (expected a log-probability, at most 0)"),
           ([1, 2], "logprobs = [1, 2] (expected an object)")]
    for lp, needle in bad:
        with pytest.raises(RemoteError) as err:
            chat_logprobs(lp, route)
        assert str(err.value) == f"reference-1: /chat/completions answered {needle}"
    tgi = Route("student", "/generate")
    prefill = {"details": {"prefill": [{"id": 1, "text": "<s>", "logprob": None}, {"id": 5, "text": "a", "logprob": -2}]}}
    got_tgi = tgi_prefill(prefill, tgi)
    assert got_tgi is not None and got_tgi.ids == [1, 5] and got_tgi.logprobs == [None, -2.0]
    for item, needle in [({"id": "5", "text": "a", "logprob": -1}, "details.prefill[1].id = '5' (expected a token id)"),
                         ({"id": 5, "text": "a", "logprob": None}, "details.prefill[1].logprob = None (expected a number)")]:
        with pytest.raises(RemoteError, match=r"^student: /generate answered ") as err:
            tgi_prefill({"details": {"prefill": [prefill["details"]["prefill"][0], item]}}, tgi)
        assert needle in str(err.value)
    # a generation (not an echo) has a log-prob at every position, the first included
    with pytest.raises(RemoteError, match=r"token_logprobs\[0\] = None"):
        completion_logprobs({"tokens": ["a"], "token_logprobs": [None]}, Route("t", "/completions"), echo=False)


def test_strict_json_refuses_what_python_would_accept() -> None:
    from distill_audit.backends.wire import NonFiniteNumber

    assert parse_json(b'{"a": [1.5, -2, "NaN"]}') == {"a": [1.5, -2, "NaN"]}
    for raw in (b"[NaN]", b"[Infinity]", b"[-Infinity]", b"[1e999]", b"[-1e400]"):
        with pytest.raises(NonFiniteNumber):
            parse_json(raw)


# -- 3. bounded responses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["status", "body"])
def test_a_trickling_server_is_cut_off_at_the_requests_deadline(fresh: Served, tmp_path: Path, start: str) -> None:
    remote = connect(fresh, transcript=tmp_path / "t.jsonl")
    remote.client.settings = HTTPSettings(concurrency=1, timeout=3, max_retries=0)
    fresh.faults({"path": "/v1/completions", "kind": "trickle", "interval": 1.0, "from": start, "times": 10})
    began = time.monotonic()
    with pytest.raises(RemoteError, match=r"gave up after 1 attempts; last problem: no answer within 3s"):
        remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=4))
    assert time.monotonic() - began < 120  # a hang guard: the trickle alone would take far longer


def _sent(served: Served, path: str) -> int:
    """How many bytes the server got out for its huge answer (it notes it once the client hung up)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        sent = [e.get("sent") for e in served.log() if e["path"] == path and e["fault"] == "huge"]
        if sent and sent[-1] is not None:
            return int(sent[-1])
        time.sleep(0.2)
    raise AssertionError("the server never finished its huge answer")


@pytest.mark.parametrize("declared", [True, False])
def test_a_huge_answer_is_refused_without_reading_it_all(fresh: Served, tmp_path: Path, declared: bool) -> None:
    transcript = tmp_path / "t.jsonl"
    remote = connect(fresh, transcript=transcript)
    remote.client.settings = ROOMY
    _no_sleep(remote)
    fresh.faults({"path": "/v1/completions", "kind": "huge", "bytes": 200_000_000, "length": declared, "times": 10})
    with pytest.raises(RemoteError, match=r"/completions answered more than 64 MiB.*; refusing") as err:
        remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=4))
    assert ("Content-Length says 2000" in str(err.value)) == declared
    assert remote.client.retries == 0
    assert _sent(fresh, "/v1/completions") < 100 * MiB  # it stopped reading; the server could not send it all
    lines = transcript.read_bytes().splitlines()
    assert max(len(line) for line in lines) < 1.1 * MiB  # no body is kept whole in the transcript
    assert "64 MiB" in json.loads(lines[-1])["error"]


def test_a_large_answer_within_the_bound_is_used_but_not_kept_whole(fresh: Served, tmp_path: Path) -> None:
    transcript = tmp_path / "t.jsonl"
    remote = connect(fresh, transcript=transcript)
    remote.client.settings = ROOMY
    fresh.faults({"path": "/v1/completions", "kind": "huge", "bytes": 3 * MiB})
    (g,) = remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=4))
    assert g.text and remote.client.retries == 0
    last = transcript.read_bytes().splitlines()[-1]
    assert len(last) < 1.1 * MiB
    record = json.loads(last)
    assert record["response_truncated"] and record["response_bytes"] > 3 * MiB and "response" not in record


# -- 4. redirects ---------------------------------------------------------------------------------------------


def test_a_redirect_is_named_not_followed(fresh: Served) -> None:
    fresh.faults({"path": "/v1/models", "kind": "redirect", "status": 302})
    config = RemoteModel(fresh.url, "tiny")
    with pytest.raises(RedirectError) as err:
        OpenAIAdapter.connect(config, "teacher", FAST, None, flag="--teacher-url")
    assert str(err.value) == (
        f"teacher: {fresh.url}: /v1/models answered HTTP 302 redirect to {fresh.root}/moved/v1/models; redirects are "
        f"not followed (the API key would go with them); give the final URL with --teacher-url "
        f"(perhaps {fresh.root}/moved/v1)")
    assert not any(e["path"].startswith("/moved") for e in fresh.log())  # nothing went where it pointed


def test_a_redirect_mid_audit_is_not_retried(fresh: Served) -> None:
    remote = connect(fresh)
    _no_sleep(remote)
    fresh.faults({"path": "/v1/completions", "kind": "redirect", "status": 307,
                  "location": "https://elsewhere.example/v1/completions", "times": 10})
    with pytest.raises(RedirectError, match=r"HTTP 307 redirect to https://elsewhere.example/v1/completions; .*"
                                            r"\(perhaps https://elsewhere.example/v1\)$"):
        remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=4))
    assert remote.client.retries == 0


# -- 5. the fingerprint covers what discovery found ------------------------------------------------------------


def _fingerprint(served: Served) -> dict[str, str]:
    return connect(served).fingerprint


def test_a_server_replaced_behind_the_same_url_is_another_model(llama_dir: Path) -> None:
    with serve(llama_dir) as first:
        port = first.url.split(":")[-1].split("/")[0]
        a = _fingerprint(first)
        assert _fingerprint(first) == a  # the same server twice: the same model
    with serve(llama_dir, "--port", port) as again:
        assert again.url == first.url
        assert _fingerprint(again) == a  # restarted as it was (vLLM-like `created` and permission ids change)
    with serve(llama_dir, "--port", port, "--max-model-len", "48") as shorter:
        b = _fingerprint(shorter)
    with serve(llama_dir, "--port", port, "--no-echo") as no_echo:
        c = _fingerprint(no_echo)
    assert len({a["model"], b["model"], c["model"]}) == 3
    assert len({a["discovery"], b["discovery"], c["discovery"]}) == 3
    assert a["tokenizer"] != b["tokenizer"]  # without a local tokenizer the unknown one is the model's own


# -- how long a cached API answer is trusted ----------------------------------------------------------------

def test_cached_api_answers_are_used_within_their_lifetime_and_asked_again_after(fresh: Served,
                                                                                  tmp_path: Path) -> None:
    from distill_audit.cache import InferenceCache
    from distill_audit.engine import Engine

    remote = connect(fresh)
    params = GenerateParams(max_new_tokens=4)
    path = tmp_path / "cache.sqlite"
    first = Engine(InferenceCache(path), remote_max_age=3600).generate(remote, PROMPTS[:3], params)

    fresh.reset()
    within = Engine(InferenceCache(path), remote_max_age=3600)
    assert [g.text for g in within.generate(remote, PROMPTS[:3], params)] == [g.text for g in first]
    assert within.stats.cache_hits == 3 and _completions_sent(fresh) == 0

    refreshed = Engine(InferenceCache(path), remote_max_age=0.0)  # --refresh
    refreshed.generate(remote, PROMPTS[:3], params)
    assert refreshed.stats.cache_expired == 3 and refreshed.stats.computed == 3 and _completions_sent(fresh) == 3
