"""The result document: stable serialisation, atomic writes with the umask's permissions, and refusing schemas
it cannot read."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import distill_audit.outputs
from distill_audit.errors import ResultSchemaError
from distill_audit.result import (
    SCHEMA_VERSION,
    InvalidResultFileError,
    current_umask,
    dumps,
    read_result,
    stable_view,
    write_atomic,
    write_result,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture()
def doc() -> dict[str, Any]:
    """A real result document (the fixed one the report snapshot is made from)."""
    fixed: dict[str, Any] = json.loads((DATA / "fixed-result.json").read_text(encoding="utf-8"))
    return dict(fixed, schema_version=SCHEMA_VERSION)


def test_serialisation_is_stable_and_json_safe(doc: dict[str, Any]) -> None:
    doc["evidence"][0].update(statistic=np.float32(0.1), n=np.int64(3), effect_size=math.nan, ci_low=1 / 3)
    text = dumps(doc)
    assert text == dumps(dict(reversed(list(doc.items()))))  # key order does not matter
    parsed = json.loads(text)["evidence"][0]
    assert parsed["n"] == 3 and parsed["effect_size"] is None and parsed["ci_low"] == 0.3333333333
    assert parsed["statistic"] == pytest.approx(0.1)


def test_round_trip_and_volatile_keys(doc: dict[str, Any], tmp_path: Path) -> None:
    write_result(tmp_path / "r.json", doc)
    again = read_result(tmp_path / "r.json")
    assert again == doc and stable_view(again) == {k: v for k, v in doc.items()
                                                   if k not in ("created_at", "timings", "inference")}


def test_other_schema_versions_are_refused_by_name(tmp_path: Path) -> None:
    f = tmp_path / "old.json"
    f.write_text(json.dumps({"schema_version": "0.3"}))
    with pytest.raises(InvalidResultFileError, match=f"schema version 0.3; this distill-audit reads version {SCHEMA_VERSION}"):
        read_result(f)
    f.write_text("{not json")
    with pytest.raises(InvalidResultFileError, match="not a readable result file"):
        read_result(f)
    assert InvalidResultFileError.exit_code == 2 and issubclass(InvalidResultFileError, ResultSchemaError)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(doc: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("previous")

    class Boom:
        """Neither JSON-serialisable nor text."""

    with pytest.raises(TypeError):
        write_result(target, dict(doc, x=Boom()))  # fails before anything is written
    with pytest.raises(ResultSchemaError):
        write_result(target, dict(doc, verdict=None))  # breaks the schema: refused before anything is written
    with pytest.raises(TypeError):
        write_atomic(target, Boom())  # type: ignore[arg-type]  # fails inside the temporary file
    assert target.read_text() == "previous"
    assert os.listdir(tmp_path) == ["result.json"]


@pytest.fixture()
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o027, 0o640)])
def test_written_files_follow_the_umask(umask: None, tmp_path: Path, mask: int, mode: int) -> None:
    os.umask(mask)
    target = tmp_path / "out" / "report.html"
    write_atomic(target, "new")
    assert stat.S_IMODE(target.stat().st_mode) == mode
    target.chmod(0o600)
    write_atomic(target, "replaced")  # a replaced file gets the mode a new one would, like open() on a new file
    assert stat.S_IMODE(target.stat().st_mode) == mode and target.read_text() == "replaced"
    assert os.listdir(target.parent) == ["report.html"]


def test_the_umask_is_read_and_left_as_it_was(umask: None, monkeypatch: pytest.MonkeyPatch) -> None:
    os.umask(0o027)
    assert current_umask() == 0o027
    monkeypatch.setattr(distill_audit.outputs, "_PROC_STATUS", "/nonexistent/status")  # a system without /proc
    assert current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # and it is left as it was
