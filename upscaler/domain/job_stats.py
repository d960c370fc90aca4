"""Each engine's stats of a finished job, as its deployment reports them in ``Completed`` and
the job status answer shows them (``stats``): typed per engine, the JSON field for field what
the engines' dicts were."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict


class Contract(BaseModel):
    """A typed answer across a handle: frozen, and a field it does not know is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def as_json(self) -> dict[str, Any]:
        """The fields the answer was built with (a field left out stays out of the JSON)."""
        return self.model_dump(mode="json", exclude_unset=True)


class TileLogEntry(Contract):
    """One FLUX tile's way: sent by the coordinator, drawn by a replica, stored."""

    replica: str
    seconds: float
    started_at: float
    finished_at: float
    tile: int
    sent: float
    returned: float
    stored: float
    delta_e: float | None = None  # its drift (deployments.flux: _fixed_and_drift)
    attempts: int = 1  # draws made: more than one when it drifted past the threshold


class _JobStats(Contract):
    encode_seconds: float = 0.0  # set by ``with_output`` once the result is written
    output_bytes: int = 0
    quality_seconds: float = 0.0  # the fidelity report's time (``deployments.quality``)

    def with_quality_seconds(self, seconds: float) -> Self:
        return self.model_copy(update={"quality_seconds": seconds})

    def with_output(self, encode_seconds: float, output_bytes: int) -> Self:
        return self.model_copy(update={"encode_seconds": encode_seconds,
                                       "output_bytes": output_bytes})


class EsrganStats(_JobStats):
    model: str
    architecture: str
    model_scale: int
    passes: int
    pass_input: list[int]
    computed_pixels: int
    tile_size: int
    context: int
    tiles: int
    oom_retries: int
    device: str
    dtype: str
    model_seconds: float
    engine_seconds: float
    replica: str


class FluxStats(_JobStats):
    tiles: int
    tiles_computed: int
    tiles_resumed: int
    replicas: list[str]
    tile_log: list[TileLogEntry]
    timeline: dict[str, float]  # when each stage ended: start, prompt, prepass, tiles, image
    seconds: float


class ImagenStats(_JobStats):
    model: str
    vertex_factor: int
    vertex_output: list[int]
    vertex_seconds: float
    device: str


JobStats = EsrganStats | FluxStats | ImagenStats
