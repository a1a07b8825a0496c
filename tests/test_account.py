"""The inference account (per model, per detector or stage) and `run --plan` (the planned work, before any model
loads), held to each other: a real audit of tiny real checkpoints computes, per detector and model, what the
detectors declared."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from distill_audit.backends.base import ModelAdapter
from distill_audit.backends.hf import HFAdapter, LoadOptions
from distill_audit.cli import main
from distill_audit.detectors import REGISTRY
from distill_audit.detectors.base import PlanInputs
from distill_audit.engine import UNLABELLED
from distill_audit.probes import prompts_hash
from distill_audit.reports import render_html
from distill_audit.result import dumps
from distill_audit.runner import ATTRIBUTION, FRESH_ANSWERS, NEGATIVE_CONTROLS, plan_audit, run_audit
from distill_audit.spec import AuditSpec
from distill_audit.workplan import render_plan, work_plan
from tests.conftest import _save_untrained

PROBES = ["the cat sat on the", "we saw a big red", "one two three four", "the dog ran to the"]
USAGE = ("requests", "cache_hits", "computed", "forward_passes", "tokens_scored", "tokens_generated")


@pytest.fixture(scope="module")
def audit_files(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Any]:
    """Six distinct tiny checkpoints (teacher and student share a shape, so weight-lineage runs), short probes
    and a short teacher log, so that every detector but watermark-radioactivity runs within a 64-token context."""
    root = tmp_path_factory.mktemp("account")
    models = {name: str(_save_untrained(tokenizer_dir, root / name, arch, seed)) for name, arch, seed in (
        ("teacher", "llama", 10), ("student", "llama", 11), ("ref1", "gpt2", 12), ("ref2", "llama", 13),
        ("ref3", "gpt2", 14), ("alt", "llama", 15))}
    probes = root / "probes.txt"
    probes.write_text("\n".join(PROBES) + "\n")
    logs = root / "logged.jsonl"
    logs.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in (
        ("the cat sat on the", " mat and then it"), ("we saw a big red", " bus go by"), ("one two", " three five"))))
    return {"models": models, "probes": str(probes), "logs": logs, "root": root}


def _spec(files: dict[str, Any], cache_dir: Path | None) -> AuditSpec:
    m = files["models"]
    return AuditSpec(teacher=m["teacher"], student=m["student"], references=(m["ref1"], m["ref2"], m["ref3"]),
                     alternative_teachers=(m["alt"],), probes=files["probes"], teacher_logs=files["logs"],
                     cache_dir=cache_dir)


@pytest.fixture(scope="module")
def two_runs(audit_files: dict[str, Any]) -> dict[str, Any]:
    """The same audit twice on one cache (empty at first, so the first run computes all it asks), with every
    adapter kept so its own forward-pass counter can be read."""
    cache = audit_files["root"] / "cache"
    runs = []
    for _ in range(2):
        adapters: list[HFAdapter] = []

        def loader(source: str, options: LoadOptions, name: str, kept: list[HFAdapter] = adapters) -> ModelAdapter:
            adapter = HFAdapter.load(source, options, name=name)
            kept.append(adapter)
            return adapter

        result = run_audit(_spec(audit_files, cache), progress=False, loader=loader)
        runs.append({"result": result, "adapters": adapters})
    return {"first": runs[0], "second": runs[1]}


def _sum(rows: Any, key: str) -> int | float:
    return sum(r[key] for r in rows)


def test_the_account_adds_up_to_the_engine_totals_and_to_each_models_own_counter(two_runs: dict[str, Any]) -> None:
    first = two_runs["first"]
    inference = first["result"]["inference"]
    dumps(first["result"])  # the result with its account passes its schema
    rows = inference["by_model_and_detector"]
    assert _sum(rows, "requests") == inference["requested"] > 0
    assert _sum(rows, "cache_hits") == inference["cache_hits"]
    assert _sum(rows, "computed") == inference["computed"] > 0
    for table, key in ((inference["by_model"], "model"), (inference["by_detector"], "detector")):
        assert set(table) == {r[key] for r in rows}
        for name, usage in table.items():
            mine = [r for r in rows if r[key] == name]
            for field in USAGE:
                assert usage[field] == _sum(mine, field), (name, field)
            assert usage["requests"] == usage["cache_hits"] + usage["computed"]
    # every forward pass a model made is charged to it, and to nobody else
    for adapter in first["adapters"]:
        assert inference["by_model"][adapter.name]["forward_passes"] == adapter.forward_passes, adapter.name
    assert inference["by_model"]["teacher"]["tokens_generated"] > 0 and inference["by_model"]["student"]["tokens_scored"] > 0
    # every piece of work is labelled: each detector, and the stages around them
    assert UNLABELLED not in inference["by_detector"]
    ran = {e["detector"] for e in first["result"]["evidence"]} - {"panel-omnibus", "weight-lineage"}
    assert ran <= set(inference["by_detector"]) and "logged-vs-fresh" in ran
    assert {FRESH_ANSWERS, ATTRIBUTION, NEGATIVE_CONTROLS} <= set(inference["by_detector"])
    assert "weight-lineage" in {e["detector"] for e in first["result"]["evidence"]}  # it ran, asking no inference
    assert "weight-lineage" not in inference["by_detector"]


def test_a_second_run_on_the_same_cache_computes_nothing_for_any_model(two_runs: dict[str, Any]) -> None:
    first = two_runs["first"]["result"]["inference"]
    second = two_runs["second"]["result"]["inference"]
    assert set(second["by_model"]) == set(first["by_model"]) == {"teacher", "student", "reference-1", "reference-2",
                                                                 "reference-3", "alternative-1"}
    for name, usage in second["by_model"].items():
        assert usage["computed"] == 0 and usage["forward_passes"] == 0, name
        assert usage["tokens_scored"] == usage["tokens_generated"] == 0, name
        # results kept in the cache (a CKA profile, the weight test) are read back without asking again for the
        # inference they were computed from: never more requests than the first run, every one from the cache
        assert usage["requests"] == usage["cache_hits"] <= first["by_model"][name]["requests"], name
    assert all(a.forward_passes == 0 for a in two_runs["second"]["adapters"])


def test_every_detector_computes_what_it_planned(two_runs: dict[str, Any], audit_files: dict[str, Any]) -> None:
    def no_loading(source: str, options: LoadOptions, name: str) -> ModelAdapter:
        raise AssertionError("planning loads no model")

    work = work_plan(plan_audit(_spec(audit_files, None), no_loading))
    assert work.undeclared == ()
    rows = two_runs["first"]["result"]["inference"]["by_model_and_detector"]
    # Where every request starts with its own probe, the declaration is exact: a run on an empty cache computes
    # exactly the requests planned as new. Elsewhere two requests may turn out the same text (two models writing
    # the same answer, read once), and attribution is planned over the omnibus components of every access mode.
    exact = {"next-token-agreement", "text-word-agreement", "representation-similarity"}
    checked = 0
    for row in rows:
        planned = work.planned(row["detector"], row["model"])
        assert row["computed"] <= planned, (row, planned)
        if row["detector"] in exact:
            assert row["computed"] == planned > 0, (row, planned)
            checked += 1
    assert checked == 3 * 5  # teacher, student, three references
    # and nothing is computed that the plan did not declare, anywhere
    planned_models = {r.model for r in work.rows if r.new}
    assert {r["model"] for r in rows if r["computed"]} <= planned_models
    assert sum(r["computed"] for r in rows) <= work.totals()["all"]["requests"]


def test_every_registered_detector_declares_its_requests() -> None:
    inputs = PlanInputs(n_probes=5, probe_chars=100, n_references=3, n_logged=4, logged_chars=80, n_watermark_texts=2,
                        watermark_chars=50)
    for name, cls in REGISTRY.items():
        declared = cls().planned_requests(inputs)
        assert declared is not None, name
        for r in declared:
            assert r.role in ("teacher", "student", "reference") and r.kind in ("generate", "score", "hidden"), name
            assert r.count >= 0 and r.share and r.what, name


def test_the_report_shows_the_account_and_escapes_model_names(two_runs: dict[str, Any]) -> None:
    result = json.loads(dumps(two_runs["first"]["result"]))
    html = render_html(result)
    assert "<h3>Inference</h3>" in html and "<th>forward passes</th>" in html
    teacher = result["inference"]["by_model"]["teacher"]
    assert f"<td>teacher</td><td>{teacher['requests']}</td><td>{teacher['cache_hits']}</td>" in html
    assert "<td>negative-controls</td>" in html
    result["inference"]["by_model"]["<b>evil</b>"] = teacher
    html = render_html(result)
    assert "&lt;b&gt;evil&lt;/b&gt;" in html and "<b>evil</b>" not in html
    # a result written before the account (schema 1.5: totals only) renders without the table
    result["inference"] = {k: v for k, v in result["inference"].items() if not isinstance(v, (dict, list))}
    assert "<h3>Inference</h3>" not in render_html(result)


def test_run_plan_prints_the_work_and_loads_and_writes_nothing(audit_files: dict[str, Any], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("--plan loads no model")

    monkeypatch.setattr(HFAdapter, "load", refuse)
    m = audit_files["models"]
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["run", "--plan", "--teacher", m["teacher"], "--student", m["student"], "--reference", m["ref1"],
            "--reference", m["ref2"], "--probes", audit_files["probes"], "--out", str(out), "--cache-dir", str(cache)]
    proc = CliRunner().invoke(main, args, catch_exceptions=False)
    assert proc.exit_code == 0, proc.output
    text = proc.stdout
    assert "no model loaded" in text and f"sha256 {prompts_hash(tuple(PROBES))}" in text
    for name in ("next-token-agreement", "text-word-agreement", "teacher-text-likelihood", "representation-similarity"):
        assert f"\n  {name}\n" in text, name  # listed to run, and its requests listed under it
    assert "logged-vs-fresh: no logged teacher outputs were given (--teacher-logs)" in text
    assert re.search(r"\n    teacher +generate +4 x up to 24 new tokens", text)
    assert "\n  all " in text and "requests:" in text
    assert not out.exists() and not cache.exists()
    # without --out, too: a plan needs no output directory
    args = [a for a in args if a not in ("--out", str(out))]
    assert CliRunner().invoke(main, args, catch_exceptions=False).exit_code == 0


def test_the_plan_counts_shared_requests_once(audit_files: dict[str, Any]) -> None:
    work = work_plan(plan_audit(_spec(audit_files, None)))
    first = next(r for r in work.rows if r.label == "next-token-agreement" and r.model == "teacher")
    again = next(r for r in work.rows if r.label == "top-k-overlap" and r.model == "teacher")
    assert first.new == first.request.count == len(PROBES) and first.shared_with is None
    assert again.new == 0 and again.shared_with == "next-token-agreement"
    totals = work.totals()
    assert totals["all"]["requests"] == sum(t["requests"] for name, t in totals.items() if name != "all")
    assert totals["all"]["requests"] == sum(r.new for r in work.rows)
    text = render_plan(work)
    assert "[shared with next-token-agreement]" in text and "fresh-answers" in text and "x logged length" in text
