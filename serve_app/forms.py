"""The upscale requests' form fields, one model per engine. Field names and defaults are the
API contract clients depend on (README "Endpoints"): new fields are additions, never renames."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app import print_fields as pf
from serve_app import schema_examples as ex
from serve_app.schema_bleed import lower_unit
from upscaler.compute.dimensions import BleedUnit
from upscaler.compute.engines.imagen import MODELS as IMAGEN_MODELS
from upscaler.compute.images import OUTPUT_FORMATS
from upscaler.domain.jobs import OutputOptions
from upscaler.domain.webhooks import DEFAULT_EVENTS, EVENTS
from upscaler.errors import InvalidRequest


def _strip_x(value: Any) -> Any:
    # Accept "x4" / "4x" as well as 4, like the Imagen field.
    if isinstance(value, str):
        return value.strip().lower().strip("x") or value
    return value


# What the code checks beyond one field's type, stated in the schema too (a form cannot send
# null: serve_app/openapi_forms.py drops the null branches of optional fields). Stated, not
# enforced by pydantic: the code's own check answers with its own error code.
# Printable ASCII: a host without credentials (no @), then a path, query or fragment.
WEBHOOK_URL_PATTERN = r'^[Hh][Tt][Tt][Pp][Ss]?://[!"$-.0->A-~]+([/?#][!-~]*)?$'
_EVENT = f"({'|'.join(EVENTS)})"
WEBHOOK_EVENTS_PATTERN = rf"^[ \t]*{_EVENT}?[ \t]*(,[ \t]*{_EVENT}?[ \t]*)*$"


# A print size in inches or a pixel target, not both (upscaler.compute.dimensions refuses the mix).
SIZE_PAIRS = [(a, b) for a in ("target_width_inches", "target_height_inches")
              for b in ("target_width", "target_height")]


def form_schema(examples: list[dict[str, Any]], *pairs: tuple[str, str]) -> dict[str, Any]:
    """A form's schema extras: its examples, and the fields it takes one of at most."""
    return {"examples": examples, "dependentRequired": {"webhook_events": ["webhook_url"]},
            "not": {"anyOf": [{"required": list(p)} for p in [*SIZE_PAIRS, *pairs]]}}


def one_model_name(model: str | None, upscale_model: str | None) -> str | None:
    """`model` and `upscale_model` are aliases: either, or both naming the same model."""
    if model and upscale_model and model != upscale_model:
        raise ValueError("`model` and `upscale_model` name different models; send one")
    return model or upscale_model


class CommonUpscaleForm(BaseModel):
    """Fields every engine takes (multipart form fields next to ``file``)."""

    model_config = ConfigDict(extra="ignore")

    target_dpi: int = Field(150, ge=1, le=2400, description="DPI written into the output and "
                            "used with the print size.", examples=[300])
    target_width_inches: float | None = Field(None, gt=0, le=1000, examples=[24],
                                              description="Print width in inches.")
    target_height_inches: float | None = Field(None, gt=0, le=1000, examples=[16],
                                               description="Print height in inches.")
    target_width: int | None = Field(
        None, ge=1, le=1_000_000, description="Target width in pixels, "
        "instead of a print size in inches: the same rule (fill, crop guidance, "
        "crop_to_target). Not together with target_width_inches/target_height_inches.")
    target_height: int | None = Field(None, ge=1, le=1_000_000,
                                      description="Target height in pixels; see target_width.")
    output_format: Literal["png", "tiff", "jpeg"] = pf.OUTPUT_FORMAT
    crop_to_target: bool = Field(
        False, description="When the print size has another aspect ratio: false (default) "
        "returns the filled size plus crop guidance; true crops centred to exactly "
        "the print size.")
    # --- formats (issue 23): how the file is written for print (serve_app/print_fields.py) ---
    jpeg_quality: int = pf.JPEG_QUALITY
    tiff_compression: Literal["none", "lzw", "deflate"] | None = pf.TIFF_COMPRESSION
    metadata: Literal["keep", "strip"] = pf.METADATA
    keep_gps: bool = pf.KEEP_GPS
    output_profile: Literal["input", "srgb"] = pf.OUTPUT_PROFILE
    wait: float | None = Field(
        None, ge=0, le=600,
        description="Seconds to wait for a synchronous answer before answering `queued`. "
        "Default from the server (30 s); 0 answers at once. The header `Prefer: respond-async` "
        "(or `Prefer: wait=N`) does the same.")
    webhook_url: str | None = Field(
        None, max_length=2000, json_schema_extra={"pattern": WEBHOOK_URL_PATTERN},
        description="http(s) URL to POST the job's events to, signed "
        "per Standard Webhooks with the API key's webhook secret (keys on), else the "
        "server's (see the README). Must resolve to a "
        "public address unless the server allows the host.")
    webhook_events: str | None = Field(
        None, max_length=200, description=f"Comma-separated subset of {', '.join(EVENTS)}; "
        f"default {','.join(DEFAULT_EVENTS)}. Only with webhook_url.",
        json_schema_extra={"pattern": WEBHOOK_EVENTS_PATTERN})
    # --- bleed (issue 23, part "bleed"): around the print size, in upscaler.compute.dimensions
    bleed: float = Field(0, ge=0, le=1000, examples=[0.125], description="Bleed on every "
                         "side of the print, in bleed_unit at target_dpi: the output covers the "
                         "print plus the bleed (24x16 in + 0.125 in at 300 dpi: 7275x4875 px). "
                         "Needs a print size or pixel target (else bleed_needs_print_size).")
    bleed_unit: BleedUnit = Field("in", description="Unit of bleed: in or mm.")
    _bleed_unit = field_validator("bleed_unit", mode="before")(lambda cls, v: lower_unit(v))

    @property
    def plan_factor(self) -> float:
        """The scale the print-size rule uses when no target size is given."""
        raise NotImplementedError

    @property
    def has_target_size(self) -> bool:
        """A print size or a pixel target was given (else ``upscale_factor`` sizes it)."""
        return any(v is not None for v in (self.target_width_inches, self.target_height_inches,
                                           self.target_width, self.target_height))

    def output_options(self) -> dict[str, Any]:
        """The fields of ``OutputOptions`` (how every engine's result is sized and written)."""
        return self.model_dump(include=set(OutputOptions.model_fields))

    @field_validator("output_format", mode="before")
    @classmethod
    def _fmt(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower().lstrip(".")
            value = {"tif": "tiff", "jpg": "jpeg"}.get(value, value)
        if value not in OUTPUT_FORMATS:
            raise ValueError("output_format must be 'png', 'tiff' or 'jpeg'")
        return value

    _print_choices = field_validator("tiff_compression", "metadata", "output_profile",
                                     mode="before")(pf.lower_choice)


class EsrganUpscaleForm(CommonUpscaleForm):
    model_config = ConfigDict(extra="ignore", json_schema_extra=form_schema(
        ex.FORM_ESRGAN, ("model", "upscale_model")))

    upscale_factor: float = Field(4, gt=0, le=16, description="Scale multiplier (2, 4, 2.5 ...)"
                                  " used when no print size is given.")
    model: str | None = Field(None, max_length=200, description="Model name (file stem in "
                              "upscale_models/); default: the server's default model.")
    upscale_model: str | None = Field(None, max_length=200, description="Alias of `model`.")
    tile_size: int = Field(0, ge=0, le=4096, description="Tile size (the part of the input "
                           "each tile keeps, px; the model also sees its context around it). "
                           "0 = automatic: the largest that fits the device's memory, the whole "
                           "image when it fits. Tiles give the untiled output either way "
                           "(for convolutional models), so this only trades memory for speed.",
                           json_schema_extra={"anyOf": [{"const": 0}, {"minimum": 64}]})
    use_fp16: bool = Field(True, description="Half precision on GPU (fp16, or bf16 for "
                           "architectures that need it); always fp32 on CPU.")

    _factor = field_validator("upscale_factor", mode="before")(lambda cls, v: _strip_x(v))

    @field_validator("tile_size")
    @classmethod
    def _tile(cls, value: int) -> int:
        if 0 < value < 64:
            raise ValueError("tile_size must be 0 (automatic) or at least 64")
        return value

    @model_validator(mode="after")
    def _model_alias(self) -> EsrganUpscaleForm:
        self.model = one_model_name(self.model, self.upscale_model)
        return self

    @property
    def plan_factor(self) -> float:
        return self.upscale_factor


class FluxUpscaleForm(CommonUpscaleForm):
    """Ultimate SD Upscale with FLUX.1-dev: ESRGAN pre-pass, then tiles redrawn at low denoise."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=form_schema(
        ex.FORM_FLUX, ("model", "upscale_model")))

    upscale_factor: float = Field(4, gt=0, le=16, description="Used when no print size is given.")
    denoise: float = Field(0.2, ge=0, le=1, description="img2img strength per tile.")
    steps: int = Field(20, ge=1, le=100, description="Diffusion steps (at strength 1).")
    # Checked in serve_app/submissions.py against the server's minimum, which the schema
    # states (serve_app/openapi_forms.py).
    tile_size: int = Field(512, description="Tile edge in output pixels; a multiple of 16 "
                           "between the server's minimum (256 by default; this schema says "
                           "this server's) and 2048.",
                           json_schema_extra={"multipleOf": 16, "minimum": 256,
                                              "maximum": 2048})
    upscale_model: str | None = Field(None, max_length=200, description="ESRGAN model of the "
                                      "pre-pass; default: the server's default model.")
    model: str | None = Field(None, max_length=200, description="Alias of `upscale_model`.")
    prompt: str = Field("", max_length=2000, description="Optional text; encoded once per job.")
    guidance: float = Field(3.5, ge=0, le=30, description="FLUX-dev distilled guidance.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Same inputs and seed, same output.")
    mask_blur: int = Field(8, ge=0, le=64)
    tile_padding: int = Field(32, ge=0, le=256, description="Context pixels around each "
                              "tile; at least mask_blur (refused as tile_padding_below_mask_blur)"
                              ".")
    color_fix: Literal["wavelet", "adain", "none"] = Field(
        "wavelet", description="Per-tile colour correction against the pre-pass.")
    tile_order: Literal["chess", "parallel"] = Field(
        "chess", description="chess: two waves, the second sees the first redrawn; parallel: "
        "one wave, every tile at once.")
    seam_fix: Literal["none", "band_pass"] = "none"
    seam_fix_width: int = Field(64, ge=8, le=512)

    _factor = field_validator("upscale_factor", mode="before")(lambda cls, v: _strip_x(v))

    @model_validator(mode="after")
    def _model_alias(self) -> FluxUpscaleForm:
        self.upscale_model = one_model_name(self.model, self.upscale_model)
        return self

    @property
    def plan_factor(self) -> float:
        return self.upscale_factor

    @model_validator(mode="after")
    def _padding_vs_blur(self) -> FluxUpscaleForm:
        # Two fields compared, which a schema cannot state: a code of its own (not a
        # ValueError, which FastAPI would answer as a plain invalid_request).
        if self.mask_blur and self.tile_padding < self.mask_blur:
            raise InvalidRequest("tile_padding must be at least mask_blur (the blurred mask "
                                 "needs that much context)", code="tile_padding_below_mask_blur")
        return self


class ImagenUpscaleForm(CommonUpscaleForm):
    """Imagen upscaling on Vertex AI (a cloud call; needs Google Cloud credentials)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=form_schema(ex.FORM_IMAGEN))

    upscale_factor: Literal["x2", "x3", "x4"] = Field(
        "x4", description="Vertex's factor; with a print size the smallest factor that reaches "
        "it is used and the result resampled to the exact size.")
    gcp_project_id: str | None = Field(None, max_length=30, pattern=r"^[a-z][a-z0-9-]{4,29}$",
                                       description="Default: the server's project.")
    gcp_region: str = Field("us-central1", pattern=r"^[a-z]+-[a-z]+[0-9]+$")
    model: str | None = Field(None, description="Vertex model id; default "
                              "imagen-4.0-upscale-preview (server setting). Each model offers "
                              "its factors (imagegeneration@002: x2, x4; else "
                              "factor_not_offered).",
                              json_schema_extra={"enum": list(IMAGEN_MODELS)})
    add_watermark: bool | None = Field(None, description="Google's invisible watermark; "
                                       "default from the server (true).")

    @property
    def plan_factor(self) -> float:
        return int(self.upscale_factor[1:])

    @field_validator("upscale_factor", mode="before")
    @classmethod
    def _x(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
            return f"x{int(float(value))}"
        return value.strip().lower() if isinstance(value, str) else value
