"""Compression pipelines: how a tensor becomes ``(payload, meta)`` bytes on the wire, and back.

``none`` is lossless; ``random_shift``, ``stc``, ``skc`` and ``kc`` are lossy and only ever
applied to updates, never to the global model a collaborator loads. Every lossy pipeline sends
non-float and empty tensors losslessly.
"""

from __future__ import annotations

from typing import Any

from fedrun.compression.base import CompressionPipeline
from fedrun.compression.kmeans import KCPipeline, SKCPipeline
from fedrun.compression.none import NoCompressionPipeline
from fedrun.compression.random_shift import RandomShiftPipeline
from fedrun.compression.stc import STCPipeline

__all__ = [
    "CompressionPipeline",
    "KCPipeline",
    "NoCompressionPipeline",
    "RandomShiftPipeline",
    "SKCPipeline",
    "STCPipeline",
    "available_pipelines",
    "pipeline_by_name",
]

_PIPELINES: tuple[type[CompressionPipeline], ...] = (
    NoCompressionPipeline,
    RandomShiftPipeline,
    STCPipeline,
    SKCPipeline,
    KCPipeline,
)


def available_pipelines() -> dict[str, type[CompressionPipeline]]:
    """Every built-in pipeline, by its wire name (``none``, ``random_shift``, ``stc``, ...)."""
    return {pipeline.name: pipeline for pipeline in _PIPELINES}


def pipeline_by_name(name: str, **settings: Any) -> CompressionPipeline:
    """Build the pipeline called ``name`` (wire name or class name) with ``settings``.

    Raises
    ------
    ValueError
        For an unknown name or a setting the pipeline does not take.
    """
    by_name: dict[str, type[CompressionPipeline]] = {}
    for pipeline in _PIPELINES:
        by_name[pipeline.name] = pipeline
        by_name[pipeline.__name__] = pipeline
    cls = by_name.get(name)
    if cls is None:
        known = ", ".join(sorted(available_pipelines()))
        raise ValueError(f"unknown compression pipeline {name!r}; available: {known}")
    try:
        return cls(**settings)
    except TypeError as exc:
        raise ValueError(f"invalid settings for {cls.__name__}: {exc}") from None
