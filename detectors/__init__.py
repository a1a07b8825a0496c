"""Detectors, by name. A new detector is one class and one entry in ``_BUILTIN``."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from detectors.agreement import NextTokenAgreement
from detectors.base import Detector, DetectorContext, Evidence, ModelHandle

_BUILTIN: tuple[type[Detector], ...] = (NextTokenAgreement,)
REGISTRY: Mapping[str, type[Detector]] = MappingProxyType({cls.name: cls for cls in _BUILTIN})

__all__ = ["REGISTRY", "Detector", "DetectorContext", "Evidence", "ModelHandle"]
