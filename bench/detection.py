"""Detection benchmark: every detector and the verdict on a labelled zoo of teacher/student pairs.

    python bench/detection.py [--root DIR] [--modes white,gray,black] [--logs with,without]
                              [--panels independent,data-matched] [--no-alternative] [--pairs NAME,...]
                              [--json out.json]

Builds (or reuses) the zoo of ``bench/zoo.py``: two synthetic corpora, two tokenizers, 38 pairs, each with
a condition. Label 1 (distilled from the world's teacher): direct (logit KD, sequence KD, sequence KD into
another tokenizer, logit KD into another architecture), dose-response (students whose training tokens are
1, 5, 10, 25 or 50% teacher samples, the rest corpus text; with sequence KD they make the dose series),
disguised (sequence KD then further training on corpus text; sequence KD on teacher samples with the
teacher's signature phrases filtered out; sequence KD on greedy teacher text). Label 0: negative
(independent models, another corpus, another tokenizer) and hard-negative (students distilled from a
sibling teacher trained on the teacher's data; a student trained on the teacher's own training text).

Every pair is audited as a user would (``run_audit``, alpha 0.01, the world's probes) in each setting:

* teacher access (--modes): white: everything; gray: the teacher gives only top-k log-probs of its own
  generated tokens; black: the teacher gives only text;
* teacher logs (--logs): with (the teacher's logs, and fresh answers drawn the same way) or without;
* reference panel (--panels): independent (the world's 6 references on their own samples of the language)
  or data-matched (the teacher's sibling, trained on the teacher's exact text, joins them);
* alternative teachers: with the independent panel the sibling is passed as the one alternative teacher
  (``AuditSpec.alternative_teachers``), so the verdict says whether the student leans to the teacher over
  it; --no-alternative leaves it out. Needs the audit code that has that field: without it the bench stops
  and says so (run with --no-alternative). With the data-matched panel the sibling is a reference, not an
  alternative.

Printed per setting: per condition, TPR at alpha 0.01 (positives), FPR at 0.01 and 0.05 (negatives),
AUROC (score = -log10 verdict p; a positive condition against all negatives, a negative condition: all
positives against it) and, where attribution was tested, whom the verdict attributed the students to
(the teacher, an alternative, or None); per world, the verdict p along the
dose series and the smallest teacher share detected at 0.01 (and whether every larger share was too); the
table over all pairs for the verdict and each detector (AUROC, TPR at FPR <= 1%, FPR and TPR at 0.01, FPR
at 0.05); the misses by name (undetected positives, flagged negatives); the negative controls (each
reference in the student's seat, for the first pair of each world only) as extra null cases.
--json writes every pair's p-values, labels and attribution, and every table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.zoo import CONDITIONS, DOSE_KEYS, STUDENTS, Pair, World, ZooRecipe, build_zoo  # noqa: E402
from distill_audit.runner import run_audit  # noqa: E402
from distill_audit.spec import AuditSpec  # noqa: E402

ALPHA = 0.01  # the audits' alpha: TPR and FPR at the verdict's own level
LOOSE_ALPHA = 0.05  # FPR also reported here, for comparison with the older tables
POSITIVE_CONDITIONS = ("direct", "dose-response", "disguised")
NO_ALTERNATIVES_FIELD = (
    "this audit code has no AuditSpec.alternative_teachers field yet (the alternative-teacher attribution of "
    "issue 12); run with --no-alternative, or with the audit code that has it"
)


def _score(p: float) -> float:
    return -math.log10(max(p, 1e-300))


def _auroc(labels: list[int], p_values: list[float]) -> float:
    y = np.asarray(labels)
    if not 0 < y.sum() < len(y):
        return math.nan
    return float(roc_auc_score(y, [_score(x) for x in p_values]))


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
    out["fpr_at_0.05"] = float(np.mean(p[y == 0] < LOOSE_ALPHA)) if out["n_neg"] else math.nan
    return out


def panel(world: World, kind: str) -> tuple[str, ...]:
    """independent: references trained on their own samples of the language. data-matched: the teacher's
    sibling (the teacher's exact training text, another init) joins them, so that sharing the teacher's
    data is part of the null and only the teacher's own quirks count as evidence."""
    refs = tuple(str(r) for r in world.references)
    return refs if kind == "independent" else (str(world.sibling), *refs)


def alternatives(world: World, panel_kind: str, use: bool) -> tuple[str, ...]:
    """The sibling as the one alternative teacher, unless it already sits in the panel (data-matched)."""
    return (str(world.sibling),) if use and panel_kind == "independent" else ()


def _has_alternatives_field() -> bool:
    return any(f.name == "alternative_teachers" for f in dataclasses.fields(AuditSpec))


def audit_pair(world: World, student: Path, probes: Path, mode: str, panel_kind: str, logs: bool,
               alternative: tuple[str, ...], cache: Path, controls: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        teacher=str(world.teacher), student=str(student), references=panel(world, panel_kind),
        probes=str(probes), seed=0, alpha=ALPHA,
        teacher_logs=world.teacher_logs if logs else None, teacher_fresh=world.teacher_fresh if logs else None,
        teacher_access=mode, cache_dir=cache, negative_controls=controls,
    )
    if alternative:  # not passed at all when empty, so --no-alternative runs on audit code without the field
        kwargs["alternative_teachers"] = alternative
    try:
        spec = AuditSpec(**kwargs)
    except TypeError as exc:
        if "alternative_teachers" in str(exc):
            raise SystemExit(f"bench/detection.py: {NO_ALTERNATIVES_FIELD} ({exc})") from exc
        raise
    return run_audit(spec, progress=False)


def _fmt(x: float, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _attribution_tested(row: dict[str, Any]) -> bool:
    return isinstance(row["attribution"], dict) and bool(row["attribution"].get("tested"))


def condition_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    neg_p = [r["verdict_p"] for r in rows if r["label"] == 0]
    pos_p = [r["verdict_p"] for r in rows if r["label"] == 1]
    out: dict[str, dict[str, Any]] = {}
    for c in CONDITIONS:
        mine = [r for r in rows if r["condition"] == c]
        if not mine:
            continue
        p = np.array([r["verdict_p"] for r in mine])
        positive = c in POSITIVE_CONDITIONS
        if positive:
            auroc = _auroc([1] * len(mine) + [0] * len(neg_p), list(p) + neg_p)
        else:
            auroc = _auroc([1] * len(pos_p) + [0] * len(mine), pos_p + list(p))
        attributed = Counter(str(r["attributed_to"]) for r in mine if _attribution_tested(r))
        out[c] = {
            "n": len(mine), "positive": positive, "auroc": auroc,
            "tpr_at_alpha": float(np.mean(p < ALPHA)) if positive else math.nan,
            "fpr_at_alpha": math.nan if positive else float(np.mean(p < ALPHA)),
            "fpr_at_0.05": math.nan if positive else float(np.mean(p < LOOSE_ALPHA)),
            "attributed_to": dict(sorted(attributed.items())),
        }
    return out


def dose_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per world: the verdict p at each share of the dose series, the smallest share detected at alpha and
    whether every larger share in the series was detected too."""
    out: dict[str, dict[str, Any]] = {}
    for world in sorted({r["world"] for r in rows}):
        series = {r["pair"].split("/", 1)[1]: r for r in rows if r["world"] == world}
        points = [(series[k]["share"], series[k]["verdict_p"]) for k in DOSE_KEYS if k in series]
        if not points:
            continue
        detected = [share for share, p in points if p < ALPHA]
        smallest = min(detected) if detected else None
        out[world] = {
            "points": [{"share": share, "verdict_p": p} for share, p in points],
            "smallest_detected_share": smallest,
            "every_larger_detected": smallest is not None and all(p < ALPHA for share, p in points if share >= smallest),
            "complete": len(points) == len(DOSE_KEYS),
        }
    return out


def misses(rows: list[dict[str, Any]], controls: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {
        "undetected_positives": [f"{r['pair']} (p = {r['verdict_p']:.3g})" for r in rows
                                 if r["label"] == 1 and r["verdict_p"] >= ALPHA],
        "flagged_negatives": [f"{r['pair']} (p = {r['verdict_p']:.3g})" for r in rows
                              if r["label"] == 0 and r["verdict_p"] < ALPHA],
        "flagged_negative_controls": [f"{c['world']}/{Path(c['model']).name} (p = {c['verdict_p']:.3g})"
                                      for c in controls if c["verdict_p"] < ALPHA],
    }


def print_setting(title: str, rows: list[dict[str, Any]], table: dict[str, dict[str, Any]],
                  conditions: dict[str, dict[str, Any]], dose: dict[str, dict[str, Any]],
                  missed: dict[str, list[str]], controls: list[dict[str, Any]]) -> None:
    print(f"\n=== {title} ({len(rows)} pairs) ===")
    print(f"{'condition':<16}{'n':>4}{'TPR@.01':>9}{'FPR@.01':>9}{'FPR@.05':>9}{'AUROC':>7}  attributed to")
    for c, m in conditions.items():
        attributed = ", ".join(f"{k} {v}" for k, v in m["attributed_to"].items()) or "-"
        print(f"{c:<16}{m['n']:>4}{_fmt(m['tpr_at_alpha']):>9}{_fmt(m['fpr_at_alpha']):>9}{_fmt(m['fpr_at_0.05']):>9}"
              f"{_fmt(m['auroc'], '.3f'):>7}  {attributed}")
    for world, d in dose.items():
        points = "  ".join(f"{pt['share']:.0%}: {pt['verdict_p']:.2g}" for pt in d["points"])
        smallest = "none" if d["smallest_detected_share"] is None else f"{d['smallest_detected_share']:.0%}"
        print(f"dose, {world}: {points}")
        print(f"  smallest share detected at {ALPHA:g}: {smallest}; every larger share detected: "
              f"{'yes' if d['every_larger_detected'] else 'no'}{'' if d['complete'] else ' (partial series)'}")
    print(f"{'all pairs':<26}{'AUROC':>7}{'TPR@1%FPR':>11}{'FPR@.01':>9}{'TPR@.01':>9}{'FPR@.05':>9}{'pos/neg':>9}")
    for name, m in table.items():
        print(f"{name:<26}{_fmt(m['auroc'], '.3f'):>7}{_fmt(m['tpr_at_fpr_1pct']):>11}{_fmt(m['fpr_at_alpha']):>9}"
              f"{_fmt(m['tpr_at_alpha']):>9}{_fmt(m['fpr_at_0.05']):>9}{m['n_pos']:>5}/{m['n_neg']:<3}")
    control_fpr = [np.mean([c["verdict_p"] < a for c in controls]) if controls else math.nan for a in (ALPHA, LOOSE_ALPHA)]
    print(f"negative controls (references in the student's seat): {len(controls)}, verdict FPR at 0.01 = "
          f"{_fmt(control_fpr[0])}, at 0.05 = {_fmt(control_fpr[1])}")
    for what, names in missed.items():
        print(f"{what.replace('_', ' ')}: {', '.join(names) if names else 'none'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("bench-out/zoo"), help="where the zoo and the inference cache live")
    ap.add_argument("--modes", default="white,gray,black", help="teacher access modes: white, gray, black")
    ap.add_argument("--logs", default="with,without", help="with and/or without the teacher's logs (and fresh answers)")
    ap.add_argument("--panels", default="independent,data-matched",
                    help="reference panels: independent (the 6 references, on other samples of the language), "
                         "data-matched (plus the teacher's sibling, trained on the teacher's exact data)")
    ap.add_argument("--no-alternative", action="store_true",
                    help="do not pass the sibling as an alternative teacher with the independent panel")
    ap.add_argument("--pairs", default=None,
                    help="only these pairs (comma-separated): a full pair name (alpha/seq-kd) selects that pair, "
                         "anything else every pair whose name holds it (dose-, beta/)")
    ap.add_argument("--json", type=Path, default=None, help="also write every pair's p-values, labels and attribution here")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    logs_options = [x for x in args.logs.split(",") if x]
    panels = [k for k in args.panels.split(",") if k]
    for name, values, known in (("--modes", modes, ("white", "gray", "black")), ("--logs", logs_options, ("with", "without")),
                                ("--panels", panels, ("independent", "data-matched"))):
        unknown = [v for v in values if v not in known]
        if unknown or not values:
            ap.error(f"{name}: expected some of {', '.join(known)}, got {','.join(values) or 'nothing'}")
    use_alternative = not args.no_alternative
    if use_alternative and "independent" in panels and not _has_alternatives_field():
        ap.exit(2, f"bench/detection.py: {NO_ALTERNATIVES_FIELD}\n")  # fail before the zoo build, not after

    names = [f"{w.name}/{s.key}" for w in ZooRecipe().worlds for s in STUDENTS]  # known before the zoo is built
    wanted = [w for w in (args.pairs or "").split(",") if w]

    def selected(name: str) -> bool:
        return not wanted or any(w == name if w in names else w in name for w in wanted)

    if not any(selected(n) for n in names):
        ap.error(f"--pairs {args.pairs}: no pair's name holds any of these (pairs: {', '.join(names)})")

    t0 = time.perf_counter()
    worlds, pairs = build_zoo(args.root, report=lambda m: print(m, file=sys.stderr))
    pairs = [p for p in pairs if selected(p.name)]
    by_world = {w.name: w for w in worlds}
    cache = args.root / "cache"
    probe_files = {}
    for w in worlds:
        probe_files[w.name] = args.root / f"probes-{w.name}.txt"
        probe_files[w.name].write_text("\n".join(w.probes) + "\n")
    print(f"zoo: {len(pairs)} pairs ({sum(p.label for p in pairs)} distilled) in {len(worlds)} worlds, "
          f"ready in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    report: dict[str, Any] = {"alpha": ALPHA, "settings": {}}
    for panel_kind in panels:
        for mode in modes:
            for logs in logs_options:
                key = f"{mode}/{logs}-logs/{panel_kind}"
                alt = use_alternative and panel_kind == "independent"
                title = (f"{mode}-box teacher, {logs} teacher logs, {panel_kind} panel, "
                         f"{'sibling as alternative teacher' if alt else 'no alternative teacher'}")
                report["settings"][key] = run_setting(pairs, by_world, probe_files, cache, mode, panel_kind,
                                                      logs == "with", use_alternative, title)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, sort_keys=True))
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    return 0


def run_setting(pairs: list[Pair], by_world: dict[str, World], probe_files: dict[str, Path], cache: Path, mode: str,
                panel_kind: str, logs: bool, use_alternative: bool, title: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    control_rows: list[dict[str, Any]] = []
    for pair in pairs:
        t1 = time.perf_counter()
        world = by_world[pair.world]
        first_of_world = not any(r["world"] == pair.world for r in rows)
        alternative = alternatives(world, panel_kind, use_alternative)
        result = audit_pair(world, pair.student, probe_files[pair.world], mode, panel_kind, logs, alternative,
                            cache, controls=first_of_world)
        verdict = result["verdict"]
        row = {
            "pair": pair.name, "world": pair.world, "label": pair.label, "kind": pair.kind,
            "condition": pair.condition, "share": pair.share,
            "verdict_p": verdict["p_value"], "label_out": verdict["label"],
            "attributed_to": verdict.get("attributed_to"), "attribution": result.get("attribution"),
            "alternative_teachers": list(alternative),
            "p": {e["detector"]: e["p_value"] for e in result["evidence"]},
            "effect": {e["detector"]: e["effect_size"] for e in result["evidence"]},
            "skipped": [s["detector"] for s in result["skipped"]],
            "seconds": round(time.perf_counter() - t1, 1),
        }
        rows.append(row)
        for c in result["negative_controls"]:
            control_rows.append({"world": pair.world, "model": c["model"], "verdict_p": c["p_value"], "p": c["p_values"]})
        attributed = f", attributed to {row['attributed_to']}" if _attribution_tested(row) else ""
        print(f"[{mode}, {'with' if logs else 'without'} logs, {panel_kind}] {pair.name:<28} label {pair.label}  "
              f"verdict p = {row['verdict_p']:.3g} ({row['label_out']}{attributed}, {row['seconds']:.0f}s)",
              file=sys.stderr)
    detectors = sorted({d for r in rows for d in r["p"]})
    table = {"verdict": metrics([r["label"] for r in rows], [r["verdict_p"] for r in rows])}
    for d in detectors:
        ran = [r for r in rows if d in r["p"]]
        table[d] = metrics([r["label"] for r in ran], [r["p"][d] for r in ran])
    conditions = condition_table(rows)
    dose = dose_table(rows)
    missed = misses(rows, control_rows)
    print_setting(title, rows, table, conditions, dose, missed, control_rows)
    return {
        "title": title, "table": table, "conditions": conditions, "dose": dose, "misses": missed,
        "pairs": rows, "negative_controls": control_rows,
        "negative_control_fpr_at_alpha": float(np.mean([c["verdict_p"] < ALPHA for c in control_rows]))
        if control_rows else math.nan,
    }


if __name__ == "__main__":
    raise SystemExit(main())
