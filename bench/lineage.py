"""White-box lineage on the zoo: students initialised from the teacher's blocks (positives) against
same-architecture models initialised independently (negatives), for weight-lineage and
representation-similarity.

    python bench/lineage.py [--root DIR] [--json out.json]

Uses the zoo of bench/zoo.py (built once under DIR, reused) and adds per world, under DIR/lineage-v1:
``init-top-ce`` (one block copied from the teacher's block 1 with its embeddings and head, then trained on
corpus text, DistilGPT2 style), ``init-bottom-kd`` (block 0 copied, then logit KD), ``init-both-kd`` (both
blocks copied, then logit KD). Negatives: every same-architecture zoo model neither initialised from nor
distilled from the teacher (the six references, the sibling and its students, independent and
other-corpus models). The students distilled from scratch (distilled, but no inherited weights) are shown
apart. Prints AUROC and false-positive rates at alpha.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.zoo import ZooRecipe, build_zoo  # noqa: E402
from distill_audit import synthetic  # noqa: E402

LINEAGE_VERSION = "1"
INITS = {"init-top-ce": ([1], False), "init-bottom-kd": ([0], True), "init-both-kd": ([0, 1], True)}
NEGATIVES = ("independent", "other-corpus", "sibling-logit-kd", "sibling-seq-kd", "independent-other-tok")
SCRATCH = ("logit-kd", "seq-kd", "seq-kd-mix")  # distilled from the teacher, but initialised independently


def build_students(root: Path, worlds: list[Any], recipe: ZooRecipe = ZooRecipe()) -> dict[str, dict[str, Path]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out: dict[str, dict[str, Path]] = {}
    base = root / f"lineage-v{LINEAGE_VERSION}"
    for wi, world in enumerate(worlds):
        spec = recipe.worlds[wi]
        out[world.name] = {}
        teacher = AutoModelForCausalLM.from_pretrained(world.teacher)
        tok = AutoTokenizer.from_pretrained(world.teacher)
        for k, (name, (blocks, kd)) in enumerate(INITS.items()):
            path = base / world.name / name
            out[world.name][name] = path
            if (path / "config.json").exists():
                continue
            t0 = time.perf_counter()
            seed = spec.seed_base + 60 + k
            student = synthetic.layer_initialised(teacher, tok, blocks, seed=seed)
            text = spec.grammar().text(recipe.student_sentences, seed=seed)
            student = synthetic.train(student, synthetic.encode_corpus(tok, text),
                                      synthetic.TrainPlan(steps=recipe.steps, seed=seed), teacher=teacher if kd else None)
            student.save_pretrained(path)
            tok.save_pretrained(path)
            print(f"built {world.name}/{name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    from distill_audit.runner import run_audit
    from distill_audit.spec import AuditSpec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("bench-out/zoo"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    worlds, _ = build_zoo(args.root, report=lambda m: print(m, file=sys.stderr))
    inits = build_students(args.root, worlds)
    detectors = ("weight-lineage", "representation-similarity")
    rows = []
    for world in worlds:
        probes = args.root / f"probes-{world.name}.txt"
        probes.write_text("\n".join(world.probes) + "\n")
        wdir = world.teacher.parent
        candidates = [(name, path, 1) for name, path in inits[world.name].items()]
        candidates += [(name, wdir / name, 0) for name in NEGATIVES]
        candidates += [(name, wdir / name, -1) for name in SCRATCH]
        candidates += [("sibling", world.sibling, 0)] + [(r.name, r, 0) for r in world.references]
        for name, path, label in candidates:
            refs = tuple(str(r) for r in world.references if r != path)
            spec = AuditSpec(teacher=str(world.teacher), student=str(path), references=refs, probes=str(probes),
                             detectors=detectors, negative_controls=False, cache_dir=args.root / "cache")
            result = run_audit(spec, progress=False)
            p = {e["detector"]: e["p_value"] for e in result["evidence"]}
            skipped = [s["detector"] for s in result["skipped"]]
            rows.append({"world": world.name, "model": name, "label": label, "p": p, "skipped": skipped})
            print(f"{world.name}/{name:<22} label {label}  " + "  ".join(
                f"{d} p = {p[d]:.3g}" if d in p else f"{d} skipped" for d in detectors), file=sys.stderr)
    scored = [r for r in rows if r["label"] >= 0]
    print(f"\n{sum(r['label'] == 1 for r in rows)} layer-initialised students (positives), "
          f"{sum(r['label'] == 0 for r in rows)} same-architecture models neither initialised from nor distilled from "
          f"the teacher (negatives), {sum(r['label'] == -1 for r in rows)} distilled from scratch (shown apart)")
    print(f"{'detector':<28} {'AUROC':>6} {'FPR@0.05':>9} {'FPR@0.01':>9} {'TPR@0.01':>9}  runs")
    for d in detectors:
        ran = [r for r in scored if d in r["p"]]
        y = np.array([r["label"] for r in ran])
        p = np.array([r["p"][d] for r in ran])
        auroc = roc_auc_score(y, -np.log(np.maximum(p, 1e-300))) if 0 < y.sum() < len(y) else float("nan")
        neg, pos = p[y == 0], p[y == 1]
        print(f"{d:<28} {auroc:6.3f} {np.mean(neg <= 0.05):9.3f} {np.mean(neg <= 0.01):9.3f} "
              f"{np.mean(pos <= 0.01):9.3f}  {len(ran)}/{len(scored)}")
    for d in detectors:
        print(f"distilled from scratch, {d} p: " + ", ".join(
            f"{r['world']}/{r['model']} {r['p'].get(d, float('nan')):.3g}" for r in rows if r["label"] == -1))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
