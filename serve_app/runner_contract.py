"""What the job runner (``serve_app.runner``) is given: the engine call, how to read its
failures, where its metrics go, and the hooks told of its jobs' events (webhooks) and ends
(bookkeeping). Its timings are in ``serve_app.leases``. Nothing here knows Ray: the Ingress
passes Ray's in (``upscaler.ray_support.worker_died``, ``upscaler.ray_support``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from upscaler.domain.jobs import JobEvent, JobRecord, JobSpec

# The engine call: the job, and its upload's bytes when they are at hand (a new job's, if
# small) so the replica need not read back what was just stored.
RunEngine = Callable[[JobSpec, bytes | None], AsyncIterator[JobEvent]]
INLINE_UPLOAD_BYTES = 4 * 1024 * 1024
JobEnded = Callable[[JobRecord], Awaitable[None]]


# Whether a failed engine call's process died (a replica, its node) rather than failing on
# the job: such a job is worth running again elsewhere.
WorkerLost = Callable[[BaseException], bool]


def no_worker_lost(exc: BaseException) -> bool:
    """Where no engine call runs in another process (tests, in-process engines)."""
    return False


class JobMetrics(Protocol):
    """Where the runner's figures go (by engine name): jobs accepted, jobs ended (by final
    state, with the processing time of a completed one), open jobs."""

    def submitted(self, engine: str) -> None: ...

    def ended(self, engine: str, state: str, seconds: float | None) -> None: ...

    def open_jobs(self, engine: str, count: int) -> None: ...


class NoMetrics:
    def submitted(self, engine: str) -> None: ...

    def ended(self, engine: str, state: str, seconds: float | None) -> None: ...

    def open_jobs(self, engine: str, count: int) -> None: ...


class JobWebhooks(Protocol):
    """A job's webhook deliveries (``serve_app.webhooks``): an event (started, progress,
    completed, failed, cancelled) is recorded into the job's record, then sent: a running
    job's at once, a job's end once the record holding it is stored, so a replica dying in
    between leaves it pending in storage, not lost. Neither may block."""

    def record(self, job: JobRecord, event: str) -> None: ...

    def send_pending(self, job: JobRecord) -> None: ...
