"""The audit result: a schema-versioned JSON document, checked against its published JSON Schema on every
write and every read, and written atomically.

Identical inputs and seed give an identical file apart from ``created_at``, ``timings`` and
``inference`` (cache hit counts depend on what earlier runs left behind).
"""

from __future__ import annotations

import functools
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from distill_audit.errors import InvalidResultFileError, ResultSchemaError
from distill_audit.outputs import current_umask, write_atomic  # noqa: F401  (part of this module's face)

SCHEMA_VERSION = "1.6"  # 1.1 added negative_controls, observations, teacher_logs, margins and power checks;
# 1.2 added remote-model runtime (API transcripts), the watermark block and white-box lineage details;
# 1.3 added the omnibus panel evidence, verdict.primary and attributed_to, attribution, alternative models;
# 1.4 added audit_file (the audit file's path, sha256 and text) and settings.detector_params;
# 1.5 added each model's prompt_format and the prompt-format settings;
# 1.6 added the inference account: inference.by_model, by_detector and by_model_and_detector
SCHEMA_FILE = "schemas/result.schema.json"  # inside the audit package; `distill-audit schema` prints it
VOLATILE_KEYS = ("created_at", "timings", "inference")
_VALUE_LIMIT = 60  # characters of an offending value quoted in a message: enough to recognise it
_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_SURROGATE = re.compile("[\ud800-\udfff]")




def schema_text() -> str:
    """The result schema (JSON Schema draft 2020-12) exactly as shipped in the package."""
    return resources.files("distill_audit").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def result_schema() -> dict[str, Any]:
    """The result schema as a fresh dict (callers may change their copy)."""
    schema: dict[str, Any] = json.loads(schema_text())
    return schema


@functools.lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    schema = result_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def json_path(parts: Iterable[str | int]) -> str:
    """``evidence[2].statistic``; keys that are not plain names are quoted (``details["a b"]``), in ASCII."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _located(parts: Iterable[str | int], message: str) -> str:
    where = json_path(parts)
    return f"{where}: {message}" if where else message


def _message(error: ValidationError) -> str:
    """jsonschema's message, with the offending value cut short: never a whole document in one line."""
    shown = repr(error.instance)
    if len(shown) > _VALUE_LIMIT and shown in error.message:
        return error.message.replace(shown, shown[: _VALUE_LIMIT - 3] + "...")
    return error.message


def _strings(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every string in a parsed JSON document, keys included, with where it is."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield path, key
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, (*path, i))


def schema_problem(document: Any) -> str | None:
    """The first way ``document`` breaks the result schema, as ``where: what`` (one line), or None.

    A lone surrogate (JSON allows ``"\\ud800"``) is refused too: it is not Unicode, and no report could be
    written with it."""
    for path, text in _strings(document):
        found = _SURROGATE.search(text)
        if found:
            return _located(path, f"text holds a lone surrogate U+{ord(found.group()):04X}, which is not valid Unicode")
    errors = list(_validator().iter_errors(document))
    if not errors:
        return None
    best = best_match(errors)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return _located(best.absolute_path, _message(best)) + more


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
    """The result as canonical JSON text, after checking it against the schema: a document that breaks its
    own schema is a bug, and is refused before anything is written."""
    document = _normalise(result)
    problem = schema_problem(document)
    if problem is not None:
        raise ResultSchemaError(f"the result document breaks its schema ({problem}); nothing was written "
                                "(a bug in distill-audit unless that text came from an input file)")
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    try:
        text = dumps(result)
    except ResultSchemaError as exc:
        raise ResultSchemaError(f"{path}: {exc}") from exc
    write_atomic(path, text)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _shown_version(data: Any) -> str:
    version = str(data.get("schema_version", "missing")) if isinstance(data, dict) else "missing"
    return version if re.fullmatch(r"[0-9A-Za-z.+-]{1,40}", version) else json.dumps(version[:40])


def parse_result(raw: bytes, source: str) -> dict[str, Any]:
    """A result document from the bytes of a result file the user gave: JSON, schema major version 1, and
    valid against the schema. Anything else is an :class:`InvalidResultFileError` naming where it breaks."""
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except ValueError as exc:  # not UTF-8, not JSON, or NaN/Infinity
        raise InvalidResultFileError(f"{source}: not a readable result file ({exc})") from exc
    except RecursionError:
        raise InvalidResultFileError(f"{source}: not a readable result file (nested too deeply)") from None
    version = _shown_version(data)
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise InvalidResultFileError(
            f"{source}: result schema version {version}; this distill-audit reads version {SCHEMA_VERSION}"
        )
    try:
        problem = schema_problem(data)
    except RecursionError:
        problem = "nested too deeply to check"
    if problem is not None:
        raise InvalidResultFileError(f"{source}: {problem}")
    return data


def read_result_bytes(path: Path) -> tuple[dict[str, Any], bytes]:
    """The checked document and the exact bytes it was read from (what an attestation hashes)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidResultFileError(f"{path}: not a readable result file ({exc.strerror or exc})") from exc
    return parse_result(raw, str(path)), raw


def read_result(path: Path) -> dict[str, Any]:
    return read_result_bytes(path)[0]


def stable_view(result: Mapping[str, Any]) -> dict[str, Any]:
    """The result without the keys that legitimately change between identical runs."""
    return {k: v for k, v in result.items() if k not in VOLATILE_KEYS}
