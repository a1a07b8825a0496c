"""bench/throughput.py --against lm-eval, its equality part: the engine, lm-eval's rolling log-likelihood and the
per-example loop give the same per-text log-likelihoods on tiny saved checkpoints (no timing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill_audit import synthetic
from distill_audit.backends.hf import HFAdapter, LoadOptions

pytest.importorskip("lm_eval", reason="lm-eval is a benchmark-only extra: pip install 'distill-audit[bench]'")

from bench import throughput  # noqa: E402


@pytest.mark.parametrize("fixture", ["llama_dir", "gpt2_dir"])
def test_three_methods_agree(fixture: str, request: pytest.FixtureRequest) -> None:
    directory: Path = request.getfixturevalue(fixture)
    adapter = HFAdapter.load(str(directory), LoadOptions(device="cpu", dtype="float32"))
    lm = throughput.load_lm_eval(directory, batch_size=4)
    grammar = synthetic.Grammar()
    # 1-3 sentences: inside the tiny models' 64-token context, lengths mixed so batches pad
    texts = [grammar.text(1 + i % 3, seed=500 + i) for i in range(7)]
    result = throughput.check_agreement(adapter, lm, texts, token_budget=96, batch_size=4)
    assert result["token_mismatches"] == 0
    lls = result["loglikelihoods"]
    assert all(len(v) == len(texts) for v in lls.values())
    for pair, a in result["agreement"].items():
        assert a["agree"], (pair, a)
        assert a["max_abs_diff"] < 1e-3, (pair, a)


def test_sets_are_deterministic(llama_dir: Path) -> None:
    adapter = HFAdapter.load(str(llama_dir), LoadOptions(device="cpu", dtype="float32"))
    first = throughput.long_texts(adapter.tokenizer, 2)
    assert first == throughput.long_texts(adapter.tokenizer, 2)
    counts = adapter.count_tokens(first)
    assert all(throughput.LONG_TOKENS[0] - 5 <= n <= throughput.LONG_TOKENS[1] + 5 for n in counts), counts
