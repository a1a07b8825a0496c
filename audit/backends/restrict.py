"""Audit a model as if less access existed: what would the evidence be for a closed teacher?

``--teacher-access gray`` or ``black`` wraps the teacher's backend so that it declares only the
capabilities of that access mode; detectors that need more are skipped with the reason, exactly as they
would be for an API or a transcript. The wrapper forwards the calls it allows unchanged (so the
inference cache is shared with full-access runs) and refuses the others.
"""

from __future__ import annotations

from typing import Any, Sequence

from distill_audit.backends.base import Capability, GenerateParams, Generation, ModelAdapter, ScoredText
from distill_audit.errors import CapabilityError

ACCESS_MODES: dict[str, frozenset[Capability]] = {
    "white": frozenset(Capability),
    # an API that returns top-k log-probs of the tokens it generates, but does not score given text
    "gray": frozenset({Capability.GENERATE, Capability.GENERATE_TOPK}),
    # an API (or a person) that only answers in text
    "black": frozenset({Capability.GENERATE}),
}


class RestrictedAdapter:
    def __init__(self, inner: ModelAdapter, access: str):
        if access not in ACCESS_MODES:
            raise CapabilityError(f"unknown access mode {access!r}; known: {', '.join(ACCESS_MODES)}")
        self.inner = inner
        self.access = access
        self.name = inner.name

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self.inner.capabilities & ACCESS_MODES[self.access]

    @property
    def fingerprint(self) -> dict[str, str]:
        return dict(self.inner.fingerprint)

    @property
    def runtime(self) -> dict[str, Any]:
        return dict(getattr(self.inner, "runtime", {}), access=f"{self.access}-box")

    @property
    def context_length(self) -> int | None:
        return self.inner.context_length

    @property
    def streams_results(self) -> bool:
        return bool(getattr(self.inner, "streams_results", False))

    @property
    def live(self) -> bool:
        return bool(getattr(self.inner, "live", True))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def _need(self, cap: Capability) -> None:
        if cap not in self.capabilities:
            raise CapabilityError(f"{self.name} is audited with {self.access}-box access, which gives no {cap.value}")

    def score(self, texts: Sequence[str], top_k: int, **kw: Any) -> list[ScoredText]:
        self._need(Capability.SCORE)
        return self.inner.score(texts, top_k, **kw)

    def generate(self, prompts: Sequence[str], params: GenerateParams, **kw: Any) -> list[Generation]:
        self._need(Capability.GENERATE)
        return self.inner.generate(prompts, params, **kw)

    def hidden_states(self, texts: Sequence[str], layers: Sequence[int], **kw: Any) -> list[Any]:
        self._need(Capability.HIDDEN_STATES)
        return self.inner.hidden_states(texts, layers, **kw)


def restrict(adapter: ModelAdapter, access: str) -> ModelAdapter:
    return adapter if access == "white" else RestrictedAdapter(adapter, access)
