"""Tokenizer-free comparisons of model outputs: words, edit distance, bits per byte.

Whatever two models' tokenizers are, their outputs meet as text. These helpers put them in that
shared space; the detectors decide what to test with them.
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Sequence

import numpy as np

from distill_audit.backends.base import ScoredText

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore); punctuation and spacing carry no vote."""
    return _WORD.findall(text.lower())


def normalise(text: str) -> str:
    """Whitespace runs collapsed to one space, ends stripped: layout differences are not disagreement."""
    return " ".join(text.split())


def levenshtein(a: Sequence[object] | str, b: Sequence[object] | str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1), one numpy pass per row of ``a``.

    A row's insertion chain is a running minimum: d[j] = min_l (t[l] + j - l) = j + cummin(t - index).
    """
    if len(a) < len(b):
        a, b = b, a
    if len(b) == 0:
        return len(a)
    codes: dict[object, int] = {}
    bv = np.array([codes.setdefault(x, len(codes)) for x in b])
    index = np.arange(len(b) + 1)
    prev = index.copy()
    for i, x in enumerate(a, start=1):
        cost = (bv != codes.get(x, -1)).astype(np.int64)
        t = np.empty(len(b) + 1, dtype=np.int64)
        t[0] = i
        t[1:] = np.minimum(prev[1:] + 1, prev[:-1] + cost)
        prev = index + np.minimum.accumulate(t - index)
    return int(prev[-1])


def edit_similarity(a: str, b: str) -> float:
    """1 - edit distance / length of the longer string, in [0, 1]; two empty strings count as equal."""
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    return 1.0 - levenshtein(a, b) / longest


def word_agreement(reference: Sequence[str], candidate: Sequence[str]) -> float:
    """Share of the reference's word positions where the candidate has the same word (missing: no match)."""
    if not reference:
        return math.nan
    hits = sum(1 for i, w in enumerate(reference) if i < len(candidate) and candidate[i] == w)
    return hits / len(reference)


def continuation_bits(scored: ScoredText, prompt_chars: int, text: str) -> tuple[float, int]:
    """Bits a model spends on the part of ``text`` after the prompt, and the bytes of that part.

    Every token that ends after the prompt counts; the bytes counted start where the first such token
    starts, so a token straddling the boundary is paid for in full and its bytes counted in full.
    """
    ends = scored.offsets[:, 1]
    idx = np.nonzero(ends > prompt_chars)[0]
    idx = idx[idx >= 1]
    if idx.size == 0:
        return math.nan, 0
    start = int(min(scored.offsets[idx[0], 0], prompt_chars))
    n_bytes = len(text[start:].encode("utf-8"))
    bits = float(-np.sum(scored.target_logprob[idx], dtype=np.float64) / math.log(2))
    return bits, n_bytes


def bits_per_byte(scored: ScoredText, prompt_chars: int, text: str) -> float:
    bits, n_bytes = continuation_bits(scored, prompt_chars, text)
    return bits / n_bytes if n_bytes else math.nan


def zlib_bits(text: str) -> float:
    """Bits zlib needs for the text: the compressor's view of how much information it holds."""
    return 8.0 * len(zlib.compress(text.encode("utf-8"), 9))
