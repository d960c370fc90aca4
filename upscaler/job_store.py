"""Job records in job storage, and the storage layout of a job's files.

One writer per job: the ingress replica that drives it (its ``owner``), which heart-beats it. A
reader that finds an open job whose heartbeat is older than ``stale_after_s`` reports it failed
(``worker_lost``), so a job whose replica or service died is never left "processing"; resumable
jobs (FLUX) are left for a sweep to resume instead.
"""

from __future__ import annotations

import json
import re

from upscaler.jobs import TERMINAL_STATES, JobRecord, JobState
from upscaler.settings import Settings
from upscaler.storage import Storage

JOB_ID_RE = re.compile(r"[0-9a-f]{32}")


class JobNotFound(KeyError):
    pass


class JobStore:
    def __init__(self, storage: Storage, stale_after_s: float):
        self.storage = storage
        self.stale_after_s = stale_after_s

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        return cls(Storage(settings.resolved_storage_url), settings.stale_after_s)

    # --- layout ----------------------------------------------------------------------------
    @staticmethod
    def record_key(job_id: str) -> str:
        return f"jobs/{job_id}.json"

    @staticmethod
    def input_key(job_id: str) -> str:
        return f"inputs/{job_id}"

    @staticmethod
    def tiles_prefix(job_id: str) -> str:
        return f"jobs/{job_id}/tiles"

    @staticmethod
    def prepass_key(job_id: str) -> str:
        return f"jobs/{job_id}/prepass.npz"

    @staticmethod
    def result_key(filename: str) -> str:
        return f"results/{filename}"

    # --- records ---------------------------------------------------------------------------
    def delete_work_files(self, job_id: str, intermediates: bool = True) -> None:
        """A finished job keeps its record and result; its upload and intermediates (tiles
        and pre-pass: FLUX's) go."""
        self.storage.delete(self.input_key(job_id))
        if intermediates:
            for key in list(self.storage.list(self.tiles_prefix(job_id))):
                self.storage.delete(key)
            self.storage.delete(self.prepass_key(job_id))

    def save(self, job: JobRecord) -> None:
        self.storage.write_bytes(self.record_key(job.job_id), job.model_dump_json().encode())

    def load(self, job_id: str) -> JobRecord:
        """Load a job; an open job whose owner stopped heart-beating is failed (and saved)."""
        if not JOB_ID_RE.fullmatch(job_id):
            raise JobNotFound(job_id)
        try:
            raw = self.storage.read_bytes(self.record_key(job_id))
        except FileNotFoundError as exc:
            raise JobNotFound(job_id) from exc
        job = JobRecord.model_validate(json.loads(raw))
        if job.is_stale(self.stale_after_s) and not job.resumable:
            job.mark_failed(
                "the worker running this job stopped (service restarted or replica died) "
                "before it finished; submit the image again", code="worker_lost")
            self.save(job)
        return job

    def open_job_ids(self) -> list[str]:
        """Jobs not finished yet: those whose upload is still stored (a finished job's upload
        is deleted), so a sweep costs a listing of open jobs, not of every job ever run."""
        names = (key.rsplit("/", 1)[-1] for key in self.storage.list("inputs"))
        return [name for name in names if JOB_ID_RE.fullmatch(name)]

    def abandoned_jobs(self) -> list[JobRecord]:
        """Sweep: every open job whose owner stopped heart-beating. Plain jobs are reported
        failed (and saved); resumable ones are returned for the caller to resume."""
        found = []
        for job_id in self.open_job_ids():
            try:
                raw = json.loads(self.storage.read_bytes(self.record_key(job_id)))
            except (FileNotFoundError, ValueError):
                continue
            if raw.get("state") in {s.value for s in TERMINAL_STATES}:
                continue
            job = self.load(job_id)
            if job.state == JobState.failed or job.is_stale(self.stale_after_s):
                found.append(job)
        return found
