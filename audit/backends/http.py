"""A small JSON-over-HTTP client for model APIs: retries, backoff, Retry-After, a transcript, no key leaks.

Standard library only (``http.client`` + ``ssl``): one keep-alive connection per worker thread, TLS
verified against the system's certificate store (or ``SSL_CERT_FILE``), never switched off.

What is retried: connection failures, timeouts, 408, 429, 5xx, and bodies that arrive cut short or are not
JSON (a proxy or a dying server). Everything else (400, 401, 404, ...) is the user's to fix and fails at
once with the server's own message. Waits grow exponentially with full jitter; a server's Retry-After is
honoured. Every attempt, failed or not, goes to the transcript, the audit's evidence of what was asked and
what came back. The API key is sent in a header, which the transcript does not record, and any echo of
the key in a body is replaced by ``[REDACTED]`` before it is written anywhere.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
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

from audit import __version__
from audit.errors import AuditError, UsageError

log = logging.getLogger(__name__)
REDACTED = "[REDACTED]"
_MAX_LOGGED_BODY = 1 << 20  # bytes of a non-JSON body kept in the transcript


class RemoteError(AuditError):
    """A remote model could not answer (after retries), or answered something unusable."""


class RejectedError(RemoteError):
    """The server refused the request as such (a 4xx other than 408/429): retrying cannot help."""

    def __init__(self, message: str, status: int, detail: str):
        super().__init__(message)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class HTTPSettings:
    concurrency: int = 4  # requests in flight per remote model
    timeout: float = 120.0  # seconds for one request (connect, send, wait, read)
    max_retries: int = 6  # retries after the first attempt
    backoff_base: float = 1.0  # seconds: the first wait is drawn from [0, base], then [0, 2 base], ...
    backoff_cap: float = 60.0  # no backoff wait is drawn from beyond this
    max_retry_after: float = 600.0  # a Retry-After longer than this gives up instead of waiting

    def to_dict(self) -> dict[str, float]:
        return dict(vars(self))


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    base_path: str  # "/v1", no trailing slash

    @property
    def url(self) -> str:
        default = 443 if self.scheme == "https" else 80
        port = "" if self.port == default else f":{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}{port}{self.base_path}"

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


def redact(value: Any, secret: str | None) -> Any:
    """``value`` with every occurrence of ``secret`` in its strings replaced."""
    if not secret:
        return value
    if isinstance(value, str):
        return value.replace(secret, REDACTED)
    if isinstance(value, list):
        return [redact(v, secret) for v in value]
    if isinstance(value, dict):
        return {redact(k, secret): redact(v, secret) for k, v in value.items()}
    return value


class Transcript:
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


def _retry_after(value: str | None) -> float | None:
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


def _server_message(body: bytes) -> str:
    """The server's error text, short and on one line."""
    text = body.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
        err = obj.get("error", obj) if isinstance(obj, dict) else obj
        if isinstance(err, dict):
            text = str(err.get("message") or err.get("detail") or err)
        else:
            text = str(err)
    except (json.JSONDecodeError, AttributeError):
        pass
    text = " ".join(text.split())
    return text[:300] + ("..." if len(text) > 300 else "")


class JSONClient:
    """POST/GET JSON to one endpoint; safe to call from several threads at once."""

    def __init__(self, endpoint: Endpoint, name: str, api_key: str | None, settings: HTTPSettings,
                 transcript: Transcript | None = None, key_env: str | None = None,
                 sleep: Callable[[float], object] | None = None):
        self.endpoint = endpoint
        self.name = name
        self.settings = settings
        self.transcript = transcript
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
        """The parsed JSON answer; retries what can pass, raises RemoteError for what cannot."""
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
            status: int | None = None
            record: dict[str, Any] = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
                                      "model": self.name, "method": method, "path": full, "request": body,
                                      "attempt": attempt + 1}
            try:
                status, headers, raw = self._send(method, full, payload)
                record["status"] = status
                if status == 200:
                    try:
                        answer = json.loads(raw.decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                        record["response_text"] = raw[:_MAX_LOGGED_BODY].decode("utf-8", "replace")
                        raise _Transient(f"the answer is not valid JSON ({exc}); cut short?") from None
                    record["response"] = answer
                    return answer
                record["response_text"] = raw[:_MAX_LOGGED_BODY].decode("utf-8", "replace")
                if status in (408, 429) or status >= 500:
                    raise _Transient(f"HTTP {status}: {_server_message(raw)}", _retry_after(headers.get("Retry-After")))
                raise self._rejected(status, raw, full)
            except _Transient as exc:
                last = redact(str(exc), self._key)
                record["error"] = last
                wait = self._wait(attempt, exc.retry_after)
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
                if self.transcript is not None:
                    self.transcript.write(record)
            if attempt < s.max_retries:
                log.info("%s: %s %s failed (%s); retry %d of %d in %.1fs", self.name, method, full, last,
                         attempt + 1, s.max_retries, wait)
                (self._sleep or self._aborted.wait)(wait)
        raise RemoteError(f"{self.name}: {self.endpoint.url}{full[len(self.endpoint.base_path):]}: gave up after "
                          f"{s.max_retries + 1} attempts; last problem: {last}")

    def _send(self, method: str, path: str, payload: bytes | None) -> tuple[int, http.client.HTTPMessage, bytes]:
        headers = {"Accept": "application/json", "User-Agent": f"distill-audit/{__version__}"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        conn = self._connection()
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()  # IncompleteRead when the body stops short of its Content-Length
        if resp.will_close:
            self._drop_connection()
        return resp.status, resp.headers, raw

    def _rejected(self, status: int, raw: bytes, path: str) -> RejectedError:
        detail = redact(_server_message(raw), self._key)
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
