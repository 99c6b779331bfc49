"""TaskUpdates: one task's accepted results of a closing round, read back from the spool.

Results are not aggregated while they arrive: each is written to the spool (and made durable)
as it streams in, and checked. When the round closes, the aggregator hands the rule's
accumulator the tensors of one name at a time, from every collaborator in name order, read
back in slices with ``pread``. The fixed order makes the new model bit-for-bit independent of
the order results arrived in (and of a restart in between); reading name by name lets a rule
that finishes by name hold the sums of one tensor at a time, and an elementwise rule (weighted
average) those of one flat slice of a big tensor, so the aggregator's memory grows neither with
the model nor with the number of collaborators.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from fedrun.aggregation.base import Accumulator
from fedrun.buffers import POOL
from fedrun.storage.model_file import TensorFileReader, TensorPieces
from fedrun.storage.state_store import AcceptedResult

#: bytes read from a spool file per slice handed to a streaming rule (stays in cache)
SLICE_BYTES = 1 << 20
#: elements per flat slice when an elementwise rule aggregates a bigger tensor piece by piece
#: (the weighted average's float64 sums of a slice: 8 MiB)
SUM_SLICE_ELEMENTS = 1 << 20


class TaskUpdates:
    """The spooled results of one task, fed to its accumulator name by name.

    Parameters
    ----------
    accumulator:
        The rule's accumulator for this task and round.
    results:
        The task's accepted results (any order; they are read in collaborator-name order).
    global_model:
        The model the round started from: delta tensors are added to it.
    retains:
        True when the rule keeps the tensors it is given (``needs_all_updates``): they are
        then read into fresh arrays instead of reused buffers.
    """

    def __init__(
        self,
        accumulator: Accumulator,
        results: Sequence[AcceptedResult],
        global_model: Mapping[str, np.ndarray],
        retains: bool,
    ) -> None:
        self.accumulator = accumulator
        self.global_model = global_model
        self.retains = retains
        self.results = sorted(
            (r for r in results if r.spool_path), key=lambda r: (r.collaborator, r.spool_path)
        )
        self.readers: list[TensorFileReader] = []
        try:
            for result in self.results:
                self.readers.append(TensorFileReader(result.spool_path))
        except BaseException:
            self.close()
            raise
        self._slice: np.ndarray | None = None

    def close(self) -> None:
        """Close the spool files."""
        for reader in self.readers:
            reader.close()
        self.readers = []

    def names(self) -> list[str]:
        """Every tensor name in the results: the global model's order first, then the others
        (optimizer state) in the order the files hold them."""
        present: dict[str, None] = {}
        for reader in self.readers:
            present.update(dict.fromkeys(reader.tensors))
        ordered = [name for name in self.global_model if name in present]
        known = set(ordered)
        return ordered + [name for name in present if name not in known]

    def layout(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of tensor ``name`` (as the first result holding it has it)."""
        for reader in self.readers:
            if name in reader.tensors:
                return reader.layout(name)
        raise KeyError(name)

    def fold(self, name: str, span: tuple[int, int] | None = None) -> None:
        """Hand every collaborator's tensor ``name`` to the accumulator, in collaborator order;
        with a ``span``, only its flat elements ``[start, stop)``, as a 1-d tensor of that name.

        Raises ``ValueError`` when the rule refuses a tensor and ``StateError`` when a spool
        file cannot be read.
        """
        for result, reader in zip(self.results, self.readers, strict=True):
            if name in reader.tensors:
                self._fold_one(result, reader, name, span)

    def finished(self, name: str) -> np.ndarray | TensorPieces:
        """The aggregate of ``name`` alone (the accumulator must finish by name): an array the
        caller owns, or for a big tensor and an elementwise rule, its pieces computed one flat
        slice at a time as they are asked for."""
        shape, dtype = self.layout(name)
        size = int(np.prod(shape, dtype=np.int64))
        if not self.accumulator.elementwise or size <= SUM_SLICE_ELEMENTS:
            self.fold(name)
            return self.accumulator.finish(name)
        return TensorPieces(shape, dtype, self._pieces(name, size))

    def _pieces(self, name: str, size: int) -> Iterator[np.ndarray]:
        for start in range(0, size, SUM_SLICE_ELEMENTS):
            self.fold(name, (start, min(size, start + SUM_SLICE_ELEMENTS)))
            piece = self.accumulator.finish(name)
            yield piece
            POOL.give(piece)  # written out: its memory serves the next slice

    def _fold_one(
        self,
        result: AcceptedResult,
        reader: TensorFileReader,
        name: str,
        span: tuple[int, int] | None,
    ) -> None:
        header, _ = reader.tensors[name]
        shape, dtype = reader.layout(name)
        lo, hi = span if span is not None else (0, int(np.prod(shape, dtype=np.int64)))
        if span is not None:
            shape = (hi - lo,)
        weight = float(result.data_size)
        base = self.global_model.get(name) if header.delta else None
        streamable = not header.delta or (
            base is not None and base.dtype == dtype and dtype.kind == "f"
        )
        stream = (
            self.accumulator.open_stream(name, shape, dtype, weight, result.collaborator)
            if streamable and hi > lo
            else None
        )
        if stream is None:
            array = reader.read(name, pool=None if self.retains else POOL, span=span)
            if header.delta:
                reference = self.global_model[name]
                if span is not None:
                    reference = reference.reshape(-1)[lo:hi]
                array = reconstruct(array, reference)
            self.accumulator.add(name, array, weight, result.collaborator)
            if not self.retains:
                POOL.give(array)
            return
        try:
            per_slice = max(1, SLICE_BYTES // dtype.itemsize)
            if self._slice is None or self._slice.nbytes < per_slice * dtype.itemsize:
                self._slice = np.empty(per_slice * dtype.itemsize, dtype=np.uint8)
            buffer = self._slice[: per_slice * dtype.itemsize].view(dtype)
            base_flat = base.reshape(-1) if base is not None else None
            for start in range(lo, hi, per_slice):
                values = buffer[: min(per_slice, hi - start)]
                reader.read_into(name, start * dtype.itemsize, values.view(np.uint8).data)
                if base_flat is not None:
                    np.add(values, base_flat[start : start + values.size], out=values)
                stream.fold(start - lo, values)
        except BaseException:
            stream.abort()
            raise
        stream.close()


def reconstruct(delta: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``base + delta`` (the inverse of trained - global): in place when the types allow."""
    if delta.dtype == base.dtype and delta.dtype.kind == "f" and delta.flags.writeable:
        return np.add(delta, base, out=delta)
    return (base.astype(np.float64) + delta).astype(base.dtype)
