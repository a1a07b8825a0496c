"""A model behind an OpenAI-compatible HTTP API (vLLM, TGI, llama.cpp's server, SGLang, hosted APIs).

What the endpoint can do is found out once, when the model is connected, with three tiny requests:

* **generate**: ``/v1/completions`` (plain-text continuation, like a local model), else
  ``/v1/chat/completions`` (the prompt sent as one user turn). Top-k log-probs of the generated tokens
  come from ``logprobs`` (completions) or ``logprobs``/``top_logprobs`` (chat).
* **score a given text**: ``/v1/completions`` with ``echo=true, logprobs=k, max_tokens=0`` (vLLM; top-k
  alternatives at every prompt position), else TGI's native ``/generate`` with ``decoder_input_details``
  (log-prob of each prompt token, no alternatives). The first token has no log-prob, as locally.
* **token ids**: vLLM returns them with ``return_tokens_as_token_ids``; otherwise token strings are mapped
  through a local copy of the tokenizer (``--*-tokenizer``). Token ids are compared across models only
  when that tokenizer is given and agrees with the server on a test text.

The backend declares exactly the capabilities found; detectors that need more are skipped with the
reason. The fingerprint covers what was found (see :attr:`OpenAIAdapter.discovery`), so a server replaced
behind the same URL that describes itself differently is not answered from the old cache. Every answer is
checked before use by the one OpenAI schema (:mod:`audit.backends.wire`, shared with the transcript reader):
a malformed log-prob is one error naming the model, route and field.

Requests for one batch go out concurrently (``HTTPSettings.concurrency``) and each answer is handed to the
engine as it arrives, so the engine's cache commits it at once and a restarted audit re-sends nothing
already answered. Log-probs from an API carry no entropy or variance over the whole
vocabulary, so scores from it leave those NaN/empty (the Min-K%++ membership score is then unavailable).
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from distill_audit.backends.base import Capability, GenerateParams, Generation, ModelAdapter, ScoredText
from distill_audit.backends.http import (
    HTTPSettings,
    JSONClient,
    RejectedError,
    RemoteError,
    RequestLog,
    parse_endpoint,
)
from distill_audit.backends.remote import UNKNOWN_ID, TokenMap, parse_token_ids, remote_fingerprint
from distill_audit.backends.wire import (
    Route,
    chat_logprobs,
    choice,
    choice_text,
    completion_logprobs,
    logprob_array,
    positive_int,
    stable_field,
    tgi_prefill,
    token_ids,
    top_arrays,
)
from distill_audit.errors import CapabilityError, UsageError

log = logging.getLogger(__name__)
T = TypeVar("T")
APIS = ("auto", "completions", "chat")
_PROBE_TEXT = "The quick brown fox jumps over the lazy dog. 1, 2, 3"
# nats by which a server's echoed log-prob of a token may differ from the log-prob it generated that token with:
# room for numerical noise (batched prefill vs step-by-step decoding, bf16 or quantised kernels), far below the
# error of an echo that does not score with the model (llama-cpp-python 0.3.36's server: up to 15 nats)
ECHO_TOLERANCE = 0.5
_IDS_EXTENSION = {"return_tokens_as_token_ids": True}  # vLLM: token strings become "token_id:N"
# the fields of a /models entry that name what is served; not vLLM's `created` (the time of the request) nor
# its permission ids (new on every request)
_STABLE_MODEL_FIELDS = ("id", "object", "owned_by", "root", "parent", "max_model_len")


@dataclass(frozen=True)
class RemoteModel:
    """One model reached over HTTP, as the user configured it. Holds the key's variable name, never the key."""

    url: str
    model: str
    api_key_env: str | None = None
    tokenizer: str | None = None  # local copy of the served model's tokenizer
    api: str = "auto"  # auto | completions | chat
    system_prompt: str | None = None  # a system turn sent before each probe on the chat route (None: none sent)

    def describe(self) -> str:
        return f"openai-compatible {self.url} model {self.model}"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _same_tokens(server: Sequence[int], local: Sequence[int]) -> bool:
    """Equal token sequences; ids the server sent as strings that did not map (UNKNOWN_ID) match anything,
    but at least 80% must be known for the comparison to mean something."""
    if len(server) != len(local) or not server:
        return False
    known = [(a, b) for a, b in zip(server, local) if a != UNKNOWN_ID]
    return len(known) >= 0.8 * len(server) and all(a == b for a, b in known)


class OpenAIAdapter(ModelAdapter):
    """The ModelAdapter contract over an OpenAI-compatible endpoint. Build with :meth:`connect`."""

    def __init__(self, name: str, config: RemoteModel, client: JSONClient, token_map: TokenMap | None):
        self.name = name
        self.config = config
        self.client = client
        self.token_map = token_map
        self._caps: set[Capability] = set()
        self.generate_api: str | None = None  # "completions" | "chat"
        self.score_route: str | None = None  # "echo" | "tgi"
        self.ids_from_server = False
        self._score_max_tokens = 0
        self._score_refused: str | None = None  # why a scoring route that answered was not trusted
        self._limit_key = "max_tokens"  # or max_completion_tokens (chat, newer hosted models)
        self._tokenize_route: str | None = None  # "vllm" | "llama.cpp"
        self._context: int | None = None
        self._listed: dict[str, Any] | None = None  # the stable fields of the model's /models entry
        self._fingerprint = remote_fingerprint("openai-compatible", client.endpoint.url, config.model, None)

    # -- connecting ---------------------------------------------------------------------------------
    @classmethod
    def connect(cls, config: RemoteModel, name: str, settings: HTTPSettings = HTTPSettings(),
                transcript_path: Path | None = None, flag: str = "--url") -> "OpenAIAdapter":
        """Connect and discover what the endpoint can do. ``flag`` is the option the URL came from (e.g.
        ``--teacher-url``); errors name it and its ``-model`` and ``-tokenizer`` siblings."""
        prefix = flag[: -len("-url")] if flag.endswith("-url") else "-"
        if config.api not in APIS:
            raise UsageError(f"unknown API {config.api!r}; known: {', '.join(APIS)}")
        if not config.model:
            raise UsageError(f"{flag} needs the served model's name as well ({prefix}-model NAME)")
        endpoint = parse_endpoint(config.url, flag)
        key = None
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise UsageError(f"the environment variable {config.api_key_env} (named for {name}'s API key) "
                                 "is not set or is empty")
        token_map = TokenMap.load(config.tokenizer, f"{prefix}-tokenizer") if config.tokenizer else None
        request_log = RequestLog(transcript_path, key) if transcript_path is not None else None
        client = JSONClient(endpoint, name, key, settings, request_log, config.api_key_env, flag=flag)
        adapter = cls(name, config, client, token_map)
        adapter._discover()
        return adapter

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        """A probe as the chat route sends it: one user turn, after the system turn ``--system-prompt`` asks for."""
        head = [] if self.config.system_prompt is None else [{"role": "system", "content": self.config.system_prompt}]
        return [*head, {"role": "user", "content": prompt}]

    @property
    def fixed_format(self) -> str | None:
        """A chat route renders the conversation on the server; a completions route continues plain text."""
        return {"chat": "chat", "completions": "plain"}.get(self.generate_api or "")

    def _route(self, path: str) -> Route:
        return Route(self.name, path)

    def _try(self, path: str, body: dict[str, Any], root: bool = False) -> Any | None:
        """The answer, or None when the server refuses the request as such (route or option not offered)."""
        try:
            return self.client.post(path, body, root=root)
        except RejectedError as exc:
            if exc.status in (401, 403):
                raise
            log.info("%s: %s not offered (HTTP %d: %s)", self.name, path, exc.status, exc.detail)
            return None

    def _discover(self) -> None:
        """Which routes and options the endpoint honours; sets capabilities, token-id source, context and the
        fingerprint, which covers all of that."""
        self._discover_listing()
        self._discover_generation()
        self._discover_scoring()
        # counting tokens: the local tokenizer, else the server's /tokenize
        if self.token_map is None:
            routes: tuple[tuple[str, dict[str, Any]], ...] = (
                ("vllm", {"model": self.config.model, "prompt": "Hello"}), ("llama.cpp", {"content": "Hello"}))
            for route, tok_body in routes:
                got = self._try("/tokenize", tok_body, root=True)
                if isinstance(got, dict) and isinstance(got.get("tokens"), list):
                    self._tokenize_route = route
                    if self._context is None:
                        self._context = positive_int(got.get("max_model_len"))
                    break
        else:
            self._check_tokenizer()
        self._fingerprint = remote_fingerprint("openai-compatible", self.client.endpoint.url, self.config.model,
                                               self.token_map.fingerprint if self.token_map is not None else None,
                                               self.discovery)
        log.info("%s: %s via %s; capabilities %s; token ids %s", self.name, self.client.endpoint.url,
                 self.generate_api, ", ".join(sorted(c.value for c in self._caps)), self._ids_source)

    def _discover_listing(self) -> None:
        """The model's /models entry: it must be served, and its context length is taken from there."""
        model = self.config.model
        try:
            listing = self.client.get("/models")
        except RejectedError as exc:
            if exc.status in (401, 403):
                raise
            listing = None
        if isinstance(listing, dict) and isinstance(listing.get("data"), list):
            served = {str(m.get("id")): m for m in listing["data"] if isinstance(m, dict)}
            if served and model not in served:
                raise UsageError(f"{self.name}: {self.client.endpoint.url} does not serve model {model!r}; it serves: "
                                 f"{', '.join(sorted(served)[:10])}")
            if model in served:
                self._listed = {k: stable_field(served[model][k]) for k in _STABLE_MODEL_FIELDS if k in served[model]}
                self._context = positive_int(served[model].get("max_model_len"))

    def _discover_generation(self) -> None:
        """Completions first (continuation of plain text, as for local models), then chat. Each route is tried
        with the most it might give first (vLLM's token ids, top-k log-probs), then with less; chat also with
        max_completion_tokens, which newer hosted models require instead of max_tokens."""
        model = self.config.model
        answer = None
        if self.config.api in ("auto", "completions"):
            base = {"model": model, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
            route = self._route("/completions")
            for extra in (dict(_IDS_EXTENSION, logprobs=2), {"logprobs": 2}, {}):
                answer = self._try("/completions", dict(base, **extra))
                if answer is not None:
                    self.generate_api = "completions"
                    got = completion_logprobs(choice(answer, route).get("logprobs"), route, echo=False)
                    tokens = got.tokens if got is not None else []
                    self.ids_from_server = "return_tokens_as_token_ids" in extra and bool(tokens) and all(
                        t.startswith("token_id:") for t in tokens)
                    if got is not None and got.top:
                        self._caps.add(Capability.GENERATE_TOPK)
                    break
        if answer is None and self.config.api in ("auto", "chat"):
            messages = [{"role": "user", "content": "Hello"}]
            with_lp = {"logprobs": True, "top_logprobs": 2}
            variants = [dict(_IDS_EXTENSION, max_tokens=2, **with_lp), dict(max_tokens=2, **with_lp),
                        dict(max_completion_tokens=2, **with_lp), {"max_tokens": 2}, {"max_completion_tokens": 2}]
            route = self._route("/chat/completions")
            for extra in variants:
                answer = self._try("/chat/completions", dict({"model": model, "messages": messages,
                                                              "temperature": 0}, **extra))
                if answer is not None:
                    self.generate_api = "chat"
                    self._limit_key = "max_completion_tokens" if "max_completion_tokens" in extra else "max_tokens"
                    got = chat_logprobs(choice(answer, route).get("logprobs"), route)
                    tokens = got.tokens if got is not None else []
                    self.ids_from_server = "return_tokens_as_token_ids" in extra and bool(tokens) and all(
                        t.startswith("token_id:") for t in tokens)
                    if got is not None and got.top is not None and all(got.top):
                        self._caps.add(Capability.GENERATE_TOPK)
                    break
        if answer is None:
            raise RemoteError(f"{self.name}: {self.client.endpoint.url} generates with neither /completions nor "
                              f"/chat/completions for model {model!r}; see the transcript for its answers")
        self._caps.add(Capability.GENERATE)

    def _discover_scoring(self) -> None:
        """Scoring a given text: echo with max_tokens=0 (vLLM), max_tokens=1 cut back, or TGI's /generate.

        An echo route is trusted only when it passes two checks, since a wrong number is worse than none:
        with max_tokens=0 nothing may follow the text (llama-cpp-python reads 0 as "no limit" and generates on),
        and its echoed log-probs of a greedy continuation must equal the log-probs the server generated that
        continuation with (llama-cpp-python's server echoes prompt log-probs that are not the model's)."""
        route = self._route("/completions")
        for max_tokens in (0, 1):
            body = {"model": self.config.model, "prompt": _PROBE_TEXT, "max_tokens": max_tokens, "echo": True,
                    "logprobs": 1, "temperature": 0}
            if self.ids_from_server:
                body.update(_IDS_EXTENSION)
            answer = self._try("/completions", body) if self.generate_api == "completions" else None
            if answer is None:
                break
            got = completion_logprobs(choice(answer, route).get("logprobs"), route, echo=True)
            if got is None or len(got.tokens) < 2 or not got.offsets:
                break
            if max_tokens == 0 and max(got.offsets) >= len(_PROBE_TEXT):
                continue  # it generated past the text: try max_tokens=1, whose extra token is cut off
            problem = self._echo_disagreement(max_tokens)
            if problem is not None:
                self._score_refused = problem
                log.warning("%s: not scoring given text through echo: %s", self.name, problem)
                break
            self.score_route, self._score_max_tokens = "echo", max_tokens
            self._caps.add(Capability.SCORE)
            if got.top is not None and any(got.top[1:]):
                self._caps.add(Capability.SCORE_TOPK)
            break
        if self.score_route is None:
            tgi = self._try("/generate", {"inputs": _PROBE_TEXT, "parameters": {
                "max_new_tokens": 1, "details": True, "decoder_input_details": True}}, root=True)
            prefill = tgi_prefill(tgi, self._route("/generate")) if tgi is not None else None
            if prefill is not None and "".join(prefill.texts).endswith(_PROBE_TEXT[-10:]):
                self.score_route = "tgi"
                self.ids_from_server = self.ids_from_server or all(i is not None for i in prefill.ids)
                self._caps.add(Capability.SCORE)

    def _echo_disagreement(self, max_tokens: int) -> str | None:
        """Why the echo route's log-probs cannot be trusted, or None. The server continues the probe greedily with
        log-probs; then the probe plus that continuation is echoed: the same model in the same context must give
        the continuation's tokens the same log-probs, up to numerical noise (:data:`ECHO_TOLERANCE`). When the two
        answers do not tokenise the continuation alike, or the server gives no log-probs with generation, there is
        nothing to compare and nothing is concluded."""
        route = self._route("/completions")
        generated = self._try("/completions", {"model": self.config.model, "prompt": _PROBE_TEXT, "max_tokens": 2,
                                               "temperature": 0, "logprobs": 1})
        if generated is None:
            return None
        chosen = choice(generated, route)
        gen = completion_logprobs(chosen.get("logprobs"), route, echo=False)
        text = choice_text(chosen, route)
        if gen is None or not text:
            return None
        full = _PROBE_TEXT + text
        echoed = self._try("/completions", {"model": self.config.model, "prompt": full, "max_tokens": max_tokens,
                                            "echo": True, "logprobs": 1, "temperature": 0})
        got = completion_logprobs(choice(echoed, route).get("logprobs"), route, echo=True) if echoed else None
        if got is None or got.offsets is None:
            return "it answered an echo request without prompt log-probs"
        span = [i for i, o in enumerate(got.offsets) if len(_PROBE_TEXT) <= o < len(full)]
        if [got.tokens[i] for i in span] != gen.tokens:
            return None  # tokenised differently at the seam: no token-by-token comparison
        worst = max(abs(float(got.logprobs[i] or 0.0) - float(g or 0.0)) for i, g in zip(span, gen.logprobs))
        if worst > ECHO_TOLERANCE:
            return (f"its echoed log-probs of its own greedy continuation differ from the log-probs it generated "
                    f"that continuation with by up to {worst:.3g} nats (tolerance {ECHO_TOLERANCE:g})")
        return None

    def _check_tokenizer(self) -> None:
        """The local tokenizer must tokenise like the server, or token ids would be compared wrongly."""
        assert self.token_map is not None
        local = self.token_map.encode(_PROBE_TEXT)
        server_ids: list[int] | None = None
        got = self._try("/tokenize", {"model": self.config.model, "prompt": _PROBE_TEXT}, root=True)
        if isinstance(got, dict) and isinstance(got.get("tokens"), list):
            server_ids = token_ids(got["tokens"], self._route("/tokenize"))
        elif self.score_route == "echo":
            scored = self._score_one(_PROBE_TEXT, 1)
            server_ids = [int(i) for i in scored.token_ids]
        flag = f"--{self.name.split('-')[0]}-tokenizer"
        if server_ids is None:
            log.warning("%s: cannot check %s against the server (no echo scoring, no /tokenize); trusting it",
                        self.name, flag)
        elif not (_same_tokens(server_ids, local) or _same_tokens(server_ids, local[1:])):
            raise UsageError(f"{flag} {self.token_map.source}: tokenises a test text differently from the server "
                             f"({len(server_ids)} vs {len(local)} tokens); it is not the served model's tokenizer")

    @property
    def discovery(self) -> dict[str, Any]:
        """What connecting found, all of which the fingerprint covers: a server replaced behind the same URL
        and name (other options, another context length, another model entry) is another model to the cache."""
        return {
            "models_entry": self._listed,
            "generate_api": self.generate_api,
            **({"system_prompt_sha256": _sha256(self.config.system_prompt)}
               if self.config.system_prompt is not None and self.generate_api == "chat" else {}),
            "limit_key": self._limit_key,
            "score_route": self.score_route,
            "score_max_tokens": self._score_max_tokens,
            **({"score_refused": self._score_refused} if self._score_refused else {}),
            "token_ids": self._ids_source,
            "capabilities": sorted(c.value for c in self._caps),
            "context_length": self._context,
        }

    @property
    def _ids_source(self) -> str:
        if self.ids_from_server:
            return "server"
        return "local tokenizer" if self.token_map is not None else "unknown"

    # -- contract ------------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset(self._caps)

    @property
    def fingerprint(self) -> dict[str, str]:
        return dict(self._fingerprint)

    @property
    def runtime(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": "openai-compatible",
            "url": self.client.endpoint.url,
            "model": self.config.model,
            "generate_api": self.generate_api,
            "score_route": self.score_route,
            "token_ids": self._ids_source,
            "tokenizer": self.token_map.source if self.token_map is not None else None,
            "api_key_env": self.config.api_key_env,
            "requests": self.client.requests,
            "retries": self.client.retries,
            "redactions": self.client.redactions,
            "discovery": self.discovery,
            "http": self.client.settings.to_dict(),
            "device": "remote",
        }
        if self.client.request_log is not None:
            out["transcript"] = str(self.client.request_log.path)  # the result's name for the request log
        return out

    @property
    def context_length(self) -> int | None:
        return self._context

    @property
    def streams_results(self) -> bool:
        return True  # the engine passes on_result and commits each answer as it arrives

    def local_tokenizer(self) -> Any:
        return self.token_map.tokenizer if self.token_map is not None else None

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if self.token_map is not None:
            return self.token_map.count(texts)
        if self._tokenize_route is None:
            raise CapabilityError(f"{self.name}: the server offers no /tokenize, so its tokens cannot be counted here; "
                                  f"give the model's tokenizer with --{self.name.split('-')[0]}-tokenizer DIR")

        def one(text: str) -> int:
            body = ({"model": self.config.model, "prompt": text} if self._tokenize_route == "vllm"
                    else {"content": text, "add_special": True})
            got = self.client.post("/tokenize", body, root=True)
            route = self._route("/tokenize")
            if not isinstance(got, dict) or got.get("tokens") is None:
                raise route.unusable("holds no token list")
            return len(token_ids(got["tokens"], route))

        return self._concurrently(one, texts)

    def _concurrently(self, fn: Callable[[str], T], items: Sequence[str],
                      on_result: Callable[[int, T], None] | None = None) -> list[T]:
        """``fn`` over items with at most ``concurrency`` in flight; results in order. ``on_result`` sees each
        result (on this thread) as soon as it arrives. The first failure cancels what has not started."""
        results: list[Any] = [None] * len(items)
        if not items:
            return results
        pool = ThreadPoolExecutor(max_workers=max(1, self.client.settings.concurrency),
                                  thread_name_prefix=f"http-{self.name}")
        pending: dict[Future[T], int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    results[i] = fut.result()
                    if on_result is not None:
                        on_result(i, results[i])
        except BaseException:
            # a failed request or Ctrl-C: stop what is in flight now rather than waiting out its timeout
            self.client.abort()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return results

    # -- generate ------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], params: GenerateParams,
                 on_result: Callable[[int, Generation], None] | None = None) -> list[Generation]:
        return self._concurrently(lambda p: self._generate_one(p, params), prompts, on_result)

    def _generate_one(self, prompt: str, params: GenerateParams) -> Generation:
        k = max(1, params.top_k)
        want_topk = Capability.GENERATE_TOPK in self._caps
        body: dict[str, Any] = {"model": self.config.model, self._limit_key: params.max_new_tokens,
                                "temperature": params.temperature if params.do_sample else 0.0, "seed": params.seed}
        if params.do_sample:
            body["top_p"] = 1.0
        if self.ids_from_server:
            body.update(_IDS_EXTENSION)
        if self.generate_api == "completions":
            body["prompt"] = prompt
            if want_topk:
                body["logprobs"] = k
            route = self._route("/completions")
            chosen = choice(self.client.post("/completions", body), route)
            got = completion_logprobs(chosen.get("logprobs"), route, echo=False) if want_topk else None
        else:
            body["messages"] = self._messages(prompt)
            if want_topk:
                body.update(logprobs=True, top_logprobs=k)
            route = self._route("/chat/completions")
            chosen = choice(self.client.post("/chat/completions", body), route)
            got = chat_logprobs(chosen.get("logprobs"), route) if want_topk else None
        text = choice_text(chosen, route)
        if not want_topk:
            return Generation(text=text, token_ids=np.zeros(0, np.int64), token_logprobs=np.zeros(0, np.float32))
        if got is None or got.top is None or any(row is None for row in got.top):
            raise RemoteError(f"{self.name}: the server answered without the log-probs it gave when connected "
                              "(asked for top-k of each generated token); it may limit log-probs per request")
        top_ids, top_lps = top_arrays(got.top, k, self.token_map)
        return Generation(text=text, token_ids=parse_token_ids(got.tokens, self.token_map),
                          token_logprobs=logprob_array(got.logprobs), topk_ids=top_ids, topk_logprobs=top_lps)

    # -- score ---------------------------------------------------------------------------------------
    def score(self, texts: Sequence[str], top_k: int,
              on_result: Callable[[int, ScoredText], None] | None = None) -> list[ScoredText]:
        if Capability.SCORE not in self._caps:
            raise CapabilityError(f"{self.name}: the server cannot score a given text (no echo log-probs, no TGI "
                                  "/generate details)")
        return self._concurrently(lambda t: self._score_one(t, top_k), texts, on_result)

    def _score_one(self, text: str, top_k: int) -> ScoredText:
        k = max(1, top_k) if Capability.SCORE_TOPK in self._caps else 0
        if self.score_route == "tgi":
            return self._score_tgi(text)
        body: dict[str, Any] = {"model": self.config.model, "prompt": text, "max_tokens": self._score_max_tokens,
                                "echo": True, "logprobs": max(k, 1), "temperature": 0}
        if self.ids_from_server:
            body.update(_IDS_EXTENSION)
        route = self._route("/completions")
        got = completion_logprobs(choice(self.client.post("/completions", body), route).get("logprobs"), route,
                                  echo=True)
        if got is None or not got.tokens or got.offsets is None or (k and got.top is None):
            raise RemoteError(f"{self.name}: the server answered an echo request without prompt log-probs")
        # a generated token starts at the end of the text: drop it (max_tokens=1 appends one, and a server that
        # reads max_tokens=0 as "no limit" would append many)
        n = sum(1 for o in got.offsets if o < len(text))
        n = max(n, 1)
        starts = np.minimum(np.asarray(got.offsets[:n], dtype=np.int64), len(text))
        ends = np.maximum(np.append(starts[1:], len(text)), starts)
        if k and got.top is not None:
            top_ids, top_lps = top_arrays(got.top[:n], k, self.token_map)
        else:
            top_ids, top_lps = np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
        return ScoredText(
            token_ids=parse_token_ids(got.tokens[:n], self.token_map),
            offsets=np.stack([starts, ends], axis=1).reshape(-1, 2),
            target_logprob=logprob_array(got.logprobs[:n]),
            topk_ids=top_ids,
            topk_logprobs=top_lps,
            entropy=np.full(n, np.nan, dtype=np.float32),
        )

    def _score_tgi(self, text: str) -> ScoredText:
        got = self.client.post("/generate", {"inputs": text, "parameters": {
            "max_new_tokens": 1, "details": True, "decoder_input_details": True}}, root=True)
        prefill = tgi_prefill(got, self._route("/generate"))
        if prefill is None:
            raise RemoteError(f"{self.name}: TGI answered /generate without prefill details")
        lead = len("".join(prefill.texts)) - len(text)  # special tokens (BOS) whose text precedes the input
        starts, pos = [], 0
        for piece in prefill.texts:
            starts.append(max(0, pos - max(lead, 0)))
            pos += len(piece)
        starts_a = np.minimum(np.asarray(starts, dtype=np.int64), len(text))
        ends = np.maximum(np.append(starts_a[1:], len(text)), starts_a)
        n = len(prefill.ids)
        ids = np.array([UNKNOWN_ID if i is None else i for i in prefill.ids], dtype=np.int64)
        lps = logprob_array(prefill.logprobs)
        lps[0] = np.nan
        return ScoredText(token_ids=ids, offsets=np.stack([starts_a, ends], axis=1), target_logprob=lps,
                          topk_ids=np.zeros((n, 0), np.int64), topk_logprobs=np.zeros((n, 0), np.float32),
                          entropy=np.full(n, np.nan, dtype=np.float32))

    def hidden_states(self, texts: Sequence[str], layers: Sequence[int],
                      spans: Sequence[Sequence[tuple[int, int]]] | None = None) -> list[np.ndarray]:
        raise CapabilityError(f"{self.name}: an API gives no hidden states")

    def close(self) -> None:
        self.client.close()
        if self.client.request_log is not None:
            self.client.request_log.close()
