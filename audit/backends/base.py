"""The adapter contract every backend implements, and the values that cross it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


class Capability(str, enum.Enum):
    """What a backend can give. Detectors declare what they need; the engine skips what is missing."""

    SCORE = "score"  # per-token log-probs of a given text
    SCORE_TOPK = "score-topk"  # top-k alternatives and entropy at each position of a given text
    GENERATE = "generate"  # greedy or seeded-sampling continuations
    GENERATE_TOPK = "generate-topk"  # top-k log-probs at each generated step
    HIDDEN_STATES = "hidden-states"  # per-token hidden states of chosen layers
    WEIGHTS = "weights"  # the parameters themselves (per-layer MLP input weights), for weight lineage


@dataclass(frozen=True)
class ScoredText:
    """Statistics of one text under one model, from one forward pass.

    Arrays are aligned on the model's own tokens: ``target_logprob[i]`` is log p(token i | tokens < i);
    it is NaN for a first token that has no context. ``offsets[i]`` is the (start, end) character span
    of token i in the text ((0, 0) for special tokens), so callers can work in a tokenizer-free space.
    """

    token_ids: np.ndarray  # int64 [n]
    offsets: np.ndarray  # int64 [n, 2]
    target_logprob: np.ndarray  # float32 [n]
    topk_ids: np.ndarray  # int64 [n, k]; row i: the model's top-k for position i given tokens < i
    topk_logprobs: np.ndarray  # float32 [n, k]
    entropy: np.ndarray  # float32 [n], nats
    # float32 [n]: variance of log p(z) over z ~ p at each position (Min-K%++ needs it); empty when the
    # backend cannot give it
    logprob_var: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

    @property
    def n_tokens(self) -> int:
        return int(self.token_ids.shape[0])


@dataclass(frozen=True)
class GenerateParams:
    """Decoding settings. Only deterministic requests exist: greedy, or sampling with a seed."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 5  # how many log-probs to keep per generated step
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Generation:
    """One continuation: its text, its token ids, and the top-k log-probs at each generated step."""

    text: str
    token_ids: np.ndarray  # int64 [m]
    token_logprobs: np.ndarray  # float32 [m]
    topk_ids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    topk_logprobs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))


@runtime_checkable
class ModelAdapter(Protocol):
    """A model the audit can query. Every method takes a batch and returns results in the same order."""

    name: str

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    @property
    def fingerprint(self) -> dict[str, str]:
        """Stable content identity: at least ``{"model": sha256, "weights": ..., "tokenizer": ...}``."""
        ...

    @property
    def context_length(self) -> int | None: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def score(self, texts: Sequence[str], top_k: int) -> list[ScoredText]: ...

    def generate(self, prompts: Sequence[str], params: GenerateParams) -> list[Generation]: ...

    def hidden_states(self, texts: Sequence[str], layers: Sequence[int]) -> list[np.ndarray]: ...
