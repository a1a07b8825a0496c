"""Detectors, by name. A new detector is one class and one entry in ``_BUILTIN``."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from distill_audit.detectors.base import Available, Detector, DetectorContext, Evidence, ModelHandle
from distill_audit.detectors.idiosyncrasy import TextIdiosyncrasy, TokenIdiosyncrasy
from distill_audit.detectors.lineage import RepresentationSimilarity, WeightLineage
from distill_audit.detectors.membership import LoggedVsFresh, TeacherTextLikelihood
from distill_audit.detectors.output_similarity import (
    JensenShannon,
    NextTokenAgreement,
    TextEditSimilarity,
    TextWordAgreement,
    TopKOverlap,
)
from distill_audit.detectors.radioactivity import WatermarkRadioactivity

_BUILTIN: tuple[type[Detector], ...] = (
    NextTokenAgreement,
    TopKOverlap,
    JensenShannon,
    TextWordAgreement,
    TextEditSimilarity,
    TokenIdiosyncrasy,
    TextIdiosyncrasy,
    TeacherTextLikelihood,
    LoggedVsFresh,
    WeightLineage,
    RepresentationSimilarity,
    WatermarkRadioactivity,
)
REGISTRY: Mapping[str, type[Detector]] = MappingProxyType({cls.name: cls for cls in _BUILTIN})

__all__ = ["REGISTRY", "Available", "Detector", "DetectorContext", "Evidence", "ModelHandle"]
