"""Continuous batching: many streams advance in one batched step; they join and leave between steps.

Each step samples one byte per active stream (each from its own sampler and logits), runs one
batched step over exactly the active streams (batch = active count, up to the session's
max_streams), then hands each stream its emitted bytes. A stream's bytes and state are what it
would get running alone: batching changes only which rows of the same buffers it occupies.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import ArgumentError
from .arguments import as_instance
from .sampling import BatchSampler, Sampling
from .stream import Generation, Stream


class Scheduler:
    def __init__(self, session):
        self.session = session
        self.jobs: list[Generation] = []
        self._ids = np.zeros(session.max_streams, np.int64)
        self._sampler = BatchSampler(session.max_streams)
        self._logits = np.zeros_like(session.logits_pool)
        self._resync()  # _slots, _rows: the batch's pool slots, as a tuple and as pool rows

    @property
    def active(self) -> int:
        return len(self.jobs)

    def add(self, stream: Stream, max_bytes: int, sampling: Sampling | None = None, stop=()) -> Generation:
        """Join `stream` (already fed its prompt) to the batch for `max_bytes` more bytes."""
        as_instance(stream, Stream, "stream", optional=False)
        if stream.session is not self.session:
            raise ArgumentError("stream belongs to another session; a scheduler batches its own session's streams")
        stream.check_open()
        if any(j.stream is stream for j in self.jobs):
            raise ArgumentError("stream is already scheduled")
        job = Generation(stream, max_bytes, stop)
        if sampling is not None:
            stream.set_sampling(sampling)
        if not job.done:
            self.jobs.append(job)
            self._resync()
        return job

    def remove(self, stream: Stream) -> None:
        """Take `stream` out of the batch (it stays open); a stream not in it is ignored."""
        self.jobs = [j for j in self.jobs if j.stream is not stream]
        self._resync()

    def discard(self, slot: int) -> None:
        """Drop the job of the stream in `slot` (the session calls this when a stream closes)."""
        if any(j.stream.slot == slot for j in self.jobs):
            self.jobs = [j for j in self.jobs if j.stream.slot != slot]
            self._resync()

    def _resync(self) -> None:
        self._slots = tuple(j.stream.slot for j in self.jobs)
        self._rows = np.array(self._slots, np.int64)

    def step(self) -> list[tuple[Stream, bytes]]:
        """One batched step of every active stream; finished streams leave the batch."""
        with self.session.lock:  # no stream of the batch closes mid-step in another thread
            self.session.check_open()
            jobs, batch = self.jobs, len(self.jobs)
            if not batch:
                return []
            if batch == 1:  # Stream.generate's batch-1 path: the same byte, a third of the bookkeeping
                stream = jobs[0].stream
                ids = [stream.sampler.sample(self.session.logits_pool[stream.slot])]
                self.session.step_one(self._slots, ids[0])
            else:
                rows = self._ids[:batch]
                logits = np.take(self.session.logits_pool, self._rows, axis=0, out=self._logits[:batch])
                self._sampler.sample(logits, [job.stream.sampler for job in jobs], rows)
                self.session.run(self._slots, rows)
                ids = rows.tolist()
        out = [(job.stream, job.accept(b)) for job, b in zip(jobs, ids)]
        if any(job.done for job in jobs):
            self.jobs = [j for j in self.jobs if not j.done]
            self._resync()
        return out

    def run(self) -> Iterator[tuple[Stream, bytes]]:
        """Step until every stream is done, yielding (stream, bytes) for non-empty emissions."""
        while self.jobs:
            for stream, data in self.step():
                if data:
                    yield stream, data
