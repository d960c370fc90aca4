"""The tests' settings: small limits, offline FLUX, the fake Vertex's variables, fast
heartbeats, and Settings built the way a started service reads its environment."""

from __future__ import annotations

from typing import TYPE_CHECKING

from upscaler.settings import Settings

if TYPE_CHECKING:
    from helpers.fake_vertex import FakeVertex

# Small limits so the limit tests send small requests.
TEST_LIMITS = {"UPSCALER_MAX_UPLOAD_MB": "2", "UPSCALER_MAX_INPUT_PIXELS": "4000000",
               "UPSCALER_MAX_OUTPUT_PIXELS": "20000000"}
# FLUX in seconds: small tiles allowed; never the hub.
# The tiny FLUX's random VAE drifts every tile by 15-20 ΔE2000 (wavelet fix), 35-45 (none):
# above this no tile is re-drawn, so a FLUX test costs one draw per tile.
FLUX_DUMMY_MAX_DELTA_E = 100.0
FLUX_ENV = {"UPSCALER_FLUX_MIN_TILE_SIZE": "32", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "UPSCALER_FLUX_TILE_MAX_DELTA_E": str(FLUX_DUMMY_MAX_DELTA_E)}
# The session service's webhook signing secret (its receivers are on 127.0.0.1, allowed).
WEBHOOK_SECRET = "whsec_" + "dGVzdHMtb25seS13ZWJob29rLXNlY3JldC0zMmJ5dGVz"
# Vertex's deadline and per-call timeout, short so retried failures end in seconds.
VERTEX_DEADLINE_S = 3
METRICS_INTERVAL_MS = 1000
# Heartbeats and staleness in seconds, for the tests of dying replicas and restarts.
FAST_STALE = {"UPSCALER_HEARTBEAT_S": "1", "UPSCALER_STALE_AFTER_S": "6",
              "UPSCALER_INGRESS_DRAIN_S": "5"}


def vertex_env(vertex: FakeVertex) -> dict[str, str]:
    return {"UPSCALER_VERTEX_API_ENDPOINT": vertex.url,
            "UPSCALER_GCP_CREDENTIALS_FILE": str(vertex.key_file),
            "UPSCALER_IMAGEN_DEADLINE_S": str(VERTEX_DEADLINE_S),
            "UPSCALER_IMAGEN_CALL_TIMEOUT_S": "1"}


def settings_from_env(env: dict[str, str], **fields) -> Settings:
    """Settings as a service started with these UPSCALER_* variables has them."""
    values = {k.removeprefix("UPSCALER_").lower(): v for k, v in env.items()
              if k.startswith("UPSCALER_")}
    return Settings(**{**values, **fields})
