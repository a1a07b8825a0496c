"""Detectors, by name. A new detector is one class and one entry in ``_BUILTIN``."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from detectors.base import Detector, DetectorContext, Evidence, ModelHandle
from detectors.fingerprint import TextIdiosyncrasy, TokenIdiosyncrasy
from detectors.lineage import RepresentationSimilarity, WeightLineage
from detectors.membership import LoggedVsFresh, TeacherTextLikelihood
from detectors.output_similarity import (
    JensenShannon,
    NextTokenAgreement,
    TextEditSimilarity,
    TextWordAgreement,
    TopKOverlap,
)
from detectors.radioactivity import WatermarkRadioactivity

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

__all__ = ["REGISTRY", "Detector", "DetectorContext", "Evidence", "ModelHandle"]
