"""Scoring throughput: the engine against a plain per-example transformers loop, same model and texts.

    python bench/throughput.py [--texts 160] [--threads 2]

Prints tokens/s of both, the model FLOP/s each achieves as a fraction of a dense fp32 matmul measured
in the same run, the forward passes a second (cached) run of the same requests makes, and on its last
line the throughput ratio engine / plain loop.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_audit import synthetic  # noqa: E402
from distill_audit.backends.hf import HFAdapter  # noqa: E402
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


def plain_loop(adapter: HFAdapter, texts: list[str]) -> int:
    """What a script would do: one text at a time, full logits, log-softmax, then the statistics."""
    model, tok = adapter.model, adapter.tokenizer
    tokens = 0
    with torch.inference_mode():
        for text in texts:
            ids = tok(text, return_tensors="pt")["input_ids"]
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            logp.gather(1, ids[0, 1:, None])
            logp.topk(TOP_K, dim=-1)
            -(logp.exp() * logp).sum(-1)
            tokens += ids.shape[1]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-sentences", type=int, default=MAX_SENTENCES,
                        help="longest text in sentences (about 13 tokens each)")
    parser.add_argument("--batch-tokens", type=int, default=default_token_budget(["cpu"]))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
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


if __name__ == "__main__":
    main()
