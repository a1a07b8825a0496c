"""A small JSON-over-HTTP client for model APIs: retries, backoff, Retry-After, a request log, no key leaks.

Standard library only (``http.client`` + ``ssl``): one keep-alive connection per worker thread, TLS
verified against the system's certificate store (or ``SSL_CERT_FILE``), never switched off.

What is retried: connection failures, timeouts, 408, 429, 5xx, and bodies that arrive cut short or are not
JSON (a proxy or a dying server). Everything else (400, 401, 404, ...) is the user's to fix and fails at
once with the server's own message. Waits grow exponentially with full jitter; a server's Retry-After is
honoured. Every attempt, failed or not, goes to the request log (``OUT/transcripts/<model>.jsonl``; the result
records it as the model's request transcript), the audit's evidence of what was asked and what came back.

Everything from the server is checked at the door, in :meth:`JSONClient.request`, before anything else
sees it:

* ``timeout`` bounds the whole request (connect, send, headers, body), not each socket read: a watchdog
  shuts the socket at the deadline, so a server that trickles a byte a second cannot hold an audit;
* a body past ``max_response_bytes`` is refused without being read further (and at once when its
  Content-Length says so); the request log keeps at most ``_MAX_LOGGED_BODY`` of any one body;
* a redirect is not followed (the key would go to wherever it points) but named;
* JSON is parsed strictly: NaN, Infinity and numbers that overflow to infinity are refused;
* the API key is sent in a header, which the request log does not record, and any echo of it anywhere in
  an answer (every string, object keys too) is replaced by ``[REDACTED]`` before the answer is returned,
  so the cache, the detectors and the result never see it. ``JSONClient.redactions`` counts the
  replacements.
"""

from __future__ import annotations

import datetime as _dt
import http.client
import ipaddress
import json
import logging
import random
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from distill_audit import __version__
from distill_audit.backends.wire import (
    REDACTED,
    NonFiniteNumber,
    RemoteError,
    parse_json,
    redact,
    redact_counted,
    retry_after,
    server_message,
)
from distill_audit.errors import UsageError

__all__ = ["REDACTED", "Endpoint", "HTTPSettings", "JSONClient", "RedirectError", "RejectedError", "RemoteError",
           "RequestLog", "parse_endpoint", "redact"]
log = logging.getLogger(__name__)
_MAX_LOGGED_BODY = 1 << 20  # bytes of any one body kept in the request log
_CHUNK = 1 << 16  # bytes asked of the socket at a time while reading a body
MiB = 1 << 20


class RejectedError(RemoteError):
    """The server refused the request as such (a 4xx other than 408/429): retrying cannot help."""

    def __init__(self, message: str, status: int, detail: str):
        super().__init__(message)
        self.status = status
        self.detail = detail


class RedirectError(RemoteError):
    """The server answered with a redirect, which is never followed (the key would go with it)."""


@dataclass(frozen=True)
class HTTPSettings:
    concurrency: int = 4  # requests in flight per remote model
    timeout: float = 120.0  # seconds for one whole request: connect, send, wait, headers and body
    max_retries: int = 6  # retries after the first attempt
    backoff_base: float = 1.0  # seconds: the first wait is drawn from [0, base], then [0, 2 base], ...
    backoff_cap: float = 60.0  # no backoff wait is drawn from beyond this
    max_retry_after: float = 600.0  # a Retry-After longer than this gives up instead of waiting
    # The largest answer read. The largest an audit asks for is an echo-scored long text with top-k
    # alternatives at every position, roughly 1 KB per token, so some 30 MB for a 32k-token context; 64 MiB
    # leaves room for that while bounding the memory a broken or hostile server can take (per request in
    # flight: ``concurrency`` times this at most).
    max_response_bytes: int = 64 * MiB

    def to_dict(self) -> dict[str, float]:
        return dict(vars(self))


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    base_path: str  # "/v1", no trailing slash

    @property
    def origin(self) -> str:
        default = 443 if self.scheme == "https" else 80
        port = "" if self.port == default else f":{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}{port}"

    @property
    def url(self) -> str:
        return self.origin + self.base_path

    @property
    def root_path(self) -> str:
        """The server's root, for routes outside the OpenAI prefix (TGI's /generate, /tokenize)."""
        return self.base_path[: -len("/v1")] if self.base_path.endswith("/v1") else self.base_path

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_endpoint(url: str, flag: str) -> Endpoint:
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{flag} {url!r}: expected an http:// or https:// URL such as http://127.0.0.1:8000/v1")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UsageError(f"{flag}: give the bare endpoint URL; put the API key in an environment variable "
                         "named by --*-api-key-env, never in the URL (it would end up in the results)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UsageError(f"{flag} {url!r}: bad port") from None
    return Endpoint(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


def _clip(text: str, limit: int = _MAX_LOGGED_BODY) -> str:
    """``text`` cut so that it takes at most ``limit`` bytes as a JSON string (escapes counted)."""
    while len(json.dumps(text, ensure_ascii=False).encode("utf-8")) > limit + 2:
        text = text[: len(text) * 3 // 4]
    return text


class RequestLog:
    """Append-only JSONL record of every request and response (or failure), one line per attempt."""

    def __init__(self, path: Path, secret: str | None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._secret = secret
        self._lock = threading.Lock()
        self._fh = open(path, "a", encoding="utf-8")
        self.records = 0

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(redact(dict(record), self._secret), ensure_ascii=False, sort_keys=True)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()
            self.records += 1

    def close(self) -> None:
        with self._lock:
            self._fh.close()


class _Transient(Exception):
    def __init__(self, problem: str, retry_after: float | None = None):
        super().__init__(problem)
        self.retry_after = retry_after


class _TooLarge(Exception):
    """The body is (or says it is) larger than ``max_response_bytes``; ``head`` is what was read of it."""

    def __init__(self, head: bytes, declared: int | None):
        super().__init__("too large")
        self.head = head
        self.declared = declared


class _Watchdog:
    """Shuts a connection's socket when ``seconds`` have passed, so that a request's timeout bounds all of
    it (a trickling server resets a per-read timeout with every byte). Once cancelled it never fires."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float):
        self.fired = False
        self._conn = conn
        self._lock = threading.Lock()
        self._cancelled = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self.fired = True
            sock = self._conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
        self._timer.cancel()


def _size(n: int) -> str:
    return f"{n / MiB:g} MiB" if n >= MiB else f"{n} bytes"


class JSONClient:
    """POST/GET JSON to one endpoint; safe to call from several threads at once."""

    def __init__(self, endpoint: Endpoint, name: str, api_key: str | None, settings: HTTPSettings,
                 request_log: RequestLog | None = None, key_env: str | None = None,
                 sleep: Callable[[float], object] | None = None, flag: str = "--*-url"):
        self.endpoint = endpoint
        self.name = name
        self.settings = settings
        self.request_log = request_log
        self.flag = flag  # the option that gave the URL, for messages
        self._key = api_key
        self._key_env = key_env
        self._aborted = threading.Event()
        self._sleep = sleep  # None: wait on the abort event, so an abort cuts a backoff short
        self._local = threading.local()
        self._conns: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._jitter = random.Random()  # timing only; never touches results
        self.requests = 0
        self.retries = 0
        self.redactions = 0  # echoes of the API key replaced in answers
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if endpoint.scheme == "https" else None
        if api_key and endpoint.scheme == "http" and not endpoint.is_loopback:
            log.warning("%s: the API key goes over plain http to %s; anyone on the path can read it (use https)",
                        name, endpoint.host)

    # -- connections ------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            ep = self.endpoint
            if self._ssl is not None:
                conn = http.client.HTTPSConnection(ep.host, ep.port, timeout=self.settings.timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(ep.host, ep.port, timeout=self.settings.timeout)
            self._local.conn = conn
            with self._lock:
                self._conns.add(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._lock:
                self._conns.discard(conn)

    def abort(self) -> None:
        """Stop every request in flight on any thread now (their sockets are shut) and refuse new ones: an
        interrupted audit exits at once instead of waiting out the timeouts."""
        self._aborted.set()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    # -- requests ---------------------------------------------------------------------------------
    def post(self, path: str, body: Mapping[str, Any], root: bool = False) -> Any:
        return self.request("POST", path, body, root)

    def get(self, path: str, root: bool = False) -> Any:
        return self.request("GET", path, None, root)

    def request(self, method: str, path: str, body: Mapping[str, Any] | None, root: bool = False) -> Any:
        """The parsed JSON answer, checked and with any echo of the key redacted; retries what can pass,
        raises RemoteError for what cannot."""
        full = (self.endpoint.root_path if root else self.endpoint.base_path) + path
        payload = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        s = self.settings
        last = ""
        for attempt in range(s.max_retries + 1):
            if self._aborted.is_set():
                raise RemoteError(f"{self.name}: stopped (the audit was interrupted or another request failed)")
            if attempt:
                with self._lock:
                    self.retries += 1
            started = time.perf_counter()
            record: dict[str, Any] = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
                                      "model": self.name, "method": method, "path": full, "request": body,
                                      "attempt": attempt + 1}
            try:
                status, headers, raw = self._send(method, full, payload)
                record["status"] = status
                if status == 200:
                    return self._answer(raw, path, record)
                record["response_text"] = self._head(raw)
                if 300 <= status < 400:
                    raise self._redirect(status, headers.get("Location"), full, None if root else path)
                if status in (408, 429) or status >= 500:
                    raise _Transient(f"HTTP {status}: {server_message(raw)}", retry_after(headers.get("Retry-After")))
                raise self._rejected(status, raw, full)
            except _Transient as exc:
                last = redact(str(exc), self._key)
                record["error"] = last
                wait = self._wait(attempt, exc.retry_after)
            except _TooLarge as exc:
                record["response_text"] = self._head(exc.head)
                said = f" (its Content-Length says {exc.declared} bytes)" if exc.declared is not None else ""
                record["error"] = f"more than {_size(s.max_response_bytes)}{said}"
                raise RemoteError(f"{self.name}: {self.endpoint.url}: {path} answered more than "
                                  f"{_size(s.max_response_bytes)}{said}; refusing (no model answer is that large)"
                                  ) from None
            except RemoteError as exc:
                record["error"] = redact(str(exc), self._key)
                raise
            except ssl.SSLCertVerificationError as exc:
                record["error"] = f"TLS: {exc}"
                raise RemoteError(f"{self.name}: {self.endpoint.url}: the server's TLS certificate could not be "
                                  f"verified ({exc.verify_message}); point SSL_CERT_FILE at the right CA bundle") from None
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timeout, cut-short body
                self._drop_connection()
                last = redact(_describe(exc, s.timeout), self._key)
                record["error"] = last
                wait = self._wait(attempt, None)
            finally:
                with self._lock:
                    self.requests += 1
                record["seconds"] = round(time.perf_counter() - started, 4)
                if self.request_log is not None:
                    self.request_log.write(record)
            if attempt < s.max_retries:
                log.info("%s: %s %s failed (%s); retry %d of %d in %.1fs", self.name, method, full, last,
                         attempt + 1, s.max_retries, wait)
                (self._sleep or self._aborted.wait)(wait)
        raise RemoteError(f"{self.name}: {self.endpoint.url}{full[len(self.endpoint.base_path):]}: gave up after "
                          f"{s.max_retries + 1} attempts; last problem: {last}")

    def _answer(self, raw: bytes, path: str, record: dict[str, Any]) -> Any:
        """A 200 body parsed strictly, with every echo of the key redacted; notes it in ``record``."""
        try:
            answer = parse_json(raw)
        except NonFiniteNumber as exc:
            record["response_text"] = self._head(raw)
            raise RemoteError(f"{self.name}: {path} answered a non-finite number ({exc}) in its JSON; refusing to "
                              "use it as evidence") from None
        except RecursionError:
            record["response_text"] = self._head(raw)
            raise RemoteError(f"{self.name}: {path} answered JSON nested too deeply to read; refusing") from None
        except json.JSONDecodeError as exc:
            record["response_text"] = self._head(raw)
            raise _Transient(f"the answer is not valid JSON ({exc}); cut short?") from None
        except ValueError as exc:  # not UTF-8 (possibly cut inside a character), or an integer too long to read
            record["response_text"] = self._head(raw)
            if isinstance(exc, UnicodeDecodeError):
                raise _Transient(f"the answer is not valid UTF-8 JSON ({exc.reason}); cut short?") from None
            raise RemoteError(f"{self.name}: {path} answered JSON that cannot be read ({exc}); refusing") from None
        try:
            answer, hits = redact_counted(answer, self._key)
        except RecursionError:
            raise RemoteError(f"{self.name}: {path} answered JSON nested too deeply to read; refusing") from None
        if hits:
            with self._lock:
                first = self.redactions == 0
                self.redactions += hits
            if first:
                log.warning("%s: the server's answer holds the API key; it is replaced by %s in every answer "
                            "before anything uses it (generated text that held it is changed)", self.name, REDACTED)
        if len(raw) <= _MAX_LOGGED_BODY:
            record["response"] = answer
        else:  # the request log keeps at most _MAX_LOGGED_BODY of any one body
            record["response_text"] = self._head(raw)
            record["response_bytes"] = len(raw)
            record["response_truncated"] = True
        return answer

    def _head(self, raw: bytes) -> str:
        """The start of a body as text for the request log: at most _MAX_LOGGED_BODY bytes, with the key
        redacted even where the cut falls inside it."""
        extra = len(self._key.encode()) if self._key else 0
        text = raw[: _MAX_LOGGED_BODY + extra].decode("utf-8", "replace")
        return _clip(redact(text, self._key))

    def _send(self, method: str, path: str, payload: bytes | None) -> tuple[int, http.client.HTTPMessage, bytes]:
        headers = {"Accept": "application/json", "User-Agent": f"distill-audit/{__version__}"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        conn = self._connection()
        watchdog = _Watchdog(conn, self.settings.timeout)
        resp: http.client.HTTPResponse | None = None
        try:
            conn.request(method, path, body=payload, headers=headers)
            if self._aborted.is_set():
                # abort() came while this thread was opening its socket (it shuts only the sockets it sees):
                # do not wait for an answer the audit no longer wants
                raise RemoteError(f"{self.name}: stopped (the audit was interrupted or another request failed)")
            resp = conn.getresponse()
            raw = self._read_body(resp, watchdog)
        except BaseException as exc:
            # hang up for real: the response holds the socket open (and a server blocked writing) until closed
            if resp is not None:
                resp.close()
            self._drop_connection()
            if watchdog.fired and isinstance(exc, (OSError, http.client.HTTPException)):
                raise TimeoutError("deadline") from None  # the watchdog shut the socket: the deadline is the cause
            raise
        finally:
            watchdog.cancel()
        if resp.will_close or watchdog.fired:
            self._drop_connection()
        return resp.status, resp.headers, raw

    def _read_body(self, resp: http.client.HTTPResponse, watchdog: _Watchdog) -> bytes:
        """The whole body, read in chunks; _TooLarge past ``max_response_bytes`` (at once when the
        Content-Length says so), IncompleteRead when it stops short of its Content-Length."""
        limit = self.settings.max_response_bytes
        if resp.length is not None and resp.length > limit:
            raise _TooLarge(b"", resp.length)
        chunks: list[bytes] = []
        total = 0
        while True:
            if watchdog.fired:
                raise TimeoutError("deadline")
            chunk = resp.read1(_CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                head = b"".join(chunks[: _MAX_LOGGED_BODY // _CHUNK + 2])
                raise _TooLarge(head, None)
        data = b"".join(chunks)
        if resp.length:  # the connection closed before the promised Content-Length arrived
            raise http.client.IncompleteRead(data, resp.length)
        resp.close()
        return data

    def _redirect(self, status: int, location: str | None, full: str, route: str | None) -> RedirectError:
        """The error for a redirect; ``route`` (a route under the base URL) lets it suggest the new base URL."""
        head = f"{self.name}: {self.endpoint.url}: {full} answered HTTP {status}"
        tail = f"redirects are not followed (the API key would go with them); give the final URL with {self.flag}"
        if not location:
            return RedirectError(f"{head} (a redirect without a Location); {tail}")
        target = redact(urllib.parse.urljoin(self.endpoint.origin + full, " ".join(location.split())), self._key)
        parts = urllib.parse.urlsplit(target)
        hint = ""
        if route and parts.path.endswith(route) and not parts.query and parts.scheme in ("http", "https"):
            hint = f" (perhaps {target[: len(target) - len(route)]})"
        shown = target if len(target) <= 200 else target[:197] + "..."
        return RedirectError(f"{head} redirect to {shown}; {tail}{hint}")

    def _rejected(self, status: int, raw: bytes, path: str) -> RejectedError:
        detail = redact(server_message(raw), self._key)
        hint = ""
        if status in (401, 403):
            hint = (f"; check the key in ${self._key_env}" if self._key_env else
                    "; the server wants a key: name its environment variable with --*-api-key-env")
        elif status == 404:
            hint = "; is the URL the API's base (e.g. http://host:8000/v1) and does the server offer this route?"
        return RejectedError(f"{self.name}: {self.endpoint.url}: {path} answered HTTP {status}: {detail}{hint}",
                             status, detail)

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        s = self.settings
        backoff = self._jitter.uniform(0.0, min(s.backoff_cap, s.backoff_base * (2 ** attempt)))
        if retry_after is None:
            return backoff
        if retry_after > s.max_retry_after:
            raise RemoteError(f"{self.name}: {self.endpoint.url}: the server asks to wait {retry_after:.0f}s "
                              f"(Retry-After), longer than the {s.max_retry_after:.0f}s allowed; try later")
        return retry_after + self._jitter.uniform(0.0, min(1.0, s.backoff_base))

    def close(self) -> None:
        self._drop_connection()


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the answer was cut short ({len(exc.partial)} bytes arrived)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    return f"{type(exc).__name__}: {exc}"
