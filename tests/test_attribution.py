"""Alternative teachers and calibrated membership, on the real demo models (tiny checkpoints saved to disk).

The demo has a teacher, a student distilled from it, an independent control and six references. Accusing
the control of being the student's teacher while the real teacher is given as the alternative must not
blame the control, and must name the real teacher; the logs test must not mistake a difference between
how logged and fresh answers were drawn for membership.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from distill_audit.backends.base import GenerateParams
from distill_audit.backends.hf import HFAdapter
from distill_audit.cache import InferenceCache
from distill_audit.detectors.base import DetectorContext, ModelHandle
from distill_audit.detectors.membership import LoggedVsFresh
from distill_audit.engine import Engine
from distill_audit.logs import LoggedOutput, pair_outputs
from tests.conftest import cli


def _audit(demo_run: dict[str, Any], tmp_path: Path, teacher: str, student: str, alternative: str,
           out: str) -> dict[str, Any]:
    models = Path(str(demo_run["models"]))
    probes = tmp_path / "probes.txt"
    if not probes.exists():
        probes.write_text("\n".join((demo_run["out"] / "demo-probes.txt").read_text().splitlines()[:40]) + "\n")
    refs = [a for i in range(1, 5) for a in ("--reference", str(models / f"reference-{i}"))]
    proc = cli("-q", "run", "--teacher", str(models / teacher), "--student", str(models / student), *refs,
               "--alternative-teacher", str(models / alternative), "--detector", "next-token-agreement",
               "--detector", "top-k-overlap", "--detector", "js-divergence", "--detector", "idiosyncrasy-tokens",
               "--detector", "teacher-text-likelihood", "--probes", str(probes), "--no-negative-controls",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / out))
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp_path / out / "result.json").read_text())


def test_the_wrong_teacher_is_not_blamed_and_the_right_one_is_named(demo_run: dict[str, Any], tmp_path: Path) -> None:
    right = _audit(demo_run, tmp_path, "teacher", "student", "control", "right")
    assert right["verdict"]["label"] == "distilled" and right["verdict"]["attributed_to"] == "teacher"
    table = {row["name"]: row for row in right["attribution"]["candidates"]}
    assert right["attribution"]["tested"] and right["attribution"]["closest"] == "teacher"
    assert table["alternative-1"]["versus_teacher_p_value"] < 0.01
    assert table["alternative-1"]["source"].endswith("control")
    assert [m["role"] for m in right["models"]].count("alternative") == 1
    omni = right["verdict"]["primary"][0]
    assert omni["line"] == "panel-omnibus" and omni["p_value"] == max(omni["panel_p_value"], omni["attribution_p_value"])
    # the lean is calibrated by references trained on other data: the verdict says what that leaves open
    assert any("trained on the teacher's data, but not on its outputs" in w for w in right["verdict"]["warnings"])

    # accuse the control, offer the real teacher as the alternative: the evidence points away from the accused
    wrong = _audit(demo_run, tmp_path, "control", "student", "teacher", "wrong")
    assert wrong["verdict"]["label"] != "distilled"
    assert not any("but not on its outputs" in w for w in wrong["verdict"]["warnings"])  # no lean to the accused
    assert wrong["verdict"]["attributed_to"] == "alternative-1" and wrong["attribution"]["closest"] == "alternative-1"
    assert "alternative-1" in wrong["verdict"]["summary"] and "not to the teacher" in wrong["verdict"]["summary"]
    html = (tmp_path / "wrong" / "report.html").read_text()
    assert "alternative-1" in html


def test_without_alternatives_the_verdict_says_attribution_was_not_tested(demo_run: dict[str, Any]) -> None:
    result = demo_run["distilled"]
    assert result["attribution"]["tested"] is False
    assert any("Attribution among teachers trained on similar data was not tested" in w
               for w in result["verdict"]["warnings"])
    assert result["evidence"][0]["detector"] == "panel-omnibus"
    assert {line["line"] for line in result["verdict"]["primary"]} >= {"panel-omnibus", "logged-vs-fresh"}
    logs = next(e for e in result["evidence"] if e["detector"] == "logged-vs-fresh")
    assert logs["details"]["calibrated"] is True and len(logs["details"]["reference_mean_difference"]) == 6


def test_a_shift_between_how_logged_and_fresh_answers_were_drawn_is_not_membership(demo_run: dict[str, Any]) -> None:
    """Logged answers drawn greedily, fresh ones sampled at temperature 1.2: every model finds the greedy answers
    easier, whether or not it saw them. The raw paired test flags the control, which never saw any of these
    answers; calibrated against the references, it does not."""
    models = Path(str(demo_run["models"]))
    engine = Engine(InferenceCache(None), progress=False)
    load = {name: HFAdapter.load(str(models / name), name=name)
            for name in ("teacher", "control", "reference-1", "reference-2", "reference-3", "reference-4")}
    prompts = (demo_run["out"] / "demo-probes.txt").read_text().splitlines()[:60]
    greedy = engine.generate(load["teacher"], prompts, GenerateParams(max_new_tokens=20, do_sample=False, top_k=1, seed=0))
    hot = engine.generate(load["teacher"], prompts, GenerateParams(max_new_tokens=20, do_sample=True, temperature=1.2,
                                                                   top_k=1, seed=1))
    pairs = pair_outputs([LoggedOutput(p, g.text, i + 1) for i, (p, g) in enumerate(zip(prompts, greedy))],
                         [LoggedOutput(p, g.text, 0) for p, g in zip(prompts, hot)], "test")
    handles = {n: ModelHandle(n.split("-")[0], n, a) for n, a in load.items()}
    refs = tuple(handles[f"reference-{i}"] for i in range(1, 5))
    ctx = DetectorContext(handles["teacher"], ModelHandle("student", "control", load["control"]), refs,
                          tuple(prompts), 0, engine, pairs)
    calibrated = LoggedVsFresh().run(ctx)
    assert calibrated.details["calibrated"] is True
    assert calibrated.details["uncalibrated_p_value"] < 0.01  # the raw test would call the control a member
    assert calibrated.p_value > 0.05
    assert np.mean([v for v in calibrated.details["reference_mean_difference"].values()]) > 0  # the shift is real
    raw = LoggedVsFresh().run(DetectorContext(ctx.teacher, ctx.student, (), ctx.prompts, 0, engine, pairs))
    assert raw.details["calibrated"] is False and raw.p_value == calibrated.details["uncalibrated_p_value"]
