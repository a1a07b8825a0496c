"""Content-addressed on-disk store of inference results (sqlite, WAL), committed batch by batch.

A key names everything the answer depends on: model fingerprint, request kind, parameters and the
input itself. Values are numpy archives written without pickle, so reading a cache never runs code.
A process killed at any point leaves only whole, committed batches behind.

Every entry carries a checksum of (key, value): a value that was damaged on disk, or moved to another
key, fails it and is dropped (and recomputed by the engine), never used. Every entry also carries the
time it was stored, so answers from a remote API can be trusted for a stated lifetime only.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sqlite3
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from audit.errors import AuditError

log = logging.getLogger(__name__)
SCHEMA = 3  # 2: scores carry logprob_var; 3: entries carry a checksum and the time they were stored
_TABLE = "entries"


class CacheError(AuditError):
    """The cache cannot be opened, read or written; the message says how to recover."""

    exit_code = 2


def request_key(model_fingerprint: str, kind: str, params: Mapping[str, object], payload: str) -> str:
    head = json.dumps([SCHEMA, model_fingerprint, kind, dict(sorted(params.items()))], separators=(",", ":"))
    return hashlib.sha256(head.encode() + b"\0" + payload.encode("utf-8", "surrogatepass")).hexdigest()


def checksum(key: str, value: bytes) -> str:
    """Binds a value to its key: a value copied under another key, or changed on disk, fails it."""
    return hashlib.sha256(key.encode() + b"\0" + value).hexdigest()


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    return buf.getvalue()


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of a value; ValueError when it is not a readable archive (the engine then recomputes)."""
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"unreadable cache value ({type(exc).__name__})") from exc


@dataclass
class Lookup:
    """What :meth:`InferenceCache.get_many` found: usable values, and how many entries it refused."""

    values: dict[str, bytes]
    corrupt: int = 0  # failed their checksum: dropped
    expired: int = 0  # older than the lifetime asked for: dropped


def _recovery(path: Path) -> str:
    return f"run with --no-cache, or delete {path} (it only holds results that can be recomputed)"


class InferenceCache:
    """sqlite key/value store; ``path=None`` keeps nothing on disk (``--no-cache``)."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time):
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._clock = clock
        if path is not None:
            self._conn = self._open(path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cache directory {path.parent}: cannot create it ({exc.strerror}); "
                             "choose another with --cache-dir, or run with --no-cache") from None
        conn = None
        try:
            conn = sqlite3.connect(str(path), timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("DROP TABLE IF EXISTS results")  # entries of schema 2 and before, never read again
            conn.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
                         "checksum TEXT NOT NULL, stored REAL NOT NULL)")
            conn.commit()
            conn.execute(f"SELECT key FROM {_TABLE} LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise CacheError(_describe(exc, path)) from None
        return conn

    def get_many(self, keys: Iterable[str], max_age: float | None = None) -> Lookup:
        """The stored values of ``keys`` that pass their checksum (and are at most ``max_age`` seconds old)."""
        found = Lookup({})
        if self._conn is None:
            return found
        wanted = list(dict.fromkeys(keys))
        now = self._clock()
        bad: list[str] = []
        try:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT key, value, checksum, stored FROM {_TABLE} WHERE key IN ({marks})", chunk)
                for key, value, check, stored in rows:
                    if not isinstance(value, bytes) or checksum(key, value) != check:
                        found.corrupt += 1
                        bad.append(key)
                    elif max_age is not None and now - float(stored) > max_age:
                        found.expired += 1
                    else:
                        found.values[key] = value
            if bad:
                log.warning("cache %s: %d entr%s failed the checksum and will be recomputed", self.path,
                            len(bad), "y" if len(bad) == 1 else "ies")
                self.delete(bad)
        except sqlite3.Error as exc:
            raise CacheError(_describe(exc, self.path)) from None
        return found

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        if self._conn is None:
            return
        now = self._clock()
        rows = [(key, value, checksum(key, value), now) for key, value in items]
        try:
            with self._conn:  # one transaction: the batch is all there or not at all
                self._conn.executemany(
                    f"INSERT OR REPLACE INTO {_TABLE} (key, value, checksum, stored) VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise CacheError(_describe(exc, self.path)) from None

    def delete(self, keys: Iterable[str]) -> None:
        if self._conn is None:
            return
        try:
            with self._conn:
                self._conn.executemany(f"DELETE FROM {_TABLE} WHERE key = ?", [(k,) for k in keys])
        except sqlite3.Error as exc:
            raise CacheError(_describe(exc, self.path)) from None

    def __len__(self) -> int:
        if self._conn is None:
            return 0
        return int(self._conn.execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _describe(exc: sqlite3.Error, path: Path | None) -> str:
    text = str(exc).strip() or type(exc).__name__
    where = f"cache {path}" if path is not None else "cache"
    if path is None:
        return f"{where}: {text}"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return f"{where}: cannot write to it ({text}); choose a writable --cache-dir, or run with --no-cache"
    return f"{where} is damaged ({text}); {_recovery(path)}"
