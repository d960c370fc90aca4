"""What the job runner (``serve_app.runner``) is given: the engine call, its timings, and the
hooks told of its jobs' events (webhooks) and ends (bookkeeping); and how a runner takes on a
stored record that overrides its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from upscaler.jobs import JobEvent, JobRecord, JobSpec

# The engine call: the job, and its upload's bytes when they are at hand (a new job's, if
# small) so the replica need not read back what was just stored.
RunEngine = Callable[[JobSpec, bytes | None], AsyncIterator[JobEvent]]
INLINE_UPLOAD_BYTES = 4 * 1024 * 1024
JobEnded = Callable[[JobRecord], Awaitable[None]]


class JobWebhooks(Protocol):
    """A job's webhook deliveries (``serve_app.webhooks``): an event (started, progress,
    completed, failed, cancelled) is recorded into the job's record, then sent: a running
    job's at once, a job's end once the record holding it is stored, so a replica dying in
    between leaves it pending in storage, not lost. Neither may block."""

    def record(self, job: JobRecord, event: str) -> None: ...

    def send_pending(self, job: JobRecord) -> None: ...


@dataclass(frozen=True)
class RunnerTimings:
    heartbeat_s: float = 3.0
    stale_after_s: float = 30.0
    drain_s: float = 60.0  # ESRGAN/Imagen jobs' time to finish when the runner stops
    max_resumes: int = 3  # resumable jobs, after a failed engine call
    max_attempts: int = 3  # runs of a job whose driver or replica died under it
    progress_save_s: float = 0.5  # bounds record writes on object stores


def adopt(job: JobRecord, stored: JobRecord) -> None:
    """The stored truth, taken into the record a runner holds (what its waiters see)."""
    for name in type(stored).model_fields:
        setattr(job, name, getattr(stored, name))
