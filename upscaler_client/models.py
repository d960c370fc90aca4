"""What the client hands back: a job's status (from either the upscale answer or the status
body, whose field names differ), progress updates, and an upscale's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TERMINAL = frozenset({"completed", "failed", "cancelled"})
Stage = Literal["uploading", "retrying", "queued", "processing", "completed", "failed",
                "cancelled", "downloading"]


@dataclass(frozen=True)
class Job:
    """One job's state. ``raw`` is the API's JSON as it came (every field it has, e.g.
    ``output_size``, ``stats``, ``cropInfo``)."""

    id: str
    status: str
    progress: int = 0
    output_url: str | None = None
    error: str | None = None
    error_code: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> Job:
        """From ``GET /api/status`` (task_id, output_url), an events stream's data (the same),
        or a ``POST /api/upscale`` answer (jobId, outputUrl)."""
        job_id = body.get("task_id") or body.get("job_id") or body.get("jobId")
        if not job_id:
            raise ValueError("not a job: no task_id/jobId")
        return cls(id=str(job_id), status=str(body.get("status", "queued")),
                   progress=int(body.get("progress") or 0),
                   output_url=body.get("output_url") or body.get("outputUrl"),
                   error=body.get("error"), error_code=body.get("error_code"), raw=body)

    @property
    def quality(self) -> Quality | None:
        """The fidelity report of a completed job (None before, or from an older server)."""
        body = self.raw.get("quality")
        return Quality.from_api(body) if isinstance(body, dict) else None

    def size(self, name: str = "output") -> tuple[int, int] | None:
        """``output`` or ``input`` size as (width, height), when the answer has it."""
        s = self.raw.get(f"{name}_size") or self.raw.get(f"{name}Size")
        return (int(s["width"]), int(s["height"])) if s else None

    def trim_box(self) -> tuple[int, int, int, int] | None:
        """With a bleed: the print without it (left, top, right, bottom) in the file's
        pixels, from either answer (``trim_box``, or ``bleed.trimBox``)."""
        box = self.raw.get("trim_box") or (self.raw.get("bleed") or {}).get("trimBox")
        return (int(box[0]), int(box[1]), int(box[2]), int(box[3])) if box else None


@dataclass(frozen=True)
class Quality:
    """How faithful the result is (the API's ``quality``): colour drift as CIEDE2000 between
    the output, area-averaged back to the input's size, and the input (below 1: not visible),
    the seam score over the tile borders (1.0: no seam; None for one tile), FLUX's re-drawn
    tiles, and the per-tile drift (``tiles``: dicts with ``box`` and ``delta_e_mean``)."""

    delta_e_mean: float
    delta_e_p95: float
    seam_score: float | None = None
    tiles_rerun: int = 0
    tiles: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> Quality:
        return cls(delta_e_mean=float(body["delta_e_mean"]),
                   delta_e_p95=float(body["delta_e_p95"]),
                   seam_score=None if body.get("seam_score") is None else float(
                       body["seam_score"]),
                   tiles_rerun=int(body.get("tiles_rerun") or 0),
                   tiles=list(body.get("tiles") or []))

    def summary(self) -> str:
        """One line (ASCII, for any terminal): ``dE2000 0.62 (p95 1.40), seams 1.02``."""
        text = f"dE2000 {self.delta_e_mean:.2f} (p95 {self.delta_e_p95:.2f})"
        if self.seam_score is not None:
            text += f", seams {self.seam_score:.2f}"
        if self.tiles_rerun:
            text += f", {self.tiles_rerun} tile{'s' if self.tiles_rerun > 1 else ''} re-drawn"
        return text


@dataclass(frozen=True)
class ProgressUpdate:
    """What a progress callback gets: the stage, the percentage (0-100), the job when there is
    one, and a short message (why a retry waits, the estimate while queued)."""

    stage: Stage
    progress: int = 0
    job: Job | None = None
    message: str = ""


@dataclass(frozen=True)
class UpscaleResult:
    """A finished upscale: the job's last status, and the result as bytes or as the path it
    was written to (one of the two)."""

    job: Job
    data: bytes | None = None
    path: Path | None = None
