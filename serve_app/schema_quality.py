"""The fidelity report of a completed job as the API answers it (``quality`` in the status
answer, the events and a synchronous upscale answer). Measured by the engine on the uncropped
output before it is encoded (``upscaler.compute.fidelity``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from upscaler.domain.quality import Quality


class TileQualityReport(BaseModel):
    box: tuple[int, int, int, int] = Field(
        description="The tile (or heat-map cell) in output pixels before any crop: left, "
        "top, right, bottom.")
    delta_e_mean: float = Field(description="Mean CIEDE2000 of the input pixels it covers.")


class QualityReport(BaseModel):
    delta_e_mean: float = Field(
        description="Colour drift: mean CIEDE2000 (sRGB values; alpha ignored) between the "
        "output, area-averaged back to the input's size, and the input. Below 1 is not "
        "visible; 2 and more is.")
    delta_e_p95: float = Field(description="Its 95th percentile over the input's pixels.")
    seam_score: float | None = Field(
        None, description="Mean |difference| of the pixel pairs straddling the tile borders "
        "over that of every other adjacent pair: 1.0 = no seam; null for a job of one tile.")
    tiles_rerun: int = Field(
        0, description="FLUX: tiles drawn again because they drifted past "
        "UPSCALER_FLUX_TILE_MAX_DELTA_E (new seed, then half the denoise); 0 otherwise.")
    tile_grid: tuple[int, int] = Field((1, 1), description="Rows and columns of `tiles`.")
    tiles: list[TileQualityReport] = Field(
        default_factory=list, description="Per-tile ΔE for a heat map (grids over 4096 "
        "tiles are coarsened), row by row.")

    @classmethod
    def of(cls, quality: Quality | None) -> QualityReport | None:
        return None if quality is None else cls.model_validate(quality.model_dump())
