"""Imagen upscaling on Vertex AI, all but the call: the models' documented limits, the request,
reading the answer. The call (credentials, google-cloud-aiplatform's client) is
``deployments.vertex``'s. Design: docs/design/engines.md
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from upscaler.errors import (
    InvalidRequest,
    OutputTooLarge,
    PayloadTooLarge,
    UnknownModel,
    UpstreamError,
)

MAX_INPUT_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class ImagenModel:
    name: str
    factors: tuple[int, ...]
    max_output_pixels: int = 17_000_000
    max_input_bytes: int = MAX_INPUT_BYTES


MODELS = {m.name: m for m in [
    ImagenModel("imagen-4.0-upscale-preview", (2, 3, 4)),
    ImagenModel("imagegeneration@002", (2, 4)),
]}


def model_spec(name: str) -> ImagenModel:
    if name not in MODELS:
        raise UnknownModel(f"unknown Imagen model '{name}'; known: {', '.join(MODELS)}")
    return MODELS[name]


def choose_factor(model: ImagenModel, width: int, height: int, out_w: int, out_h: int,
                  requested: int | None) -> int:
    """The requested factor, or the smallest the model offers that reaches the output size
    (the result is then resampled to it exactly). Checks the output pixel limit."""
    if requested is not None:
        if requested not in model.factors:
            offered = ", ".join(f"x{f}" for f in model.factors)
            raise InvalidRequest(f"{model.name} upscales by {offered}; x{requested} is not "
                                 "one of them", code="factor_not_offered")
        factor = requested
    else:
        needed = max(out_w / width, out_h / height)
        fitting = [f for f in model.factors if f + 1e-9 >= needed]
        if not fitting:
            raise OutputTooLarge(f"the print size needs x{needed:.2f}; {model.name} reaches "
                                 f"at most x{max(model.factors)}. Use a smaller print size or "
                                 "DPI, or the esrgan engine")
        factor = fitting[0]
    pixels = width * height * factor * factor
    if pixels > model.max_output_pixels:
        max_in = model.max_output_pixels / factor**2
        raise PayloadTooLarge(
            f"{model.name} returns at most {model.max_output_pixels / 1e6:.0f} MP; x{factor} of "
            f"{width}x{height} would be {pixels / 1e6:.1f} MP. At x{factor} the input may have "
            f"at most {max_in / 1e6:.2f} MP (e.g. {int(math.sqrt(max_in * width / height))}x"
            f"{int(math.sqrt(max_in * height / width))})", code="image_too_large")
    return factor


def request_image_bytes(data: bytes, fmt: str, model: ImagenModel) -> tuple[bytes, str]:
    """The upload as Vertex takes it: PNG/JPEG as sent; other formats re-encoded as PNG."""
    if fmt not in ("PNG", "JPEG"):
        im = Image.open(io.BytesIO(data))
        buf = io.BytesIO()
        im.convert("RGBA" if "A" in im.getbands() else "RGB").save(buf, "PNG")
        data, fmt = buf.getvalue(), "PNG"
    if len(data) > model.max_input_bytes:
        raise PayloadTooLarge(f"{model.name} takes images of at most "
                              f"{model.max_input_bytes / 1024 / 1024:.0f} MB; this one is "
                              f"{len(data) / 1024 / 1024:.1f} MB as {fmt}")
    return data, fmt


def credentials_status(credentials_file: str | None, project: str | None) -> dict[str, Any]:
    """What health shows: found credentials and a project, without calling Google."""
    path = credentials_file or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    source, found, file_project = None, False, None
    if path:
        source = "service account file"
        try:
            info = json.loads(Path(path).read_text())
            found = info.get("type") == "service_account" and "private_key" in info
            file_project = info.get("project_id")
        except (OSError, ValueError):
            found = False
    elif os.environ.get("KUBERNETES_SERVICE_HOST") or os.environ.get("GCE_METADATA_HOST"):
        source, found = "metadata server (workload identity)", True
    resolved = project or file_project
    return {"credentials_found": found, "credentials_source": source,
            "project": resolved, "configured": bool(found and resolved)}


@dataclass(frozen=True)
class PredictRequest:
    """One Vertex AI ``predict`` call: the model's endpoint path, its instance, its parameters."""

    endpoint: str
    instance: dict[str, Any]
    parameters: dict[str, Any]


def predict_request(image: bytes, factor: int, model: str, project: str, region: str,
                    add_watermark: bool = True) -> PredictRequest:
    """The upscale request for ``image`` (PNG/JPEG bytes), answered as PNG."""
    return PredictRequest(
        endpoint=f"projects/{project}/locations/{region}/publishers/google/models/{model}",
        instance={"prompt": "", "image": {"bytesBase64Encoded":
                                          base64.b64encode(image).decode("ascii")}},
        parameters={"sampleCount": 1, "mode": "upscale",
                    "upscaleConfig": {"upscaleFactor": f"x{factor}"},
                    "outputOptions": {"mimeType": "image/png"},
                    "addWatermark": add_watermark})


def image_from_predictions(predictions: list[dict[str, Any]]) -> bytes:
    """The upscaled image's bytes from the answer's predictions, or the error they mean."""
    if not predictions:
        raise InvalidRequest("Vertex AI returned no image (an empty prediction list): the "
                             "safety filter may have blocked it; try another image",
                             code="no_image")
    first = predictions[0]
    if first.get("raiFilteredReason"):
        raise InvalidRequest(f"Vertex AI's safety filter blocked the image: "
                             f"{first['raiFilteredReason']}", code="safety_filtered")
    data = first.get("bytesBase64Encoded")
    if not data:
        raise UpstreamError("Vertex AI's prediction has no image bytes",
                            code="vertex_bad_response")
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise UpstreamError("Vertex AI's image is not valid base64",
                            code="vertex_bad_response") from None
