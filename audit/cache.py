"""Content-addressed on-disk store of inference results (sqlite, WAL), committed batch by batch.

A key names everything the answer depends on: model fingerprint, request kind, parameters and the
input itself. Values are numpy archives written without pickle, so reading a cache never runs code.
A process killed at any point leaves only whole, committed batches behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

SCHEMA = 2  # 2: scores carry logprob_var


def request_key(model_fingerprint: str, kind: str, params: Mapping[str, object], payload: str) -> str:
    head = json.dumps([SCHEMA, model_fingerprint, kind, dict(sorted(params.items()))], separators=(",", ":"))
    return hashlib.sha256(head.encode() + b"\0" + payload.encode("utf-8", "surrogatepass")).hexdigest()


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    return buf.getvalue()


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class InferenceCache:
    """sqlite key/value store; ``path=None`` keeps nothing on disk (``--no-cache``)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._conn: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), timeout=60)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
            self._conn.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        if self._conn is None:
            return {}
        wanted = list(dict.fromkeys(keys))
        found: dict[str, bytes] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value in self._conn.execute(f"SELECT key, value FROM results WHERE key IN ({marks})", chunk):
                found[key] = value
        return found

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        if self._conn is None:
            return
        with self._conn:  # one transaction: the batch is all there or not at all
            self._conn.executemany("INSERT OR REPLACE INTO results (key, value) VALUES (?, ?)", list(items))

    def __len__(self) -> int:
        if self._conn is None:
            return 0
        return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
