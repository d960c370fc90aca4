"""The service's Prometheus metrics, through Ray's metrics API (no-ops outside a Ray worker);
gauges are re-sent so Ray's agent does not drop them. Design: docs/design/operations.md
"""

from __future__ import annotations

import threading
import time
from functools import cache
from typing import Any

from deployments import ray_compat

LATENCY_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]
TILE_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120]
_lock = threading.Lock()
# (gauge factory, sorted tags) -> last value: what the refresh thread re-sends.
_gauge_values: dict[tuple[Any, tuple[tuple[str, str], ...]], float] = {}
_refresher: threading.Thread | None = None


class _Noop:
    def inc(self, *args: Any, **kwargs: Any) -> None: ...
    def set(self, *args: Any, **kwargs: Any) -> None: ...
    def observe(self, *args: Any, **kwargs: Any) -> None: ...


@cache
def _metric(kind: str, name: str, description: str, tags: tuple[str, ...],
            buckets: tuple[float, ...] | None = None):
    try:
        import ray
        from ray.util import metrics

        if not ray.is_initialized():
            return _Noop()
        if kind == "counter":
            return metrics.Counter(name, description, tag_keys=tags)
        if kind == "gauge":
            return metrics.Gauge(name, description, tag_keys=tags)
        return metrics.Histogram(name, description, boundaries=list(buckets or ()),
                                 tag_keys=tags)
    except Exception:  # noqa: BLE001 - metrics must never break a request
        return _Noop()


def jobs_total():
    return _metric("counter", "upscaler_jobs_total", "Jobs by engine and final status.",
                   ("engine", "status"))


def jobs_submitted():
    return _metric("counter", "upscaler_jobs_submitted_total", "Jobs accepted, by engine.",
                   ("engine",))


def queue_size():
    return _metric("gauge", "upscaler_queue_size", "Jobs accepted and not finished.",
                   ("engine",))


def job_seconds():
    return _metric("histogram", "upscaler_job_seconds",
                   "Job processing time (start to result), by engine.", ("engine",),
                   tuple(LATENCY_BUCKETS))


def tile_seconds():
    return _metric("histogram", "upscaler_tile_seconds", "Seconds per FLUX tile redraw.",
                   ("engine",), tuple(TILE_BUCKETS))


def model_load_seconds():
    return _metric("gauge", "upscaler_model_load_seconds", "Seconds the last load of a model "
                   "took.", ("engine", "model"))


def count(metric, value: float = 1.0, **tags: str) -> None:
    _apply(metric, "inc", value, tags)


def set_gauge(metric, value: float, **tags: str) -> None:
    global _refresher
    with _lock:
        _gauge_values[(metric, tuple(sorted(tags.items())))] = value
        if _refresher is None:
            _refresher = threading.Thread(target=_refresh_gauges, name="upscaler-gauges",
                                          daemon=True)
            _refresher.start()
    _apply(metric, "set", value, tags)


def _gauge_refresh_seconds() -> float:
    try:
        return ray_compat.metrics_report_interval_s() / 2
    except Exception:  # noqa: BLE001 - outside a Ray process: half Ray's default interval
        return 5.0


def _refresh_gauges() -> None:
    every = _gauge_refresh_seconds()
    while True:
        time.sleep(every)
        with _lock:
            values = list(_gauge_values.items())
        for (metric, tags), value in values:
            _apply(metric, "set", value, dict(tags))


def observe(metric, value: float, **tags: str) -> None:
    _apply(metric, "observe", value, tags)


def _apply(metric, method: str, value: float, tags: dict[str, str]) -> None:
    """Record without ever raising into the caller."""
    try:
        with _lock:
            getattr(metric(), method)(value, tags=tags)
    except Exception:  # noqa: BLE001
        pass


class RunnerMetrics:
    """The job runner's figures (``serve_app.runner_contract.JobMetrics``) as the metrics
    above."""

    def submitted(self, engine: str) -> None:
        count(jobs_submitted, engine=engine)

    def ended(self, engine: str, state: str, seconds: float | None) -> None:
        count(jobs_total, engine=engine, status=state)
        if seconds is not None:
            observe(job_seconds, seconds, engine=engine)

    def open_jobs(self, engine: str, count: int) -> None:
        set_gauge(queue_size, count, engine=engine)
