"""What crosses a Ray DeploymentHandle besides jobs, their events and stats
(``upscaler.domain.jobs``, ``upscaler.domain.job_stats``): an engine's status, the ESRGAN model
list, a FLUX tile. Typed, so a misspelt field fails where it is built, not silently where it is
read; picklable, as Ray sends them. ``as_json()`` is each one's API answer, field for field what
it was as a dict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from upscaler.compute.engines.models import ModelInfo
from upscaler.domain.job_stats import Contract


class EngineStatus(Contract):
    """Any engine's ``status()``: the common fields, then each engine's own (unset: absent
    from the JSON, as when each engine answered its own dict)."""

    installed: bool | None = None  # None: the engine has nothing to install (ESRGAN)
    replica: str | None = None
    device: str | None = None
    state: Literal["busy", "scaled_to_zero"] | None = None  # set by the gateway, not engines
    replicas: int | None = None
    error: str | None = None  # the deployment did not answer
    message: str | None = None
    gpu_available: bool | None = None
    gpu_name: str | None = None
    gpu_memory_free: float | None = None  # GB
    gpu_memory_total: float | None = None
    # ESRGAN
    models_loaded: list[str] | None = None
    busy_jobs: int | None = None
    completed_jobs: int | None = None
    superseded_jobs: int | None = None
    # FLUX
    tiles_done: int | None = None
    dtype: str | None = None
    memory_mode: str | None = None
    # Imagen (its configuration; Google is never called for a status)
    credentials_found: bool | None = None
    credentials_source: str | None = None
    project: str | None = None
    configured: bool | None = None
    model: str | None = None
    region: str | None = None
    api_endpoint: str | None = None
    calls: int | None = None

    @property
    def answered(self) -> bool:
        return self.error is None

    @property
    def ready(self) -> bool:
        """Answering, installed and configured (an engine that does not say is)."""
        return self.answered and self.installed is not False and self.configured is not False


@dataclass(frozen=True)
class ModelList:
    """The ESRGAN models a replica can load, the files it cannot (with why), the default."""

    models: tuple[ModelInfo, ...]
    unloadable: dict[str, str] = field(default_factory=dict)
    default: str | None = None

    def find(self, name: str | None) -> ModelInfo | None:
        """``name`` (None: the default), when listed."""
        wanted = name or self.default
        return next((m for m in self.models if m.name == wanted), None)

    def as_json(self) -> dict[str, Any]:
        return {"models": [m.as_dict() for m in self.models],
                "unloadable": dict(self.unloadable), "default": self.default}


@dataclass(frozen=True)
class TileResult:
    """One FLUX tile redrawn by a replica (half precision: half the bytes through Ray)."""

    image: np.ndarray
    replica: str
    seconds: float
    started_at: float
    finished_at: float


@dataclass(frozen=True)
class PrepassStored:
    """FLUX's pre-pass, made by an ESRGAN replica and kept in job storage (``key``, the npz
    the coordinator reads by bands): no image crosses the handle."""

    key: str
    width: int
    height: int
