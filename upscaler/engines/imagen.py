"""Imagen upscaling on Vertex AI through google-cloud-aiplatform's PredictionServiceClient.

Models and their documented limits (Google Cloud docs, "Upscale an image" and the Imagen model
reference; checked 2026-11):

* ``imagen-4.0-upscale-preview`` (default): factors x2, x3, x4; input at most 10 MB; output at
  most 17 MP; ``outputOptions.mimeType`` png/jpeg; ``addWatermark`` (default true);
  quota about 50 requests/minute per region.
* ``imagegeneration@002`` (legacy): factors x2, x4; same byte limit.

Requests carry ``instances[{prompt, image: {bytesBase64Encoded}}]`` and
``parameters{sampleCount: 1, mode: "upscale", upscaleConfig: {upscaleFactor}, outputOptions}``;
answers ``predictions[{bytesBase64Encoded, mimeType}]`` (or ``raiFilteredReason`` when the safety
filter blocked the image). Limits are checked here before any call; errors are mapped to
:mod:`upscaler.errors` classes with the HTTP status the API answers with.
"""

from __future__ import annotations

import base64
import io
import json
import logging
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
    RateLimited,
    ServiceUnavailable,
    UnknownModel,
    UpstreamError,
    UpstreamTimeout,
)

logger = logging.getLogger(__name__)

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
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


def load_credentials(credentials_file: str | None):
    """Explicit service-account file, else application default credentials
    (GOOGLE_APPLICATION_CREDENTIALS, gcloud, workload identity). Returns (credentials, project);
    raises UpstreamError (502) saying what to set."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError
    from google.oauth2 import service_account

    try:
        if credentials_file:
            creds = service_account.Credentials.from_service_account_file(
                credentials_file, scopes=SCOPES)
            return creds, creds.project_id
        return google.auth.default(scopes=SCOPES)
    except (DefaultCredentialsError, FileNotFoundError, ValueError, KeyError) as exc:
        raise UpstreamError(
            "no Google Cloud credentials: set UPSCALER_GCP_CREDENTIALS_FILE (or "
            "GOOGLE_APPLICATION_CREDENTIALS) to a service-account key with the role "
            f"roles/aiplatform.user, or run on GCP with workload identity ({type(exc).__name__})",
            code="credentials_missing") from None


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


class ImagenClient:
    """One PredictionServiceClient per (region, endpoint); REST transport."""

    def __init__(self, credentials_file: str | None, api_endpoint: str | None,
                 default_project: str | None, deadline_s: float, call_timeout_s: float,
                 credentials=None):
        self.credentials_file = credentials_file
        self.api_endpoint = api_endpoint
        self.default_project = default_project
        self.deadline_s = deadline_s
        self.call_timeout_s = call_timeout_s
        self._credentials = credentials
        self._project = None
        self._clients: dict[str, Any] = {}

    def _creds(self):
        if self._credentials is None:
            self._credentials, self._project = load_credentials(self.credentials_file)
        return self._credentials

    def _client(self, region: str):
        from google.cloud.aiplatform_v1 import PredictionServiceClient

        endpoint = self.api_endpoint or f"{region}-aiplatform.googleapis.com"
        if endpoint not in self._clients:
            self._clients[endpoint] = PredictionServiceClient(
                credentials=self._creds(), transport="rest",
                client_options={"api_endpoint": endpoint})
        return self._clients[endpoint]

    def _retry(self):
        import requests
        from google.api_core import exceptions as gexc
        from google.api_core import retry as gretry

        transient = (gexc.TooManyRequests, gexc.ResourceExhausted, gexc.InternalServerError,
                     gexc.ServiceUnavailable, gexc.GatewayTimeout, gexc.BadGateway,
                     requests.exceptions.ConnectionError, requests.exceptions.Timeout)
        # Exponential backoff with full jitter, inside one overall deadline.
        return gretry.Retry(predicate=gretry.if_exception_type(*transient), initial=1.0,
                            maximum=16.0, multiplier=2.0, timeout=self.deadline_s)

    def upscale(self, image: bytes, mime: str, factor: int, model: str, project: str | None,
                region: str, add_watermark: bool = True) -> bytes:
        """Returns the upscaled image bytes (PNG). Raises UpscalerError subclasses."""
        import requests
        from google.api_core import exceptions as gexc
        from google.protobuf import json_format

        creds = self._creds()
        project = project or self.default_project or self._project or getattr(
            creds, "project_id", None)
        if not project:
            raise UpstreamError("no Google Cloud project: send gcp_project_id, or set "
                                "UPSCALER_GCP_PROJECT_ID", code="project_missing")
        endpoint = f"projects/{project}/locations/{region}/publishers/google/models/{model}"
        instance = {"prompt": "", "image": {"bytesBase64Encoded":
                                            base64.b64encode(image).decode("ascii")}}
        parameters = {"sampleCount": 1, "mode": "upscale",
                      "upscaleConfig": {"upscaleFactor": f"x{factor}"},
                      "outputOptions": {"mimeType": "image/png"},
                      "addWatermark": add_watermark}
        try:
            response = self._client(region).predict(
                endpoint=endpoint, instances=[instance], parameters=parameters,
                retry=self._retry(), timeout=self.call_timeout_s)
        except gexc.RetryError as exc:
            cause = exc.cause
            if isinstance(cause, (gexc.TooManyRequests, gexc.ResourceExhausted)):
                raise RateLimited("Vertex AI quota for Imagen is exhausted (about 50 requests "
                                  "per minute per region); retry later or raise the quota",
                                  code="quota_exhausted", retry_after=60) from None
            if isinstance(cause, (requests.exceptions.Timeout, gexc.GatewayTimeout)):
                raise UpstreamTimeout(f"Vertex AI did not answer within {self.deadline_s:.0f} s",
                                      code="vertex_timeout") from None
            raise ServiceUnavailable(f"Vertex AI is unavailable: {type(cause).__name__}",
                                     code="vertex_unavailable") from None
        except (gexc.Unauthenticated, gexc.PermissionDenied, gexc.Unauthorized,
                gexc.Forbidden) as exc:
            raise UpstreamError("Vertex AI refused the credentials: the service account needs "
                                "the role roles/aiplatform.user on project "
                                f"{project} and the Vertex AI API must be enabled "
                                f"({exc.message})", code="vertex_permission") from None
        except gexc.NotFound as exc:
            raise UpstreamError(f"Vertex AI has no model {model} in {region} for project "
                                f"{project} ({exc.message})", code="vertex_not_found") from None
        except (gexc.InvalidArgument, gexc.BadRequest) as exc:
            raise InvalidRequest(f"Vertex AI rejected the request: {exc.message}",
                                 code="vertex_rejected") from None
        except gexc.GoogleAPICallError as exc:
            raise ServiceUnavailable(f"Vertex AI error {exc.code}: {exc.message}",
                                     code="vertex_unavailable") from None
        except (requests.exceptions.RequestException, ValueError, json_format.Error) as exc:
            raise UpstreamError(f"Vertex AI answer could not be read: {type(exc).__name__}",
                                code="vertex_bad_response") from None
        return self._image_from(response)

    @staticmethod
    def _image_from(response) -> bytes:
        predictions = list(response.predictions)
        if not predictions:
            raise InvalidRequest("Vertex AI returned no image (an empty prediction list): the "
                                 "safety filter may have blocked it; try another image",
                                 code="no_image")
        first = dict(predictions[0])
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
