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

import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from fedrun.aggregation.base import Accumulator
from fedrun.buffers import POOL
from fedrun.storage.model_file import TensorFileReader, TensorPieces
from fedrun.storage.state_store import AcceptedResult

log = logging.getLogger("fedrun.aggregator")

#: bytes read from a spool file per slice handed to a streaming rule (stays in cache)
SLICE_BYTES = 1 << 20
#: elements per flat slice when an elementwise rule aggregates a bigger tensor piece by piece
#: (the weighted average's float64 sums of a slice: 8 MiB)
SUM_SLICE_ELEMENTS = 1 << 20
#: most threads aggregating slices of one tensor at once (numpy releases the GIL; collaborators
#: wait for the new model meanwhile, so their cores are free)
MAX_SLICE_WORKERS = 4


def slice_workers() -> int:
    """Threads for slices: the cores this process may use, at most :data:`MAX_SLICE_WORKERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_SLICE_WORKERS, cores))


class _Lane:
    """What one thread needs to aggregate slices: an accumulator and a read buffer."""

    def __init__(self, accumulator: Accumulator) -> None:
        self.accumulator = accumulator
        self.buffer: np.ndarray | None = None

    def slice_buffer(self, dtype: np.dtype) -> np.ndarray:
        """A buffer of :data:`SLICE_BYTES` (at least one element) viewed as ``dtype``."""
        count = max(1, SLICE_BYTES // dtype.itemsize)
        if self.buffer is None or self.buffer.nbytes < count * dtype.itemsize:
            self.buffer = np.empty(count * dtype.itemsize, dtype=np.uint8)
        return self.buffer[: count * dtype.itemsize].view(dtype)


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
    fresh:
        Makes another accumulator of the same rule, for an elementwise rule to aggregate
        several slices of a big tensor at once (one thread each); None: one at a time.
    """

    def __init__(
        self,
        accumulator: Accumulator,
        results: Sequence[AcceptedResult],
        global_model: Mapping[str, np.ndarray],
        retains: bool,
        fresh: Callable[[], Accumulator] | None = None,
    ) -> None:
        self.accumulator = accumulator
        self.fresh = fresh
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
        self._lanes = [_Lane(accumulator)]
        self._agreed: dict[str, tuple[tuple[int, ...], np.dtype]] = {}

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
        """Shape and dtype of tensor ``name``.

        A tensor of the global model was checked against it as it arrived, so every result
        holds it alike. A tensor the model has not (optimizer state) has no reference: the
        layout most results hold is taken (the first in collaborator order on a tie), and the
        results holding another one are left out of that tensor's aggregate, with a warning,
        so one collaborator's odd optimizer state never gets the others' results refused.
        """
        if name in self._agreed:
            return self._agreed[name]
        layouts = [
            (result.collaborator, reader.layout(name))
            for result, reader in zip(self.results, self.readers, strict=True)
            if name in reader.tensors
        ]
        if not layouts:
            raise KeyError(name)
        counts = Counter(layout for _, layout in layouts)
        best = max(counts.values())
        agreed = next(layout for _, layout in layouts if counts[layout] == best)
        odd = [collaborator for collaborator, layout in layouts if layout != agreed]
        if odd:
            log.warning(
                "tensor %r: %s sent shape/dtype other than %s/%s (held by %d of %d results); "
                "left out of its aggregate",
                name,
                ", ".join(odd),
                agreed[0],
                agreed[1],
                best,
                len(layouts),
            )
        self._agreed[name] = agreed
        return agreed

    def _holds(self, reader: TensorFileReader, name: str) -> bool:
        """True when ``reader``'s result takes part in tensor ``name``'s aggregate."""
        return name in reader.tensors and reader.layout(name) == self.layout(name)

    def fold(self, name: str, span: tuple[int, int] | None = None) -> None:
        """Hand every collaborator's tensor ``name`` to the accumulator, in collaborator order;
        with a ``span``, only its flat elements ``[start, stop)``, as a 1-d tensor of that name.

        Raises ``ValueError`` when the rule refuses a tensor and ``StateError`` when a spool
        file cannot be read.
        """
        self._fold(self._lanes[0], name, span)

    def _fold(self, lane: _Lane, name: str, span: tuple[int, int] | None) -> None:
        for result, reader in zip(self.results, self.readers, strict=True):
            if self._holds(reader, name):
                self._fold_one(lane, result, reader, name, span)

    def finished(self, name: str) -> np.ndarray | TensorPieces:
        """The aggregate of ``name`` alone (the accumulator must finish by name): an array the
        caller owns, or for a big tensor and an elementwise rule, its pieces computed one flat
        slice at a time (several at once with ``fresh``) as they are asked for."""
        shape, dtype = self.layout(name)
        size = int(np.prod(shape, dtype=np.int64))
        if not self.accumulator.elementwise or size <= SUM_SLICE_ELEMENTS:
            self.fold(name)
            return self.accumulator.finish(name)
        return TensorPieces(shape, dtype, self._pieces(name, size))

    def _piece(self, lane: _Lane, name: str, span: tuple[int, int]) -> np.ndarray:
        self._fold(lane, name, span)
        return lane.accumulator.finish(name)

    def _pieces(self, name: str, size: int) -> Iterator[np.ndarray]:
        spans = [
            (lo, min(size, lo + SUM_SLICE_ELEMENTS)) for lo in range(0, size, SUM_SLICE_ELEMENTS)
        ]
        workers = min(len(spans), slice_workers()) if self.fresh is not None else 1
        while len(self._lanes) < workers:
            assert self.fresh is not None
            other = self.fresh()
            if type(other) is not type(self.accumulator):
                workers = len(self._lanes)  # the rule is not one whose slices run apart
                break
            self._lanes.append(_Lane(other))
        if workers == 1:
            for span in spans:
                piece = self._piece(self._lanes[0], name, span)
                yield piece
                POOL.give(piece)  # written out: its memory serves the next slice
            return
        # slice k runs on lane k % workers; a lane takes its next slice only once the piece
        # it made was handed over and given back, so at most `workers` pieces exist at once
        with ThreadPoolExecutor(workers, thread_name_prefix="fedrun-slices") as pool:
            pending: deque[Future[np.ndarray]] = deque()
            try:
                for k, span in enumerate(spans[:workers]):
                    pending.append(pool.submit(self._piece, self._lanes[k], name, span))
                for k in range(len(spans)):
                    piece = pending.popleft().result()
                    yield piece
                    POOL.give(piece)
                    if k + workers < len(spans):
                        lane = self._lanes[k % workers]
                        pending.append(pool.submit(self._piece, lane, name, spans[k + workers]))
            finally:
                for future in pending:
                    future.cancel()
                for future in pending:
                    if not future.cancelled():
                        future.exception()  # wait: no thread may touch the files after close()

    def _fold_one(
        self,
        lane: _Lane,
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
        accumulator = lane.accumulator
        stream = (
            accumulator.open_stream(name, shape, dtype, weight, result.collaborator)
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
            accumulator.add(name, array, weight, result.collaborator)
            if not self.retains:
                POOL.give(array)
            return
        try:
            buffer = lane.slice_buffer(dtype)
            base_flat = base.reshape(-1) if base is not None else None
            for start in range(lo, hi, buffer.size):
                values = buffer[: min(buffer.size, hi - start)]
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
