"""A real HTTP server on loopback that speaks the OpenAI completions and chat shapes (plus vLLM's /tokenize
and TGI's /generate) and serves a tiny local transformers model. Test harness, run as its own process:

    python -m tests.openai_server --model DIR --name NAME [--port 0] [--no-echo] [--no-ids] [--chat-only]
                                  [--tgi] [--key KEY] [--strict-chat] [--max-model-len N]
                                  [--bad-echo] [--zero-unlimited]

It prints ``PORT <n>`` on its first stdout line once it listens. Faults for the next matching requests are
queued with ``POST /_control/faults`` and every handled request is listed by ``GET /_control/log``:

    {"faults": [{"path": "/v1/completions", "kind": "429", "retry_after": 1, "times": 2}, ...]}

A fault without a path matches every route (GET /v1/models too). ``"after": n`` lets n matching requests
through before the fault; ``"times"`` (default 1) is how many it hits. Kinds:

* transport: 429 (with Retry-After), 500, slow (``seconds``, then a normal answer), hang (no answer until
  ``POST /_control/release``), malformed (200, broken JSON), truncated (a body shorter than its
  Content-Length, then the connection closes), huge (the answer after ``bytes`` of JSON whitespace, default
  200 MB, with a Content-Length unless ``"length": false``; the log's ``sent`` says how much got out),
  trickle (the whole response, status line on, one byte every ``interval`` seconds, default 1; or from the
  body on with ``"from": "body"``), redirect (``status``, default 302, to ``location``);
* content: no_logprobs (a normal answer without log-probs), echo_key (500 whose body repeats the
  Authorization header), key_in_text (the key from the Authorization header inside the answer: in the
  generated text, as an alternative in every top-log-prob row, as a ``note`` field, as /models' owned_by),
  nonfinite (``value`` "NaN", "Infinity" or "-Infinity" as the log-prob at ``index``, default -1, of
  completions' token_logprobs or chat's content), mutate (completions: ``logprobs[field]`` set to
  ``value``, or its item at ``index`` set to ``value``, or its last ``drop`` items removed).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from distill_audit.backends.base import GenerateParams
from distill_audit.backends.hf import HFAdapter


class ModelServer:
    def __init__(self, adapter: HFAdapter, name: str, echo: bool, ids: bool, chat_only: bool, tgi: bool,
                 key: str | None, strict_chat: bool = False, max_model_len: int | None = None):
        self.strict_chat = strict_chat
        self.echo_shift = 0.0  # nats taken off every echoed prompt log-prob (--bad-echo: an echo not from the model)
        self.zero_unlimited = False  # --zero-unlimited: max_tokens=0 generates on, as llama-cpp-python's server does
        self.max_model_len = max_model_len or adapter.context_length
        self.adapter = adapter
        self.tok = adapter.tokenizer
        self.name = name
        self.echo = echo
        self.ids = ids
        self.chat_only = chat_only
        self.tgi = tgi
        self.key = key
        self.lock = threading.Lock()  # one model call at a time
        self.faults: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.faults_lock = threading.Lock()
        self.release = threading.Event()

    # -- token strings ---------------------------------------------------------------------------
    def piece(self, prefix: list[int], token: int) -> str:
        if token in set(self.tok.all_special_ids):
            return str(self.tok.convert_ids_to_tokens(token))
        before = self.tok.decode(prefix, skip_special_tokens=True)
        after = self.tok.decode(prefix + [token], skip_special_tokens=True)
        return after[len(before):] if after.startswith(before) else self.tok.decode([token])

    def token_str(self, prefix: list[int], token: int, as_ids: bool) -> str:
        return f"token_id:{token}" if as_ids else self.piece(prefix, token)

    # -- model calls -----------------------------------------------------------------------------
    def generate(self, prompt: str, body: dict[str, Any], top_k: int) -> tuple[str, list[int], list[float], list[Any]]:
        temperature = float(body.get("temperature", 1.0) or 0.0)
        params = GenerateParams(max_new_tokens=int(body.get("max_tokens", 16)), do_sample=temperature > 0,
                                temperature=temperature if temperature > 0 else 1.0, top_k=max(1, top_k),
                                seed=int(body.get("seed") or 0))
        with self.lock:
            (g,) = self.adapter.generate([prompt], params)
        tops = [list(zip(g.topk_ids[i].tolist(), g.topk_logprobs[i].tolist())) for i in range(len(g.token_ids))]
        return g.text, g.token_ids.tolist(), g.token_logprobs.tolist(), tops

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string")
        k = body.get("logprobs")
        as_ids = self.ids and bool(body.get("return_tokens_as_token_ids"))
        max_tokens = int(body.get("max_tokens", 16))
        if max_tokens == 0 and self.zero_unlimited:
            max_tokens = 16  # like llama-cpp-python: 0 means no limit
        tokens: list[str] = []
        token_lps: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        offsets: list[int] = []
        text = ""
        if body.get("echo"):
            if not self.echo:
                raise BadRequest("echo is not supported")
            with self.lock:
                (s,) = self.adapter.score([prompt], max(1, int(k or 1)))
            ids = s.token_ids.tolist()
            for i, t in enumerate(ids):
                tokens.append(self.token_str(ids[:i], t, as_ids))
                token_lps.append(None if i == 0 else float(s.target_logprob[i]) - self.echo_shift)
                tops.append(None if i == 0 else {self.token_str(ids[:i], int(a), as_ids): float(v)
                                                 for a, v in zip(s.topk_ids[i][: int(k or 1)], s.topk_logprobs[i])})
                offsets.append(int(s.offsets[i][0]))
            text = prompt
        if max_tokens > 0:
            gen_text, gen_ids, gen_lps, gen_tops = self.generate(prompt, dict(body, max_tokens=max_tokens), int(k or 1))
            prefix = self.adapter._encode([prompt])[0]
            for i, t in enumerate(gen_ids):
                tokens.append(self.token_str(prefix + gen_ids[:i], t, as_ids))
                token_lps.append(gen_lps[i])
                tops.append({self.token_str(prefix + gen_ids[:i], a, as_ids): v for a, v in gen_tops[i][: int(k or 1)]})
                offsets.append(len(text) + len("".join(self.piece(prefix + gen_ids[:j], gen_ids[j]) for j in range(i))))
            text += gen_text
        logprobs = None
        if k is not None:
            logprobs = {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops if int(k) > 0 else None,
                        "text_offset": offsets}
        return {"id": "cmpl-test", "object": "text_completion", "model": self.name,
                "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": "length"}],
                "usage": {"completion_tokens": len(tokens)}}

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list")
        # like vLLM: the served model's own chat template renders the conversation (system turn included); a model
        # without one reads the last message's text
        rendered = self.adapter.chat_prompt(messages) if all(isinstance(m, dict) for m in messages) else None
        prompt = rendered if rendered is not None else str(messages[-1].get("content", ""))
        if self.strict_chat:  # like newer hosted reasoning models
            if "max_tokens" in body:
                raise BadRequest("max_tokens is not supported with this model; use max_completion_tokens")
            if "logprobs" in body or "top_logprobs" in body:
                raise BadRequest("logprobs are not supported with this model")
            body = dict(body, max_tokens=body.get("max_completion_tokens", 16))
        k = int(body.get("top_logprobs") or 1)
        as_ids = self.ids and bool(body.get("return_tokens_as_token_ids"))
        text, ids, lps, tops = self.generate(prompt, dict(body, max_tokens=body.get("max_tokens", 16)), k)
        prefix = self.adapter._encode([prompt])[0]
        content = None
        if body.get("logprobs"):
            content = [{"token": self.token_str(prefix + ids[:i], t, as_ids), "logprob": lps[i],
                        "bytes": list(self.piece(prefix + ids[:i], t).encode()),
                        "top_logprobs": [{"token": self.token_str(prefix + ids[:i], a, as_ids), "logprob": v}
                                         for a, v in tops[i][:k]]}
                       for i, t in enumerate(ids)]
        return {"id": "chatcmpl-test", "object": "chat.completion", "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": {"content": content} if content is not None else None,
                             "finish_reason": "length"}]}

    def tgi_generate(self, body: dict[str, Any]) -> dict[str, Any]:
        text = body.get("inputs")
        if not isinstance(text, str):
            raise BadRequest("inputs must be a string")
        with self.lock:
            (s,) = self.adapter.score([text], 1)
        ids = s.token_ids.tolist()
        prefill = [{"id": t, "text": self.piece(ids[:i], t) if t not in self.tok.all_special_ids else "",
                    "logprob": None if i == 0 else float(s.target_logprob[i])} for i, t in enumerate(ids)]
        return {"generated_text": "", "details": {"prefill": prefill, "tokens": []}}

    def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        text = body.get("prompt", body.get("content"))
        ids = self.adapter._encode([str(text)])[0]
        return {"tokens": ids, "count": len(ids), "max_model_len": self.max_model_len}

    def models(self) -> dict[str, Any]:
        """Like vLLM's: ``created`` is the time of the request and the permission id is new every time."""
        now = int(time.time())
        return {"object": "list", "data": [
            {"id": self.name, "object": "model", "created": now, "owned_by": "distill-audit-tests", "root": self.name,
             "parent": None, "max_model_len": self.max_model_len,
             "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": now}]}]}


def spoil(answer: dict[str, Any], fault: dict[str, Any], key: str) -> None:
    """Apply a content fault to an answer, in place."""
    kind = fault["kind"]
    choices = [c for c in answer.get("choices", []) if isinstance(c, dict)]
    if kind == "no_logprobs":
        for choice in choices:
            choice["logprobs"] = None
    elif kind == "key_in_text":
        answer["note"] = f"served for {key}"
        for entry in answer.get("data", []):
            entry["owned_by"] = key
        if "generated_text" in answer:
            answer["generated_text"] += f" {key}"
        for choice in choices:
            if "text" in choice:
                choice["text"] += f" {key}"
            if isinstance(choice.get("message"), dict):
                choice["message"]["content"] += f" {key}"
            lp = choice.get("logprobs") or {}
            for row in lp.get("top_logprobs") or []:
                if isinstance(row, dict):
                    row[key] = -99.0
            for item in lp.get("content") or []:
                item["top_logprobs"].append({"token": key, "logprob": -99.0})
    elif kind in ("nonfinite", "mutate"):
        for choice in choices:
            lp = choice.get("logprobs")
            if not lp:
                continue
            if kind == "nonfinite" and "content" in lp:
                lp["content"][fault.get("index", -1)]["logprob"] = float(fault["value"])
            elif kind == "nonfinite":
                lp["token_logprobs"][fault.get("index", -1)] = float(fault["value"])
            elif "drop" in fault:
                lp[fault["field"]] = lp[fault["field"]][: -int(fault["drop"])]
            elif "index" in fault:
                lp[fault["field"]][fault["index"]] = fault["value"]
            else:
                lp[fault["field"]] = fault["value"]


class BadRequest(Exception):
    pass


def make_handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _head(self, status: int, length: int | None, headers: dict[str, str] | None = None) -> bytes:
            lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}", "Content-Type: application/json"]
            if length is not None:
                lines.append(f"Content-Length: {length}")
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            return ("\r\n".join(lines) + "\r\n\r\n").encode()

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def _fault(self, path: str) -> dict[str, Any] | None:
            with server.faults_lock:
                for f in server.faults:
                    if f.get("path", path) == path and f.get("after", 0) > 0:
                        f["after"] -= 1  # let this many matching requests through first
                        return None
                    if f.get("path", path) == path and f.get("times", 1) > 0:
                        f["times"] = f.get("times", 1) - 1
                        if f["times"] == 0:
                            server.faults.remove(f)
                        return dict(f)
            return None

        def _authorised(self) -> bool:
            if server.key and self.headers.get("Authorization") != f"Bearer {server.key}":
                self._send(401, {"error": {"message": "invalid api key"}})
                return False
            return True

        def do_GET(self) -> None:
            if self.path == "/_control/log":
                with server.faults_lock:
                    return self._send(200, server.log)
            if not self._authorised():
                return
            self._serve({})

        def do_POST(self) -> None:
            body = self._body()
            if self.path.startswith("/_control/"):
                with server.faults_lock:
                    if self.path == "/_control/faults":
                        server.faults.extend(body.get("faults", []))
                    elif self.path == "/_control/reset":
                        server.faults.clear()
                        server.log.clear()
                        server.release.clear()
                    elif self.path == "/_control/release":
                        server.release.set()
                return self._send(200, {"ok": True})
            if not self._authorised():
                return
            self._serve(body)

        def _answer(self, body: dict[str, Any]) -> dict[str, Any] | None:
            """The normal answer for this route, or None when an error was sent instead."""
            if self.command == "GET":
                if self.path == "/v1/models":
                    return server.models()
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return None
            if body.get("model", server.name) != server.name and self.path.startswith("/v1/"):
                self._send(404, {"error": {"message": f"model {body.get('model')} not found"}})
                return None
            try:
                if self.path == "/v1/completions" and not server.chat_only:
                    return server.completions(body)
                if self.path == "/v1/chat/completions":
                    return server.chat(body)
                if self.path == "/tokenize":
                    return server.tokenize(body)
                if self.path == "/generate" and server.tgi:
                    return server.tgi_generate(body)
            except BadRequest as exc:
                self._send(400, {"error": {"message": str(exc)}})
                return None
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return None

        def _serve(self, body: dict[str, Any]) -> None:
            fault = self._fault(self.path)
            f: dict[str, Any] = fault or {}
            kind = f.get("kind")
            entry: dict[str, Any] = {"method": self.command, "path": self.path, "body": body, "fault": kind}
            with server.faults_lock:
                server.log.append(entry)
            key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if kind == "429":
                return self._send(429, {"error": {"message": "rate limited"}},
                                  {"Retry-After": str(f.get("retry_after", 1))})
            if kind == "500":
                return self._send(500, {"error": {"message": "internal error"}})
            if kind == "echo_key":
                return self._send(500, {"error": {"message": f"bad header {self.headers.get('Authorization')}"}})
            if kind == "redirect":
                return self._send(int(f.get("status", 302)), {"error": {"message": "moved"}},
                                  {"Location": str(f.get("location", "/moved" + self.path))})
            if kind == "slow":
                time.sleep(float(f.get("seconds", 2)))
            if kind == "hang":
                server.release.wait()
            answer = self._answer(body)
            if answer is None:
                return
            entry["status"] = 200
            if fault is not None:
                spoil(answer, fault, key)
            data = json.dumps(answer).encode()  # NaN and Infinity as Python writes them, for the nonfinite fault
            if kind == "malformed":
                return self._send(200, data[: len(data) // 2] + b"}}}")
            if kind == "truncated":
                self.wfile.write(self._head(200, len(data)) + data[: len(data) // 2])
                self.close_connection = True
                return
            if kind == "huge":
                return self._huge(data, int(f.get("bytes", 200_000_000)), bool(f.get("length", True)), entry)
            if kind == "trickle":
                head = self._head(200, len(data))
                return self._trickle(head, data, float(f.get("interval", 1.0)), f.get("from") == "body")
            self._send(200, data)

        def _huge(self, data: bytes, size: int, length: bool, entry: dict[str, Any]) -> None:
            """``size`` bytes of whitespace (valid leading JSON whitespace), then the answer."""
            self.close_connection = True
            sent = 0
            try:
                total = size + len(data)
                self.wfile.write(self._head(200, total if length else None, {} if length else {"Connection": "close"}))
                block = b" " * (1 << 20)
                while sent < size:
                    n = min(len(block), size - sent)
                    self.wfile.write(block[:n])
                    sent += n
                self.wfile.write(data)
                sent += len(data)
            except OSError:
                pass
            with server.faults_lock:
                entry["sent"] = sent

        def _trickle(self, head: bytes, data: bytes, interval: float, body_only: bool) -> None:
            self.close_connection = True
            try:
                if body_only:
                    self.wfile.write(head)
                for i in range(len(data) if body_only else len(head) + len(data)):
                    b = data[i : i + 1] if body_only else (head + data)[i : i + 1]
                    self.wfile.write(b)
                    time.sleep(interval)
            except OSError:
                pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", default="tiny")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--no-echo", action="store_true")
    ap.add_argument("--no-ids", action="store_true")
    ap.add_argument("--chat-only", action="store_true")
    ap.add_argument("--tgi", action="store_true")
    ap.add_argument("--key", default=None)
    ap.add_argument("--strict-chat", action="store_true", help="chat refuses max_tokens and logprobs")
    ap.add_argument("--max-model-len", type=int, default=None, help="the context length reported (default: the model's)")
    ap.add_argument("--bad-echo", action="store_true", help="echoed prompt log-probs 3 nats off (llama-cpp-python)")
    ap.add_argument("--zero-unlimited", action="store_true", help="max_tokens=0 generates on (llama-cpp-python)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    adapter = HFAdapter.load(args.model)
    server = ModelServer(adapter, args.name, echo=not args.no_echo, ids=not args.no_ids, chat_only=args.chat_only,
                         tgi=args.tgi, key=args.key, strict_chat=args.strict_chat, max_model_len=args.max_model_len)
    server.echo_shift = 3.0 if args.bad_echo else 0.0
    server.zero_unlimited = args.zero_unlimited
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(server))
    httpd.daemon_threads = True
    print(f"PORT {httpd.server_address[1]}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
