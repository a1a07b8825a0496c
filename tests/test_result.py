"""The result document: stable serialisation, atomic writes, and refusing schemas it cannot read."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from audit.errors import ResultSchemaError
from audit.result import SCHEMA_VERSION, dumps, read_result, stable_view, write_atomic, write_result


def test_serialisation_is_stable_and_json_safe() -> None:
    doc = {"b": np.float32(0.1), "a": [np.int64(3), math.nan, 1 / 3], "schema_version": SCHEMA_VERSION}
    text = dumps(doc)
    assert text == dumps(dict(reversed(list(doc.items()))))  # key order does not matter
    parsed = json.loads(text)
    assert parsed["a"] == [3, None, 0.3333333333] and parsed["b"] == pytest.approx(0.1)


def test_round_trip_and_volatile_keys(tmp_path: Path) -> None:
    doc = {"schema_version": SCHEMA_VERSION, "created_at": "now", "timings": {"x": 1.0}, "verdict": {"label": "x"}}
    write_result(tmp_path / "r.json", doc)
    assert stable_view(read_result(tmp_path / "r.json")) == {"schema_version": SCHEMA_VERSION, "verdict": {"label": "x"}}


def test_other_schema_versions_are_refused_by_name(tmp_path: Path) -> None:
    f = tmp_path / "old.json"
    f.write_text(json.dumps({"schema_version": "0.3"}))
    with pytest.raises(ResultSchemaError, match=f"schema version 0.3; this distill-audit reads version {SCHEMA_VERSION}"):
        read_result(f)
    f.write_text("{not json")
    with pytest.raises(ResultSchemaError, match="not a readable result file"):
        read_result(f)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("previous")

    class Boom:
        """Neither JSON-serialisable nor text."""

    with pytest.raises(TypeError):
        write_result(target, {"x": Boom()})  # fails before anything is written
    with pytest.raises(TypeError):
        write_atomic(target, Boom())  # type: ignore[arg-type]  # fails inside the temporary file
    assert target.read_text() == "previous"
    assert os.listdir(tmp_path) == ["result.json"]
