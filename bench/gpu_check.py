"""The prepared GPU check: batched = one-at-a-time in bf16, throughput, fraction of the card's peak, budget sweep.

    python bench/gpu_check.py                        # on a CUDA machine; writes bench/results/gpu_check-<date>-<card>.json
    python bench/gpu_check.py --quick                # the same stages, smaller (about a minute on an H100)
    python bench/gpu_check.py --device cpu --quick   # CPU dry run of the same code path on a tiny model (CI)

Builds a randomly initialised (seeded) Llama-class model of about 0.5B parameters from a config, saves it with
a tokenizer built offline (no hub access), loads it through ``HFAdapter.load(dir, LoadOptions(device,
dtype="bfloat16"))`` and runs it through ``Engine`` with an in-memory cache. Stages:

1. equality: batched scoring (the engine at its default GPU token budget, and all texts in one padded batch)
   against one text at a time (``adapter.score([text])``), on texts of 50-600 tokens; then greedy generation,
   engine-batched against one prompt at a time. bf16 itself against fp32 (same weights, one text at a time)
   is reported beside it as the noise floor. These checks decide the exit code.
2. throughput: engine scoring and generation tokens/s, the same batches as a bare forward (base model + output
   head as one matmul, no statistics), and model FLOP/s (2 x matmul parameters x tokens, forward) as a
   fraction of a bf16 matmul measured in the same run (8192^3, CUDA events) and of the datasheet peak where
   the card is recognised.
3. token-budget sweep: engine scoring throughput at budgets 4096 ... 65536, stopping at the first
   out-of-memory (which the engine survives by halving the batch; that is recorded too).

A time guard (``--time-budget``, default 270 s) skips what would not fit. Prints a summary and writes a JSON
(and the summary as a .txt beside it). Exit code: 0 all equality checks passed, 1 one failed, 2 the script
itself failed (the JSON is still written, with the error).

Tolerances (bf16 keeps 8 significant bits: a logit near 8 is rounded to 1/32, so two correct computations
that sum in another order, as another batch shape's kernels do, differ by a few hundredths of a nat per
position, and rarely by more; a masking or position bug moves whole rows, or the positions next to padding,
by about the logits' spread, over 1 nat on this model):
  scoring: mean |delta target log-prob| <= 0.05 nats, max <= 0.25 nats, top-1 agreement >= 99% of positions;
  greedy generation (16 new tokens): every divergence at a near-tie (the two picks within 0.25 nats under the
  run that recorded that step), log-probs on the shared prefix within 0.25 nats, and identical token ids in
  >= 25% of rows. The last is loose on purpose: one near-tie flipped by rounding changes the rest of a row,
  and a random model has many near-ties (their share of steps is reported); the first two are what a bug
  in left padding, position ids or the KV cache fails.
The model's output head is scaled so its logits spread by 1.5 (a random init gives ~0.7 and next-token
distributions nearly flat over 32k tokens, where every position is a near-tie).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import platform
import re
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_audit import synthetic  # noqa: E402
from distill_audit.backends.base import GenerateParams, Generation, ScoredText  # noqa: E402
from distill_audit.backends.hf import HFAdapter, LoadOptions  # noqa: E402
from distill_audit.cache import InferenceCache  # noqa: E402
from distill_audit.engine import Engine, default_token_budget, is_out_of_memory, pack_batches  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SCORE_MEAN_TOL = 0.05  # nats, mean over every scored position
SCORE_MAX_TOL = 0.25  # nats, worst position
TOP1_MIN = 0.99  # fraction of positions whose top-1 token agrees
GEN_IDENTICAL_MIN = 0.25  # fraction of greedy rows with identical token ids
TIE_TOL = 0.25  # nats: two candidates this close are a near-tie that bf16 rounding may flip
TOP_K = 10
GEN_TOP_K = 5
TOKENS_PER_SENTENCE = 11.8  # of the synthetic language under its byte-level BPE (measured)
DRY_RUN_LABEL = "CPU dry run: no GPU figures"

# Datasheet bf16 dense (no sparsity) tensor-core peaks, TFLOP/s; first match on the device name wins.
NOMINAL_BF16_TFLOPS: list[tuple[str, float, str]] = [
    ("H100 NVL", 835.0, "H100 NVL"),
    ("H100 PCIe", 756.0, "H100 PCIe"),
    ("GH200", 989.0, "GH200 (H100 SXM class)"),
    ("H200", 989.0, "H200 (same tensor cores as H100 SXM)"),
    ("H100", 989.0, "H100 SXM"),
    ("A100", 312.0, "A100"),
]


# -- configuration ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    context: int
    logit_std: float = 1.5  # the output head is scaled to this spread of logits (a random init gives ~0.7)


MODELS = {
    # about 0.5B parameters: Llama block (RoPE, RMSNorm, SwiGLU, grouped-query attention), untied head
    "0.5b": ModelSpec("llama-0.5b", vocab=32000, hidden=1280, intermediate=3456, layers=24, heads=20, kv_heads=4,
                      context=2048),
    "tiny": ModelSpec("llama-tiny", vocab=1024, hidden=64, intermediate=176, layers=2, heads=4, kv_heads=2,
                      context=1024),
}


@dataclass(frozen=True)
class Plan:
    model: str
    equal_texts: int = 64
    text_tokens: tuple[int, int] = (50, 600)
    gen_prompts: int = 48
    prompt_tokens: tuple[int, int] = (20, 300)
    gen_new_tokens: int = 16
    throughput_texts: int = 1024
    throughput_prompts: int = 128
    throughput_new_tokens: int = 64
    budgets: tuple[int, ...] = (4096, 8192, 16384, 32768, 65536)
    matmul_size: int = 8192
    matmul_reps: int = 50
    fp32_floor: bool = True


def make_plan(device: str, quick: bool, model: str) -> Plan:
    if model == "auto":
        model = "tiny" if device == "cpu" else "0.5b"
    plan = Plan(model=model)
    if device == "cpu":
        plan = replace(plan, equal_texts=24, text_tokens=(20, 200), gen_prompts=8, prompt_tokens=(10, 80),
                       gen_new_tokens=10, throughput_texts=64, throughput_prompts=16, throughput_new_tokens=12,
                       budgets=(1024, 2048, 4096), matmul_size=512, matmul_reps=3)
    if quick:
        plan = replace(plan, equal_texts=max(8, plan.equal_texts // 2), gen_prompts=max(4, plan.gen_prompts // 2),
                       gen_new_tokens=max(8, plan.gen_new_tokens // 2), throughput_texts=plan.throughput_texts // 4,
                       throughput_prompts=plan.throughput_prompts // 2,
                       throughput_new_tokens=max(8, plan.throughput_new_tokens // 2),
                       budgets=plan.budgets[:3], matmul_reps=max(3, plan.matmul_reps // 2))
    return plan


# -- time, device, output --------------------------------------------------------------------------------
@dataclass
class Guard:
    """Wall-clock guard for the whole script."""

    budget_s: float
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


class Report:
    """Printed summary lines, kept for the .txt beside the JSON."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return value, time.perf_counter() - start


def environment(device: str) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=torch.cuda.get_device_name(device),
            compute_capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def nominal_peak(device_name: str) -> tuple[float | None, str | None]:
    for needle, tflops, label in NOMINAL_BF16_TFLOPS:
        if needle.lower() in device_name.lower():
            return tflops, label
    return None, None


def peak_memory_gib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# -- model and texts -------------------------------------------------------------------------------------
def build_model(spec: ModelSpec, directory: Path, seed: int) -> dict[str, Any]:
    """Random (seeded) Llama-class model saved in bf16 with a byte-level BPE tokenizer; returns its config."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    synthetic.build_tokenizer(synthetic.Grammar(), directory)
    tok = AutoTokenizer.from_pretrained(directory)
    config = LlamaConfig(
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.context, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    head = model.get_output_embeddings()
    with torch.no_grad():
        # a random head over unit-RMS hidden states gives logits of spread init_range * sqrt(hidden); scaling it to
        # spec.logit_std makes next-token distributions less flat, so top-1 and greedy comparisons mean something
        head.weight.mul_(spec.logit_std / (config.initializer_range * math.sqrt(spec.hidden)))
    model.to(torch.bfloat16).save_pretrained(directory)
    return {k: v for k, v in config.to_dict().items()
            if k in ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings",
                     "initializer_range", "rms_norm_eps", "rope_theta")}


def matmul_params(model: Any) -> int:
    """Parameters that take part in a matmul per token: every Linear (blocks and output head), not embeddings."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def texts_of_lengths(n: int, lo: int, hi: int, seed: int) -> list[str]:
    """Synthetic-language texts whose token counts spread log-uniformly over about [lo, hi]."""
    grammar = synthetic.Grammar()
    rng = np.random.default_rng(seed)
    targets = np.exp(rng.uniform(math.log(lo), math.log(hi), size=n))
    return [grammar.text(max(1, round(t / TOKENS_PER_SENTENCE)), seed=seed * 100_000 + i) for i, t in enumerate(targets)]


def new_engine(budget: int) -> Engine:
    return Engine(InferenceCache(None), token_budget=budget, score_top_k=TOP_K, progress=False)


# -- comparisons -----------------------------------------------------------------------------------------
def compare_scores(ref: Sequence[ScoredText], other: Sequence[ScoredText]) -> dict[str, Any]:
    """How far ``other`` is from ``ref`` (the one-at-a-time run), over every position with a prediction."""
    diffs, top1, top1_clear, clear, overlap, ent = [], [], [], [], [], []
    id_mismatch = 0
    for a, b in zip(ref, other):
        if not np.array_equal(a.token_ids, b.token_ids):
            id_mismatch += 1
            continue
        diffs.append(np.abs(a.target_logprob[1:].astype(np.float64) - b.target_logprob[1:]))
        same = a.topk_ids[1:, 0] == b.topk_ids[1:, 0]
        gap = a.topk_logprobs[1:, 0] - a.topk_logprobs[1:, 1]
        top1.append(same)
        clear.append(gap > TIE_TOL)
        top1_clear.append(same[gap > TIE_TOL])
        overlap.append((a.topk_ids[1:, :, None] == b.topk_ids[1:, None, :]).any(-1).mean(-1))
        ent.append(np.abs(a.entropy[1:].astype(np.float64) - b.entropy[1:]))
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    per_text = [float(x.max()) if len(x) else 0.0 for x in diffs]

    def cat(xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs) if xs else np.zeros(0)

    return {
        "texts": len(ref),
        "token_id_mismatches": id_mismatch,
        "positions": int(d.size),
        "mean_abs_logprob_diff": float(d.mean()) if d.size else 0.0,
        "p99_abs_logprob_diff": float(np.quantile(d, 0.99)) if d.size else 0.0,
        "max_abs_logprob_diff": float(d.max()) if d.size else 0.0,
        "worst_text": int(np.argmax(per_text)) if per_text else None,
        "top1_agreement": float(cat(top1).mean()) if d.size else 1.0,
        "top1_agreement_clear": float(cat(top1_clear).mean()) if cat(top1_clear).size else 1.0,
        "clear_positions": float(cat(clear).mean()) if d.size else 0.0,
        f"top{TOP_K}_overlap": float(cat(overlap).mean()) if d.size else 1.0,
        "max_abs_entropy_diff": float(cat(ent).max()) if d.size else 0.0,
    }


def score_checks(stats: dict[str, Any]) -> dict[str, bool]:
    return {
        "token_ids_equal": stats["token_id_mismatches"] == 0,
        f"mean_abs_logprob_diff<={SCORE_MEAN_TOL}": stats["mean_abs_logprob_diff"] <= SCORE_MEAN_TOL,
        f"max_abs_logprob_diff<={SCORE_MAX_TOL}": stats["max_abs_logprob_diff"] <= SCORE_MAX_TOL,
        f"top1_agreement>={TOP1_MIN}": stats["top1_agreement"] >= TOP1_MIN,
    }


def _step_logprob(g: Generation, step: int, token: int) -> float | None:
    """Log-prob of ``token`` at ``step`` of ``g`` from its kept top-k (None if not among them)."""
    if step >= len(g.topk_ids):
        return None
    hit = np.nonzero(g.topk_ids[step] == token)[0]
    return float(g.topk_logprobs[step, hit[0]]) if hit.size else None


def divergence_gap(single: Generation, batched: Generation, step: int, eos: int | None) -> float:
    """How far apart the two runs' picks at ``step`` are, in nats, under the run that recorded that step
    (the one-at-a-time run where it did; a run that stopped there picked eos, recorded nowhere): inf when the
    other pick is not among the kept top-k."""
    a = int(single.token_ids[step]) if step < len(single.token_ids) else eos
    b = int(batched.token_ids[step]) if step < len(batched.token_ids) else eos
    for run in (single, batched):
        if step < len(run.token_ids) and a is not None and b is not None:
            la, lb = _step_logprob(run, step, a), _step_logprob(run, step, b)
            return abs(la - lb) if la is not None and lb is not None else math.inf
    return math.inf


def compare_generations(single: Sequence[Generation], batched: Sequence[Generation], eos: int | None) -> dict[str, Any]:
    identical, first_div, gaps, prefix = 0, [], [], []
    near_ties = []
    for a, b in zip(single, batched):
        ta, tb = a.token_ids, b.token_ids
        n = min(len(ta), len(tb))
        unequal = np.nonzero(ta[:n] != tb[:n])[0]
        step = int(unequal[0]) if unequal.size else (n if len(ta) != len(tb) else None)
        shared = n if step is None else step
        if shared:
            prefix.append(float(np.abs(a.token_logprobs[:shared].astype(np.float64) - b.token_logprobs[:shared]).max()))
        if len(a.topk_logprobs) and a.topk_logprobs.shape[1] > 1:
            near_ties.append(a.topk_logprobs[:, 0] - a.topk_logprobs[:, 1] <= TIE_TOL)
        if step is None:
            identical += 1
            continue
        first_div.append(step)
        gaps.append(divergence_gap(a, b, step, eos))
    steps = np.concatenate(near_ties) if near_ties else np.zeros(0, bool)
    return {
        "rows": len(single),
        "identical_rows": identical,
        "identical_fraction": identical / max(1, len(single)),
        "first_divergence_steps": first_div,
        "earliest_divergence": min(first_div) if first_div else None,
        "divergence_gaps_nats": [round(g, 4) if math.isfinite(g) else "not in top-k" for g in gaps],
        # inf (a pick outside the other run's kept top-k) is written as a string: JSON has no infinity
        "max_divergence_gap": (max(gaps) if math.isfinite(max(gaps)) else "not in top-k") if gaps else 0.0,
        "all_divergences_at_near_ties": all(g <= TIE_TOL for g in gaps),
        "max_abs_prefix_logprob_diff": max(prefix) if prefix else 0.0,
        "near_tie_step_fraction_single": float(steps.mean()) if steps.size else 0.0,
        "generated_tokens_single": int(sum(len(g.token_ids) for g in single)),
    }


def fmt_gap(gap: float | str) -> str:
    return f"{gap:.3f} nats" if isinstance(gap, float) else str(gap)


def fmt_gib(value: float | None) -> str:
    return f"{value} GiB" if value is not None else "n/a"


def generation_checks(stats: dict[str, Any]) -> dict[str, bool]:
    return {
        f"identical_fraction>={GEN_IDENTICAL_MIN}": stats["identical_fraction"] >= GEN_IDENTICAL_MIN,
        f"every_divergence_at_near_tie(<={TIE_TOL})": stats["all_divergences_at_near_ties"],
        f"prefix_logprob_diff<={SCORE_MAX_TOL}": stats["max_abs_prefix_logprob_diff"] <= SCORE_MAX_TOL,
    }


# -- stages ----------------------------------------------------------------------------------------------
def matmul_tflops(device: str, size: int, reps: int) -> float:
    """Achieved bf16 dense matmul TFLOP/s: size^3 product, timed with CUDA events after a warm-up."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    c = torch.empty(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        torch.matmul(a, b, out=c)
    sync(device)
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1000
    else:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        seconds = time.perf_counter() - t0
    del a, b, c
    return 2 * size**3 * reps / seconds / 1e12


def padded_tokens(lengths: Sequence[int], budget: int) -> int:
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in pack_batches(lengths, budget))


def bare_forward(adapter: HFAdapter, texts: Sequence[str], budget: int) -> float:
    """Seconds for the same batches as the engine, model only: base model, then the output head on every real
    position as one matmul; no statistics, no copies to the host."""
    model, tok = adapter.model, adapter.tokenizer
    encoded = tok(list(texts), add_special_tokens=True)["input_ids"]
    head = model.get_output_embeddings()
    dev = adapter.input_device
    batches = []
    for batch in pack_batches([len(e) for e in encoded], budget):
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        batches.append((ids.to(dev), mask.to(dev)))

    def run() -> None:
        with torch.inference_mode():
            for ids, mask in batches:
                hidden = model.base_model(input_ids=ids, attention_mask=mask)[0]
                head(hidden[mask.bool()]).amax()

    return timed(adapter.device, run)[1]


def flops_figures(flops: float, seconds: float, measured_tflops: float, nominal: float | None) -> dict[str, Any]:
    achieved = flops / seconds / 1e12

    def sig(x: float) -> float:
        return float(f"{x:.4g}")

    return {
        "model_tflops": sig(achieved),
        "fraction_of_measured_matmul": sig(achieved / measured_tflops),
        "fraction_of_nominal_peak": sig(achieved / nominal) if nominal else None,
    }


def stage_equality(adapter: HFAdapter, plan: Plan, out: dict[str, Any], say: Report, guard: Guard) -> None:
    device = adapter.device
    texts = texts_of_lengths(plan.equal_texts, *plan.text_tokens, seed=1)
    lengths = adapter.count_tokens(texts)
    budget = default_token_budget(["cuda"])  # the engine's default on a GPU, on every device
    say(f"  {len(texts)} texts, {sum(lengths)} tokens ({min(lengths)}-{max(lengths)} each); engine budget {budget}")
    single = [adapter.score([t], TOP_K)[0] for t in texts]
    engine = new_engine(budget)
    packed = engine.score(adapter, texts)
    one_batch = adapter.score(texts, TOP_K)
    result: dict[str, Any] = {"texts": len(texts), "tokens": sum(lengths), "engine_budget": budget,
                              "engine_batches": engine.stats.batches}
    for name, got in (("engine_packed", packed), ("one_padded_batch", one_batch)):
        stats = compare_scores(single, got)
        checks = score_checks(stats)
        result[f"score_{name}"] = {"stats": stats, "checks": checks, "passed": all(checks.values())}
        say(f"  score, {name:16s}: mean |d| {stats['mean_abs_logprob_diff']:.4f}  p99 {stats['p99_abs_logprob_diff']:.4f}"
            f"  max {stats['max_abs_logprob_diff']:.4f} nats; top-1 {stats['top1_agreement']:.2%}"
            f" (clear positions {stats['top1_agreement_clear']:.2%}); top-{TOP_K} overlap {stats[f'top{TOP_K}_overlap']:.2%}"
            f"  -> {'PASS' if all(checks.values()) else 'FAIL ' + ', '.join(k for k, v in checks.items() if not v)}")
    lp = np.concatenate([s.target_logprob[1:] for s in single])
    ent = np.concatenate([s.entropy[1:] for s in single])
    result["signal"] = {"target_logprob_mean": float(lp.mean()), "target_logprob_std": float(lp.std()),
                        "entropy_mean": float(ent.mean()), "log_vocab": math.log(adapter.model.config.vocab_size)}
    say(f"  (signal: target log-probs {lp.mean():.2f} +- {lp.std():.2f} nats, entropy {ent.mean():.2f} of"
        f" log V = {math.log(adapter.model.config.vocab_size):.2f})")
    if plan.fp32_floor and guard.left() > 60:
        fp32 = HFAdapter(copy.deepcopy(adapter.model).float(), adapter.tokenizer, "fp32", adapter.fingerprint, device)
        floor = compare_scores(single, [fp32.score([t], TOP_K)[0] for t in texts])
        del fp32
        reset_peak_memory(device)
        result["noise_floor_bf16_vs_fp32_single"] = floor
        say(f"  noise floor, bf16 vs fp32 one at a time: mean |d| {floor['mean_abs_logprob_diff']:.4f}"
            f"  max {floor['max_abs_logprob_diff']:.4f} nats; top-1 {floor['top1_agreement']:.2%} (information only)")

    prompts = texts_of_lengths(plan.gen_prompts, *plan.prompt_tokens, seed=2)
    params = GenerateParams(max_new_tokens=plan.gen_new_tokens, do_sample=False, top_k=GEN_TOP_K)
    single_gen = [adapter.generate([p], params)[0] for p in prompts]
    batched_gen = new_engine(budget).generate(adapter, prompts, params)
    gstats = compare_generations(single_gen, batched_gen, adapter.tokenizer.eos_token_id)
    gchecks = generation_checks(gstats)
    result["greedy_generation"] = {"prompts": len(prompts), "max_new_tokens": plan.gen_new_tokens, "stats": gstats,
                                   "checks": gchecks, "passed": all(gchecks.values())}
    say(f"  greedy generation, {len(prompts)} prompts x {plan.gen_new_tokens} tokens: identical rows"
        f" {gstats['identical_rows']}/{gstats['rows']}; earliest divergence at step {gstats['earliest_divergence']};"
        f" largest gap at a divergence {fmt_gap(gstats['max_divergence_gap'])}; shared-prefix log-probs within"
        f" {gstats['max_abs_prefix_logprob_diff']:.4f}; near-tie steps {gstats['near_tie_step_fraction_single']:.1%}"
        f"  -> {'PASS' if all(gchecks.values()) else 'FAIL ' + ', '.join(k for k, v in gchecks.items() if not v)}")
    out["equality"] = result


def stage_throughput(adapter: HFAdapter, plan: Plan, out: dict[str, Any], say: Report, guard: Guard) -> None:
    device = adapter.device
    peak = out["peak"]
    nominal = peak.get("nominal_tflops")
    params = out["model"]["matmul_parameters"]
    budget = default_token_budget(["cuda"])
    texts = texts_of_lengths(plan.throughput_texts, *plan.text_tokens, seed=3)
    lengths = adapter.count_tokens(texts)
    tokens = sum(lengths)
    new_engine(budget).score(adapter, texts[:8])  # warm-up of every kernel the timed run uses
    engine = new_engine(budget)
    reset_peak_memory(device)
    _, seconds = timed(device, lambda: engine.score(adapter, texts))
    flops = 2.0 * params * tokens
    score = {"texts": len(texts), "tokens": tokens, "padded_tokens": padded_tokens(lengths, budget), "budget": budget,
             "batches": engine.stats.batches, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
             **flops_figures(flops, seconds, peak["measured_tflops"], nominal), "peak_memory_gib": peak_memory_gib(device)}
    say(f"  scoring (engine): {tokens} tokens in {seconds:.2f}s = {tokens / seconds:,.0f} tokens/s;"
        f" {score['model_tflops']:.3g} TFLOP/s = {score['fraction_of_measured_matmul']:.1%} of measured matmul"
        + (f", {score['fraction_of_nominal_peak']:.1%} of nominal" if nominal else ""))
    bare = bare_forward(adapter, texts, budget)
    score["bare_forward"] = {"seconds": round(bare, 3), "tokens_per_s": round(tokens / bare, 1),
                             **flops_figures(flops, bare, peak["measured_tflops"], nominal),
                             "engine_over_bare_time": round(seconds / bare, 2)}
    say(f"  scoring (bare forward, same batches): {tokens / bare:,.0f} tokens/s,"
        f" {score['bare_forward']['fraction_of_measured_matmul']:.1%} of measured matmul;"
        f" the engine takes {seconds / bare:.2f}x its time")
    out["throughput"] = {"score": score}

    prompts = texts_of_lengths(plan.throughput_prompts, *plan.prompt_tokens, seed=4)
    prompt_tokens = sum(adapter.count_tokens(prompts))
    gparams = GenerateParams(max_new_tokens=plan.throughput_new_tokens, do_sample=False, top_k=GEN_TOP_K)
    gen_engine = new_engine(budget)
    reset_peak_memory(device)
    gens, gseconds = timed(device, lambda: gen_engine.generate(adapter, prompts, gparams))
    generated = sum(len(g.token_ids) for g in gens)
    gflops = 2.0 * params * (prompt_tokens + generated)
    gen = {"prompts": len(prompts), "prompt_tokens": prompt_tokens, "max_new_tokens": plan.throughput_new_tokens,
           "generated_tokens": generated, "batches": gen_engine.stats.batches, "seconds": round(gseconds, 3),
           "generated_tokens_per_s": round(generated / gseconds, 1),
           **flops_figures(gflops, gseconds, peak["measured_tflops"], nominal), "peak_memory_gib": peak_memory_gib(device),
           "note": "decoding is memory-bound: a small fraction of the matmul peak is expected"}
    out["throughput"]["generate"] = gen
    say(f"  generation (engine, greedy): {generated} new tokens from {len(prompts)} prompts in {gseconds:.2f}s"
        f" = {generated / gseconds:,.0f} tokens/s ({gen['fraction_of_measured_matmul']:.1%} of measured matmul,"
        f" prefill included)")


def stage_sweep(adapter: HFAdapter, plan: Plan, out: dict[str, Any], say: Report, guard: Guard) -> None:
    device = adapter.device
    params = out["model"]["matmul_parameters"]
    texts = texts_of_lengths(plan.throughput_texts, *plan.text_tokens, seed=3)
    lengths = adapter.count_tokens(texts)
    tokens = sum(lengths)
    rows: list[dict[str, Any]] = []
    last = 0.0
    for budget in plan.budgets:
        if guard.left() < 2 * last + 15:
            rows.append({"budget": budget, "skipped": "time guard"})
            say(f"  budget {budget:6d}: skipped (time guard, {guard.left():.0f}s left)")
            continue
        engine = new_engine(budget)
        reset_peak_memory(device)
        try:
            _, seconds = timed(device, lambda engine=engine: engine.score(adapter, texts))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            rows.append({"budget": budget, "oom": True, "error": str(exc).splitlines()[0][:200]})
            say(f"  budget {budget:6d}: out of memory even on single rows; sweep stopped")
            break
        last = seconds
        row = {"budget": budget, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
               "batches": engine.stats.batches, "oom_retries": engine.stats.oom_retries,
               "budget_after_run": engine.token_budget, "padded_tokens": padded_tokens(lengths, budget),
               **flops_figures(2.0 * params * tokens, seconds, out["peak"]["measured_tflops"],
                               out["peak"].get("nominal_tflops")),
               "peak_memory_gib": peak_memory_gib(device)}
        rows.append(row)
        say(f"  budget {budget:6d}: {tokens / seconds:10,.0f} tokens/s  {row['fraction_of_measured_matmul']:6.1%} of matmul"
            f"  {engine.stats.batches:4d} batches  peak memory {fmt_gib(row['peak_memory_gib'])}"
            + (f"  OUT OF MEMORY: the engine halved {engine.stats.oom_retries} batch(es); sweep stopped"
               if engine.stats.oom_retries else ""))
        if engine.stats.oom_retries:
            row["oom"] = True
            break
    best = max((r for r in rows if "tokens_per_s" in r), key=lambda r: r["tokens_per_s"], default=None)
    out["budget_sweep"] = {"texts": len(texts), "tokens": tokens, "rows": rows,
                           "best_budget": best["budget"] if best else None}


# -- main ------------------------------------------------------------------------------------------------
def default_out(device: str, env: dict[str, Any]) -> Path | None:
    if device == "cpu":
        return None  # a dry run is not a device result
    slug = re.sub(r"[^a-z0-9]+", "-", str(env.get("device_name", "gpu")).lower()).strip("-")
    return RESULTS / f"gpu_check-{datetime.date.today().isoformat()}-{slug}.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (cpu: a dry run on a tiny model)")
    parser.add_argument("--out", type=Path, help="JSON to write (default on a GPU: bench/results/gpu_check-<date>-"
                        "<card>.json; on a CPU nothing is written unless asked)")
    parser.add_argument("--quick", action="store_true", help="fewer texts, shorter generations, three budgets")
    parser.add_argument("--model", choices=["auto", *MODELS], default="auto", help="auto: tiny on a CPU, 0.5b on a GPU")
    parser.add_argument("--time-budget", type=float, default=270.0, help="seconds the whole script may take (guard)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    say, guard = Report(), Guard(args.time_budget)
    device = args.device
    dry_run = device == "cpu"
    out: dict[str, Any] = {"script": "bench/gpu_check.py", "argv": list(sys.argv[1:] if argv is None else argv),
                           "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "cpu_dry_run": dry_run, "label": DRY_RUN_LABEL if dry_run else "GPU run", "stages": {}}
    out_path: Path | None = args.out
    code = 2
    try:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available here; run with --device cpu --quick for a dry run")
        if dry_run:
            torch.set_num_threads(min(2, torch.get_num_threads()))
        plan = make_plan("cpu" if dry_run else "cuda", args.quick, args.model)
        out["plan"] = asdict(plan)
        out["tolerances"] = {"score_mean_abs_nats": SCORE_MEAN_TOL, "score_max_abs_nats": SCORE_MAX_TOL,
                             "top1_agreement_min": TOP1_MIN, "greedy_identical_rows_min": GEN_IDENTICAL_MIN,
                             "near_tie_nats": TIE_TOL}
        out["environment"] = env = environment(device)
        out_path = out_path or default_out(device, env)
        if dry_run:
            say(f"=== {DRY_RUN_LABEL} (tiny model; checks the script, not the card) ===")
        say(f"device: {env['device_name']} ({device}); torch {env['torch']}, CUDA {env['cuda']}, "
            f"transformers {env['transformers']}; plan {'quick' if args.quick else 'full'}, model {plan.model}")

        def stage(name: str, fn: Callable[[], None]) -> None:
            say(f"[{name}] (at {guard.elapsed():.0f}s)")
            t0 = time.perf_counter()
            fn()
            out["stages"][name] = round(time.perf_counter() - t0, 2)
            say(f"[{name}] {out['stages'][name]:.1f}s")

        with tempfile.TemporaryDirectory() as tmp:
            spec = MODELS[plan.model]
            holder: dict[str, HFAdapter] = {}

            def load() -> None:
                config = build_model(spec, Path(tmp), args.seed)
                adapter = HFAdapter.load(tmp, LoadOptions(device=device, dtype="bfloat16"), name=spec.name)
                holder["adapter"] = adapter
                model = adapter.model
                out["model"] = {"name": spec.name, "config": config, "logit_std_target": spec.logit_std,
                                "parameters": sum(p.numel() for p in model.parameters()),
                                "matmul_parameters": matmul_params(model), "dtype": str(model.dtype),
                                "attention": getattr(model.config, "_attn_implementation", None),
                                "fast_head": getattr(adapter, "_fast_head", None)}
                say(f"  {spec.name}: {out['model']['parameters'] / 1e6:.1f}M parameters"
                    f" ({out['model']['matmul_parameters'] / 1e6:.1f}M in matmuls), {model.dtype},"
                    f" attention {out['model']['attention']}")

            def peak() -> None:
                measured = matmul_tflops(device, plan.matmul_size, plan.matmul_reps)
                nominal, label = nominal_peak(str(env["device_name"])) if not dry_run else (None, None)
                out["peak"] = {"measured_tflops": round(measured, 3), "matmul_size": plan.matmul_size,
                               "dtype": "bfloat16", "nominal_tflops": nominal, "nominal_for": label}
                say(f"  bf16 matmul {plan.matmul_size}^3: {measured:.2f} TFLOP/s measured"
                    + (f"; datasheet dense peak {nominal:.0f} TFLOP/s ({label}), measured = {measured / nominal:.1%}"
                       if nominal else "; no datasheet peak known for this device"))

            stage("build+load", load)
            adapter = holder["adapter"]
            stage("matmul peak", peak)
            stage("equality", lambda: stage_equality(adapter, plan, out, say, guard))
            stage("throughput", lambda: stage_throughput(adapter, plan, out, say, guard))
            stage("budget sweep", lambda: stage_sweep(adapter, plan, out, say, guard))

        eq = out["equality"]
        checks = {name: eq[name]["passed"] for name in ("score_engine_packed", "score_one_padded_batch",
                                                          "greedy_generation")}
        out["checks"] = checks
        out["passed"] = all(checks.values())
        code = 0 if out["passed"] else 1
        say()
        verdicts = ", ".join(f"{name} {'PASS' if ok else 'FAIL'}" for name, ok in checks.items())
        say(f"equality: {verdicts}")
        if dry_run:
            say(f"({DRY_RUN_LABEL}: timings and fractions above are of this CPU and a tiny model)")
    except Exception as exc:  # record what failed, then fail loudly
        out["error"] = "".join(traceback.format_exception(exc))
        say(f"gpu_check failed: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        code = 2
    finally:
        out["elapsed_s"] = round(guard.elapsed(), 1)
        out["exit_code"] = code
        out["summary"] = say.lines
        say(f"total {out['elapsed_s']:.1f}s (guard {args.time_budget:.0f}s)")
        if out_path is not None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(out, indent=2, default=str) + "\n")
            out_path.with_suffix(".txt").write_text("\n".join(say.lines) + "\n")
            print(f"wrote {out_path} and {out_path.with_suffix('.txt').name}")
    return code


if __name__ == "__main__":
    sys.exit(main())
