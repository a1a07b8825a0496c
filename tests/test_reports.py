"""Reports rebuilt from result.json alone: HTML and Markdown, byte-stable, with hostile model text made inert."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import distill_audit.outputs
from distill_audit.cli import main
from distill_audit.reports import render_html, render_markdown
from distill_audit.result import SCHEMA_VERSION, write_result

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
    lead = 1 if result["verdict"].get("primary") else 0  # the forest plot of the primary lines (schema 1.3)
    histograms = sum(any(v is not None for v in e["details"].get("per_pair_difference") or ()) for e in result["evidence"])
    assert html.count("<svg") == len(result["evidence"]) + lead + histograms  # one chart per detector, and those
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


    real_replace = distill_audit.outputs.os.replace
    monkeypatch.setattr(distill_audit.outputs.os, "replace", lambda *a: broken(a))
    out = CliRunner().invoke(main, ["render", str(path)])
    monkeypatch.setattr(distill_audit.outputs.os, "replace", real_replace)
    assert out.exit_code == 1 and "No space left on device" in out.stderr
    assert (tmp_path / "report.html").read_text() == "previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "result.json"]  # no temporary left


DATA = Path(__file__).parent / "data"


def test_html_snapshot_of_a_fixed_result() -> None:
    """The report for a fixed result.json, byte for byte. After an intended change to the report, run
    ``UPDATE_SNAPSHOTS=1 python -m pytest tests/test_reports.py`` and review the diff of the snapshot."""
    import os

    from distill_audit.result import read_result

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
    from distill_audit.result import schema_problem

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
    from distill_audit.reports import render_summary

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


# -- schema 1.3: the report leads with the answer (primary lines, forest plot, attribution) ---------------------

ATTRIBUTION_NOT_TESTED = ("Attribution among teachers trained on similar data was not tested: no alternative teacher was "
                          "given (--alternative-teacher).")


def _primary_line(line: str, p: float, adjusted: float, effect: float | None, low: float | None, high: float | None,
                  margin: float | None) -> dict[str, Any]:
    return {"line": line, "detector": line, "description": f"What {line} tests, in one sentence.", "p_value": p,
            "adjusted_p_value": adjusted, "effect_size": effect, "effect_size_name": f"{line} effect",
            "ci_low": low, "ci_high": high, "margin": margin}


def _with_primary(doc: dict[str, Any], tested: bool = True, differences: list[float | None] | None = None
                  ) -> dict[str, Any]:
    """A copy of a 1.0-1.2 result with the schema 1.3 fields, built here: the verdict's primary lines, attribution
    among candidate teachers, a panel-omnibus evidence entry and the logged-vs-fresh per-pair differences."""
    r = copy.deepcopy(doc)
    r["schema_version"] = "1.3"
    r["verdict"]["primary"] = [
        _primary_line("panel-omnibus", 2e-4, 6e-4, 0.2, 0.15, 0.25, 0.1),  # 2 margins, CI 1.5 to 2.5 margins
        _primary_line("logged-vs-fresh", 3e-6, 1.2e-5, 0.05, 0.03, 0.08, 0.1),
        _primary_line("watermark-radioactivity", 0.4, 0.8, None, None, None, 0.5),  # not estimable
        _primary_line("weight-lineage", 0.9, 0.9, 0.3, 0.1, 0.5, None),  # no margin
    ]
    r["verdict"]["attributed_to"] = "teacher"  # a distilled verdict names the teacher, tested against others or not
    if tested:
        r["attribution"] = {
            "tested": True, "closest": "teacher", "versus_teacher_p_value": 0.003,
            "note": "The student leans to the teacher over every alternative beyond what independent models show.",
            "candidates": [
                {"name": "teacher", "role": "teacher", "source": "demo/teacher", "student_score": 0.81,
                 "reference_mean": 0.42, "excess": 0.27, "panel_t": 5.1, "p_value": 0.0004,
                 "versus_teacher_p_value": None},
                {"name": "alternative-1", "role": "alternative", "source": "demo/sibling", "student_score": 0.55,
                 "reference_mean": 0.47, "excess": 0.02, "panel_t": 0.9, "p_value": 0.21,
                 "versus_teacher_p_value": 0.003},
            ]}
    else:
        r["attribution"] = {"tested": False, "closest": None, "candidates": [], "note": ATTRIBUTION_NOT_TESTED}
        r["verdict"]["warnings"] = [ATTRIBUTION_NOT_TESTED]  # as the audit writes it: the note is a warning too
    base = next(e for e in r["evidence"] if e["detector"] == "next-token-agreement")
    omnibus = copy.deepcopy(base)
    omnibus.update(detector="panel-omnibus", effect_size=0.2, ci_low=0.15, ci_high=0.25, margin=0.1, p_value=2e-4,
                   examples=[])
    omnibus["details"] = {"statistic": "omnibus rank share", "access": "gray",
                          "components": ["next-token-agreement", "top-k-overlap", "text-word-agreement"],
                          "components_left_out": {"js-divergence": "gave no per-prompt values for every model"},
                          "scale": "per detector and prompt, the student and every reference ranked by teacher-likeness",
                          "student_mean": 0.81, "reference_means": {"ref-a": 0.42, "ref-b": 0.4}}
    r["evidence"].insert(0, omnibus)
    logged = next(e for e in r["evidence"] if e["detector"] == "logged-vs-fresh")
    if differences is None:
        differences = [round(0.05 + 0.1 * ((i * 37) % 101 - 50) / 50, 6) for i in range(997)] + [None, None, None]
    logged["details"].update(per_pair_difference=differences, calibrated=True,
                             reference_mean_difference={"ref-a": 0.004, "ref-b": -0.01})
    return r


@pytest.fixture()
def fixed() -> dict[str, Any]:
    return json.loads((DATA / "fixed-result.json").read_text(encoding="utf-8"))


def _svg(html: str, cls: str) -> str:
    svgs = re.findall(r'<svg class="chart ' + cls + r'".*?</svg>', html, flags=re.S)
    assert len(svgs) == 1, f"{len(svgs)} {cls} charts"
    return svgs[0]


def test_a_1_3_result_is_valid_and_the_summary_leads_before_the_cards(fixed: dict[str, Any]) -> None:
    from distill_audit.result import schema_problem

    doc = _with_primary(fixed)
    assert schema_problem(doc) is None
    html = render_html(doc)
    assert html == render_html(copy.deepcopy(doc))  # byte-stable
    verdict, table = html.index('aria-label="verdict"'), html.index('id="primary-lines"')
    forest, attribution = html.index('<svg class="chart forest"'), html.index('id="attribution-table"')
    cards = html.index('<article class="card')
    assert verdict < table < forest < attribution < cards
    rows = re.findall(r"<tr><td><strong>(.*?)</strong>", html[table:forest])
    assert rows == ["panel-omnibus", "logged-vs-fresh", "watermark-radioactivity", "weight-lineage"]
    lead = html[table:forest]
    assert "0.0006" in lead and "0.200 (0.150 to 0.250)" in lead and "no margin" in lead  # numbers from the result
    assert "What panel-omnibus tests, in one sentence." in lead and "(no interval)" in lead
    # the panel-omnibus card says what it combined and how
    card = html[html.index("<h3>panel-omnibus"):]
    card = card[:card.index("</article>")]
    assert "next-token-agreement, top-k-overlap, text-word-agreement" in card and "ranked by teacher-likeness" in card
    assert "js-divergence: gave no per-prompt values" in card and "adjusted over the primary lines 0.0006" in card


def test_the_forest_plot_draws_each_line_relative_to_its_margin(fixed: dict[str, Any]) -> None:
    svg = _svg(render_html(_with_primary(fixed)), "forest")
    assert "effect in units of its margin" in svg and "<title" in svg and 'role="img"' in svg and "<desc" in svg
    rows = re.findall(r'<g class="forest-row">(.*?)</g>', svg, flags=re.S)
    assert len(rows) == 4  # one row per primary line, plotted or not
    zero = float(re.search(r'<line x1="([\d.]+)"[^>]*class="zero"', svg).group(1))
    margin = float(re.search(r'<line x1="([\d.]+)"[^>]*class="margin"', svg).group(1))
    assert margin > zero  # the margin line at 1, right of zero
    cx = float(re.search(r'<circle cx="([\d.]+)"', rows[0]).group(1))
    assert cx == pytest.approx(zero + 2.0 * (margin - zero), abs=0.02)  # effect 0.2 / margin 0.1 = 2 margins
    ci = re.search(r'<line x1="([\d.]+)" y1="[\d.]+" x2="([\d.]+)"[^>]*class="ci"', rows[0])
    assert float(ci.group(1)) == pytest.approx(zero + 1.5 * (margin - zero), abs=0.02)
    assert float(ci.group(2)) == pytest.approx(zero + 2.5 * (margin - zero), abs=0.02)
    assert "<circle" in rows[1] and "0.50× margin" in rows[1]
    for row, why in ((rows[2], "not estimable"), (rows[3], "no margin")):
        assert "<circle" not in row and 'class="ci"' not in row and why in row  # said, not plotted


def test_the_forest_plot_keeps_non_finite_values_off_the_chart() -> None:
    from distill_audit.reports.charts import forest_plot

    plot = forest_plot([{"line": "a", "effect_size": float("nan"), "margin": 0.1, "ci_low": 0.0, "ci_high": 1.0},
                        {"line": "b", "effect_size": 0.1, "margin": 0.0, "ci_low": 0.0, "ci_high": 0.2},
                        {"line": "c", "effect_size": float("inf"), "margin": 0.1, "ci_low": None, "ci_high": None},
                        {"line": "d", "effect_size": -0.05, "margin": -0.1, "ci_low": -0.08, "ci_high": 0.01}])
    a, b, c, d = plot["rows"]
    assert [r["status"] for r in (a, b, c)] == ["not estimable", "no margin", "not estimable"]
    assert all(r["cx"] is None and r["x_low"] is None for r in (a, b, c))
    assert d["x"] == pytest.approx(0.5) and (d["low"], d["high"]) == pytest.approx((-0.1, 0.8))  # a negative margin
    assert "1 of 4 lines plotted" in plot["caption"]


def test_the_attribution_table_marks_the_closest_candidate(fixed: dict[str, Any]) -> None:
    html = render_html(_with_primary(fixed))
    start = html.index('id="attribution-table"')
    table = html[start:html.index("</table>", start)]
    closest = re.findall(r'<tr class="closest"><td>(.*?)</td>', table)
    assert len(closest) == 1 and closest[0].startswith("teacher (teacher) <strong>closest</strong>")
    assert "alternative-1 (alternative)" in table and "0.810" in table and "0.270" in table and "0.21<" in table
    assert "(the teacher)" in table  # the teacher is not tested against itself
    assert "The student leans to the teacher over every alternative" in html
    assert "attributes the student to: <strong>teacher</strong>" in html


def test_the_not_tested_attribution_note_is_a_visible_warning(fixed: dict[str, Any]) -> None:
    from distill_audit.reports import render_summary

    html = render_html(_with_primary(fixed, tested=False))
    notice = re.search(r'<div class="notice" role="note"><p><strong>Not tested:</strong> (.*?)</p></div>', html)
    assert notice and notice.group(1) == ATTRIBUTION_NOT_TESTED
    assert html.index('class="notice"') < html.index('<article class="card')
    assert 'id="attribution-table"' not in html  # no candidates, no empty table
    assert "attributes the student to: <strong>teacher</strong>, only because no other candidate was tested." in html
    md = render_markdown(_with_primary(fixed, tested=False))
    assert md.count("> **Warning:** Attribution among teachers trained on similar data was not tested") == 1
    text = render_summary(_with_primary(fixed, tested=False), "out/result.json")
    assert text.count("Attribution among teachers trained on similar data was not tested") == 1


def test_the_logged_vs_fresh_card_shows_the_distribution_of_differences(fixed: dict[str, Any]) -> None:
    doc = _with_primary(fixed)
    values = next(e for e in doc["evidence"] if e["detector"] == "logged-vs-fresh")["details"]["per_pair_difference"]
    finite = [v for v in values if v is not None]
    svg = _svg(render_html(doc), "hist")
    counts = [int(c) for c in re.findall(r'data-count="(\d+)"', svg)]
    assert sum(counts) == len(finite) == 997 and len(counts) > 5
    assert 'class="zero"' in svg and 'class="mean"' in svg and "<title>" in svg
    assert f"mean {sum(finite) / len(finite):.3f}" in svg and "3 pairs without a finite value not shown" in svg
    zero = float(re.search(r'<line x1="([\d.]+)"[^>]*class="zero"', svg).group(1))
    mean = float(re.search(r'<line x1="([\d.]+)"[^>]*class="mean"', svg).group(1))
    assert mean > zero  # the mean difference is positive


def test_the_histogram_bins_every_finite_value_once() -> None:
    from distill_audit.reports.charts import histogram

    values: list[Any] = [3.0] * 7 + [None, "x", True, float("nan")]
    h = histogram(values, "difference")
    assert h is not None and sum(b["count"] for b in h["bins"]) == 7 and h["missing"] == 4
    assert h["bins"][-1]["count"] == 7 and h["low"] == 0.0  # the range includes zero; the largest value is binned
    assert histogram([None, None], "difference") is None
    wide = histogram([(-1.0) ** i * i for i in range(5000)], "difference")
    assert wide is not None and len(wide["bins"]) == 40 and sum(b["count"] for b in wide["bins"]) == 5000


def test_a_logged_vs_fresh_card_with_no_finite_difference_says_so(fixed: dict[str, Any]) -> None:
    html = render_html(_with_primary(fixed, differences=[None, None]))
    assert '<svg class="chart hist"' not in html and "no pair has a finite value" in html


def test_hostile_attribution_source_and_notes_are_inert(fixed: dict[str, Any]) -> None:
    doc = _with_primary(fixed)
    doc["attribution"]["candidates"][1]["source"] = HOSTILE
    doc["attribution"]["note"] = HOSTILE
    doc["verdict"]["primary"][0]["description"] = HOSTILE
    doc["verdict"]["primary"][1]["line"] = HOSTILE  # drawn in the forest plot's SVG text
    doc["verdict"]["primary"][1]["effect_size_name"] = HOSTILE
    for variant in (doc, _with_primary(fixed, tested=False)):
        if variant is not doc:
            variant["attribution"]["note"] = HOSTILE
        html = render_html(variant)
        lowered = html.lower()
        assert "<script" not in lowered and "<img" not in lowered and "<a href" not in lowered
        assert not re.search(r"<[^>]*onerror", lowered) and html.count("</style>") == 1
        assert not any(ch in html for ch in "\u202e\u200b\u2028\u2029") and "U+202E" in html
        md = render_markdown(variant)
        assert not re.search(r"(?<!\\)<(script|img|a )", md) and "\u202e" not in md and "U+202E" in md
        _inert_markdown(md)
    forest = _svg(render_html(doc), "forest")
    assert "&lt;script&gt;" in forest and "<span" not in forest  # SVG text holds no markup: code points as text


def test_every_string_of_an_edited_1_3_result_is_inert(fixed: dict[str, Any]) -> None:
    from distill_audit.result import schema_problem

    plain = _with_primary(fixed)
    doc = _edited(plain)
    for line, kept in zip(doc["verdict"]["primary"], plain["verdict"]["primary"]):
        line["line"] = kept["line"]  # the schema pins the line names and the candidates' roles
    for row, kept in zip(doc["attribution"]["candidates"], plain["attribution"]["candidates"]):
        row["role"] = kept["role"]
    assert schema_problem(doc) is None
    html = render_html(doc)
    assert "<img" not in html.lower() and not any(ch in html for ch in HIDDEN)
    _inert_markdown(render_markdown(doc))


def test_markdown_and_text_summaries_lead_with_the_primary_lines(fixed: dict[str, Any]) -> None:
    from distill_audit.reports import render_summary

    doc = _with_primary(fixed)
    md = render_markdown(doc)
    assert md.startswith("## distill-audit: **DISTILLED**")
    primary, detectors = md.index("| primary line |"), md.index("| detector |")
    assert primary < md.index("Attribution:") < detectors
    assert "| panel-omnibus | 0.0002 | 0.0006 | 0.200 (0.150 to 0.250) | 0.100 |" in md
    assert "| weight-lineage | 0.9 | 0.9 | 0.300 (0.100 to 0.500) | no margin |" in md
    assert "closest candidate: teacher" in md
    assert all(len(_unescaped("|", line)) == 6 for line in md.splitlines() if line.startswith("|"))
    text = render_summary(doc, "out/result.json")
    assert text.index("primary lines") < text.index("attribution:") < text.index("  next-token-agreement: p =")
    assert "panel-omnibus: p = 0.0002 (adjusted 0.0006), effect 0.200 (95% CI 0.150 to 0.250), margin 0.100" in text
    assert "closest candidate teacher" in text


def test_a_1_2_result_without_the_new_fields_still_leads_with_the_verdict(fixed: dict[str, Any]) -> None:
    html = render_html(fixed)
    assert 'id="primary-lines"' not in html and "forest" not in html and 'id="attribution-table"' not in html
    assert 'class="notice"' not in html and '<svg class="chart hist"' not in html
    assert html.index('aria-label="verdict"') < html.index("<h2>Evidence, detector by detector</h2>")
    md = render_markdown(fixed)
    assert "primary line" not in md and "Attribution" not in md and md.startswith("## distill-audit: **DISTILLED**")
