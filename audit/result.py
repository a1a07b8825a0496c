"""The audit result: a schema-versioned JSON document, written atomically.

Identical inputs and seed give an identical file apart from ``created_at``, ``timings`` and
``inference`` (cache hit counts depend on what earlier runs left behind).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from audit.errors import ResultSchemaError

SCHEMA_VERSION = "1.2"  # 1.1 added negative_controls, observations, teacher_logs, margins and power checks;
# 1.2 added remote-model runtime (API transcripts), the watermark block and white-box lineage details
VOLATILE_KEYS = ("created_at", "timings", "inference")


def _normalise(value: Any) -> Any:
    """JSON-safe, stable values: numpy scalars to Python, floats to 10 significant digits, NaN to null."""
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.10g}")
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def dumps(result: Mapping[str, Any]) -> str:
    return json.dumps(_normalise(result), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, flush to disk, then rename over it: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    write_atomic(path, dumps(result))


def read_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultSchemaError(f"{path}: not a readable result file ({exc})") from exc
    version = str(data.get("schema_version", "missing")) if isinstance(data, dict) else "missing"
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ResultSchemaError(
            f"{path}: result schema version {version}; this distill-audit reads version {SCHEMA_VERSION}"
        )
    return data


def stable_view(result: Mapping[str, Any]) -> dict[str, Any]:
    """The result without the keys that legitimately change between identical runs."""
    return {k: v for k, v in result.items() if k not in VOLATILE_KEYS}
