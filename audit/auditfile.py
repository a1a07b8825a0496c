"""Audit files: an audit kept in version control as TOML (``distill-audit run --config audit.toml``).

The format is the option table (``options.OPTIONS``) laid out in tables: every flag of ``run`` is a key of its
table, named like the flag (underscores for dashes, repeatable flags in the plural, a ``--no-X`` switch as
``X = false``). Beyond the flags a file can set detector parameters (``[detectors.<name>]``, mapped onto that
detector's ``Params``) and list several students against one teacher and panel (``students = [...]``). Every key
is checked here, once, and a mistake is one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import textwrap
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from distill_audit.errors import UsageError
from distill_audit.options import BY_NAME, OPTIONS, SECTIONS, Option, check_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_WORDS = {str: "a string", Path: "a string (a path)", int: "an integer", float: "a finite number", bool: "true or false"}
_PLURALS = {str: "strings", Path: "strings (paths)", int: "integers", float: "finite numbers", bool: "true or false values"}
_FILE_SUFFIXES = (".gguf", ".txt", ".jsonl", ".json", ".toml")


@dataclass(frozen=True)
class AuditFile:
    """An audit file, read and checked: its option values (relative paths made absolute against the file's
    folder), detector parameters and students, with the exact text it was read from."""

    path: Path
    text: str
    sha256: str
    values: Mapping[str, Any]  # option name -> value
    detector_params: Mapping[str, Mapping[str, Any]]
    students: tuple[str, ...]  # a sweep: each audited in turn against the same teacher and panel

    def where(self, name: str) -> str:
        """How a message names an option this file set."""
        return f"{self.path}: {BY_NAME[name].key}"

    def record(self) -> dict[str, str]:
        """What a result keeps of the file: where it was, its sha256 and its whole text."""
        return {"path": str(self.path), "sha256": self.sha256, "content": self.text}


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _typed(kind: type, value: Any, where: str, plural: bool = False) -> Any:
    """``value`` as ``kind``, or one UsageError naming ``where``. TOML already types values, so this checks;
    it converts only int to float and str to Path."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, str) and value != ""
    if not ok:
        word = f"a list of {_PLURALS[kind]}" if plural else _WORDS[kind]
        raise UsageError(f"{where} must be {word}, got {_show(value)}")
    return float(value) if kind is float else Path(value) if kind is Path else value


def _option_value(option: Option, value: Any, where: str) -> Any:
    if option.multiple:
        if not isinstance(value, list):
            raise UsageError(f"{where} must be a list, got {_show(value)}")
        return tuple(_typed(option.type, v, where, plural=True) for v in value)
    return _typed(option.type, value, where)


def _model_path(value: str, base: Path, where: str) -> str:
    """A model (or probe set) named in the file: a path against the file's folder when it exists there; a hub id
    or built-in name stays as written (its loader checks it); a missing file is an error naming the key."""
    path = Path(value).expanduser()
    candidate = path if path.is_absolute() else base / path
    if candidate.exists():
        return str(candidate)
    hub_like = value.count("/") <= 1 and not value.startswith((".", "/", "~")) and not value.endswith(_FILE_SUFFIXES)
    if hub_like:
        return value
    raise UsageError(f"{where}: no such file or directory: {value} (relative paths are read from {base})")


def _resolve(option: Option, value: Any, base: Path, where: str) -> Any:
    if not option.relative or value is None:
        return value
    if option.multiple:
        return tuple(_resolve(dataclasses.replace(option, multiple=False), v, base, where) for v in value)
    if option.relative == "model":
        return _model_path(str(value), base, where)
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    return path if option.type is Path else str(path)


def _detector_params(tables: Any, name: str) -> dict[str, dict[str, Any]]:
    """``[detectors.<name>]`` tables onto each detector's Params dataclass: known fields, their declared types."""
    if not isinstance(tables, dict):
        raise UsageError(f"{name}: detectors must be tables, one per detector ([detectors.<name>])")
    if not tables:
        return {}
    from distill_audit.detectors import REGISTRY

    out: dict[str, dict[str, Any]] = {}
    for detector, params in tables.items():
        if detector not in REGISTRY:
            raise UsageError(f"{name}: unknown detector [detectors.{detector}]; known: {', '.join(sorted(REGISTRY))}")
        if not isinstance(params, dict):
            raise UsageError(f"{name}: detectors.{detector} must be a table of its parameters, got {_show(params)}")
        cls = REGISTRY[detector].Params
        hints = typing.get_type_hints(cls)
        fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        for key, value in params.items():
            where = f"{name}: [detectors.{detector}] {key}"
            if key not in fields:
                raise UsageError(f"{name}: unknown key {key!r} in [detectors.{detector}]; known: {', '.join(fields)}")
            if detector == "logged-vs-fresh" and key == "score":
                raise UsageError(f"{where}: set it once, as membership_score in [audit]")
            out.setdefault(detector, {})[key] = _typed(fields[key], value, where)
    return out


def read_audit_file(path: Path) -> AuditFile:
    """Read and check an audit file; every mistake is one UsageError naming the file and the key."""
    name = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"--config {name}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--config {name}: is a directory; give an audit file (see `distill-audit init`)") from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise UsageError(f"{name}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{name}: not valid TOML: {exc}") from None
    base = path.absolute().parent
    tables = (*SECTIONS, "detectors")
    for key, table in data.items():
        if key not in tables:
            option = BY_NAME.get(key)
            hint = f" (it belongs in [{option.section}])" if option is not None else ""
            raise UsageError(f"{name}: unknown {'table [' + key + ']' if isinstance(table, dict) else 'key ' + repr(key)} "
                             f"at the top level{hint}; known tables: {', '.join(tables)}")
        if not isinstance(table, dict):
            raise UsageError(f"{name}: {key} must be a table ([{key}]), got {_show(table)}")
    values: dict[str, Any] = {}
    students: tuple[str, ...] = ()
    for section in SECTIONS:
        known = [o.name for o in OPTIONS if o.section == section] + (["students"] if section == "models" else [])
        for key, value in data.get(section, {}).items():
            where = f"{name}: [{section}] {key}"
            if section == "models" and key == "students":
                listed = _option_value(Option("--students", section, str, "", multiple=True), value, where)
                if not listed:
                    raise UsageError(f"{where} must list at least one student")
                students = tuple(_model_path(s, base, f"{where}[{i}]") for i, s in enumerate(listed))
                continue
            option = BY_NAME.get(key)
            if option is None or option.section != section:
                hint = f" (it belongs in [{option.section}])" if option is not None else ""
                raise UsageError(f"{name}: unknown key {key!r} in [{section}]{hint}; known: {', '.join(known)}")
            typed = _option_value(option, value, where)
            check_value(option, typed, where)
            values[key] = _resolve(option, typed, base, where)
    if values.get("detectors"):
        from distill_audit.detectors import REGISTRY

        unknown = [d for d in values["detectors"] if d not in REGISTRY]
        if unknown:
            raise UsageError(f"{name}: [audit] detectors: unknown detector {unknown[0]!r}; known: "
                             f"{', '.join(sorted(REGISTRY))}")
    if students and any(values.get(k) for k in ("student", "student_url")):
        raise UsageError(f"{name}: [models] has students and student; give one student, or a list of them")
    return AuditFile(path, text, hashlib.sha256(raw).hexdigest(), values,
                     _detector_params(data.get("detectors", {}), name), students)


# -- the example `distill-audit init` writes --------------------------------------------------------------------

_EXAMPLE_VALUES: Mapping[str, str] = {
    "teacher": '"models/teacher"',
    "students": '["models/student-a", "models/student-b"]',
    "references": '["models/reference-1", "models/reference-2", "models/reference-3", "models/reference-4"]',
    "n_probes": "200",
    "out": '"audit-results"',
}
_EXAMPLE_HEADER = """\
# distill-audit audit file: `distill-audit run --config audit.toml`.
#
# Keep it in version control with the review: every result records this file's sha256 and text. A flag given
# on the command line overrides the same key here. Relative paths are read from this file's folder. Each key is
# its flag's name with underscores (repeatable flags in the plural, a --no-X switch as X = false); see
# `distill-audit run --help` for more on each. Uncomment what you need.
"""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return '""'


def _placeholder(option: Option) -> str:
    """An option's default as TOML, or (no default) a value of the right type for the reader to replace."""
    if option.default is not None:
        return _toml_value(option.default)
    if option.choices:
        return _toml_value(option.choices[0])
    if option.type in (int, float):
        return repr(option.type(option.interval.low if option.interval and option.interval.low is not None else 0))
    return _toml_value(option.metavar or ("DIR" if option.type is Path else "..."))


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, width=110, initial_indent="# ", subsequent_indent="# ")


def example_text() -> str:
    """A commented audit file covering every key, made from the option table (so it cannot fall behind it)."""
    lines = [_EXAMPLE_HEADER]
    for section in SECTIONS:
        lines.append(f"[{section}]")
        if section == "models":
            lines += _comment("students: several suspects audited in turn against one teacher and panel (a sweep); "
                              "each gets OUT/<name>/, and OUT/index.html and index.md list the verdicts. The "
                              "teacher's and the references' answers are computed once and shared through the "
                              "cache. Or give one student with student = \"...\".")
            lines.append(f"students = {_EXAMPLE_VALUES['students']}")
        for option in (o for o in OPTIONS if o.section == section):
            lines += _comment(option.help)
            if option.name in _EXAMPLE_VALUES:
                lines.append(f"{option.name} = {_EXAMPLE_VALUES[option.name]}")
            elif option.multiple:
                lines.append(f"# {option.name} = []")
            else:
                lines.append(f"# {option.name} = {_placeholder(option)}")
        lines.append("")
    lines += _comment("Detector parameters: a [detectors.<name>] table sets fields of that detector's parameters "
                      "(recorded in the result's settings). The defaults are shown; `distill-audit detectors` "
                      "lists the detectors.")
    from distill_audit.detectors import REGISTRY

    for detector in sorted(REGISTRY):
        fields = [f for f in dataclasses.fields(REGISTRY[detector].Params)
                  if not (detector == "logged-vs-fresh" and f.name == "score")]
        if not fields:
            continue
        lines.append(f"# [detectors.{detector}]")
        for f in fields:
            default = f.default
            if isinstance(default, float) and not math.isfinite(default):
                lines.append(f"# {f.name} = 0.0  # default: chosen by the detector")
            else:
                lines.append(f"# {f.name} = {_toml_value(default)}")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
