"""Audit a model as if less access existed: what would the evidence be for a closed teacher?

``--teacher-access gray`` or ``black`` wraps the teacher's backend so that it declares only the
capabilities of that access mode; detectors that need more are skipped with the reason, exactly as they
would be for an API or a transcript. The wrapper forwards the calls it allows unchanged (so the
inference cache is shared with full-access runs) and refuses the others.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from distill_audit.backends.base import (
    AdapterWrapper,
    Capability,
    GenerateParams,
    Generation,
    ModelAdapter,
    ScoredText,
)
from distill_audit.errors import CapabilityError

ACCESS_MODES: dict[str, frozenset[Capability]] = {
    "white": frozenset(Capability),
    # an API that returns top-k log-probs of the tokens it generates, but does not score given text
    "gray": frozenset({Capability.GENERATE, Capability.GENERATE_TOPK}),
    # an API (or a person) that only answers in text
    "black": frozenset({Capability.GENERATE}),
}


class RestrictedAdapter(AdapterWrapper):
    """The inner adapter with only the capabilities of one access mode: everything else is forwarded."""

    def __init__(self, inner: ModelAdapter, access: str):
        if access not in ACCESS_MODES:
            raise CapabilityError(f"unknown access mode {access!r}; known: {', '.join(ACCESS_MODES)}")
        super().__init__(inner)
        self.access = access

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self.inner.capabilities & ACCESS_MODES[self.access]

    @property
    def runtime(self) -> dict[str, Any]:
        return dict(self.inner.runtime, access=f"{self.access}-box")

    def _need(self, cap: Capability) -> None:
        if cap not in self.capabilities:
            raise CapabilityError(f"{self.name} is audited with {self.access}-box access, which gives no {cap.value}")

    def score(self, texts: Sequence[str], top_k: int,
              on_result: Callable[[int, ScoredText], None] | None = None) -> list[ScoredText]:
        self._need(Capability.SCORE)
        return self.inner.score(texts, top_k, on_result=on_result)

    def generate(self, prompts: Sequence[str], params: GenerateParams,
                 on_result: Callable[[int, Generation], None] | None = None) -> list[Generation]:
        self._need(Capability.GENERATE)
        return self.inner.generate(prompts, params, on_result=on_result)

    def hidden_states(self, texts: Sequence[str], layers: Sequence[int],
                      spans: Sequence[Sequence[tuple[int, int]]] | None = None) -> list[np.ndarray]:
        self._need(Capability.HIDDEN_STATES)
        return self.inner.hidden_states(texts, layers, spans)

    def mlp_weights(self) -> list[np.ndarray]:
        self._need(Capability.WEIGHTS)
        return self.inner.mlp_weights()


def restrict(adapter: ModelAdapter, access: str) -> ModelAdapter:
    return adapter if access == "white" else RestrictedAdapter(adapter, access)
