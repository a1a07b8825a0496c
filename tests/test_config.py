"""Audit files and the option table: a file means what the same flags mean, flags override it, mistakes are one
line naming the key, `init` writes a file that loads, and a sweep audits several students over one cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from distill_audit import options
from distill_audit.auditfile import example_text, read_audit_file
from distill_audit.cli import main
from distill_audit.errors import UsageError
from tests.conftest import cli, one_line_error

# -- the table agrees with the modules that own each choice and default ---------------------------------------


def test_the_option_table_agrees_with_the_owners_of_its_choices_and_defaults() -> None:
    from distill_audit.aggregate import COMBINATIONS
    from distill_audit.backends.hf import LoadOptions
    from distill_audit.backends.http import HTTPSettings
    from distill_audit.backends.restrict import ACCESS_MODES
    from distill_audit.detectors.membership import SCORES
    from distill_audit.spec import AuditSpec

    by = options.BY_NAME
    assert set(by["combine"].choices) == set(COMBINATIONS)
    assert set(by["teacher_access"].choices) == set(ACCESS_MODES)
    assert set(by["membership_score"].choices) == set(SCORES)
    from distill_audit.formats import FORMATS

    for name in ("prompt_format", "teacher_prompt_format", "student_prompt_format", "reference_prompt_format"):
        assert set(by[name].choices) == set(FORMATS)
    assert len(by) == len(options.OPTIONS)  # one name per option
    owners = {"": AuditSpec, "load": LoadOptions, "http": HTTPSettings}
    for option in options.OPTIONS:
        if option.field is None:
            continue
        owner, _, attr = option.field.rpartition(".")
        (declared,) = [f for f in dataclasses.fields(owners[owner]) if f.name == attr]
        expected = () if option.multiple else option.default
        assert declared.default == expected, option.name


# -- a file means the same as the flags; flags override it ---------------------------------------------------


class _Stop(UsageError):
    pass


def _spec_of(args: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The spec `run` would audit, without loading a model."""
    seen: dict[str, Any] = {}

    def fake_run_audit(spec: Any, **_: Any) -> dict[str, Any]:
        seen["spec"] = spec
        raise _Stop("stopped before loading models")

    monkeypatch.setattr("distill_audit.runner.run_audit", fake_run_audit)
    result = CliRunner().invoke(main, ["run", *args], catch_exceptions=False)
    assert "stopped before loading models" in result.stderr, result.stderr
    return seen["spec"]


def _models(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("teacher", "student", "ref-1", "ref-2"):
        (tmp_path / name).mkdir()
        out[name] = tmp_path / name
    (tmp_path / "probes.txt").write_text("one two\nthree four\n")
    return out


FULL_FILE = """
[models]
teacher = "teacher"
student = "student"
references = ["ref-1", "ref-2"]

[audit]
probes = "probes.txt"
n_probes = 2
seed = 7
alpha = 0.05
detectors = ["next-token-agreement", "top-k-overlap"]
teacher_access = "gray"
combine = "cauchy"
negative_controls = false
teacher_names = ["Acme"]

[load]
dtype = "float32"
batch_tokens = 256
cache = false

[output]
out = "out"

[detectors.next-token-agreement]
max_new_tokens = 8
margin = 0.2
"""


def test_an_audit_file_gives_the_spec_the_same_flags_give(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _models(tmp_path)
    config = tmp_path / "audit.toml"
    config.write_text(FULL_FILE.replace("\n[detectors.next-token-agreement]\nmax_new_tokens = 8\nmargin = 0.2\n", ""))
    from_file = _spec_of(["--config", str(config)], monkeypatch)
    flags = ["--teacher", str(m["teacher"]), "--student", str(m["student"]), "--reference", str(m["ref-1"]),
             "--reference", str(m["ref-2"]), "--probes", str(tmp_path / "probes.txt"), "--n-probes", "2",
             "--seed", "7", "--alpha", "0.05", "--detector", "next-token-agreement", "--detector", "top-k-overlap",
             "--teacher-access", "gray", "--combine", "cauchy", "--no-negative-controls", "--teacher-name", "Acme",
             "--dtype", "float32", "--batch-tokens", "256", "--no-cache", "--out", str(tmp_path / "out")]
    from_flags = _spec_of(flags, monkeypatch)
    assert from_file == from_flags
    assert from_file.settings() == from_flags.settings()
    assert from_file.alpha == 0.05 and from_file.cache_dir is None and not from_file.negative_controls


def test_a_flag_overrides_the_file_and_detector_parameters_reach_the_detector(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _models(tmp_path)
    config = tmp_path / "audit.toml"
    config.write_text(FULL_FILE)
    spec = _spec_of(["--config", str(config), "--alpha", "0.02", "--combine", "bonferroni"], monkeypatch)
    assert spec.alpha == 0.02 and spec.combination == "bonferroni"  # given on the command line
    assert spec.seed == 7 and spec.teacher_access == "gray"  # from the file, where no flag was given
    assert spec.settings()["detector_params"] == {"next-token-agreement": {"max_new_tokens": 8, "margin": 0.2}}
    from distill_audit.runner import select_detectors

    agreement, overlap = select_detectors(spec.detectors, spec)
    assert agreement.params.max_new_tokens == 8 and agreement.params.margin == 0.2
    assert overlap.params == type(overlap).Params()  # untouched


# -- mistakes are one line naming the key, exit 2 ------------------------------------------------------------


@pytest.mark.parametrize("edit, needles", [
    (("alpha = 0.05", "alpah = 0.05"), ["audit.toml: unknown key 'alpah' in [audit]", "known: ", "alpha"]),
    (("seed = 7", 'seed = "seven"'), ["audit.toml: [audit] seed must be an integer", "'seven'"]),
    (("alpha = 0.05", "alpha = 1.5"), ["audit.toml: [audit] alpha must be between 0 and 1, got 1.5"]),
    (("combine = \"cauchy\"", "combine = \"fisher\""), ["[audit] combine must be one of bonferroni, cauchy"]),
    (('teacher = "teacher"', 'teacher = "./no-such-teacher"'),
     ["audit.toml: [models] teacher: no such file or directory: ./no-such-teacher"]),
    (("seed = 7", "seed = 7\ndevice = \"cpu\""), ["unknown key 'device' in [audit] (it belongs in [load])"]),
    (("margin = 0.2", "margn = 0.2"), ["unknown key 'margn' in [detectors.next-token-agreement]", "margin"]),
    (("max_new_tokens = 8", 'max_new_tokens = "8"'), ["[detectors.next-token-agreement] max_new_tokens must be an integer"]),
    (("[detectors.next-token-agreement]", "[detectors.nope]"), ["unknown detector [detectors.nope]"]),
    (('"top-k-overlap"]', '"top-k-overlapp"]'), ["audit.toml: [audit] detectors: unknown detector 'top-k-overlapp'"]),
    (("[output]", "[outputs]"), ["unknown table [outputs] at the top level"]),
    (("seed = 7", "seed = 7\nseed = 8"), ["audit.toml: not valid TOML"]),
])
def test_audit_file_mistakes_are_one_line_naming_the_key(tmp_path: Path, edit: tuple[str, str],
                                                          needles: list[str]) -> None:
    _models(tmp_path)
    config = tmp_path / "audit.toml"
    assert edit[0] in FULL_FILE
    config.write_text(FULL_FILE.replace(edit[0], edit[1], 1))
    result = CliRunner().invoke(main, ["run", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("distill-audit: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "out" / "result.json").exists()


def test_a_missing_model_file_is_one_line_from_the_installed_command(tmp_path: Path) -> None:
    _models(tmp_path)
    config = tmp_path / "audit.toml"
    config.write_text(FULL_FILE.replace('student = "student"', 'student = "models/student.gguf"'))
    one_line_error(cli("run", "--config", str(config)), 2, "[models] student: no such file or directory")


def test_a_range_given_as_a_flag_is_the_same_one_line_check() -> None:
    result = CliRunner().invoke(main, ["run", "--teacher", "a", "--student", "b", "--out", "o", "--api-retries", "-1"])
    assert result.exit_code == 2 and "--api-retries must be 0 or more, got -1" in result.stderr


# -- init ----------------------------------------------------------------------------------------------------


def test_init_writes_an_example_that_loads_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "audit.toml"
    result = CliRunner().invoke(main, ["init", str(target)], catch_exceptions=False)
    assert result.exit_code == 0 and target.read_text() == example_text()
    loaded = read_audit_file(target)
    assert loaded.students and loaded.values["teacher"] and loaded.values["out"] == tmp_path / "audit-results"
    for option in options.OPTIONS:  # every key is shown, so the example documents the whole format
        assert f"{option.name} = " in target.read_text(), option.name
    # every key shown commented out, uncommented, still loads: the example's placeholders have the right types
    text = target.read_text()
    options_part = text[:text.index("# [detectors.")]
    uncommented = re.sub(r"^# ([a-z_]+ = )", r"\1", options_part, flags=re.M)
    (tmp_path / "all.toml").write_text(uncommented.replace('students = ["models/student-a", "models/student-b"]', ""))
    everything = read_audit_file(tmp_path / "all.toml")
    assert set(everything.values) == {o.name for o in options.OPTIONS}
    again = CliRunner().invoke(main, ["init", str(target)])
    assert again.exit_code == 2 and "already exists" in again.stderr


# -- a sweep: several students, one teacher and panel, one cache ----------------------------------------------


def test_index_pages_escape_model_text() -> None:
    from distill_audit.reports.index import render_index_html, render_index_markdown

    rows = [{"student": "s", "source": "<script>alert(1)</script>|x", "verdict": "distilled", "p_value": 1e-6,
             "report": "s/report.html", "result": "s/result.json"}]
    record = {"path": "a<b>.toml", "sha256": "0" * 64, "content": ""}
    html = render_index_html(rows, record)
    assert "<script>" not in html and "&lt;script&gt;" in html and "a&lt;b&gt;.toml" in html
    md = render_index_markdown(rows, record)
    assert "<script>" not in md and "\\|x" in md


@pytest.fixture(scope="module")
def more_models(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> list[Path]:
    """Two students and a second reference, untrained tiny Llamas of their own seeds."""
    from tests.conftest import _save_untrained

    return [_save_untrained(tokenizer_dir, tmp_path_factory.mktemp(name), "llama", seed=seed)
            for name, seed in (("student-a", 2), ("student-b", 3), ("reference-b", 4))]


def test_a_sweep_audits_each_student_and_shares_the_teachers_inference(
        tmp_path: Path, llama_dir: Path, gpt2_dir: Path, more_models: list[Path]) -> None:
    student_a, student_b, reference_b = more_models
    (tmp_path / "probes.txt").write_text("one two\nthree four five\nsix seven\neight nine ten\nred blue\n")
    config = tmp_path / "sweep.toml"
    config.write_text(f"""
[models]
teacher = "{llama_dir}"
students = ["{student_a}", "{student_b}"]
references = ["{gpt2_dir}", "{reference_b}"]

[audit]
probes = "probes.txt"
detectors = ["next-token-agreement"]
negative_controls = false

[load]
cache_dir = "cache"

[output]
out = "out"

[detectors.next-token-agreement]
max_new_tokens = 6
""")
    proc = cli("-q", "run", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    results = [json.loads((out / s.name / "result.json").read_text()) for s in (student_a, student_b)]
    for r, student in zip(results, (student_a, student_b)):
        assert r["models"][1]["source"] == str(student)
        assert r["audit_file"] == {"path": str(config), "sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
                                   "content": config.read_text()}
        assert r["settings"]["detector_params"] == {"next-token-agreement": {"max_new_tokens": 6}}
        report = (out / student.name / "report.html").read_text()
        assert "<dt>audit file</dt>" in report and r["audit_file"]["sha256"] in report
    first, second = (r["inference"] for r in results)
    # the second audit read the teacher's and the references' answers back from the cache the first one filled
    assert second["cache_hits"] > first["cache_hits"] and second["computed"] < first["computed"]
    index_md, index_html = (out / "index.md").read_text(), (out / "index.html").read_text()
    for student, r in zip((student_a, student_b), results):
        name = student.name
        row = next(line for line in index_md.splitlines() if f"[report]({name}/report.html)" in line)  # no _ to escape
        assert f"**{r['verdict']['label']}**" in row
        assert f'href="{name}/report.html"' in index_html
        assert not math.isnan(r["verdict"]["p_value"])


def test_the_readme_example_is_a_valid_audit_file(tmp_path: Path) -> None:
    from tests.conftest import REPO

    (block,) = re.findall(r"```toml\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    (tmp_path / "audit.toml").write_text(block)
    loaded = read_audit_file(tmp_path / "audit.toml")
    assert loaded.detector_params == {"next-token-agreement": {"margin": 0.1}}
    assert loaded.values["teacher_logs"] == tmp_path / "logs" / "logged.jsonl"


def test_every_option_with_a_spec_field_reaches_the_spec(tmp_path: Path) -> None:
    # a new row of the option table must arrive in the AuditSpec, not only in the parsed values
    from distill_audit.specbuild import build_spec

    values = dict(options.defaults(), teacher="t", student="s", references=("r1", "r2"))
    for option in options.OPTIONS:
        if option.field is None or not option.choices or option.multiple:
            continue
        other = next(c for c in option.choices if c != option.default)
        spec = build_spec(dict(values, **{option.name: other}), tmp_path)
        assert options._field(spec, option.field) == other, option.flag
