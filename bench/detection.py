"""Detection benchmark: every detector and the verdict on a labelled zoo of teacher/student pairs.

    python bench/detection.py [--root DIR] [--modes white,gray,black] [--panels independent,data-matched]
                              [--json out.json]

Builds (or reuses) the zoo of ``bench/zoo.py``: two synthetic corpora, two tokenizers, 22 pairs; label 1
for students distilled from the world's teacher (logit KD, sequence KD, mixed, other tokenizer, other
architecture), label 0 for independent models, models trained on another corpus, and students distilled
from a sibling teacher trained on the same data. Every pair is audited as a user would (``run_audit``,
the world's references, its probes, its teacher logs with fresh answers drawn the same way) with two
reference panels (independent: 6 references on their own samples of the language; data-matched: the
teacher's sibling joins them) and in each access mode:

* white: everything; gray: the teacher gives only top-k log-probs of its own generated tokens;
  black: the teacher gives only text.

Printed per detector and for the verdict: AUROC (score = -log10 p), TPR at FPR <= 1%, empirical FPR and
TPR at alpha = 0.05, over the pairs where the detector ran. The negative controls (each reference in the
student's seat) are extra null cases, reported on their own line. Targets (issue 3): verdict AUROC >= 0.99,
TPR >= 0.9 at FPR <= 1%, FPR at alpha 0.05 <= 0.05, in each mode.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.runner import run_audit  # noqa: E402
from audit.spec import AuditSpec  # noqa: E402
from bench.zoo import build_zoo  # noqa: E402

ALPHA = 0.05


def _score(p: float) -> float:
    return -math.log10(max(p, 1e-300))


def metrics(labels: list[int], p_values: list[float]) -> dict[str, Any]:
    y = np.asarray(labels)
    p = np.asarray(p_values, dtype=float)
    s = np.array([_score(x) for x in p])
    out: dict[str, Any] = {"n_pos": int(y.sum()), "n_neg": int((1 - y).sum())}
    if out["n_pos"] and out["n_neg"]:
        out["auroc"] = float(roc_auc_score(y, s))
        fpr, tpr, _ = roc_curve(y, s)
        out["tpr_at_fpr_1pct"] = float(tpr[fpr <= 0.01].max()) if np.any(fpr <= 0.01) else 0.0
    else:
        out["auroc"] = out["tpr_at_fpr_1pct"] = math.nan
    out["fpr_at_alpha"] = float(np.mean(p[y == 0] < ALPHA)) if out["n_neg"] else math.nan
    out["tpr_at_alpha"] = float(np.mean(p[y == 1] < ALPHA)) if out["n_pos"] else math.nan
    return out


def panel(world: Any, kind: str) -> tuple[str, ...]:
    """independent: references trained on their own samples of the language. data-matched: the teacher's
    sibling (the teacher's exact training text, another init) joins them, so that sharing the teacher's
    data is part of the null and only the teacher's own quirks count as evidence."""
    refs = tuple(str(r) for r in world.references)
    return refs if kind == "independent" else (str(world.sibling), *refs)


def audit_pair(world: Any, student: Path, probes: Path, mode: str, panel_kind: str, cache: Path,
               controls: bool) -> dict[str, Any]:
    spec = AuditSpec(
        teacher=str(world.teacher), student=str(student), references=panel(world, panel_kind),
        probes=str(probes), seed=0, alpha=ALPHA, teacher_logs=world.teacher_logs, teacher_fresh=world.teacher_fresh,
        teacher_access=mode, cache_dir=cache, negative_controls=controls,
    )
    return run_audit(spec, progress=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("bench-out/zoo"), help="where the zoo and the inference cache live")
    ap.add_argument("--modes", default="white,gray,black")
    ap.add_argument("--panels", default="independent,data-matched",
                    help="reference panels: independent (4+ references on other samples of the language), "
                         "data-matched (plus the teacher's sibling, trained on the teacher's exact data)")
    ap.add_argument("--json", type=Path, default=None, help="also write every pair's p-values here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    worlds, pairs = build_zoo(args.root, report=lambda m: print(m, file=sys.stderr))
    by_world = {w.name: w for w in worlds}
    cache = args.root / "cache"
    probe_files = {}
    for w in worlds:
        probe_files[w.name] = args.root / f"probes-{w.name}.txt"
        probe_files[w.name].write_text("\n".join(w.probes) + "\n")
    print(f"zoo: {len(pairs)} pairs ({sum(p.label for p in pairs)} distilled) in {len(worlds)} worlds, "
          f"ready in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    report: dict[str, Any] = {}
    for mode, panel_kind in ((m, k) for k in args.panels.split(",") for m in args.modes.split(",")):
        rows: list[dict[str, Any]] = []
        control_rows: list[dict[str, Any]] = []
        for pair in pairs:
            t1 = time.perf_counter()
            world = by_world[pair.world]
            first_of_world = not any(r["world"] == pair.world for r in rows)
            result = audit_pair(world, pair.student, probe_files[pair.world], mode, panel_kind, cache,
                                controls=first_of_world)
            row = {
                "pair": pair.name, "world": pair.world, "label": pair.label, "kind": pair.kind,
                "verdict_p": result["verdict"]["p_value"], "label_out": result["verdict"]["label"],
                "p": {e["detector"]: e["p_value"] for e in result["evidence"]},
                "effect": {e["detector"]: e["effect_size"] for e in result["evidence"]},
                "skipped": [s["detector"] for s in result["skipped"]],
            }
            rows.append(row)
            for c in result["negative_controls"]:
                control_rows.append({"world": pair.world, "model": c["model"], "verdict_p": c["p_value"], "p": c["p_values"]})
            print(f"[{mode}, {panel_kind}] {pair.name:<34} label {pair.label}  verdict p = {row['verdict_p']:.3g} "
                  f"({row['label_out']}, {time.perf_counter() - t1:.0f}s)", file=sys.stderr)
        detectors = sorted({d for r in rows for d in r["p"]})
        table = {"verdict": metrics([r["label"] for r in rows], [r["verdict_p"] for r in rows])}
        for d in detectors:
            ran = [r for r in rows if d in r["p"]]
            table[d] = metrics([r["label"] for r in ran], [r["p"][d] for r in ran])
        controls_fpr = float(np.mean([c["verdict_p"] < ALPHA for c in control_rows])) if control_rows else math.nan
        report[f"{mode}/{panel_kind}"] = {"table": table, "pairs": rows, "negative_controls": control_rows,
                        "negative_control_fpr_at_alpha": controls_fpr}
        print(f"\n{mode}-box teacher, {panel_kind} panel ({len(rows)} pairs, {len(panel(world, panel_kind))} references)")
        print(f"{'':<26}{'AUROC':>7}{'TPR@1%FPR':>11}{'FPR@.05':>9}{'TPR@.05':>9}{'pos/neg':>9}")
        for name, m in table.items():
            print(f"{name:<26}{m['auroc']:>7.3f}{m['tpr_at_fpr_1pct']:>11.2f}{m['fpr_at_alpha']:>9.2f}"
                  f"{m['tpr_at_alpha']:>9.2f}{m['n_pos']:>5}/{m['n_neg']:<3}")
        print(f"negative controls (references in the student's seat): {len(control_rows)}, "
              f"verdict FPR at alpha 0.05 = {controls_fpr:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, sort_keys=True))
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
