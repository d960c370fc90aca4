"""How long a job will take: a fixed cost per job plus seconds per megapixel computed, by
engine; the per-megapixel rate first from a table, then learned from the jobs that completed
here; times the jobs of that engine ahead of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from upscaler.domain.jobs import Engine, JobRecord, JobState


@dataclass(frozen=True)
class InitialRate:
    """Seconds per output megapixel before anything was measured, and per job whatever its
    size (loading, encoding, a network round trip)."""

    cpu: float
    cuda: float
    per_job: float


LEARNING_WEIGHT = 0.3  # of each new measurement in the running average
MEASURED_FROM = 0.1  # progress after which a running job's own pace predicts its end


class Estimator:
    def __init__(self, initial: Mapping[Engine, InitialRate]) -> None:
        """``initial``: each engine's rates before any was measured (its EngineSpec's)."""
        self._initial = dict(initial)
        self._seconds_per_mp: dict[Engine, float] = {}

    def estimate(self, job: JobRecord, jobs_ahead: int, device: str | None) -> float:
        """Seconds until ``job`` is done with ``jobs_ahead`` of its engine before it."""
        return self.estimate_output(job.engine, _megapixels(job), jobs_ahead, device)

    def estimate_output(self, engine: Engine, output_mp: float, jobs_ahead: int,
                        device: str | None) -> float:
        """Seconds for a job of ``engine`` making ``output_mp`` megapixels (before it exists:
        the page's plan)."""
        initial = self._initial[engine]
        rate = self._seconds_per_mp.get(
            engine, initial.cuda if (device or "").startswith("cuda") else initial.cpu)
        one_job = initial.per_job + output_mp * rate
        return max(0.1, round(one_job * (1 + max(0, jobs_ahead)), 1))

    def time_left(self, job: JobRecord, jobs_ahead: int | None, device: str | None,
                  now: float) -> float | None:
        """Seconds until an open ``job`` ends: the estimate while queued; while processing,
        the time spent so far extrapolated over the progress (the estimate's share of the
        work left before there is progress enough to go by)."""
        if job.state.is_terminal:
            return None
        if job.state == JobState.queued or job.started_at is None:
            return self.estimate(job, jobs_ahead or 0, device)
        done = job.progress / 100
        if done >= MEASURED_FROM:
            return max(0.1, round((now - job.started_at) * (1 - done) / done, 1))
        return max(0.1, round(self.estimate(job, 0, device) * (1 - done), 1))

    def learn(self, job: JobRecord) -> None:
        """A completed job's measured rate, folded into the running average."""
        mp = _megapixels(job)
        if job.processing_time and mp > 0:
            new = max(0.0, job.processing_time - self._initial[job.engine].per_job) / mp
            old = self._seconds_per_mp.get(job.engine, new)
            self._seconds_per_mp[job.engine] = (1 - LEARNING_WEIGHT) * old + LEARNING_WEIGHT * new


def _megapixels(job: JobRecord) -> float:
    """What the job computes (its pass plan: ``upscaler.domain.metering``); older records, its
    output."""
    if job.work is not None:
        return job.work.megapixels
    return job.output_size.width * job.output_size.height / 1e6
