"""Fencing: an engine run belongs to one attempt of its job (``JobSpec.attempt``) and stops
with ``Superseded`` once the job's record has moved on without it (taken over, ended, gone).
Design: docs/design/fencing.md
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import JobSpec
from upscaler.domain.storage import StorageError
from upscaler.errors import Superseded

logger = logging.getLogger("ray.serve")
FENCE_EVERY_S = 1.0  # how stale a run may go on for, at one record read per interval
WRITE_RETRY_FIRST_S, WRITE_RETRY_MAX_S = 0.1, 2.0
# The watchers' record reads have threads of their own: in the default executor they would
# wait behind the work they are watching (crops, blends, tiles) and stop it only once done.
_FENCE_READS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fence")


class AttemptFence:
    def __init__(self, store: JobStore, spec: JobSpec, every_s: float = FENCE_EVERY_S):
        self.store, self.job_id, self.attempt = store, spec.job_id, spec.attempt
        self.every_s = every_s
        self.reason: str | None = None  # why the run was stopped, once it was

    def _read(self) -> str | None:
        """One read of the record (blocking; storage errors raised): why this run must
        stop, or None."""
        reason = self.store.superseded(self.job_id, self.attempt)
        if reason is not None:
            self.reason = reason
        return reason

    def check(self) -> str | None:
        """As ``_read``; a record that cannot be read now says nothing (None)."""
        try:
            return self._read()
        except Exception as exc:  # noqa: BLE001 - storage down: the result write decides
            logger.warning("job %s: its record cannot be read (%s); running on", self.job_id,
                           type(exc).__name__)
            return None

    def ensure_current(self) -> None:
        """Before writing what the run made: ``Superseded`` unless the record, read now, says
        this run is the job's; storage errors are raised (the caller retries)."""
        if self.reason is None:
            self._read()
        if self.reason is not None:
            raise self.error()

    async def watch(self, stop: threading.Event) -> None:
        """Every ``every_s`` (a call that waited in a queue past a takeover stops within the
        first), until the run ends (the task is cancelled) or is superseded: then ``stop``
        is set."""
        while not stop.is_set():
            await asyncio.sleep(self.every_s)
            loop = asyncio.get_running_loop()
            if await loop.run_in_executor(_FENCE_READS, self.check) is not None:
                logger.warning("job %s attempt %d stops: %s", self.job_id, self.attempt,
                               self.reason)
                stop.set()
                return

    @contextlib.asynccontextmanager
    async def watching(self, stop: threading.Event) -> AsyncIterator[None]:
        """``watch`` beside the block, ended with it."""
        watcher = asyncio.ensure_future(self.watch(stop))
        try:
            yield
        finally:
            watcher.cancel()

    def error(self) -> Superseded:
        return Superseded(self.reason or f"job {self.job_id} moved on")


def write_result(store: JobStore, spec: JobSpec, data: bytes | Path, retry_s: float,
                 fence: AttemptFence | None = None) -> str:
    """Write a job's result (its bytes, or a local file's, streamed), only while its record
    says this run's attempt is the job's (``fence.ensure_current``; a superseded run raises
    ``Superseded`` and writes nothing). Storage that cannot be reached (503) is tried again
    with backoff for up to ``retry_s``; a full one (507) is final at once. Returns the
    result's key."""
    fence = fence or AttemptFence(store, spec)
    key = JobStore.result_key(spec.result_filename)
    deadline = time.monotonic() + retry_s
    delay = WRITE_RETRY_FIRST_S
    while True:
        try:
            fence.ensure_current()
            if isinstance(data, Path):
                store.storage.write_file(key, data)
            else:
                store.storage.write_bytes(key, data)
            return key
        except StorageError:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("job %s: job storage is not answering; writing its result again "
                           "in %.1f s", spec.job_id, delay)
            time.sleep(delay)
            delay = min(delay * 2, WRITE_RETRY_MAX_S)
