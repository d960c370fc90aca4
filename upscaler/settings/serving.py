"""Settings of the HTTP server: address, accepted host names, TLS and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field
from pydantic_settings import NoDecode


class HttpFields(BaseModel):
    # --- HTTP --------------------------------------------------------------------------
    host: str = "127.0.0.1"
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Names the service answers to in the Host header (any port; others get "
        "400). Empty: loopback names only with auth none (no DNS rebinding), any with keys.")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="`upscaler serve`: Ray's Prometheus metrics endpoint port (this node).")
    dashboard_host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    tls_certfile: Path | None = Field(
        default=None,
        description="PEM certificate (chain) the Serve proxies present: HTTPS instead of HTTP. "
        "Needs tls_keyfile; both must be readable on every node that runs a proxy.")
    tls_keyfile: Path | None = Field(
        default=None, description="PEM private key of tls_certfile (unencrypted).")
    hsts_max_age_s: int = Field(
        default=31_536_000, ge=0, description="Strict-Transport-Security max-age on every "
        "answer sent over HTTPS (TLS on); 0 sends none.")
