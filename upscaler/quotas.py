"""Quotas and rate limits, as plain bookkeeping: a token bucket of requests per minute per key,
open jobs per key and per engine, output megapixels per key per UTC day.

One ``QuotaBook`` must serve every Ingress replica for the limits to hold across them: the
service keeps it in one Serve replica (``deployments/quotas.py``), whose calls run one at a
time, so a decision is never made on a stale count (see that module for why not the store).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from upscaler.errors import RateLimited, ServiceUnavailable

WINDOW_S = 60
FULL_RETRY_S = 5  # when a slot frees up is not known: a short wait, then ask again
DAY_S = 86_400


@dataclass(frozen=True)
class KeyQuota:
    per_minute: int
    max_open_jobs: int
    output_mp_per_day: float


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
    _mp_today: dict[str, float] = field(default_factory=dict)

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
    def admit(self, bucket: str, job_id: str, engine: str, output_mp: float, quota: KeyQuota,
              max_open_per_engine: int, metered: bool = True) -> None:
        """Count a new job against its engine's cap and (``metered``) its key's quotas, or
        raise: ServiceUnavailable when the engine is full, RateLimited past a key's quota."""
        engine_open = self._open_by_engine.setdefault(engine, set())
        if len(engine_open) >= max_open_per_engine:
            raise ServiceUnavailable(f"the {engine} engine has {len(engine_open)} jobs open, "
                                     "its limit; retry shortly", code="engine_busy",
                                     retry_after=FULL_RETRY_S)
        key_open = self._open_by_key.setdefault(bucket, set())
        if metered:
            if len(key_open) >= quota.max_open_jobs:
                raise RateLimited(f"this key has {len(key_open)} jobs open, its limit; retry "
                                  "when one has finished", code="too_many_open_jobs",
                                  retry_after=FULL_RETRY_S)
            used = self._usage_today(bucket)
            if used + output_mp > quota.output_mp_per_day:
                raise RateLimited(
                    f"this job's {output_mp:.1f} MP would pass this key's "
                    f"{quota.output_mp_per_day:g} MP for today ({used:.1f} used); the count "
                    "starts again at 00:00 UTC", code="daily_quota_exhausted",
                    retry_after=self._seconds_to_midnight())
            self._mp_today[bucket] = used + output_mp
        engine_open.add(job_id)
        key_open.add(job_id)

    def release(self, bucket: str, job_id: str, engine: str) -> None:
        """A job ended (idempotent)."""
        self._open_by_engine.get(engine, set()).discard(job_id)
        self._open_by_key.get(bucket, set()).discard(job_id)

    def open_jobs(self, engine: str) -> int:
        return len(self._open_by_engine.get(engine, ()))

    # --- the day's usage, kept across restarts of the keeper -----------------------------
    def _today(self) -> int:
        return int(self.clock() // DAY_S)

    def _usage_today(self, bucket: str) -> float:
        if self._day != self._today():
            self._day, self._mp_today = self._today(), {}
        return self._mp_today.get(bucket, 0.0)

    def _seconds_to_midnight(self) -> int:
        return max(1, math.ceil((self._today() + 1) * DAY_S - self.clock()))

    def usage(self) -> dict:
        self._usage_today("")
        return {"day": self._day, "output_mp": dict(self._mp_today)}

    def restore(self, usage: dict) -> None:
        if usage.get("day") == self._today():
            self._day, self._mp_today = usage["day"], dict(usage.get("output_mp", {}))
