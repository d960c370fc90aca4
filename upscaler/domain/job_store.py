"""Job records in job storage (every write conditional; a driver's lease in each open record),
and the storage layout of a job's files. Design: docs/design/leases.md
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable

from upscaler.domain.jobs import TERMINAL_STATES, JobRecord
from upscaler.domain.storage import Storage, StorageError, WriteConflict

JOB_ID_RE = re.compile(r"[0-9a-f]{32}")
MAX_WRITE_TRIES = 50  # conflicts need a writer per try: only a storm of them runs out


class JobNotFound(KeyError):
    pass


class LeaseLost(Exception):
    """A driver's save was refused: the job has ended (``record.state``) or another runner
    holds its lease. The driver stops; the stored ``record`` is the truth."""

    def __init__(self, record: JobRecord):
        super().__init__(record.job_id)
        self.record = record


class JobStore:
    def __init__(self, storage: Storage, stale_after_s: float):
        self.storage = storage
        self.stale_after_s = stale_after_s  # a lease's length
        # job id -> (version, token, lease owner) of the record this store last wrote for an
        # open job: its driver's next save goes on top of it without reading it back first
        # (a conflict means another writer came between; the read-and-decide path runs).
        self._written: dict[str, tuple[int, str, str | None]] = {}

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

    @staticmethod
    def webhooks_marker_key(job_id: str) -> str:
        return f"webhooks/{job_id}"

    # --- records ---------------------------------------------------------------------------
    def delete_work_files(self, job_id: str, intermediates: bool = True) -> None:
        """A finished job keeps its record and result; its upload and intermediates (tiles
        and pre-pass: FLUX's) go. Called once the job has ended: until then its upload stays,
        for a re-run."""
        self.storage.delete(self.input_key(job_id))
        if intermediates:
            for key in list(self.storage.list(self.tiles_prefix(job_id))):
                self.storage.delete(key)
            self.storage.delete(self.prepass_key(job_id))

    def _read(self, job_id: str) -> tuple[JobRecord, str]:
        if not JOB_ID_RE.fullmatch(job_id):
            raise JobNotFound(job_id)
        try:
            raw, token = self.storage.read_versioned(self.record_key(job_id))
        except FileNotFoundError as exc:
            raise JobNotFound(job_id) from exc
        return JobRecord.model_validate(json.loads(raw)), token

    def load(self, job_id: str) -> JobRecord:
        """The stored record, as it is (reading never writes)."""
        return self._read(job_id)[0]

    def superseded(self, job_id: str, attempt: int) -> str | None:
        """Why an engine run of ``attempt`` must stop (None: it is still the job's run): the
        record moved on to a newer attempt (a takeover), the job ended (cancelled elsewhere),
        or it is gone. One read: engines call it about once a second, and before writing a
        result, never per tile."""
        try:
            stored = self.load(job_id)
        except JobNotFound:
            return f"job {job_id} no longer exists"
        if stored.state.is_terminal:
            return f"job {job_id} is {stored.state.value} already"
        if stored.attempts != attempt:
            return (f"job {job_id} was taken over: attempt {stored.attempts} runs it now, "
                    f"not attempt {attempt}")
        return None

    def create(self, job: JobRecord) -> None:
        """Store a new record; ``WriteConflict`` if one with its id exists. A job with a
        webhook is also marked (before its record exists, so no window lacks the mark): the
        delivery sweep finds unfinished deliveries of ended jobs by these marks."""
        if job.webhooks is not None:
            self.storage.write_bytes(self.webhooks_marker_key(job.job_id), b"")
        job.version = 1
        token = self.storage.write_if(self.record_key(job.job_id),
                                      job.model_dump_json().encode(), None)
        self._remember(job, token)

    def _remember(self, job: JobRecord, token: str) -> None:
        if job.state.is_terminal or len(self._written) > 10_000:
            self._written.pop(job.job_id, None)
        else:
            self._written[job.job_id] = (job.version, token, job.lease_owner)

    def update(self, job_id: str,
               change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None:
        """Read, ``change`` (a new record, or None to leave it), write conditionally; on a
        conflict read again and re-decide. Returns what was written (None: nothing)."""
        for attempt in range(MAX_WRITE_TRIES):
            current, token = self._read(job_id)
            new = change(current.model_copy(deep=True))
            if new is None:
                return None
            new.version = current.version + 1
            try:
                written = self.storage.write_if(self.record_key(job_id),
                                                new.model_dump_json().encode(), token)
                self._remember(new, written)
                return new
            except WriteConflict:
                time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise StorageError(f"job {job_id}: {MAX_WRITE_TRIES} conflicting writes in a row")

    def save(self, job: JobRecord) -> None:
        """A driver's write of its in-memory record (a new record is created). Refused with
        ``LeaseLost`` when the stored job has ended, is leased to another runner, or runs a
        newer attempt (claimed by this runner's own sweep too, after it let the job go), its
        end too: the newer attempt's result is the one kept (fencing). A driver whose lease
        ran out unclaimed still writes (nobody else drives the job)."""
        def change(stored: JobRecord) -> JobRecord | None:
            if stored.state.is_terminal:
                if stored.state == job.state and stored.lease_owner == job.lease_owner:
                    return None  # this very end, saved already
                raise LeaseLost(stored)
            if stored.lease_owner not in (None, job.lease_owner) or \
                    stored.attempts > job.attempts:
                raise LeaseLost(stored)
            return job.model_copy()

        known = self._written.get(job.job_id)
        if known is not None and known[0::2] == (job.version, job.lease_owner):
            # on top of this driver's own last write
            new = job.model_copy()
            new.version = job.version + 1
            try:
                token = self.storage.write_if(self.record_key(job.job_id),
                                              new.model_dump_json().encode(), known[1])
                self._remember(new, token)
                job.version = new.version
                return
            except WriteConflict:
                self._written.pop(job.job_id, None)  # someone else wrote: read and decide
        for _ in range(MAX_WRITE_TRIES):
            try:
                saved = self.update(job.job_id, change)
            except JobNotFound:
                try:
                    self.create(job)
                    return
                except WriteConflict:
                    continue
            if saved is not None:
                job.version = saved.version
            return
        raise StorageError(f"job {job.job_id}: could not be saved")

    def claim(self, job_id: str, owner: str, max_attempts: int,
              now: float | None = None) -> JobRecord | None:
        """Take over a job whose lease ran out: the claimant's lease and one more attempt, or,
        when its attempts are spent, the job failed with the reason. None: not claimable (it
        ended, its lease was renewed, or another runner claimed it first)."""
        def change(stored: JobRecord) -> JobRecord | None:
            at = now or time.time()
            if not stored.is_stale(self.stale_after_s, at):
                return None
            stored.lease_owner = owner
            stored.lease_expires_at = at + self.stale_after_s
            stored.heartbeat_at = at
            if stored.attempts >= max_attempts:
                stored.mark_failed(
                    f"the worker running this job stopped {stored.attempts} time(s) (service "
                    "restarted, replica or node died) before it finished; submit the image "
                    "again", code="worker_lost")
            else:
                stored.attempts += 1
            return stored

        try:
            return self.update(job_id, change)
        except JobNotFound:
            return None

    def open_job_ids(self) -> list[str]:
        """Jobs not finished yet: those whose upload is still stored (a finished job's upload
        is deleted), so a sweep costs a listing of open jobs, not of every job ever run."""
        names = (key.rsplit("/", 1)[-1] for key in self.storage.list("inputs"))
        return [name for name in names if JOB_ID_RE.fullmatch(name)]

    def webhook_job_ids(self) -> list[str]:
        """Jobs marked as having a webhook whose deliveries may not all be finished."""
        names = (key.rsplit("/", 1)[-1] for key in self.storage.list("webhooks"))
        return [name for name in names if JOB_ID_RE.fullmatch(name)]

    def forget_webhooks(self, job_id: str) -> None:
        """The job's deliveries are all finished (or the job is gone): drop its mark."""
        self.storage.delete(self.webhooks_marker_key(job_id))

    def expired_jobs(self, now: float | None = None) -> list[JobRecord]:
        """Sweep: every open job whose driver's lease ran out (to be claimed); an ended job's
        leftover upload is deleted on the way."""
        found = []
        for job_id in self.open_job_ids():
            try:
                raw = json.loads(self.storage.read_bytes(self.record_key(job_id)))
            except (FileNotFoundError, ValueError):
                continue  # an upload whose record is not written yet (or never will be)
            if raw.get("state") in {s.value for s in TERMINAL_STATES}:
                # Its driver died between the final save and the clean-up: clean up for it.
                self.delete_work_files(job_id, JobRecord.model_validate(raw).resumable)
                continue
            job = JobRecord.model_validate(raw)
            if job.is_stale(self.stale_after_s, now):
                found.append(job)
        return found
