"""The output head's statistics (blocked matmul, grouped top-k) equal the plain computation in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill_audit.backends import hf
from distill_audit.backends.hf import grouped_topk, head_statistics


@pytest.mark.parametrize("vocab", [7, 300, 1000, 4096, 49152, 50257])
def test_grouped_topk_gives_the_top_k(vocab: int) -> None:
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(37, vocab, generator=gen) * 4
    logits[3, :] = 0.5  # a row of ties
    logits[5, -3:] = 50.0  # the best in the last (partial) group
    k = min(10, vocab)
    values, ids = grouped_topk(logits, k)
    want, _ = logits.topk(k, dim=-1)
    torch.testing.assert_close(values, want, rtol=0, atol=0)
    assert ids.shape == (37, k) and int(ids.max()) < vocab and int(ids.min()) >= 0
    torch.testing.assert_close(logits.gather(1, ids), values, rtol=0, atol=0)  # the ids point at those values
    for row in range(37):
        assert len(set(ids[row].tolist())) == k  # no id twice


@pytest.mark.parametrize("n_rows", [0, 1, 15, 16, 17, 600, 1100])
@pytest.mark.parametrize("with_head", [True, False])
def test_head_statistics_match_float64(n_rows: int, with_head: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf, "_HEAD_ROWS", 256)  # several head blocks and statistics blocks, a partial one last
    gen = torch.Generator().manual_seed(n_rows)
    d, vocab, k = 24, 3000, 10
    head = torch.nn.Linear(d, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, d, generator=gen))
    hidden = torch.randn(n_rows, d, generator=gen)
    targets = torch.randint(0, vocab, (n_rows,), generator=gen)
    with torch.inference_mode():
        logits = head(hidden)
        rows = hidden if with_head else logits.clone()
        lp, ids, top_lp, entropy, var = head_statistics(rows, head if with_head else None, targets, k)
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    want_entropy = -(p * logp).sum(-1)
    want_var = (p * (logp - (p * logp).sum(-1, keepdim=True)) ** 2).sum(-1)
    want_top, _ = logp.topk(k, dim=-1)
    assert lp.shape == entropy.shape == var.shape == (n_rows,) and ids.shape == top_lp.shape == (n_rows, k)
    np.testing.assert_allclose(lp, logp.gather(1, targets[:, None])[:, 0].numpy(), atol=2e-4)
    np.testing.assert_allclose(entropy, want_entropy.numpy(), atol=2e-4)
    np.testing.assert_allclose(var, want_var.numpy(), rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(top_lp, want_top.numpy(), atol=2e-4)
    if n_rows:
        np.testing.assert_allclose(np.take_along_axis(logp.numpy(), ids, axis=1), top_lp, atol=2e-4)
