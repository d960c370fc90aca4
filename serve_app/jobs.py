"""Job records and their life cycle, persisted as JSON in job storage.

States: queued -> processing -> completed | failed (| cancelled). One writer per job: the
ingress replica that accepted it (its ``owner``). The owner heart-beats its open jobs; a reader
that finds an open job whose heartbeat is older than ``stale_after_s`` reports it failed, so a
job whose replica or service died is never left "processing".
"""

from __future__ import annotations

import json
import re
import time
import uuid
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from serve_app.storage import Storage


class JobState(str, Enum):
    queued = "queued"
    processing = "processing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.completed, JobState.failed, JobState.cancelled})
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
ENGINES = ("esrgan", "flux", "imagen")


class Size(BaseModel):
    width: int
    height: int


class JobRecord(BaseModel):
    job_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    engine: str
    state: JobState = JobState.queued
    progress: float = 0.0  # 0-100
    params: dict[str, Any] = Field(default_factory=dict)
    input_size: Size
    output_size: Size
    input_format: str | None = None
    plan: dict[str, Any] = Field(default_factory=dict)
    result_key: str | None = None
    result_filename: str | None = None
    error: str | None = None
    error_code: str | None = None
    error_status: int | None = None  # the HTTP status a failed job's error maps to
    retry_after: int | None = None
    stats: dict[str, Any] = Field(default_factory=dict)
    owner: str | None = None
    # Resumable jobs (FLUX) keep their finished tiles in storage: after a crash they are
    # resumed by the next ingress instead of being failed.
    resumable: bool = False
    resumes: int = 0
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float = Field(default_factory=time.time)

    @property
    def processing_time(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round(self.finished_at - self.started_at, 3)

    @property
    def total_time(self) -> float | None:
        return None if self.finished_at is None else round(self.finished_at - self.created_at, 3)

    def mark_processing(self) -> None:
        if self.state == JobState.queued:
            self.state = JobState.processing
            self.started_at = time.time()

    def mark_completed(self, result_key: str, result_filename: str, stats: dict) -> None:
        self.state = JobState.completed
        self.progress = 100.0
        self.result_key = result_key
        self.result_filename = result_filename
        self.stats = stats
        self.finished_at = time.time()
        self.started_at = self.started_at or self.finished_at

    def mark_failed(self, message: str, code: str = "processing_failed") -> None:
        self.state = JobState.failed
        self.error = message
        self.error_code = code
        self.finished_at = time.time()

    def is_stale(self, stale_after_s: float, now: float | None = None) -> bool:
        return (not self.state.is_terminal
                and (now or time.time()) - self.heartbeat_at > stale_after_s)



class JobNotFound(KeyError):
    pass


class JobStore:
    def __init__(self, storage: Storage, stale_after_s: float):
        self.storage = storage
        self.stale_after_s = stale_after_s

    @staticmethod
    def _key(job_id: str) -> str:
        return f"jobs/{job_id}.json"

    @staticmethod
    def input_key(job_id: str) -> str:
        return f"inputs/{job_id}"

    @staticmethod
    def tiles_prefix(job_id: str) -> str:
        return f"jobs/{job_id}/tiles"

    @staticmethod
    def result_key(filename: str) -> str:
        return f"results/{filename}"

    def delete_work_files(self, job_id: str) -> None:
        """A finished job keeps its record and result; its upload and intermediates go."""
        self.storage.delete(self.input_key(job_id))
        for key in list(self.storage.list(self.tiles_prefix(job_id))):
            self.storage.delete(key)
        self.storage.delete(f"jobs/{job_id}/prepass.npz")

    def save(self, job: JobRecord) -> None:
        self.storage.write_bytes(self._key(job.job_id), job.model_dump_json().encode())

    def load(self, job_id: str) -> JobRecord:
        """Load a job; an open job whose owner stopped heart-beating is failed (and saved)."""
        if not JOB_ID_RE.match(job_id):
            raise JobNotFound(job_id)
        try:
            job = JobRecord.model_validate(json.loads(self.storage.read_bytes(self._key(job_id))))
        except FileNotFoundError as exc:
            raise JobNotFound(job_id) from exc
        if job.is_stale(self.stale_after_s) and not job.resumable:
            job.mark_failed(
                "the worker running this job stopped (service restarted or replica died) "
                "before it finished; submit the image again", code="worker_lost")
            self.save(job)
        return job

    def open_job_ids(self) -> list[str]:
        """Jobs not finished yet: those whose upload is still stored (a finished job's upload
        is deleted), so a sweep costs a listing of open jobs, not of every job ever run."""
        ids = []
        for key in self.storage.list("inputs"):
            name = key.rsplit("/", 1)[-1]
            if JOB_ID_RE.match(name):
                ids.append(name)
        return ids

    def abandoned_jobs(self) -> list[JobRecord]:
        """Sweep: every open job whose owner stopped heart-beating. Plain jobs are reported
        failed (and saved); resumable ones are returned for the caller to resume."""
        found = []
        for job_id in self.open_job_ids():
            try:
                raw = json.loads(self.storage.read_bytes(self._key(job_id)))
            except (FileNotFoundError, ValueError):
                continue
            if raw.get("state") in {s.value for s in TERMINAL_STATES}:
                continue
            job = self.load(job_id)
            if job.state == JobState.failed or job.is_stale(self.stale_after_s):
                found.append(job)
        return found
