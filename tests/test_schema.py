"""The published result schema: shipped in the package, printed by `distill-audit schema`, met by every result
the tool writes, and enforced on every result file `render` reads (one line naming where, exit 2, nothing written)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from distill_audit.cli import main
from distill_audit.errors import ResultSchemaError
from distill_audit.result import SCHEMA_FILE, dumps, result_schema, schema_problem, schema_text, write_result

DATA = Path(__file__).parent / "data"
Edit = Callable[[dict[str, Any]], None]


@pytest.fixture()
def fixed() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / "fixed-result.json").read_text(encoding="utf-8"))
    return doc


def test_the_schema_is_draft_2020_12_and_shipped_in_the_package() -> None:
    schema = result_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    shipped = Path(__file__).resolve().parents[1] / "audit" / SCHEMA_FILE
    assert schema_text() == shipped.read_text(encoding="utf-8")
    assert set(schema["required"]) >= {"schema_version", "models", "probe_sets", "evidence", "verdict"}


def test_schema_command_prints_the_schema_as_json() -> None:
    out = CliRunner().invoke(main, ["schema"])
    assert out.exit_code == 0 and json.loads(out.stdout) == result_schema()


def test_the_fixed_result_and_the_demo_results_meet_the_schema(fixed: dict[str, Any],
                                                               demo_run: dict[str, Any]) -> None:
    assert schema_problem(fixed) is None
    assert schema_problem(demo_run["distilled"]) is None and schema_problem(demo_run["control"]) is None


def _set(path: str, value: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return edit


def _drop(path: str) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]
    return edit


BROKEN: list[tuple[Edit, str]] = [
    (_drop("verdict"), "'verdict' is a required property"),
    (_drop("models"), "'models' is a required property"),
    (_drop("evidence.2.p_value"), "evidence[2]: 'p_value' is a required property"),
    (_set("evidence.2.statistic", "abc"), "evidence[2].statistic: 'abc' is not of type 'number', 'null'"),
    (_set("evidence.0.p_value", 1.5), "evidence[0].p_value: 1.5 is greater than the maximum of 1"),
    (_set("evidence.0.n", -3), "evidence[0].n: -3 is less than the minimum of 0"),
    (_set("evidence.1.examples.0.prompt", 7), "evidence[1].examples[0].prompt: 7 is not of type 'string'"),
    (_set("verdict.label", "maybe"), "verdict.label: 'maybe' is not one of ['distilled', 'inconclusive', 'not-distilled']"),
    (_set("verdict.p_value", "0.01"), "verdict.p_value: '0.01' is not of type 'number', 'null'"),
    (_set("models.1.fingerprint.model", "f1d3"), "models[1].fingerprint.model: 'f1d3' does not match"),
    (_drop("models.0.fingerprint"), "models[0]: 'fingerprint' is a required property"),
    (_set("evidence.0.details.reference_means.reference-1", "high"),
     "evidence[0].details.reference_means.reference-1: 'high' is not of type 'number', 'null'"),
    (_set("evidence.0.examples.0.prompt", "a\ud800b"),
     "evidence[0].examples[0].prompt: text holds a lone surrogate U+D800, which is not valid Unicode"),
]


@pytest.mark.parametrize("edit, message", BROKEN, ids=[m.split(":")[0][:40] for _, m in BROKEN])
def test_render_refuses_a_result_that_breaks_the_schema(fixed: dict[str, Any], tmp_path: Path, edit: Edit,
                                                        message: str) -> None:
    edit(fixed)
    path = tmp_path / "result.json"
    path.write_text(json.dumps(fixed), encoding="utf-8")
    for fmt in ("html", "md", "json", "intoto"):
        out = CliRunner().invoke(main, ["render", str(path), "--format", fmt, "-o", str(tmp_path / f"out.{fmt}")])
        assert out.exit_code == 2, out.output
        assert out.stderr.startswith(f"distill-audit: error: {path}: {message}")
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
        assert out.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # nothing written, no temporary left


def test_non_json_numbers_and_bad_bytes_are_refused_in_one_line(fixed: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    for raw in (json.dumps(fixed).replace('"p_value": 3.140976198e-05', '"p_value": NaN').encode(),
                b"\xff\xfe not utf-8", b"[1, 2", b"[" * 100_000):
        path.write_bytes(raw)
        out = CliRunner().invoke(main, ["render", str(path), "-o", "-"])
        assert out.exit_code == 2 and "not a readable result file" in out.stderr and out.stdout == ""
        assert len(out.stderr.strip().splitlines()) == 1


def test_open_ended_objects_take_new_fields(fixed: dict[str, Any]) -> None:
    """Fields later 1.x versions add (here: ones being added now) do not make a result unreadable."""
    fixed["models"][0]["fingerprint"]["config"] = {"sha256": "c" * 64}
    fixed["models"][0]["runtime"]["anything"] = [1, "two"]
    fixed["inference"].update(api_cache_hits=3, stale=1)
    fixed["probe_sets"][0]["n_duplicates"] = 2
    fixed["teacher_logs"].update(n_duplicates_logged=4, n_duplicates_fresh=0)
    fixed["evidence"][0]["details"]["new_number"] = {"deep": [None]}
    fixed["evidence"][0]["examples"][0]["new_score"] = 0.5
    fixed["settings"]["new_option"] = None
    fixed["observations"]["new_observation"] = {"ran": False}
    fixed["timings"]["new_stage_seconds"] = 1.0
    fixed["new_top_level_block"] = {"x": 1}
    assert schema_problem(fixed) is None


def test_what_may_be_missing_or_null_is_allowed(fixed: dict[str, Any]) -> None:
    """A 1.0 file has no negative controls, observations, teacher logs or watermark; p-values may be null."""
    old = {k: v for k, v in fixed.items() if k not in ("negative_controls", "observations", "teacher_logs",
                                                       "timings", "inference")}
    assert schema_problem(old) is None
    fixed.update(teacher_logs=None, watermark=None)
    fixed["verdict"]["p_value"] = None
    fixed["evidence"][0].update(p_value=None, statistic=None, effect_size=None, planted_p_value=None)
    assert schema_problem(fixed) is None


def test_identity_observations_that_ran_carry_their_answers(fixed: dict[str, Any]) -> None:
    fixed["observations"]["identity"] = {"ran": False, "reason": "the student backend cannot generate"}
    assert schema_problem(fixed) is None
    fixed["observations"]["identity"] = {"ran": True, "note": "n", "teacher_names": ["A"]}
    assert schema_problem(fixed) == "observations.identity: 'answers' is a required property (and 1 more problem)"


def test_a_result_that_breaks_its_own_schema_is_never_written(fixed: dict[str, Any], tmp_path: Path) -> None:
    broken = copy.deepcopy(fixed)
    broken["evidence"][3]["statistic"] = "7.0"
    with pytest.raises(ResultSchemaError, match=r"evidence\[3\]\.statistic: '7\.0' is not of type 'number', 'null'"):
        dumps(broken)
    target = tmp_path / "result.json"
    with pytest.raises(ResultSchemaError, match=f"^{target}: the result document breaks its schema"):
        write_result(target, broken)
    assert list(tmp_path.iterdir()) == []
    write_result(target, fixed)
    assert json.loads(target.read_text(encoding="utf-8")) == fixed


def test_a_hostile_schema_version_is_named_in_one_inert_line(fixed: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(dict(fixed, schema_version="1\n\u001b[2J")), encoding="utf-8")
    out = CliRunner().invoke(main, ["render", str(path)])
    assert out.exit_code == 2 and "\u001b" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert 'result schema version "1\\n\\u001b[2J"; this distill-audit reads version' in out.stderr
