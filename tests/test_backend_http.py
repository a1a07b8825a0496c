"""The OpenAI-compatible backend against a real HTTP server on loopback (tests/openai_server.py, its own
process, serving a tiny transformers model): same answers as the local model, capability discovery,
retries and clear errors under injected faults, no key anywhere, and a killed audit that resumes without
re-sending anything already answered."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from distill_audit.backends.base import Capability, GenerateParams
from distill_audit.backends.hf import HFAdapter
from distill_audit.backends.http import HTTPSettings, RemoteError
from distill_audit.backends.openai_compat import OpenAIAdapter, RemoteModel
from distill_audit.detectors import REGISTRY, Available
from distill_audit.errors import CapabilityError, UsageError
from tests.conftest import REPO, cli

PROMPTS = ["The cat sat on the", "Once upon a time", "A B C", "Numbers: 1 2 3"]
FAST = HTTPSettings(concurrency=2, timeout=120.0, max_retries=3, backoff_base=0.05, backoff_cap=0.2)


class Served:
    """A running test server: its base URL and its control routes."""

    def __init__(self, proc: subprocess.Popen[str], port: int):
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}/v1"
        self.root = f"http://127.0.0.1:{port}"

    def _call(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.root + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def faults(self, *faults: dict[str, Any]) -> None:
        self._call("/_control/faults", {"faults": list(faults)})

    def log(self) -> list[dict[str, Any]]:
        return self._call("/_control/log")

    def reset(self) -> None:
        self._call("/_control/reset", {})

    def release(self) -> None:
        self._call("/_control/release", {})


@contextlib.contextmanager
def serve(model: Path, *flags: str, name: str = "tiny") -> Iterator[Served]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "tests.openai_server", "--model", str(model), "--name", name,
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("PORT "), f"server did not start: {line!r}"
        yield Served(proc, int(line.split()[1]))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(llama_dir: Path) -> Iterator[Served]:
    with serve(llama_dir) as s:
        yield s


@pytest.fixture()
def fresh(server: Served) -> Served:
    server.reset()
    return server


@pytest.fixture(scope="module")
def local(llama_dir: Path) -> HFAdapter:
    return HFAdapter.load(str(llama_dir))


def connect(served: Served, tokenizer: Path | None = None, settings: HTTPSettings = FAST, **kw: Any) -> OpenAIAdapter:
    transcript = kw.pop("transcript", None)
    config = RemoteModel(served.url, kw.pop("model", "tiny"), tokenizer=str(tokenizer) if tokenizer else None, **kw)
    return OpenAIAdapter.connect(config, "teacher", settings, transcript)


# -- same answers as the local model --------------------------------------------------------------


def test_http_model_answers_like_the_local_model(fresh: Served, local: HFAdapter, llama_dir: Path) -> None:
    remote = connect(fresh, llama_dir)
    assert remote.capabilities == frozenset({Capability.GENERATE, Capability.GENERATE_TOPK, Capability.SCORE,
                                             Capability.SCORE_TOPK})
    assert remote.runtime["generate_api"] == "completions" and remote.runtime["score_route"] == "echo"
    assert remote.runtime["token_ids"] == "server"
    assert remote.fingerprint["tokenizer"] == local.fingerprint["tokenizer"]  # checked against the server
    for params in (GenerateParams(max_new_tokens=10, top_k=5),
                   GenerateParams(max_new_tokens=10, do_sample=True, temperature=0.8, top_k=5, seed=11)):
        for r, loc in zip(remote.generate(PROMPTS, params), local.generate(PROMPTS, params)):
            assert r.text == loc.text
            np.testing.assert_array_equal(r.token_ids, loc.token_ids)
            np.testing.assert_array_equal(r.topk_ids, loc.topk_ids)
            np.testing.assert_allclose(r.topk_logprobs, loc.topk_logprobs, atol=1e-4)
    for sc, loc_sc in zip(remote.score(PROMPTS, 5), local.score(PROMPTS, 5)):
        np.testing.assert_array_equal(sc.token_ids, loc_sc.token_ids)
        np.testing.assert_array_equal(sc.offsets, loc_sc.offsets)
        np.testing.assert_allclose(sc.target_logprob, loc_sc.target_logprob, atol=1e-4, equal_nan=True)
        np.testing.assert_array_equal(sc.topk_ids[1:], loc_sc.topk_ids[1:])
        assert np.isnan(sc.entropy).all() and sc.logprob_var.size == 0  # an API gives no full-vocabulary moments
    assert remote.count_tokens(PROMPTS) == local.count_tokens(PROMPTS)


def test_without_a_local_tokenizer_token_ids_are_not_compared(fresh: Served, local: HFAdapter) -> None:
    remote = connect(fresh)
    assert remote.fingerprint["tokenizer"].startswith("unknown:")
    assert remote.count_tokens(PROMPTS) == local.count_tokens(PROMPTS)  # through the server's /tokenize
    reason = REGISTRY["next-token-agreement"]().unmet(
        Available.of_models({"teacher": [remote], "student": [local], "reference": [local, local]}))
    assert reason is not None and "tokenizer" in reason


def test_token_strings_are_mapped_through_the_local_tokenizer(llama_dir: Path, local: HFAdapter) -> None:
    with serve(llama_dir, "--no-ids") as s:
        remote = connect(s, llama_dir)
        assert remote.runtime["token_ids"] == "local tokenizer"
        params = GenerateParams(max_new_tokens=10, top_k=3)
        for r, loc in zip(remote.generate(PROMPTS, params), local.generate(PROMPTS, params)):
            known = r.token_ids != -1
            assert known.mean() > 0.8  # byte fragments may stay unknown; the rest map exactly
            np.testing.assert_array_equal(r.token_ids[known], loc.token_ids[known])


def test_an_echo_that_does_not_score_with_the_model_is_not_trusted(llama_dir: Path, local: HFAdapter) -> None:
    """Seen on llama-cpp-python's server: echoed prompt log-probs that are not the model's, and max_tokens=0 read
    as "no limit". Discovery checks the echo against the server's own generation and refuses to score with it."""
    with serve(llama_dir, "--bad-echo") as s:
        remote = connect(s, llama_dir)
        assert Capability.SCORE not in remote.capabilities and Capability.GENERATE_TOPK in remote.capabilities
        assert "differ from the log-probs it generated" in remote.discovery["score_refused"]
        with pytest.raises(CapabilityError):
            remote.score(PROMPTS, 3)
    with serve(llama_dir, "--zero-unlimited") as s:
        remote = connect(s, llama_dir)
        assert Capability.SCORE in remote.capabilities and remote.discovery["score_max_tokens"] == 1
        assert "score_refused" not in remote.discovery
        for sc, loc in zip(remote.score(PROMPTS, 5), local.score(PROMPTS, 5)):  # the generated tail is cut off
            np.testing.assert_array_equal(sc.token_ids, loc.token_ids)
            np.testing.assert_allclose(sc.target_logprob, loc.target_logprob, atol=1e-4, equal_nan=True)


def test_chat_only_server_generates_but_cannot_score(llama_dir: Path, local: HFAdapter) -> None:
    with serve(llama_dir, "--chat-only") as s:
        remote = connect(s, llama_dir)
        assert remote.runtime["generate_api"] == "chat"
        assert remote.capabilities == frozenset({Capability.GENERATE, Capability.GENERATE_TOPK})
        (g,) = remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=6, top_k=3))
        (loc,) = local.generate(PROMPTS[:1], GenerateParams(max_new_tokens=6, top_k=3))
        assert g.text == loc.text
        reason = REGISTRY["teacher-text-likelihood"]().unmet(
            Available.of_models({"teacher": [local], "student": [remote], "reference": [local, local]}))
        assert reason is not None and "score" in reason


def test_a_strict_chat_api_is_used_with_what_it_accepts(llama_dir: Path, local: HFAdapter) -> None:
    # newer hosted models refuse max_tokens (max_completion_tokens instead) and log-probs
    with serve(llama_dir, "--chat-only", "--strict-chat") as s:
        remote = connect(s, llama_dir)
        assert remote.capabilities == frozenset({Capability.GENERATE})
        (g,) = remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=6, top_k=3))
        (loc,) = local.generate(PROMPTS[:1], GenerateParams(max_new_tokens=6, top_k=3))
        assert g.text == loc.text and g.token_ids.size == 0


def test_tgi_prefill_details_give_scores_without_alternatives(llama_dir: Path, local: HFAdapter) -> None:
    with serve(llama_dir, "--no-echo", "--tgi") as s:
        remote = connect(s, llama_dir)
        assert remote.runtime["score_route"] == "tgi"
        assert Capability.SCORE in remote.capabilities and Capability.SCORE_TOPK not in remote.capabilities
        for r, loc in zip(remote.score(PROMPTS, 5), local.score(PROMPTS, 5)):
            np.testing.assert_array_equal(r.token_ids, loc.token_ids)
            np.testing.assert_array_equal(r.offsets, loc.offsets)
            np.testing.assert_allclose(r.target_logprob, loc.target_logprob, atol=1e-4, equal_nan=True)


def test_a_server_without_echo_or_tgi_declares_no_scoring(llama_dir: Path) -> None:
    with serve(llama_dir, "--no-echo") as s:
        remote = connect(s, llama_dir)
        assert Capability.SCORE not in remote.capabilities and remote.runtime["score_route"] is None


def test_a_model_the_server_does_not_serve_is_named(fresh: Served) -> None:
    with pytest.raises(UsageError, match=r"does not serve model 'other'; it serves: tiny"):
        connect(fresh, model="other")


# -- faults: retries, or one clear error ------------------------------------------------------------


def _waits(adapter: OpenAIAdapter) -> list[float]:
    waits: list[float] = []
    adapter.client._sleep = waits.append  # record the waits instead of sleeping them
    return waits


def test_rate_limit_is_retried_after_the_servers_retry_after(fresh: Served, tmp_path: Path) -> None:
    remote = connect(fresh, transcript=tmp_path / "t.jsonl")
    waits = _waits(remote)
    fresh.faults({"path": "/v1/completions", "kind": "429", "retry_after": 3, "times": 2})
    (g,) = remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=4))
    assert g.text and remote.client.retries == 2
    assert len(waits) == 2 and all(3.0 <= w <= 3.1 for w in waits)  # Retry-After honoured, plus a little jitter
    statuses = [json.loads(line).get("status") for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert statuses[-3:] == [429, 429, 200]


@pytest.mark.parametrize("kind", ["500", "malformed", "truncated"])
def test_transient_failures_are_retried_with_growing_backoff(fresh: Served, kind: str) -> None:
    remote = connect(fresh)
    waits = _waits(remote)
    fresh.faults({"path": "/v1/completions", "kind": kind, "times": 2})
    (g,) = remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=4))
    assert g.text and remote.client.retries == 2
    assert len(waits) == 2 and waits[0] <= FAST.backoff_base and waits[1] <= 2 * FAST.backoff_base


def test_a_slow_answer_past_the_timeout_is_retried(fresh: Served) -> None:
    # generous on both sides: a busy machine may take seconds over a normal answer, never minutes
    remote = connect(fresh, settings=HTTPSettings(concurrency=1, timeout=20, max_retries=2, backoff_base=0.01))
    fresh.faults({"path": "/v1/completions", "kind": "slow", "seconds": 300, "times": 1})
    (g,) = remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=4))
    assert g.text and remote.client.retries == 1


def test_persistent_failure_gives_one_clear_error(fresh: Served) -> None:
    remote = connect(fresh)
    _waits(remote)
    fresh.faults({"path": "/v1/completions", "kind": "500", "times": 100})
    with pytest.raises(RemoteError, match=r"gave up after 4 attempts; last problem: HTTP 500: internal error"):
        remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=4))


def test_an_answer_missing_its_logprobs_is_an_error_not_a_guess(fresh: Served) -> None:
    remote = connect(fresh)
    fresh.faults({"path": "/v1/completions", "kind": "no_logprobs", "times": 1})
    with pytest.raises(RemoteError, match="without the log-probs"):
        remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=4, top_k=3))


# -- keys -----------------------------------------------------------------------------------------


def test_the_api_key_is_sent_but_never_written(llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-5f1d2c9a8b7e"
    with serve(llama_dir, "--key", secret) as s:
        with pytest.raises(RemoteError, match=r"HTTP 401.*--\*-api-key-env"):
            connect(s)
        monkeypatch.delenv("AUDIT_TEST_KEY", raising=False)
        with pytest.raises(UsageError, match="AUDIT_TEST_KEY"):
            connect(s, api_key_env="AUDIT_TEST_KEY")
        monkeypatch.setenv("AUDIT_TEST_KEY", secret)
        transcript = tmp_path / "t.jsonl"
        remote = connect(s, api_key_env="AUDIT_TEST_KEY", transcript=transcript)
        _waits(remote)
        s.faults({"path": "/v1/completions", "kind": "echo_key", "times": 100})  # the server repeats the header
        with pytest.raises(RemoteError) as err:
            remote.generate(PROMPTS[:1], GenerateParams(max_new_tokens=4))
        assert secret not in str(err.value)
        text = transcript.read_text()
        assert "[REDACTED]" in text and secret not in text
        assert secret not in json.dumps(remote.runtime) and secret not in json.dumps(remote.fingerprint)


def test_a_key_in_the_url_is_refused(fresh: Served) -> None:
    with pytest.raises(UsageError, match="never in the URL"):
        OpenAIAdapter.connect(RemoteModel(fresh.url + "?api_key=abc", "tiny"), "teacher", FAST)


# -- whole audits through the command line ----------------------------------------------------------


def _pvalues(result: dict[str, Any]) -> dict[str, float]:
    return {e["detector"]: e["p_value"] for e in result["evidence"]}


def test_an_audit_through_http_gives_the_local_evidence(demo_run: dict[str, Any], tmp_path: Path) -> None:
    models = Path(str(demo_run["models"]))
    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join(line for line in (demo_run["out"] / "demo-probes.txt").read_text().splitlines()[:30]))
    logs = tmp_path / "logs.jsonl"  # 300 of the 1,500 logged answers: logged-vs-fresh runs, calibrated, at a fifth the cost
    logs.write_text("".join((models / "teacher-logs.jsonl").read_text().splitlines(keepends=True)[:300]))
    common = ["--student", str(models / "student"), "--probes", str(probes), "--teacher-logs",
              str(logs), "--teacher-fresh", str(models / "teacher-fresh.jsonl"),
              "--cache-dir", str(tmp_path / "cache")]
    for i in range(1, 5):
        common += ["--reference", str(models / f"reference-{i}")]
    local = cli("-q", "run", "--teacher", str(models / "teacher"), "--out", str(tmp_path / "local"), *common)
    assert local.returncode == 0, local.stderr
    with serve(models / "teacher", name="teach") as s:
        remote = cli("-q", "run", "--teacher-url", s.url, "--teacher-model", "teach", "--teacher-tokenizer",
                     str(models / "teacher"), "--out", str(tmp_path / "http"), *common)
    assert remote.returncode == 0, remote.stderr
    a = json.loads((tmp_path / "local" / "result.json").read_text())
    b = json.loads((tmp_path / "http" / "result.json").read_text())
    white_box = {"weight-lineage", "representation-similarity"}  # need the teacher's weights or hidden states
    no_key = {"watermark-radioactivity"}  # skipped in both audits: no --watermark-key
    assert {s["detector"] for s in b["skipped"]} == white_box | no_key
    assert set(_pvalues(a)) - set(_pvalues(b)) == white_box and len(_pvalues(b)) == 10  # 9 detectors + the omnibus
    for name, p in _pvalues(b).items():
        assert math.isclose(p, _pvalues(a)[name], rel_tol=1e-3, abs_tol=1e-9), name
    assert a["verdict"]["label"] == b["verdict"]["label"]
    teacher = b["models"][0]
    assert teacher["source"].startswith("openai-compatible http://127.0.0.1:")
    transcript = Path(teacher["runtime"]["transcript"])
    assert transcript.parent == tmp_path / "http" / "transcripts"
    import hashlib

    assert teacher["runtime"]["transcript_sha256"] == hashlib.sha256(transcript.read_bytes()).hexdigest()
    assert b["settings"]["http"]["concurrency"] == 4


def test_a_killed_audit_resumes_without_resending_answered_requests(llama_dir: Path, gpt2_dir: Path,
                                                                     tmp_path: Path) -> None:
    n_probes, answered = 16, 6
    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join(f"Short prompt number {i} is" for i in range(n_probes)) + "\n")
    with serve(llama_dir) as s:
        args = ["-q", "run", "--teacher-url", s.url, "--teacher-model", "tiny", "--teacher-tokenizer", str(llama_dir),
                "--student", str(llama_dir), "--reference", str(gpt2_dir), "--reference", str(llama_dir),
                "--detector", "text-word-agreement", "--probes", str(probes), "--api-concurrency", "2",
                "--no-negative-controls", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
        connect(s, llama_dir)  # count the completions requests that connecting takes
        probing = sum(1 for e in s.log() if e["path"] == "/v1/completions")
        s.reset()
        # after connecting, `answered` requests are answered and the rest hang until released
        s.faults({"path": "/v1/completions", "kind": "hang", "after": probing + answered, "times": 1000})
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        proc = subprocess.Popen([sys.executable, "-m", "distill_audit", *args], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        db = tmp_path / "cache" / "inference-v1.sqlite"
        deadline = time.monotonic() + 1800  # a hang guard: a busy machine loads the models slowly
        rows = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
                    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                    table = next(iter(tables & {"entries", "results"}), None)  # the cache's table, by either name
                    rows = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] if table else 0
                if rows >= answered:
                    break
            time.sleep(0.2)
        assert rows == answered, f"expected {answered} committed answers before the kill, saw {rows}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        first = [e for e in s.log() if e["path"] == "/v1/completions" and e["body"].get("max_tokens", 0) > 2]
        sent_before = {e["body"]["prompt"] for e in first if e.get("status") == 200}
        assert len(sent_before) == answered
        s.reset()
        s.release()
        rerun = cli(*args)
        assert rerun.returncode == 0, rerun.stderr
        second = [e for e in s.log() if e["path"] == "/v1/completions" and e["body"].get("max_tokens", 0) > 2]
        resent = {e["body"]["prompt"] for e in second}
        assert not resent & sent_before  # nothing answered before the kill was asked again
        assert len(resent | sent_before) == n_probes  # and nothing was lost
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["inference"]["cache_hits"] >= answered
    transcript = (tmp_path / "out" / "transcripts" / "teacher.jsonl").read_text().splitlines()
    assert sum(1 for line in transcript if json.loads(line).get("status") == 200) >= n_probes


def test_the_cache_holds_only_complete_answers(fresh: Served, tmp_path: Path) -> None:
    from distill_audit.cache import InferenceCache
    from distill_audit.engine import Engine

    remote = connect(fresh)
    _waits(remote)
    cache = InferenceCache(tmp_path / "c.sqlite")
    fresh.faults({"path": "/v1/completions", "kind": "malformed", "times": 100})
    with pytest.raises(RemoteError, match="not valid JSON"):
        Engine(cache, progress=False).generate(remote, PROMPTS[:2], GenerateParams(max_new_tokens=4))
    assert len(cache) == 0  # nothing half-read was kept
    fresh.reset()
    remote = connect(fresh)
    out = Engine(cache, progress=False).generate(remote, PROMPTS[:2], GenerateParams(max_new_tokens=4))
    assert len(cache) == 2 and all(g.text for g in out)
    cache.close()


def test_ctrl_c_stops_requests_in_flight_at_once(llama_dir: Path, tmp_path: Path) -> None:
    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join(f"Short prompt number {i} is" for i in range(8)) + "\n")
    with serve(llama_dir) as s:
        # every completions request hangs, from the first (connecting probes the route too): counting the probes
        # in this process to let them through was fragile, and a miscount left the loop below waiting for a
        # content request that never came, for the whole hang guard
        s.faults({"path": "/v1/completions", "kind": "hang", "times": 1000})
        args = ["run", "--teacher-url", s.url, "--teacher-model", "tiny", "--student", str(llama_dir),
                "--reference", str(llama_dir), "--reference", str(llama_dir), "--detector", "text-word-agreement",
                "--probes", str(probes), "--api-timeout", "3600", "--no-negative-controls",
                "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        # Ctrl-C must reach the audit even when this test runs under a shell that ignores SIGINT in background jobs
        # (nohup, `cmd &`): an ignored SIGINT is inherited, and Python then installs no handler of its own
        proc = subprocess.Popen([sys.executable, "-m", "distill_audit", *args], cwd=REPO, env=env, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 1200  # a hang guard: a busy machine loads the models slowly
            while time.monotonic() < deadline and proc.poll() is None:
                if any(e["path"] == "/v1/completions" for e in s.log()):
                    break  # a request is in flight, hanging
                time.sleep(0.2)
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=600)  # far below the 3600 s request timeout
        finally:
            proc.kill()
            s.release()
        assert proc.returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err
        assert not (tmp_path / "out" / "result.json").exists()


def test_an_audit_of_a_chat_api_teacher_with_plain_suspects_says_what_was_compared(llama_dir: Path, gpt2_dir: Path,
                                                                                   tmp_path: Path) -> None:
    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join(f"Short prompt number {i} is" for i in range(6)) + "\n")
    with serve(llama_dir, "--chat-only") as s:
        proc = cli("-q", "run", "--teacher-url", s.url, "--teacher-model", "tiny", "--student", str(llama_dir),
                   "--reference", str(gpt2_dir), "--reference", str(llama_dir), "--detector", "text-word-agreement",
                   "--probes", str(probes), "--no-negative-controls", "--cache-dir", str(tmp_path / "cache"),
                   "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["models"][0]["runtime"]["generate_api"] == "chat"
    # the local suspects have no chat template, so they continue the probe: the verdict says what was compared
    assert any("The teacher was asked chat, through the API's chat route and student plain text continued" in w
               for w in result["verdict"]["warnings"])
