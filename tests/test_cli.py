"""The command line end to end: the demo, a real audit, reproducibility, resume after SIGKILL, errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from distill_audit.cli import main
from distill_audit.result import SCHEMA_VERSION, stable_view
from tests.conftest import REPO, cli


def test_demo_catches_the_distilled_student_and_clears_the_control(demo_run: dict[str, Any]) -> None:
    assert demo_run["distilled"]["verdict"]["label"] == "distilled"
    assert demo_run["control"]["verdict"]["label"] == "not-distilled"  # backed by a powered detector
    assert demo_run["control"]["verdict"]["powered_detectors"]
    out = demo_run["proc"].stdout
    assert "distilled student: DISTILLED" in out and "control student:" in out
    assert str(demo_run["out"] / "distilled" / "result.json") in out
    models = demo_run["models"]
    for name in ("teacher", "student", "control", "reference-1", "reference-2"):
        assert (models / name / "model.safetensors").exists() and (models / name / "tokenizer.json").exists()


def test_demo_reuses_its_models(demo_run: dict[str, Any], tmp_path: Path) -> None:
    proc = cli("demo", "--out", str(tmp_path), "--cache-dir", str(demo_run["cache"]))
    assert proc.returncode == 0, proc.stderr
    assert "reusing demo models" in proc.stderr
    again = json.loads((tmp_path / "distilled" / "result.json").read_text())
    assert again["evidence"] == demo_run["distilled"]["evidence"]
    assert again["inference"]["computed"] == 0  # every answer came from the cache


def test_result_document_has_what_a_review_needs(demo_run: dict[str, Any]) -> None:
    r = demo_run["distilled"]
    assert r["schema_version"] == SCHEMA_VERSION and r["tool_version"]
    assert [m["role"] for m in r["models"]] == ["teacher", "student"] + ["reference"] * 6
    for m in r["models"]:
        assert len(m["fingerprint"]["model"]) == 64 and m["fingerprint"]["format"] == "safetensors"
        assert m["source"] and m["runtime"]["device"]
    (ps,) = r["probe_sets"]
    assert ps["n"] == 100 and len(ps["hash"]) == 64
    from distill_audit.detectors import REGISTRY

    # every detector ran or says why not, and the omnibus panel test combines the panel detectors (first)
    assert r["evidence"][0]["detector"] == "panel-omnibus"
    assert {e["detector"] for e in r["evidence"][1:]} | {s["detector"] for s in r["skipped"]} == set(REGISTRY)
    # the demo gives every detector what it needs, logs included, except a watermark key: its teacher's
    # answers were not watermarked
    assert {s["detector"] for s in r["skipped"]} <= {"watermark-radioactivity"}
    for ev in r["evidence"]:
        for key in ("detector", "statistic", "p_value", "effect_size", "n", "null", "examples", "margin", "planted_p_value"):
            assert key in ev
    assert r["verdict"]["label"] in ("distilled", "inconclusive", "not-distilled")
    assert r["verdict"]["p_value"] < 0.01 and r["verdict"]["summary"]
    ran = set(REGISTRY) - {s["detector"] for s in r["skipped"]}
    assert r["verdict"]["combination"] == "bonferroni" and set(r["verdict"]["holm_adjusted_p_values"]) == ran
    assert r["teacher_logs"]["pairs"] > 1000 and len(r["teacher_logs"]["logged_hash"]) == 64
    controls = r["negative_controls"]
    assert [c["model"] for c in controls] == [f"reference-{i}" for i in range(1, 7)]
    assert all(c["label"] != "distilled" and set(c["p_values"]) == ran | {"panel-omnibus"} for c in controls)
    assert [line["line"] for line in r["verdict"]["primary"]] == ["panel-omnibus", "logged-vs-fresh", "weight-lineage"]
    for key in ("seed", "dtype", "device", "token_budget"):
        assert key in r["settings"]
    assert r["timings"]["total_seconds"] > 0 and r["environment"]["torch"]


def _run_args(models: Path, probes: Path, out: Path, *extra: str) -> list[str]:
    refs = [a for i in range(1, 7) for a in ("--reference", str(models / f"reference-{i}"))]
    logs = ["--teacher-logs", str(models / "teacher-logs.jsonl"), "--teacher-fresh", str(models / "teacher-fresh.jsonl")]
    return ["run", "--teacher", str(models / "teacher"), "--student", str(models / "student"), *refs, *logs,
            "--probes", str(probes), "--seed", "0", "--out", str(out), *extra]


def test_identical_inputs_give_an_identical_result(demo_run: dict[str, Any], tmp_path: Path) -> None:
    probes = demo_run["out"] / "demo-probes.txt"
    # 200 of the 1,500 logged answers: every detector runs (logged-vs-fresh calibrated too) in a third of the time
    logs = tmp_path / "logs-200.jsonl"
    logs.write_text("".join(demo_run["logs"].read_text().splitlines(keepends=True)[:200]))
    args = _run_args(demo_run["models"], probes, tmp_path / "out", "--no-cache", "--n-probes", "30")
    args[args.index("--teacher-logs") + 1] = str(logs)
    results = []
    for _ in range(2):
        proc = cli(*args)
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads((tmp_path / "out" / "result.json").read_text()))
    assert stable_view(results[0]) == stable_view(results[1])
    assert results[0]["probe_sets"][0]["n"] == 30 and results[0]["settings"]["n_probes"] == 30
    assert results[0]["teacher_logs"]["pairs"] == 200


def test_killed_audit_resumes_without_repeating_finished_work(demo_run: dict[str, Any], tmp_path: Path) -> None:
    probes = demo_run["out"] / "demo-probes.txt"
    cache = tmp_path / "cache"
    # A small token budget makes many small batches, so the kill lands mid-way. The omnibus components (not the
    # logs test, whose calibration has every reference score 3,000 logged answers in 40-token batches) keep it short.
    chosen = ("next-token-agreement", "top-k-overlap", "js-divergence", "idiosyncrasy-tokens", "teacher-text-likelihood")
    common = ["--no-negative-controls", "--n-probes", "40", *[a for d in chosen for a in ("--detector", d)]]
    args = _run_args(demo_run["models"], probes, tmp_path / "out", "--cache-dir", str(cache), "--batch-tokens", "40",
                     *common)
    proc = subprocess.Popen([sys.executable, "-m", "distill_audit", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = cache / "inference-v1.sqlite"
    deadline = time.time() + 120
    rows = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as conn:
                    rows = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
            except sqlite3.OperationalError:
                rows = 0
            if rows >= 150:  # teacher generations done and some scoring committed
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the audit finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out" / "result.json").exists()

    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    stats = result["inference"]
    assert stats["cache_hits"] >= rows and 0 < stats["computed"] < stats["requested"]
    # the same audit uninterrupted, without a cache, in batches of the default size: another batch size changes
    # float rounding in the last digits, nothing more
    clean = cli(*_run_args(demo_run["models"], probes, tmp_path / "clean", "--no-cache", *common))
    assert clean.returncode == 0, clean.stderr
    expected = json.loads((tmp_path / "clean" / "result.json").read_text())
    assert [e["detector"] for e in result["evidence"]] == ["panel-omnibus", *chosen]
    _assert_json_close(result["evidence"], expected["evidence"])


def _assert_json_close(a: Any, b: Any, rel: float = 1e-3, path: str = "") -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_json_close(a[k], b[k], rel, f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_json_close(x, y, rel, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=rel, abs=1e-6), path
    else:
        assert a == b, path


def _audit(demo_run: dict[str, Any], out: Path, *extra: str) -> dict[str, Any]:
    probes = demo_run["out"] / "demo-probes.txt"
    proc = cli(*_run_args(demo_run["models"], probes, out, "--cache-dir", str(demo_run["cache"]), *extra))
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "result.json").read_text())  # type: ignore[no-any-return]


def test_black_box_teacher_runs_the_text_detectors_and_says_why_the_rest_are_skipped(
        demo_run: dict[str, Any], tmp_path: Path) -> None:
    r = _audit(demo_run, tmp_path, "--teacher-access", "black")
    ran = {e["detector"] for e in r["evidence"]}
    assert ran == {"text-word-agreement", "text-edit-similarity", "idiosyncrasy-text", "teacher-text-likelihood",
                   "logged-vs-fresh", "panel-omnibus"}
    omnibus = next(e for e in r["evidence"] if e["detector"] == "panel-omnibus")
    assert omnibus["details"]["access"] == "black"
    assert omnibus["details"]["components"] == ["teacher-text-likelihood", "text-edit-similarity"]
    reasons = {s["detector"]: s["reason"] for s in r["skipped"]}
    assert "generate-topk" in reasons["next-token-agreement"] and "teacher" in reasons["next-token-agreement"]
    assert r["models"][0]["capabilities"] == ["generate"] and r["models"][0]["runtime"]["access"] == "black-box"
    assert r["verdict"]["label"] == "distilled"  # the logs and the teacher's text still convict


def test_cauchy_combination_is_chosen_and_recorded(demo_run: dict[str, Any], tmp_path: Path) -> None:
    from distill_audit import stats

    r = _audit(demo_run, tmp_path, "--combine", "cauchy", "--detector", "next-token-agreement",
               "--detector", "top-k-overlap", "--no-negative-controls")
    v = r["verdict"]
    assert v["combination"] == "cauchy" and r["settings"]["combination"] == "cauchy"
    # the verdict combines the primary lines only (here the omnibus over the two detectors), not every detector
    assert [line["detector"] for line in v["primary"]] == ["panel-omnibus"]
    assert v["p_value"] == pytest.approx(stats.cauchy_combination([line["p_value"] for line in v["primary"]]), rel=1e-6)
    assert r["negative_controls"] == []


def test_fail_on_gates_name_every_label_at_or_above_them() -> None:
    from distill_audit.cli import GATES

    assert set(GATES["distilled"]) == {"distilled"}
    assert set(GATES["inconclusive"]) == {"distilled", "inconclusive"}


# the strict gate on the distilled student, the lenient one on the control: both exit codes, both gates
@pytest.mark.parametrize(("student", "gate", "code"), [("student", "distilled", 1), ("control", "inconclusive", 0)])
def test_fail_on_gates_ci_after_writing_the_result(demo_run: dict[str, Any], tmp_path: Path, student: str, gate: str,
                                                   code: int) -> None:
    args = _run_args(demo_run["models"], demo_run["out"] / "demo-probes.txt", tmp_path, "--cache-dir",
                     str(demo_run["cache"]), "--fail-on", gate)
    args[args.index("--student") + 1] = str(demo_run["models"] / student)
    proc = cli(*args)
    assert proc.returncode == code, proc.stderr
    assert (tmp_path / "result.json").exists()
    assert (f"matches --fail-on {gate}" in proc.stderr) == bool(code)


def test_fresh_answers_are_sampled_here_when_not_given(demo_run: dict[str, Any], tmp_path: Path) -> None:
    args = _run_args(demo_run["models"], demo_run["out"] / "demo-probes.txt", tmp_path, "--cache-dir",
                     str(demo_run["cache"]), "--detector", "logged-vs-fresh", "--no-negative-controls")
    i = args.index("--teacher-fresh")
    del args[i : i + 2]
    logs = tmp_path / "logs-500.jsonl"  # 500 of the 1,500 logged answers: the teacher answers each prompt afresh
    logs.write_text("".join(demo_run["logs"].read_text().splitlines(keepends=True)[:500]))
    args[args.index("--teacher-logs") + 1] = str(logs)
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "result.json").read_text())
    logs = r["teacher_logs"]
    assert logs["fresh_source"].startswith("sampled from the teacher here") and logs["unpaired_logged"] == 0
    assert logs["fresh_hash"] != demo_run["distilled"]["teacher_logs"]["fresh_hash"]
    (ev,) = r["evidence"]
    assert ev["p_value"] < 0.01 and ev["n"] == 500


def test_a_weak_panel_is_exposed_by_the_negative_controls(demo_run: dict[str, Any], tmp_path: Path) -> None:
    """A distilled model slipped into the reference panel: in the student's seat it comes out distilled, and
    the verdict carries the warning."""
    models = demo_run["models"]
    panel = [str(models / "student")] + [str(models / f"reference-{i}") for i in (1, 2, 3)]
    args = ["run", "--teacher", str(models / "teacher"), "--student", str(models / "control"),
            *(a for ref in panel for a in ("--reference", ref)),
            "--probes", str(demo_run["out"] / "demo-probes.txt"), "--out", str(tmp_path),
            "--cache-dir", str(demo_run["cache"]), "--detector", "idiosyncrasy-tokens", "--detector", "next-token-agreement"]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "result.json").read_text())
    flagged = [c["model"] for c in r["negative_controls"] if c["label"] == "distilled"]
    assert flagged == ["reference-1"]
    assert any("Negative control failed: reference-1" in w for w in r["verdict"]["warnings"])


def test_identity_probes_record_answers_naming_the_teacher(demo_run: dict[str, Any], tmp_path: Path) -> None:
    absent = _audit(demo_run, tmp_path / "a", "--teacher-name", "AcmeGPT", "--detector", "text-word-agreement",
                    "--n-probes", "10", "--no-negative-controls")["observations"]["identity"]
    assert absent["ran"] and absent["answers_naming_teacher"] == 0 and len(absent["answers"]) == 6
    said = absent["answers"][0]["answer"].split()[0].strip(".")  # a word the student does say about itself
    present = _audit(demo_run, tmp_path / "b", "--teacher-name", said, "--detector", "text-word-agreement",
                     "--n-probes", "10", "--no-negative-controls")["observations"]["identity"]
    assert present["answers_naming_teacher"] >= 1 and said in present["answers"][0]["names_teacher"]


# -- errors: one clear line, exit 2, and no result written --------------------------------------------

def _invoke(args: list[str]) -> Any:
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _assert_usage_error(result: Any, out: Path, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("distill-audit: error: "), result.stderr
    assert pattern in lines[0], lines[0]
    assert not (out / "result.json").exists()


@pytest.fixture(scope="module")
def models(demo_run: dict[str, Any]) -> Path:
    return demo_run["models"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def probes(demo_run: dict[str, Any]) -> Path:
    return demo_run["out"] / "demo-probes.txt"  # type: ignore[no-any-return]


def test_missing_model_path(models: Path, probes: Path, tmp_path: Path) -> None:
    args = _run_args(models, probes, tmp_path, "--no-cache")
    args[args.index("--teacher") + 1] = str(tmp_path / "missing")
    _assert_usage_error(_invoke(args), tmp_path, "no such file or directory")


def test_directory_without_tokenizer(models: Path, probes: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).write_bytes((models / "student" / f).read_bytes())
    args = _run_args(models, probes, tmp_path, "--no-cache")
    args[args.index("--student") + 1] = str(bare)
    _assert_usage_error(_invoke(args), tmp_path, "no tokenizer files")


def test_not_a_causal_lm(models: Path, probes: Path, tmp_path: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    enc = tmp_path / "encoder"
    DistilBertModel(DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(enc)
    for f in (models / "student").glob("tokenizer*"):
        (enc / f.name).write_bytes(f.read_bytes())
    args = _run_args(models, probes, tmp_path, "--no-cache")
    args[args.index("--student") + 1] = str(enc)
    _assert_usage_error(_invoke(args), tmp_path, "not a causal (decoder) language model")


def test_pickle_weights_refused(models: Path, probes: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(load_file(models / "student" / "model.safetensors"), pickled / "pytorch_model.bin")
    for f in (models / "student").iterdir():
        if f.suffix != ".safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    args = _run_args(models, probes, tmp_path, "--no-cache")
    args[args.index("--student") + 1] = str(pickled)
    _assert_usage_error(_invoke(args), tmp_path, "--allow-pickle")


def test_gguf_without_the_gguf_package(models: Path, probes: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)
    args = _run_args(models, probes, tmp_path, "--no-cache")
    args[args.index("--teacher") + 1] = str(fake)
    _assert_usage_error(_invoke(args), tmp_path, "needs the gguf package")


@pytest.mark.parametrize("content,message", [
    ("", "no prompts"),
    ('{"prompt": "ok"}\n{"prompt": oops}\n', "line 2: not valid JSON"),
])
def test_bad_probe_file(models: Path, tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / ("p.txt" if not content else "p.jsonl")
    f.write_text(content)
    _assert_usage_error(_invoke(_run_args(models, f, tmp_path / "out", "--no-cache")), tmp_path / "out", message)


def test_fewer_references_than_the_detectors_need(models: Path, probes: Path, tmp_path: Path) -> None:
    args = ["run", "--teacher", str(models / "teacher"), "--student", str(models / "student"),
            "--reference", str(models / "reference-1"), "--probes", str(probes), "--out", str(tmp_path)]
    _assert_usage_error(_invoke([*args, "--detector", "top-k-overlap"]), tmp_path,
                        "needs at least 2 reference model(s) (--reference), got 1")
    # by default, one reference leaves the reference-free detector that white-box models allow
    result = _invoke([*args, "--n-probes", "5", "--no-cache", "--no-negative-controls"])
    assert result.exit_code == 0, result.stderr
    r = json.loads((tmp_path / "result.json").read_text())
    assert [e["detector"] for e in r["evidence"]] == ["weight-lineage"]
    assert any("Only 1 reference" in w for w in r["verdict"]["warnings"])


def test_one_reference_with_logs_runs_the_reference_free_test_and_warns(models: Path, probes: Path,
                                                                        tmp_path: Path) -> None:
    args = ["run", "--teacher", str(models / "teacher"), "--student", str(models / "student"),
            "--reference", str(models / "reference-1"), "--probes", str(probes), "--out", str(tmp_path),
            "--teacher-logs", str(models / "teacher-logs.jsonl"), "--teacher-fresh", str(models / "teacher-fresh.jsonl"),
            "--n-probes", "10", "--no-cache"]
    result = _invoke(args)
    assert result.exit_code == 0, result.stderr
    r = json.loads((tmp_path / "result.json").read_text())
    # the reference-free detectors: logged-vs-fresh, and weight-lineage (both models are local)
    assert [e["detector"] for e in r["evidence"]] == ["logged-vs-fresh", "weight-lineage"]
    assert r["verdict"]["label"] == "distilled"  # the student trained on the logs, no reference needed
    assert any("Only 1 reference" in w for w in r["verdict"]["warnings"])
    assert any("at least 2 reference" in s["reason"] for s in r["skipped"])


def test_logs_and_fresh_without_shared_prompts_are_refused(models: Path, probes: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.jsonl"
    fresh.write_text(json.dumps({"prompt": "never logged", "completion": " x"}) + "\n")
    args = _run_args(models, probes, tmp_path / "out", "--no-cache")
    args[args.index("--teacher-fresh") + 1] = str(fresh)
    _assert_usage_error(_invoke(args), tmp_path / "out", "share no prompt")


@pytest.mark.parametrize(("content", "message"), [
    ("", "no logged outputs (the file is empty)"),
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "answer": "b"}\n', ":2: needs string fields"),
])
def test_bad_teacher_logs(models: Path, probes: Path, tmp_path: Path, content: str, message: str) -> None:
    logs = tmp_path / "logs.jsonl"
    logs.write_text(content)
    args = _run_args(models, probes, tmp_path / "out", "--no-cache")
    args[args.index("--teacher-logs") + 1] = str(logs)
    _assert_usage_error(_invoke(args), tmp_path / "out", message)


def test_fresh_without_logs_is_a_usage_error(models: Path, probes: Path, tmp_path: Path) -> None:
    args = _run_args(models, probes, tmp_path / "out", "--no-cache")
    i = args.index("--teacher-logs")
    del args[i : i + 2]
    _assert_usage_error(_invoke(args), tmp_path / "out", "--teacher-fresh needs --teacher-logs")


def test_prompt_longer_than_the_context_is_refused(models: Path, tmp_path: Path) -> None:
    f = tmp_path / "long.txt"
    f.write_text("Kise " * 400 + "\nRuno lee\n")
    _assert_usage_error(_invoke(_run_args(models, f, tmp_path / "out", "--no-cache")), tmp_path / "out",
                        "longer than its context of 256")


def test_output_path_that_is_a_file(models: Path, probes: Path, tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    result = _invoke(_run_args(models, probes, f, "--no-cache"))
    assert result.exit_code == 2 and "exists and is not a directory" in result.stderr


def test_unknown_detector_and_bad_alpha(models: Path, probes: Path, tmp_path: Path) -> None:
    _assert_usage_error(_invoke(_run_args(models, probes, tmp_path, "--detector", "nope")), tmp_path, "unknown detector")
    _assert_usage_error(_invoke(_run_args(models, probes, tmp_path, "--alpha", "2")), tmp_path, "--alpha")


def test_detectors_and_probes_listings() -> None:
    out = _invoke(["detectors"]).output
    assert "next-token-agreement" in out and "score-topk" in out and "at least 2 reference" in out
    assert "default  version v1  320 prompts" in _invoke(["probes"]).output
    assert "Exit codes" in _invoke(["--help"]).output
