"""Reports rebuilt from result.json alone: HTML and Markdown, byte-stable, with hostile model text made inert."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from audit.cli import main
from audit.result import SCHEMA_VERSION, write_result
from reports import render_html, render_markdown

HOSTILE = ('<script>alert(1)</script></style><a href="javascript:alert(2)">x</a> &lt;b&gt; '
           '\u202egnp.exe\u202c zero\u200bwidth <img src=x onerror=alert(3)> line\u2028para\u2029graph')


@pytest.fixture(scope="module")
def result(demo_run: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(demo_run["distilled"])


def _hostile(result: dict[str, Any]) -> dict[str, Any]:
    r = copy.deepcopy(result)
    for e in r["evidence"]:
        for ex in e["examples"]:
            for key in ("prompt", "teacher", "student", "reference_output", "logged", "fresh"):
                if key in ex:
                    ex[key] = HOSTILE + ex[key]
    r["verdict"]["warnings"] = [HOSTILE]
    r["skipped"] = [{"detector": "x", "reason": HOSTILE}]
    r["command"] = ["distill-audit", HOSTILE]
    r["observations"] = {"identity": {"ran": True, "note": "n", "answers_naming_teacher": 1, "teacher_names": ["A"],
                                      "answers": [{"question": "Who?", "answer": HOSTILE, "names_teacher": [HOSTILE]}]}}
    return r


def test_html_report_has_every_section_and_is_byte_stable(result: dict[str, Any]) -> None:
    html = render_html(result)
    assert html == render_html(copy.deepcopy(result))
    for heading in ("Was the student distilled", "Evidence, detector by detector", "Negative controls", "Examples",
                    "Method and limits", "Reproducibility", "Glossary"):
        assert heading in html
    assert html.count("<article class=\"card") >= len(result["evidence"])
    assert html.count("<svg") == len(result["evidence"])  # one chart per detector
    assert result["models"][0]["fingerprint"]["model"] in html and result["probe_sets"][0]["hash"] in html
    assert "<mark>" in html  # agreeing words highlighted in the examples


def test_html_is_self_contained(result: dict[str, Any]) -> None:
    html = render_html(result)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)  # nothing fetched from the network
    assert "<script" not in html.lower() and "@import" not in html and "url(" not in html
    assert "prefers-color-scheme: dark" in html and "@media print" in html
    assert "default-src 'none'" in html  # and the page forbids loading anything even if text slipped through


def test_hostile_model_text_is_inert_in_html(result: dict[str, Any]) -> None:
    html = render_html(_hostile(result))
    lowered = html.lower()
    assert "<script" not in lowered and "<img" not in lowered
    assert not re.search(r"<[^>]*onerror", lowered)  # the handler survives only as escaped text
    assert "href=\"javascript:" not in lowered and "<a href" not in lowered
    assert html.count("</style>") == 1  # only the report's own stylesheet closes
    assert "&amp;lt;b&amp;gt;" in html  # entities shown as typed, not interpreted
    assert not any(ch in html for ch in "\u202e\u200b\u2028\u2029")  # bidi, zero-width, separators made visible
    assert all(code in html for code in ("U+202E", "U+200B", "U+2028", "U+2029"))


def test_hostile_model_text_is_inert_in_markdown(result: dict[str, Any]) -> None:
    md = render_markdown(_hostile(result))
    assert not re.search(r"(?<!\\)<(script|img|a )", md) and "](javascript:" not in md  # every < escaped
    assert "\\<script\\>" in md and "\u202e" not in md and "U+202E" in md and "\u2028" not in md and "U+2028" in md
    assert md.startswith("## distill-audit: **DISTILLED**") and "| next-token-agreement |" in md


def test_run_and_demo_write_the_report_beside_the_result(demo_run: dict[str, Any]) -> None:
    for case in ("distilled", "control"):
        report = (demo_run["out"] / case / "report.html").read_text()
        assert report == render_html(json.loads((demo_run["out"] / case / "result.json").read_text()))


def test_render_command_formats_and_errors(result: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    write_result(path, result)
    runner = CliRunner()
    out = runner.invoke(main, ["render", str(path)])
    assert out.exit_code == 0 and (tmp_path / "report.html").read_text() == render_html(json.loads(path.read_text()))
    out = runner.invoke(main, ["render", str(path), "--format", "md", "-o", "-"])
    assert out.exit_code == 0 and out.output.startswith("## distill-audit")
    out = runner.invoke(main, ["render", str(path), "--format", "json"])
    assert out.exit_code == 2 and "refusing to overwrite" in out.stderr
    out = runner.invoke(main, ["render", str(path), "--format", "json", "-o", str(tmp_path / "copy.json")])
    assert out.exit_code == 0 and json.loads((tmp_path / "copy.json").read_text()) == json.loads(path.read_text())
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**result, "schema_version": "0.9"}))
    out = runner.invoke(main, ["render", str(old)])
    assert out.exit_code == 2  # a result file this version cannot read is a usage error
    assert f"result schema version 0.9; this distill-audit reads version {SCHEMA_VERSION}" in out.stderr
    assert runner.invoke(main, ["render", str(tmp_path / "missing.json")]).exit_code == 2


def test_intoto_statement_binds_the_verdict_to_the_evidence_files(demo_run: dict[str, Any]) -> None:
    import hashlib

    out = demo_run["out"] / "distilled"
    proc = CliRunner().invoke(main, ["render", str(out / "result.json"), "--format", "intoto", "-o", "-"])
    assert proc.exit_code == 0, proc.stderr
    st = json.loads(proc.output)
    assert st["_type"] == "https://in-toto.io/Statement/v1" and st["predicateType"].endswith("/verdict/v1")
    roles = {s["name"].split(":")[0]: s["digest"] for s in st["subject"]}
    models = {m["role"]: m for m in demo_run["distilled"]["models"]}
    assert set(roles) == {"teacher", "student"}
    assert roles["student"]["distillAuditModelSha256"] == models["student"]["fingerprint"]["model"]
    pred = st["predicate"]
    assert pred["verdict"] == "distilled" and set(pred["detectors"]) == {e["detector"] for e in demo_run["distilled"]["evidence"]}
    assert pred["evidence"]["result.json"]["sha256"] == hashlib.sha256((out / "result.json").read_bytes()).hexdigest()
    assert pred["evidence"]["report.html"]["sha256"] == hashlib.sha256((out / "report.html").read_bytes()).hexdigest()


def test_a_failed_render_leaves_no_partial_report(result: dict[str, Any], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "result.json"
    write_result(path, result)
    (tmp_path / "report.html").write_text("previous report")

    def broken(_: Any) -> str:
        raise OSError(28, "No space left on device")

    import audit.outputs

    real_replace = audit.outputs.os.replace
    monkeypatch.setattr(audit.outputs.os, "replace", lambda *a: broken(a))
    out = CliRunner().invoke(main, ["render", str(path)])
    monkeypatch.setattr(audit.outputs.os, "replace", real_replace)
    assert out.exit_code == 1 and "No space left on device" in out.stderr
    assert (tmp_path / "report.html").read_text() == "previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "result.json"]  # no temporary left


DATA = Path(__file__).parent / "data"


def test_html_snapshot_of_a_fixed_result() -> None:
    """The report for a fixed result.json, byte for byte. After an intended change to the report, run
    ``UPDATE_SNAPSHOTS=1 python -m pytest tests/test_reports.py`` and review the diff of the snapshot."""
    import os

    from audit.result import read_result

    html = render_html(read_result(DATA / "fixed-result.json"))
    snapshot = DATA / "fixed-report.html"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        snapshot.write_text(html, encoding="utf-8")
    assert html == snapshot.read_text(encoding="utf-8")


# -- an edited result.json: every string hostile, the structure valid (what `render` lets through) ------------

EDITED = ('<img src=x onerror=alert(1)> a|b \\| \\< `tick` ``two`` [x](javascript:alert(2)) &lt;b&gt; *em* _u_ #h '
          '\n| injected | row |\r\n\u2028\u2029\u0085\u000b\u001c \u202egnp.exe\u202c \u200bzw \u001b[31mred\u001b[0m ')
HIDDEN = "\u2028\u2029\u0085\u000b\u001c\u202e\u202c\u200b\u001b\r"
KEEP = re.compile(r"[0-9a-f]{64}|distilled|inconclusive|not-distilled|teacher|student|reference|1\.[0-9]+")


def _edited(value: Any) -> Any:
    """Every string value prefixed with hostile text, except those the schema pins down (hashes, labels, roles,
    the schema version), so the result still passes `render`'s check."""
    if isinstance(value, str):
        return value if KEEP.fullmatch(value) else EDITED + value
    if isinstance(value, dict):
        return {k: _edited(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_edited(v) for v in value]
    return value


@pytest.fixture()
def edited() -> dict[str, Any]:
    from audit.result import schema_problem

    doc = json.loads((DATA / "fixed-result.json").read_text(encoding="utf-8"))
    for e in doc["evidence"]:  # hostile keys where the report shows keys: reference names in the charts
        if "reference_means" in e["details"]:
            e["details"]["reference_means"] = {EDITED + k: v for k, v in e["details"]["reference_means"].items()}
    doc = _edited(doc)
    doc["observations"] = {"identity": {"ran": True, "note": EDITED, "teacher_names": [EDITED],
                                        "answers_naming_teacher": 1, "model": "student",
                                        "answers": [{"question": EDITED, "answer": EDITED, "names_teacher": [EDITED]}]}}
    doc["skipped"] = [{"detector": EDITED, "reason": EDITED}]
    assert schema_problem(doc) is None
    return doc


def _unescaped(char: str, text: str) -> list[str]:
    """Occurrences of ``char`` not escaped by a backslash (preceded by an even number of backslashes)."""
    return re.findall(r"(?<!\\)(?:\\\\)*" + re.escape(char), text)


def _inert_markdown(md: str) -> None:
    assert not _unescaped("<", md) and not _unescaped("](", md) and not _unescaped("&", md)
    assert not any(ch in md for ch in HIDDEN) and "U+2028" in md and "U+2029" in md and "U+202E" in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table and all(len(_unescaped("|", line)) == 6 for line in table)  # five cells on every row
    assert "| injected |" not in md


def test_every_string_of_an_edited_result_is_inert_in_markdown(edited: dict[str, Any], tmp_path: Path) -> None:
    md = render_markdown(edited)
    _inert_markdown(md)
    assert "\\<img src=x onerror=alert\\(1\\)\\> a\\|b \\\\\\| \\\\\\<" in md
    path = tmp_path / "result.json"
    path.write_text(json.dumps(edited, ensure_ascii=False), encoding="utf-8")
    out = CliRunner().invoke(main, ["render", str(path), "--format", "md", "-o", "-"])
    assert out.exit_code == 0, out.stderr
    assert out.stdout == md


def test_detector_names_labels_and_code_spans_are_inert_in_markdown() -> None:
    doc = json.loads((DATA / "fixed-result.json").read_text(encoding="utf-8"))
    doc["evidence"][0]["detector"] = "<img src=x onerror=alert(1)>"
    doc["evidence"][1]["detector"] = "a | b | c"
    doc["verdict"]["label"] = "<b>distilled</b>"  # not a label `render` accepts; inert all the same
    doc["models"][0]["fingerprint"]["model"] = "ab``c<i>"
    md = render_markdown(doc)
    assert "| \\<img src=x onerror=alert\\(1\\)\\> |" in md and "| a \\| b \\| c |" in md
    assert "**\\<B\\>DISTILLED\\</B\\>**" in md
    assert "teacher ```ab``c<i>```" in md  # a code span, fenced longer than any backtick run inside: shown as typed
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert all(len(_unescaped("|", line)) == 6 for line in rows)


def test_every_string_of_an_edited_result_is_inert_in_html(edited: dict[str, Any]) -> None:
    html = render_html(edited)
    lowered = html.lower()
    assert "<img" not in lowered and not re.search(r"<[^>]*onerror", lowered) and "<a " not in lowered
    assert "&amp;lt;b&amp;gt;" in html and html.count("<svg") == len(edited["evidence"])  # every chart drawn
    assert not any(ch in html for ch in HIDDEN)  # shown as code points wherever text is shown
    for code in ("U+2028", "U+2029", "U+0085", "U+000B", "U+001C", "U+202E", "U+200B", "U+001B", "U+000D"):
        assert code in html


def test_line_and_paragraph_separators_show_as_code_points_in_html() -> None:
    doc = json.loads((DATA / "fixed-result.json").read_text(encoding="utf-8"))
    doc["evidence"][0]["examples"][0]["prompt"] = "one\u2028two\u2029three\u0085four"
    html = render_html(doc)
    assert "\u2028" not in html and "\u2029" not in html and "\u0085" not in html
    for name, code in (("LINE SEPARATOR", "U+2028"), ("PARAGRAPH SEPARATOR", "U+2029"), ("control", "U+0085")):
        assert f'<span class="ctl" title="{name}">{code}</span>' in html
    assert "one<span" in html and "four</td>" in html


def test_the_printed_summary_shows_terminal_escapes_as_code_points() -> None:
    from reports import render_summary

    doc = json.loads((DATA / "fixed-result.json").read_text(encoding="utf-8"))
    doc["verdict"]["warnings"] = ["\u001b[2J\u001b]0;owned\u0007 \u202eevil"]
    text = render_summary(doc, "out/result.json")
    assert "\u001b" not in text and "\u202e" not in text and "U+001B[2J" in text and "U+202Eevil" in text


def test_render_writes_nothing_when_the_output_cannot_be_written(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_bytes((DATA / "fixed-result.json").read_bytes())
    (tmp_path / "afile").write_text("x")
    out = CliRunner().invoke(main, ["render", str(path), "-o", str(tmp_path / "afile" / "report.html")])
    assert out.exit_code == 1 and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "result.json"]
