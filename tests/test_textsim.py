"""Tokenizer-free comparisons: edit distance against a textbook implementation, words, bits per byte."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from distill_audit.backends.hf import HFAdapter
from distill_audit.detectors import textsim
from distill_audit.detectors.output_similarity import topk_js_divergence


def _textbook_levenshtein(a: str, b: str) -> int:
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


def test_levenshtein_matches_the_textbook_dynamic_programme() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = "".join(rng.choice(list("abc "), size=rng.integers(0, 12)))
        b = "".join(rng.choice(list("abc "), size=rng.integers(0, 12)))
        assert textsim.levenshtein(a, b) == _textbook_levenshtein(a, b), (a, b)
    assert textsim.levenshtein(["the", "cat"], ["the", "dog", "cat"]) == 1  # works on word lists too


def test_edit_similarity_and_word_agreement() -> None:
    assert textsim.edit_similarity("abc", "abc") == 1.0 and textsim.edit_similarity("", "") == 1.0
    assert textsim.edit_similarity("abcd", "wxyz") == 0.0
    assert textsim.edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert textsim.words(" Hello, World!  it's") == ["hello", "world", "it", "s"]
    assert textsim.word_agreement(["a", "b", "c", "d"], ["a", "x", "c"]) == 0.5  # a missing word is no match
    assert math.isnan(textsim.word_agreement([], ["a"]))


def test_bits_per_byte_counts_only_the_continuation(llama_dir: Path) -> None:
    model = HFAdapter.load(str(llama_dir))
    prompt, text = "Babo kire", "Babo kire lumo sapa."
    (scored,) = model.score([text], top_k=1)
    bits, n_bytes = textsim.continuation_bits(scored, len(prompt), text)
    ends = scored.offsets[:, 1]
    expected = -scored.target_logprob[1:][ends[1:] > len(prompt)].sum() / math.log(2)
    assert bits == pytest.approx(float(expected), rel=1e-5)
    assert n_bytes == len(" lumo sapa.".encode())
    assert textsim.bits_per_byte(scored, len(prompt), text) == pytest.approx(bits / n_bytes)


def test_topk_js_divergence_is_zero_for_equal_and_one_for_disjoint_distributions() -> None:
    ids, lp = np.array([3, 1, 2]), np.log(np.array([0.5, 0.3, 0.2]))
    assert topk_js_divergence(ids, lp, ids, lp) == pytest.approx(0.0, abs=1e-9)
    assert topk_js_divergence(ids, lp, np.array([7, 8, 9]), lp) == pytest.approx(1.0, abs=1e-6)
    near = topk_js_divergence(ids, lp, np.array([3, 1, 9]), np.log(np.array([0.5, 0.3, 0.2])))
    assert 0.0 < near < 1.0
