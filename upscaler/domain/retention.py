"""Retention: what job storage keeps, and for how long (a finished job's record and result, then
a tombstone answering 410); one idempotent, batched sweep on every Ingress replica.
Design: docs/design/operations.md
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import posixpath
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

from pydantic import ValidationError

from upscaler.domain.idempotency import PREFIX as IDEMPOTENCY_PREFIX
from upscaler.domain.job_store import JOB_ID_RE, JobStore
from upscaler.domain.jobs import JobRecord

logger = logging.getLogger("ray.serve")
TOMBSTONES = "expired"
TMP_SUFFIX = ".tmp"


def tombstone_key(job_id: str) -> str:
    return f"{TOMBSTONES}/{job_id}"


def was_expired(store: JobStore, job_id: str) -> bool:
    """A job the sweep deleted (it answers 410, not 404)."""
    return bool(JOB_ID_RE.fullmatch(job_id)) and store.storage.exists(tombstone_key(job_id))


def delete_result(store: JobStore, job: JobRecord) -> JobRecord:
    """DELETE on a finished job: its result goes, its record says so (again: a no-op)."""
    if job.result_key and not job.result_deleted:
        store.storage.delete(job.result_key)

        def deleted(stored: JobRecord) -> JobRecord:
            stored.result_deleted = True
            return stored

        return store.update(job.job_id, deleted) or job
    return job


class RetentionSweeper:
    def __init__(self, store: JobStore, orphan_grace_s: float, batch: int):
        self.store = store
        self.storage = store.storage
        self.orphan_grace_s = orphan_grace_s
        self.batch = batch
        self._cursor: dict[str, str] = {}  # per folder, the last key looked at
        # Jobs expired since last taken (``take_expired``): their results' bytes are no
        # longer their keys' (the quota keeper is told).
        self._expired: list[JobRecord] = []

    def expire(self, job: JobRecord, now: float) -> None:
        """Delete a job's result, files and record; its tombstone stays as long again."""
        if job.result_key:
            self.storage.delete(job.result_key)
        self.store.delete_work_files(job.job_id)
        keep = max(job.retention_s or 0.0, self.orphan_grace_s)
        self.storage.write_bytes(tombstone_key(job.job_id), str(now + keep).encode())
        self.storage.delete(JobStore.record_key(job.job_id))
        if job.webhooks is not None:  # deliveries still pending end with the job
            self.store.forget_webhooks(job.job_id)
        self._expired.append(job)

    def take_expired(self) -> list[JobRecord]:
        """The jobs expired since the last call."""
        taken, self._expired = self._expired, []
        return taken

    def sweep_once(self, now: float | None = None) -> Counter:
        """One bounded pass over every folder; returns what it deleted, by kind."""
        now = now or time.time()
        old = now - self.orphan_grace_s
        done: Counter = Counter()
        for key, modified, is_dir in self._batch("jobs"):
            name = posixpath.basename(key)
            if _is_old_tmp(name, modified, old):
                self._delete(key, done, "tmp")
            elif name.endswith(".json") and JOB_ID_RE.fullmatch(name[:-5]):
                job = self._load(key)
                if job is not None and job.is_expired(now):
                    self.expire(job, now)
                    done["jobs"] += 1
            elif is_dir and JOB_ID_RE.fullmatch(name) and _older(modified, old) and not (
                    self.storage.exists(JobStore.record_key(name))):
                for tile in list(self.storage.list(JobStore.tiles_prefix(name))):
                    self.storage.delete(tile)  # intermediates of a job that is gone
                self.storage.delete(JobStore.prepass_key(name))
        for folder, kind in (("inputs", "orphan_inputs"), ("results", "orphan_results")):
            for key, modified, _ in self._batch(folder):
                name = posixpath.basename(key)
                job_id = name.split(".", 1)[0]
                if _is_old_tmp(name, modified, old):
                    self._delete(key, done, "tmp")
                elif (JOB_ID_RE.fullmatch(job_id) and _older(modified, old)
                      and not self.storage.exists(JobStore.record_key(job_id))):
                    self._delete(key, done, kind)
        self._sweep_expiring(IDEMPOTENCY_PREFIX, old, now, done, "idempotency_keys",
                             lambda raw: float(json.loads(raw)["expires_at"]))
        self._sweep_expiring(TOMBSTONES, old, now, done, "tombstones", float)
        return done

    def _sweep_expiring(self, folder: str, old: float, now: float, done: Counter, kind: str,
                        expiry: Callable[[bytes], float]) -> None:
        for key, modified, _ in self._batch(folder):
            if _is_old_tmp(key, modified, old):
                self._delete(key, done, "tmp")
                continue
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
                if expiry(self.storage.read_bytes(key)) <= now:
                    self._delete(key, done, kind)

    def _batch(self, folder: str) -> Iterator[tuple[str, float | None, bool]]:
        """Up to ``batch`` entries of a folder, after the last one looked at (then from the
        start again)."""
        entries = sorted(self.storage.list_detail(folder))
        after = self._cursor.get(folder, "")
        chosen = [e for e in entries if e[0] > after][:self.batch]
        if len(chosen) < self.batch:  # wrapped around
            chosen += [e for e in entries if e[0] <= after][:self.batch - len(chosen)]
        self._cursor[folder] = chosen[-1][0] if chosen and chosen[-1][0] > after else ""
        yield from chosen

    def _load(self, key: str) -> JobRecord | None:
        try:
            return JobRecord.model_validate(json.loads(self.storage.read_bytes(key)))
        except (FileNotFoundError, ValueError, ValidationError):
            return None

    def _delete(self, key: str, done: Counter, kind: str) -> None:
        self.storage.delete(key)
        done[kind] += 1


def _older(modified: float | None, than: float) -> bool:
    return modified is not None and modified < than


def _is_old_tmp(name: str, modified: float | None, than: float) -> bool:
    return name.endswith(TMP_SUFFIX) and _older(modified, than)


async def sweep_periodically(
        sweeper: RetentionSweeper, every_s: float,
        on_expired: Callable[[JobRecord], Awaitable[None]] | None = None) -> None:
    """The sweep, every ``every_s`` seconds, for as long as the task runs; ``on_expired``
    for each job it deleted."""
    while True:
        try:
            done = await asyncio.to_thread(sweeper.sweep_once)
            if done:
                logger.info("retention sweep deleted %s", dict(done))
        except Exception:  # noqa: BLE001 - storage away: the next period tries again
            logger.exception("retention sweep failed")
        for job in sweeper.take_expired():
            try:
                if on_expired is not None:
                    await on_expired(job)
            except Exception:  # noqa: BLE001 - bookkeeping; the job is gone either way
                logger.exception("after job %s expired", job.job_id)
        await asyncio.sleep(every_s)
