"""The application builder: one graph for `serve run serve_config.yaml`, `serve deploy` and
`upscaler serve`. Settings come from the config's ``args`` on top of the environment."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.esrgan import EsrganDeployment
from serve_app.ingress import Ingress
from serve_app.settings import Settings, load_settings


def esrgan_gpus(settings: Settings) -> float:
    if settings.esrgan_num_gpus is not None:
        return settings.esrgan_num_gpus
    if settings.device == "cpu":
        return 0
    import torch

    return 1 if torch.cuda.is_available() else 0


def build_graph(settings: Settings) -> Application:
    esrgan = EsrganDeployment.options(
        ray_actor_options={"num_gpus": esrgan_gpus(settings),
                           "num_cpus": settings.esrgan_num_cpus},
        max_ongoing_requests=settings.esrgan_max_ongoing_requests,
        autoscaling_config={
            "min_replicas": settings.esrgan_min_replicas,
            "initial_replicas": max(1, settings.esrgan_min_replicas),
            "max_replicas": settings.esrgan_max_replicas,
            # GPU-bound: one job per replica at a time, so scale when one more is waiting.
            "target_ongoing_requests": 1,
            "upscale_delay_s": 5,
            "downscale_delay_s": 120,
        },
        # Loading a model can take a while on a cold disk: be patient with health checks.
        health_check_period_s=10,
        health_check_timeout_s=60,
        graceful_shutdown_timeout_s=60,
    ).bind(settings)
    return Ingress.options(
        num_replicas=1,
        max_ongoing_requests=200,  # I/O-bound; uploads wait for handles, not for CPU
        ray_actor_options={"num_cpus": 0.5},
    ).bind(esrgan, settings)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Application builder for Serve config files (``import_path: serve_app.app:build_app``)."""
    return build_graph(load_settings(args))
