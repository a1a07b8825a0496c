"""Content-addressed on-disk store of inference results (sqlite, WAL), committed batch by batch.

A key names everything the answer depends on: model fingerprint, request kind, parameters and the
input itself. Values are plain arrays in a small format of our own (:func:`pack_arrays`): a JSON header
naming each array's dtype (numbers, booleans and fixed-width strings only) and shape, then the raw bytes.
Reading a cache never runs code, and reads back ten times faster than numpy's zip archives did.
A process killed at any point leaves only whole, committed batches behind.

Every entry carries a checksum of (key, value): a value that was damaged on disk, or moved to another
key, fails it and is dropped (and recomputed by the engine), never used. Every entry also carries the
time it was stored, so answers from a remote API can be trusted for a stated lifetime only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from distill_audit.errors import AuditError

log = logging.getLogger(__name__)
SCHEMA = 4  # 2: scores carry logprob_var; 3: entries carry a checksum and the time they were stored; 4: values in
# the format of pack_arrays (was numpy .npz)
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


_MAGIC = b"DAC4"
_HEAD = struct.Struct("<4sI")  # magic, header length
# dtypes a value may hold: booleans, integers, floats, fixed-width bytes and unicode strings (never objects)
_DTYPE = re.compile(r"^[<>|=]?(b1|[iu][1248]|f[248]|[SU]\d{1,7})$")


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """One cache value: the header (JSON: per array its name, dtype and shape) and then every array's bytes, in order."""
    parts, head = [], []
    for name, value in arrays.items():
        arr = np.asarray(value)
        if not _DTYPE.match(arr.dtype.str):
            raise TypeError(f"cache values hold plain arrays only, not {arr.dtype} ({name})")
        head.append([name, arr.dtype.str, list(arr.shape)])
        parts.append(arr.tobytes())
    header = json.dumps(head, separators=(",", ":")).encode()
    return b"".join([_HEAD.pack(_MAGIC, len(header)), header, *parts])


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of a value; ValueError when it is not a well-formed value (the engine then recomputes)."""
    try:
        magic, size = _HEAD.unpack_from(blob, 0)
        if magic != _MAGIC or _HEAD.size + size > len(blob):
            raise ValueError("not a cache value")
        head = json.loads(blob[_HEAD.size:_HEAD.size + size])
        offset, out = _HEAD.size + size, {}
        for name, dtype, shape in head:
            if not (isinstance(name, str) and isinstance(dtype, str) and _DTYPE.match(dtype) and isinstance(shape, list)
                    and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
                raise ValueError("malformed header")
            dt = np.dtype(dtype)
            count = math.prod(shape)  # Python ints: a forged shape cannot overflow
            nbytes = dt.itemsize * count
            if offset + nbytes > len(blob):
                raise ValueError("truncated")
            out[name] = np.frombuffer(blob, dtype=dt, count=count, offset=offset).reshape(tuple(shape)).copy()
            offset += nbytes
        if offset != len(blob):
            raise ValueError("trailing bytes")
        return out
    except (struct.error, ValueError, TypeError, UnicodeDecodeError, RecursionError) as exc:
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
