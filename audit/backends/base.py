"""The adapter contract every backend implements, and the values that cross it."""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from distill_audit.errors import CapabilityError

T = TypeVar("T")


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


class ModelAdapter(abc.ABC):
    """A model the audit can query: the one contract every backend implements and every layer relies on.

    Every batch method takes a batch and returns results in the same order. The abstract members are what
    every backend has; the rest are optional features declared here with the default of a backend that
    lacks them (as lm-evaluation-harness's ``LM`` does), so nothing above this layer probes an adapter
    with ``getattr`` and mypy checks each backend against the whole contract. What a backend can give is
    declared by :attr:`capabilities`; calling a method for a capability it does not declare raises
    :class:`~distill_audit.errors.CapabilityError`.

    A wrapper (``--teacher-access``) subclasses :class:`AdapterWrapper`, which forwards every member.
    """

    name: str

    # -- identity and limits ---------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def capabilities(self) -> frozenset[Capability]:
        """What this backend gives; detectors that need more are skipped with the reason."""

    @property
    @abc.abstractmethod
    def fingerprint(self) -> dict[str, str]:
        """Stable content identity: at least ``{"model": sha256, "weights": ..., "tokenizer": ...}``."""

    @property
    def context_length(self) -> int | None:
        """Most tokens one request may hold (prompt and generation); None when unknown or unlimited."""
        return None

    @property
    def runtime(self) -> dict[str, Any]:
        """Where and how the model ran (backend, device, dtype, API routes...), for the result's record."""
        return {}

    @property
    def live(self) -> bool:
        """Whether new answers can be drawn now; False for a log of what a model answered once (a transcript),
        so the runner never asks it for a second answer."""
        return True

    @property
    def streams_results(self) -> bool:
        """True for a backend that limits its own concurrency and hands on each answer as it arrives (an HTTP
        API): the engine gives it every missing request at once, with ``on_result``, and commits each answer to
        the cache there and then, so a killed audit loses no answer already received."""
        return False

    @property
    def shares_prefixes(self) -> bool:
        """True for a backend that scores the texts of one batch that begin alike with their common beginning run
        once (a local model's KV cache): the engine then batches texts that share beginnings together."""
        return False

    # -- inference -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as this model counts them (CapabilityError when it cannot count)."""

    def score(self, texts: Sequence[str], top_k: int,
              on_result: Callable[[int, ScoredText], None] | None = None) -> list[ScoredText]:
        """Capability.SCORE (and SCORE_TOPK for the alternatives): statistics of each given text."""
        raise CapabilityError(f"{self.name} cannot score a given text")

    def generate(self, prompts: Sequence[str], params: GenerateParams,
                 on_result: Callable[[int, Generation], None] | None = None) -> list[Generation]:
        """Capability.GENERATE (and GENERATE_TOPK for the per-step log-probs): one continuation per prompt."""
        raise CapabilityError(f"{self.name} cannot generate")

    def hidden_states(self, texts: Sequence[str], layers: Sequence[int],
                      spans: Sequence[Sequence[tuple[int, int]]] | None = None) -> list[np.ndarray]:
        """Capability.HIDDEN_STATES: per text, ``[len(layers), n_tokens, d_model]`` float32; with ``spans`` (per text,
        character spans such as its words), ``[len(layers), n_spans, d_model]``: each span's vector pooled from the
        token states by :func:`pool_spans`, so the per-token states never leave the backend."""
        raise CapabilityError(f"{self.name} gives no hidden states")

    def mlp_weights(self) -> list[np.ndarray]:
        """Capability.WEIGHTS: per transformer block, the MLP's input weights, one row per hidden unit
        (empty when none are recognised)."""
        raise CapabilityError(f"{self.name} gives no weights")

    @property
    def n_layers(self) -> int:
        """Transformer blocks (hidden-state layers run 0..n_layers); 0 when unknown."""
        return 0

    # -- formats and tokenizers ------------------------------------------------------------------------
    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        """The model's own chat template applied to a conversation that ends with a user turn, ready for the
        assistant's answer (the text the model reads); None without a template that renders it."""
        return None

    @property
    def fixed_format(self) -> str | None:
        """"chat" or "plain" when this model can be asked only one way (an API's route, a log's form); None for a
        model that reads whatever text it is given (its format is then chosen by ``--prompt-format``)."""
        return None

    def local_tokenizer(self) -> Any | None:
        """A tokenizer object here whose ids are this model's token ids (an HF model's own, or the local copy a
        remote or transcript model was given with ``--*-tokenizer``); None when there is none."""
        return None

    @property
    def logged_prompts(self) -> tuple[str, ...] | None:
        """The distinct prompts a model known only from a log can answer, in log order; None when it can
        answer any prompt."""
        return None

    @property
    def repeated_prompts(self) -> int:
        """Log entries that repeat an earlier entry's prompt (unused: each prompt is answered once)."""
        return 0

    def close(self) -> None:
        """Release connections or other resources; the adapter is not used afterwards. Idempotent."""
        return None  # a local model holds nothing that outlives it


class AdapterWrapper(ModelAdapter):
    """An adapter around another that forwards every member of the contract; subclasses override what they
    change. A conformance test checks that every member of :class:`ModelAdapter` is forwarded here."""

    def __init__(self, inner: ModelAdapter):
        self.inner = inner
        self.name = inner.name

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self.inner.capabilities

    @property
    def fingerprint(self) -> dict[str, str]:
        return dict(self.inner.fingerprint)

    @property
    def context_length(self) -> int | None:
        return self.inner.context_length

    @property
    def runtime(self) -> dict[str, Any]:
        return dict(self.inner.runtime)

    @property
    def live(self) -> bool:
        return self.inner.live

    @property
    def streams_results(self) -> bool:
        return self.inner.streams_results

    @property
    def shares_prefixes(self) -> bool:
        return self.inner.shares_prefixes

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def score(self, texts: Sequence[str], top_k: int,
              on_result: Callable[[int, ScoredText], None] | None = None) -> list[ScoredText]:
        return self.inner.score(texts, top_k, on_result=on_result)

    def generate(self, prompts: Sequence[str], params: GenerateParams,
                 on_result: Callable[[int, Generation], None] | None = None) -> list[Generation]:
        return self.inner.generate(prompts, params, on_result=on_result)

    def hidden_states(self, texts: Sequence[str], layers: Sequence[int],
                      spans: Sequence[Sequence[tuple[int, int]]] | None = None) -> list[np.ndarray]:
        return self.inner.hidden_states(texts, layers, spans)

    def mlp_weights(self) -> list[np.ndarray]:
        return self.inner.mlp_weights()

    @property
    def n_layers(self) -> int:
        return self.inner.n_layers

    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        return self.inner.chat_prompt(messages)

    @property
    def fixed_format(self) -> str | None:
        return self.inner.fixed_format

    def local_tokenizer(self) -> Any | None:
        return self.inner.local_tokenizer()

    @property
    def logged_prompts(self) -> tuple[str, ...] | None:
        return self.inner.logged_prompts

    @property
    def repeated_prompts(self) -> int:
        return self.inner.repeated_prompts

    def close(self) -> None:
        self.inner.close()


# The rule of pool_spans, named in the cache key of pooled hidden states: change the name when the rule changes.
SPAN_POOLING = "mean-of-overlapping-tokens-v1"


def pool_spans(hidden: np.ndarray, offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """``[layers, tokens, d]`` token states to ``[layers, spans, d]`` float32: each span's vector is the mean (in
    float64) of the states of the tokens whose characters (``offsets``, [tokens, 2]) overlap it; a span no token
    overlaps gets the nearest token before it (else the second token, else the first). Tokens without characters
    (BOS, special tokens) never count."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = ends > starts
    out = np.zeros((hidden.shape[0], len(spans), hidden.shape[2]), dtype=np.float64)
    for w, (a, b) in enumerate(spans):
        sel = np.nonzero(real & (starts < b) & (ends > a))[0]
        if sel.size == 0:
            before = np.nonzero(real & (starts < b))[0]
            sel = before[-1:] if before.size else np.array([min(1, hidden.shape[1] - 1)])
        out[:, w] = hidden[:, sel].astype(np.float64).mean(axis=1)
    return out.astype(np.float32)


def report_each(results: list[T], on_result: Callable[[int, T], None] | None) -> list[T]:
    """Hand each of a batch's results to ``on_result`` (for a backend that computes a whole batch at once)."""
    if on_result is not None:
        for i, r in enumerate(results):
            on_result(i, r)
    return results
