"""A real HTTP server on loopback that speaks the OpenAI completions and chat shapes (plus vLLM's /tokenize
and TGI's /generate) and serves a tiny local transformers model. Test harness, run as its own process:

    python -m tests.openai_server --model DIR --name NAME [--port 0] [--no-echo] [--no-ids] [--chat-only]
                                  [--tgi] [--key KEY] [--strict-chat]

It prints ``PORT <n>`` on its first stdout line once it listens. Faults for the next matching requests are
queued with ``POST /_control/faults`` and every handled request is listed by ``GET /_control/log``:

    {"faults": [{"path": "/v1/completions", "kind": "429", "retry_after": 1, "times": 2}, ...]}

kinds: 429 (with Retry-After), 500, slow (``seconds``, then a normal answer), malformed (200, broken JSON),
truncated (a body shorter than its Content-Length, then the connection closes), no_logprobs (a normal
answer without log-probs), echo_key (500 whose body repeats the Authorization header), hang (no answer
until ``POST /_control/release``). ``"after": n`` lets n matching requests through before the fault.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from audit.backends.base import GenerateParams
from audit.backends.hf import HFAdapter


class ModelServer:
    def __init__(self, adapter: HFAdapter, name: str, echo: bool, ids: bool, chat_only: bool, tgi: bool,
                 key: str | None, strict_chat: bool = False):
        self.strict_chat = strict_chat
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
                token_lps.append(None if i == 0 else float(s.target_logprob[i]))
                tops.append(None if i == 0 else {self.token_str(ids[:i], int(a), as_ids): float(v)
                                                 for a, v in zip(s.topk_ids[i][: int(k or 1)], s.topk_logprobs[i])})
                offsets.append(int(s.offsets[i][0]))
            text = prompt
        if max_tokens > 0:
            gen_text, gen_ids, gen_lps, gen_tops = self.generate(prompt, body, int(k or 1))
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
        prompt = str(messages[-1].get("content", ""))
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
        return {"tokens": ids, "count": len(ids), "max_model_len": self.adapter.context_length}


class BadRequest(Exception):
    pass


def make_handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

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

        def do_GET(self) -> None:
            if self.path == "/_control/log":
                with server.faults_lock:
                    return self._send(200, server.log)
            if not self._authorised():
                return
            if self.path == "/v1/models":
                return self._send(200, {"object": "list", "data": [
                    {"id": server.name, "object": "model", "max_model_len": server.adapter.context_length}]})
            self._send(404, {"error": {"message": f"no route {self.path}"}})

        def _authorised(self) -> bool:
            if server.key and self.headers.get("Authorization") != f"Bearer {server.key}":
                self._send(401, {"error": {"message": "invalid api key"}})
                return False
            return True

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
            fault = self._fault(self.path)
            entry = {"path": self.path, "body": body, "fault": fault["kind"] if fault else None}
            with server.faults_lock:
                server.log.append(entry)
            kind = fault["kind"] if fault else None
            if kind == "429":
                return self._send(429, {"error": {"message": "rate limited"}},
                                  {"Retry-After": str(fault.get("retry_after", 1))})
            if kind == "500":
                return self._send(500, {"error": {"message": "internal error"}})
            if kind == "echo_key":
                return self._send(500, {"error": {"message": f"bad header {self.headers.get('Authorization')}"}})
            if kind == "slow":
                time.sleep(float(fault.get("seconds", 2)))
            if kind == "hang":
                server.release.wait()
            if body.get("model", server.name) != server.name and self.path.startswith("/v1/"):
                return self._send(404, {"error": {"message": f"model {body.get('model')} not found"}})
            try:
                if self.path == "/v1/completions" and not server.chat_only:
                    answer = server.completions(body)
                elif self.path == "/v1/chat/completions":
                    answer = server.chat(body)
                elif self.path == "/tokenize":
                    answer = server.tokenize(body)
                elif self.path == "/generate" and server.tgi:
                    answer = server.tgi_generate(body)
                else:
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
            except BadRequest as exc:
                return self._send(400, {"error": {"message": str(exc)}})
            entry["status"] = 200
            if kind == "no_logprobs":
                for choice in answer.get("choices", []):
                    choice["logprobs"] = None
            data = json.dumps(answer).encode()
            if kind == "malformed":
                return self._send(200, data[: len(data) // 2] + b"}}}")
            if kind == "truncated":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(200, data)

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
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    adapter = HFAdapter.load(args.model)
    server = ModelServer(adapter, args.name, echo=not args.no_echo, ids=not args.no_ids, chat_only=args.chat_only,
                         tgi=args.tgi, key=args.key, strict_chat=args.strict_chat)
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
