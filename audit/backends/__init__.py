"""Model adapters: one object per audited model, batch in, batch out, order preserved."""

from distill_audit.backends.base import Capability, GenerateParams, Generation, ModelAdapter, ScoredText

__all__ = ["Capability", "GenerateParams", "Generation", "ModelAdapter", "ScoredText"]
