"""Quota bookkeeping on a fake clock: the token bucket, open jobs per key and per engine,
megapixels per UTC day, and the IETF RateLimit headers."""

from __future__ import annotations

import pytest

from upscaler.domain.jobs import JobWork
from upscaler.domain.quotas import DAY_S, Allowance, KeyQuota, QuotaBook
from upscaler.errors import RateLimited, ServiceUnavailable

QUOTA = KeyQuota(per_minute=60, max_open_jobs=2, output_mp_per_day=100,
                 flux_mp_steps_per_day=1000, jobs_per_day=100, stored_bytes=10**6)


def mp(megapixels: float) -> JobWork:
    return JobWork(megapixels=megapixels)


class Clock:
    def __init__(self, now: float = 10 * DAY_S + 3600):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate_and_says_when_to_retry():
    clock = Clock()
    book = QuotaBook(clock)
    states = [book.hit("k", 3) for _ in range(3)]
    assert [s.remaining for s in states] == [2, 1, 0]
    assert states[0].headers() == {"RateLimit-Policy": '"default";q=3;w=60',
                                   "RateLimit": '"default";r=2;t=20'}
    with pytest.raises(RateLimited) as err:
        book.hit("k", 3)
    assert err.value.retry_after == 20 and err.value.http_status == 429
    assert err.value.headers["RateLimit"] == '"default";r=0;t=60'
    book.hit("other", 3)  # buckets are per key
    clock.now += 20  # one token back
    assert book.hit("k", 3).remaining == 0
    clock.now += 600  # never more than the burst
    assert book.hit("k", 3).remaining == 2


def test_open_jobs_per_key_and_per_engine():
    book = QuotaBook(Clock())
    book.admit("a", "j1", "esrgan", mp(1), QUOTA, max_open_per_engine=3)
    book.admit("a", "j2", "flux", mp(1), QUOTA, max_open_per_engine=3)
    with pytest.raises(RateLimited) as err:
        book.admit("a", "j3", "esrgan", mp(1), QUOTA, max_open_per_engine=3)
    assert err.value.code == "too_many_open_jobs" and err.value.retry_after > 0
    book.admit("b", "j4", "esrgan", mp(1), QUOTA, max_open_per_engine=3)
    book.admit("c", "j5", "esrgan", mp(1), QUOTA, max_open_per_engine=3)
    with pytest.raises(ServiceUnavailable) as busy:
        book.admit("d", "j6", "esrgan", mp(1), QUOTA, max_open_per_engine=3)
    assert busy.value.code == "engine_busy" and busy.value.retry_after > 0
    book.release("a", "j1", "esrgan")
    book.release("a", "j1", "esrgan")  # idempotent
    assert book.open_jobs("esrgan") == 2
    book.admit("a", "j7", "esrgan", mp(1), QUOTA, max_open_per_engine=3)


def test_megapixels_per_day_start_again_at_midnight_utc():
    clock = Clock(10 * DAY_S + DAY_S - 100)  # 100 s before midnight
    book = QuotaBook(clock)
    book.admit("a", "j1", "esrgan", mp(60), QUOTA, 10)
    book.release("a", "j1", "esrgan")
    with pytest.raises(RateLimited) as err:
        book.admit("a", "j2", "esrgan", mp(50), QUOTA, 10)
    assert err.value.code == "daily_quota_exhausted" and err.value.retry_after == 100
    book.admit("a", "j3", "esrgan", mp(40), QUOTA, 10)  # what is left still fits
    book.release("a", "j3", "esrgan")
    clock.now += 100
    book.admit("a", "j4", "esrgan", mp(99), QUOTA, 10)


def test_unmetered_jobs_count_only_against_the_engine():
    book = QuotaBook(Clock())
    for i in range(5):
        book.admit("anonymous", f"j{i}", "esrgan", mp(1000), QUOTA, 5, metered=False)
    with pytest.raises(ServiceUnavailable):
        book.admit("anonymous", "j9", "esrgan", mp(1), QUOTA, 5, metered=False)


def test_the_days_usage_survives_a_restart_of_the_keeper():
    clock = Clock()
    book = QuotaBook(clock)
    book.admit("a", "j1", "esrgan", mp(70), QUOTA, 10)
    again = QuotaBook(clock)
    again.restore(book.usage())
    with pytest.raises(RateLimited):
        again.admit("a", "j2", "esrgan", mp(40), QUOTA, 10)
    tomorrow = QuotaBook(Clock(clock.now + DAY_S))
    tomorrow.restore(book.usage())  # yesterday's count is not carried over
    tomorrow.admit("a", "j3", "esrgan", mp(99), QUOTA, 10)


def test_jobs_and_flux_work_per_day_and_their_figures():
    clock = Clock(10 * DAY_S + DAY_S - 50)
    book = QuotaBook(clock)
    quota = KeyQuota(60, 100, 100, flux_mp_steps_per_day=50, jobs_per_day=3, stored_bytes=10)
    book.admit("a", "j1", "flux", JobWork(megapixels=1, flux_megapixel_steps=40), quota, 10)
    with pytest.raises(RateLimited) as err:  # 40 + 20 FLUX megapixel-steps > 50
        book.admit("a", "j2", "flux", JobWork(megapixels=1, flux_megapixel_steps=20), quota, 10)
    assert err.value.code == "daily_quota_exhausted" and err.value.retry_after == 50
    assert "megapixel-steps" in err.value.message
    book.admit("a", "j3", "esrgan", mp(1), quota, 10)
    book.admit("a", "j4", "esrgan", mp(1), quota, 10)
    with pytest.raises(RateLimited, match="one more job") as err:
        book.admit("a", "j5", "esrgan", mp(1), quota, 10)
    assert err.value.retry_after == 50
    figures = book.figures("a", quota)
    assert figures.jobs == Allowance(used=3, limit=3)
    assert figures.flux_megapixel_steps == Allowance(used=40, limit=50)
    assert figures.megapixels == Allowance(used=3, limit=100)
    assert figures.open_jobs == Allowance(used=3, limit=100)
    again = QuotaBook(clock)  # the day's counts survive a restart of the keeper
    again.restore(book.usage())
    assert again.figures("a", quota).jobs.used == 3
    clock.now += 50
    book.admit("a", "j6", "esrgan", mp(1), quota, 10)


def test_bytes_of_results_kept_until_deleted():
    book = QuotaBook(Clock())
    quota = KeyQuota(60, 100, 100, 100, 100, stored_bytes=1000)
    book.stored("a", "j1", 600)
    book.stored("a", "j1", 600)  # a job counts once
    book.stored("a", "j2", 400)
    book.stored("b", "j3", 5000)
    assert book.stored_bytes("a") == 1000
    with pytest.raises(RateLimited) as err:
        book.admit("a", "j4", "esrgan", mp(1), quota, 10)
    assert err.value.code == "storage_quota_exhausted" and err.value.retry_after > 0
    assert book.unstored("a", "j2") and not book.unstored("a", "j2")  # idempotent
    book.admit("a", "j4", "esrgan", mp(1), quota, 10)
    assert book.figures("a", quota).stored_bytes == Allowance(used=600, limit=1000)
