"""How long a job will take, as this replica sees it: the estimator's rates, the runner's open
jobs of its engine, and the device the engine last named."""

from __future__ import annotations

import time
from dataclasses import dataclass

from serve_app.estimates import Estimator
from serve_app.gateway import EngineGateway
from serve_app.runner import JobRunner
from upscaler.domain.jobs import Engine, JobRecord


@dataclass(frozen=True)
class Outlook:
    estimator: Estimator
    runner: JobRunner
    engines: EngineGateway

    def open_count(self, engine: Engine) -> int:
        return self.runner.open_count(engine)

    def estimate(self, job: JobRecord, jobs_ahead: int) -> float:
        """Seconds until ``job`` is done with ``jobs_ahead`` of its engine before it."""
        return self.estimator.estimate(job, jobs_ahead, self.engines.device(job.engine))

    def jobs_ahead(self, job: JobRecord) -> int | None:
        return self.runner.jobs_ahead(job)

    def time_left(self, job: JobRecord, jobs_ahead: int | None) -> float | None:
        """Seconds until an open job ends (None once it ended)."""
        return self.estimator.time_left(job, jobs_ahead, self.engines.device(job.engine),
                                        time.time())

    def for_output(self, engine: Engine, output_mp: float) -> float:
        """Seconds for a job not made yet, behind every open job of its engine."""
        return self.estimator.estimate_output(engine, output_mp, self.runner.open_count(engine),
                                              self.engines.device(engine))
