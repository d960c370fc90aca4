"""Quotas and rate limits, as plain bookkeeping: a token bucket of requests per minute per key,
open jobs per key and per engine; per key per UTC day the megapixels computed, FLUX
megapixel-steps and jobs (what ``upscaler.domain.metering`` charges); the bytes of results kept.

One ``QuotaBook`` must serve every Ingress replica for the limits to hold across them: the
service keeps it in one Serve replica (``deployments/quotas.py``), whose calls run one at a
time, so a decision is never made on a stale count (see that module for why not the store).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from upscaler.domain.jobs import JobWork
from upscaler.errors import RateLimited, ServiceUnavailable

WINDOW_S = 60
FULL_RETRY_S = 5  # when a slot frees up is not known: a short wait, then ask again
STORED_RETRY_S = 60  # results go when deleted or expired: not known when either comes
DAY_S = 86_400
# The day's counters, by name (as in the usage file and GET /api/usage).
MEGAPIXELS, FLUX_STEPS, JOBS = "output_mp", "flux_mp_steps", "jobs"
DAY_COUNTERS = (MEGAPIXELS, FLUX_STEPS, JOBS)


@dataclass(frozen=True)
class Allowance:
    used: float
    limit: float


@dataclass(frozen=True)
class UsageFigures:
    """A key's usage and limits now (GET /api/usage), as the Quotas replica answers them."""

    megapixels: Allowance  # computed today (UTC)
    flux_megapixel_steps: Allowance
    jobs: Allowance
    open_jobs: Allowance
    stored_bytes: Allowance
    requests_per_minute: int
    resets_in_s: int  # until the day's counts start again


@dataclass(frozen=True)
class KeyQuota:
    per_minute: int
    max_open_jobs: int
    output_mp_per_day: float  # megapixels computed (the name is the setting's)
    flux_mp_steps_per_day: float
    jobs_per_day: int
    stored_bytes: int

    def day_limit(self, counter: str) -> float:
        return {MEGAPIXELS: self.output_mp_per_day, FLUX_STEPS: self.flux_mp_steps_per_day,
                JOBS: self.jobs_per_day}[counter]


@dataclass(frozen=True)
class RateState:
    """What the IETF RateLimit headers say: the policy (``limit`` per ``WINDOW_S``), what is
    left now, and the seconds until the bucket is full again."""

    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        return {"RateLimit-Policy": f'"default";q={self.limit};w={WINDOW_S}',
                "RateLimit": f'"default";r={self.remaining};t={self.reset_s}'}


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class QuotaBook:
    clock: Callable[[], float] = time.time
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _open_by_key: dict[str, set[str]] = field(default_factory=dict)
    _open_by_engine: dict[str, set[str]] = field(default_factory=dict)
    _day: int = -1
    # Per counter (DAY_COUNTERS), per bucket: today's total.
    _counts: dict[str, dict[str, float]] = field(default_factory=dict)
    # Per bucket, per job: the bytes of its result while it is kept.
    _stored: dict[str, dict[str, int]] = field(default_factory=dict)

    # --- requests ------------------------------------------------------------------------
    def hit(self, bucket: str, per_minute: int) -> RateState:
        """Take one request from the bucket, or raise RateLimited with when to retry."""
        now = self.clock()
        rate = per_minute / WINDOW_S
        state = self._buckets.get(bucket)
        if state is None:
            state = self._buckets[bucket] = _Bucket(float(per_minute), now)
        state.tokens = min(float(per_minute), state.tokens + (now - state.updated) * rate)
        state.updated = now
        if state.tokens < 1:
            wait = math.ceil((1 - state.tokens) / rate)
            limits = RateState(per_minute, 0, math.ceil((per_minute - state.tokens) / rate))
            raise RateLimited(f"more than {per_minute} requests per minute with this key; "
                              f"retry in {wait} s", retry_after=wait, headers=limits.headers())
        state.tokens -= 1
        return RateState(per_minute, int(state.tokens),
                         math.ceil((per_minute - state.tokens) / rate))

    # --- jobs ----------------------------------------------------------------------------
    def admit(self, bucket: str, job_id: str, engine: str, work: JobWork, quota: KeyQuota,
              max_open_per_engine: int, metered: bool = True) -> None:
        """Count a new job against its engine's cap and (``metered``) its key's quotas, or
        raise: ServiceUnavailable when the engine is full, RateLimited past a key's quota."""
        engine_open = self._open_by_engine.setdefault(engine, set())
        if len(engine_open) >= max_open_per_engine:
            raise ServiceUnavailable(f"the {engine} engine has {len(engine_open)} jobs open, "
                                     "its limit; retry shortly", code="engine_busy",
                                     retry_after=FULL_RETRY_S)
        key_open = self._open_by_key.setdefault(bucket, set())
        charge = {MEGAPIXELS: work.megapixels, FLUX_STEPS: work.flux_megapixel_steps,
                  JOBS: 1}
        if metered:
            if len(key_open) >= quota.max_open_jobs:
                raise RateLimited(f"this key has {len(key_open)} jobs open, its limit; retry "
                                  "when one has finished", code="too_many_open_jobs",
                                  retry_after=FULL_RETRY_S)
            stored = self.stored_bytes(bucket)
            if stored >= quota.stored_bytes:
                raise RateLimited(
                    f"this key's results kept take {stored:,} bytes, its limit of "
                    f"{quota.stored_bytes:,}; delete results no longer needed (DELETE "
                    "/api/jobs/{id}) or wait until they expire", code="storage_quota_exhausted",
                    retry_after=STORED_RETRY_S)
            for counter in DAY_COUNTERS:
                self._check_day(bucket, counter, charge[counter], quota.day_limit(counter))
        for counter in DAY_COUNTERS:
            today = self._today_counts(counter)
            today[bucket] = today.get(bucket, 0) + charge[counter]
        engine_open.add(job_id)
        key_open.add(job_id)

    def _check_day(self, bucket: str, counter: str, charge: float, limit: float) -> None:
        used = self._today_counts(counter).get(bucket, 0)
        if charge and used + charge > limit:
            what = {MEGAPIXELS: f"this job's {charge:,.1f} MP computed",
                    FLUX_STEPS: f"this job's {charge:,.1f} FLUX megapixel-steps",
                    JOBS: "one more job"}[counter]
            unit = {MEGAPIXELS: "MP", FLUX_STEPS: "megapixel-steps", JOBS: "jobs"}[counter]
            raise RateLimited(
                f"{what} would pass this key's {limit:,g} {unit} for today ({used:,.1f} "
                "used); the count starts again at 00:00 UTC", code="daily_quota_exhausted",
                retry_after=self._seconds_to_midnight())

    def reopen(self, bucket: str, job_id: str, engine: str) -> None:
        """A job admitted before this book started (its keeper restarted): open, uncharged."""
        self._open_by_engine.setdefault(engine, set()).add(job_id)
        self._open_by_key.setdefault(bucket, set()).add(job_id)

    def release(self, bucket: str, job_id: str, engine: str) -> None:
        """A job ended (idempotent)."""
        self._open_by_engine.get(engine, set()).discard(job_id)
        self._open_by_key.get(bucket, set()).discard(job_id)

    def open_jobs(self, engine: str) -> int:
        return len(self._open_by_engine.get(engine, ()))

    # --- results kept -------------------------------------------------------------------
    def stored(self, bucket: str, job_id: str, nbytes: int) -> None:
        """A job's result is kept (idempotent: a job counts once)."""
        self._stored.setdefault(bucket, {})[job_id] = int(nbytes)

    def unstored(self, bucket: str, job_id: str) -> bool:
        """A job's result is gone (deleted or expired); whether it was counted."""
        return self._stored.get(bucket, {}).pop(job_id, None) is not None

    def stored_bytes(self, bucket: str) -> int:
        return sum(self._stored.get(bucket, {}).values())

    def stored_of(self, bucket: str) -> dict[str, int]:
        return dict(self._stored.get(bucket, {}))

    def restore_stored(self, bucket: str, jobs: dict[str, int]) -> None:
        self._stored[bucket] = {str(k): int(v) for k, v in jobs.items()}

    # --- the day's usage, kept across restarts of the keeper -----------------------------
    def _today(self) -> int:
        return int(self.clock() // DAY_S)

    def _today_counts(self, counter: str) -> dict[str, float]:
        if self._day != self._today():
            self._day, self._counts = self._today(), {}
        return self._counts.setdefault(counter, {})

    def _usage_today(self, bucket: str) -> float:
        return self._today_counts(MEGAPIXELS).get(bucket, 0.0)

    def _seconds_to_midnight(self) -> int:
        return max(1, math.ceil((self._today() + 1) * DAY_S - self.clock()))

    def figures(self, bucket: str, quota: KeyQuota) -> UsageFigures:
        """The key's usage and limits now (GET /api/usage)."""
        def today(counter: str) -> Allowance:
            return Allowance(round(self._today_counts(counter).get(bucket, 0), 3),
                             quota.day_limit(counter))

        return UsageFigures(
            megapixels=today(MEGAPIXELS), flux_megapixel_steps=today(FLUX_STEPS),
            jobs=today(JOBS),
            open_jobs=Allowance(len(self._open_by_key.get(bucket, ())), quota.max_open_jobs),
            stored_bytes=Allowance(self.stored_bytes(bucket), quota.stored_bytes),
            requests_per_minute=quota.per_minute, resets_in_s=self._seconds_to_midnight())

    def usage(self) -> dict:
        self._today_counts(MEGAPIXELS)
        return {"day": self._day, **{c: dict(self._counts.get(c, {})) for c in DAY_COUNTERS}}

    def restore(self, usage: dict) -> None:
        if usage.get("day") == self._today():
            self._day = usage["day"]
            self._counts = {c: dict(usage.get(c, {})) for c in DAY_COUNTERS}
