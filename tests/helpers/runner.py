"""The job runner's test kit, shared by the runner, webhook, fencing and object-store tests:
fast timings, plain job records, a scripted fake engine, a storage that holds heartbeats
back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

from serve_app.runner import JobRunner, RunnerTimings
from upscaler.compute.dimensions import calculate_output_dimensions
from upscaler.domain.job_stats import ImagenStats
from upscaler.domain.job_store import JobStore
from upscaler.domain.jobs import (
    Completed,
    Engine,
    EsrganParams,
    FluxParams,
    ImagenParams,
    JobRecord,
    JobSpec,
    Progress,
    Size,
    Started,
)
from upscaler.domain.storage import Storage

FAST = RunnerTimings(heartbeat_s=0.02, stale_after_s=0.3, drain_s=0.5, max_resumes=2,
                     progress_save_s=0.0)


def fast_store(folder: Path) -> JobStore:
    """A job store in ``folder`` whose leases go stale at FAST's pace."""
    return JobStore(Storage(str(folder / "storage")), stale_after_s=FAST.stale_after_s)
PARAMS = {Engine.esrgan: EsrganParams(model="m"), Engine.flux: FluxParams(upscale_model="m"),
          Engine.imagen: ImagenParams(model="imagen-4.0-upscale-preview", factor=2,
                                      gcp_project_id="project", gcp_region="us-central1")}


def new_job(engine: Engine = Engine.esrgan) -> JobRecord:
    return JobRecord(engine=engine, params=PARAMS[engine], input_format="PNG",
                     plan=calculate_output_dimensions(8, 8, 4), input_size=Size(width=8, height=8),
                     output_size=Size(width=32, height=32))


FAKE_STATS = ImagenStats(model="fake", vertex_factor=2, vertex_output=[8, 8],
                         vertex_seconds=0.0, device="fake")


class FakeEngine:
    """Engine calls as the deployments stream them; each job's script says what happens."""

    def __init__(self, steps: int = 3, step_s: float = 0.01,
                 fail: list[BaseException] | None = None):
        self.steps, self.step_s = steps, step_s
        self.fail = list(fail or [])  # raised by the next calls, one each
        self.calls: list[str] = []
        self.uploads: list[bytes | None] = []
        self.cancelled: list[str] = []

    async def run(self, spec: JobSpec, data: bytes | None = None) -> AsyncIterator:
        self.calls.append(spec.job_id)
        self.uploads.append(data)
        try:
            yield Started("fake-replica")
            for done in range(1, self.steps + 1):
                await asyncio.sleep(self.step_s)
                if self.fail:
                    raise self.fail.pop(0)
                yield Progress(done, self.steps)
            yield Completed(JobStore.result_key(spec.result_filename), spec.result_filename,
                            FAKE_STATS)
        except (asyncio.CancelledError, GeneratorExit):  # the call cancelled, or its stream
            self.cancelled.append(spec.job_id)
            raise


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def started(store: JobStore, engine: FakeEngine, **kwargs) -> JobRunner:
    runner = JobRunner(store, engine.run, FAST, **kwargs)
    runner.start()
    return runner


class SlowHeartbeats(Storage):
    """Real local storage whose writes of a running job's record are held back: a heartbeat
    computed before the job ended lands after its final save."""

    def __init__(self, url: str, delay_s: float, options: dict | None = None):
        super().__init__(url, options)
        self.delay_s = delay_s
        self.delayed = 0

    def write_if(self, key: str, data: bytes, expected: str | None) -> str:
        if key.startswith("jobs/") and b'"state":"processing"' in data:
            self.delayed += 1
            time.sleep(self.delay_s)
        return super().write_if(key, data, expected)
