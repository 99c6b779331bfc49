"""The compression contract: a tensor becomes payload bytes plus metadata, and back.

A pipeline turns one numpy array into ``(payload, meta)``: ``payload`` is what crosses the wire
(chunked by the protocol layer), ``meta`` is a small opaque bytes blob the same pipeline needs to
decode it. dtype and shape travel separately in the tensor header. Lossy pipelines are only ever
applied to updates (trained - global), never to the global model a collaborator loads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np


class CompressionPipeline(ABC):
    """Base class of every compression pipeline."""

    #: Name on the wire, so the receiver picks the same pipeline to decode.
    name: ClassVar[str] = "none"
    #: True when decode(encode(x)) may differ from x.
    lossy: ClassVar[bool] = False

    @abstractmethod
    def encode(self, tensor: np.ndarray) -> tuple[bytes | memoryview, bytes]:
        """Return ``(payload, meta)`` for ``tensor``."""

    @abstractmethod
    def decode(
        self, payload: bytes | memoryview, meta: bytes, dtype: np.dtype, shape: tuple[int, ...]
    ) -> np.ndarray:
        """Rebuild the tensor (exactly for lossless pipelines)."""

    def is_lossy(self) -> bool:
        """OpenFL's spelling of :attr:`lossy`."""
        return self.lossy
