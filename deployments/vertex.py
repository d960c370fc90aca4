"""The Imagen deployment's calls to Vertex AI: credentials and google-cloud-aiplatform's
PredictionServiceClient (REST), with retries inside one deadline and Google's errors mapped to
``upscaler.errors`` classes with the HTTP status the API answers with. What is sent and read
back is ``upscaler.compute.engines.imagen``'s, which makes no network call."""

from __future__ import annotations

from typing import Any

from upscaler.compute.engines.imagen import image_from_predictions, predict_request
from upscaler.errors import (
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


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


class VertexClient:
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
        request = predict_request(image, factor, model, project, region, add_watermark)
        try:
            response = self._client(region).predict(
                endpoint=request.endpoint, instances=[request.instance],
                parameters=request.parameters, retry=self._retry(),
                timeout=self.call_timeout_s)
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
        return image_from_predictions([dict(p) for p in response.predictions])
