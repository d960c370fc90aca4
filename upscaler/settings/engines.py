"""Settings of the engines: ESRGAN (and compute shared by engines), FLUX and Imagen."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field
from pydantic_settings import NoDecode


class EngineFields(BaseModel):
    # --- compute -----------------------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = "auto"
    esrgan_num_gpus: float | None = Field(
        default=None, ge=0,
        description="GPUs reserved per ESRGAN replica; None = 0.25 when Ray has GPUs, else 0.")
    esrgan_num_cpus: float = Field(default=1, ge=0)
    esrgan_cold_start_s: float = Field(
        default=30, ge=0,
        description="Seconds an ESRGAN replica takes to start and load its default model: "
        "added to a job's estimate when none is running (min_replicas 0).")
    esrgan_node_type: str | None = Field(
        default=None, min_length=1,
        description="A custom resource the cluster's ESRGAN node type declares (cluster.yaml: "
        "gpu_24gb): each replica asks for a sliver of it, so it runs only there and Ray's "
        "autoscaler launches that type for it. None: any node with room (one machine).")
    esrgan_min_replicas: int = Field(default=1, ge=0)
    esrgan_max_replicas: int = Field(default=2, ge=1)
    esrgan_max_ongoing_requests: int = Field(
        default=3, ge=1,
        description="Per replica: the running image, one waiting, and room for health and "
        "model questions. GPU work is serialised inside a replica, so a small number keeps "
        "queued work in the router, where autoscaling sees it.")
    cpu_threads: int | None = Field(
        default=None, ge=1,
        description="torch threads of an engine replica running on CPU. Ray limits an actor to "
        "its num_cpus (1) threads; None = every core, which is what a CPU-only box wants.")
    model_cache_size: int = Field(default=3, ge=1, description="Models kept loaded per replica.")
    default_models: Annotated[list[str], NoDecode] = Field(
        default=["4x-UltraSharp", "DAT_light_x4"],
        description="Model used when a request names none: the first of these that is present.")
    cpu_tile_size: int = Field(default=256, ge=32,
                               description="Automatic tile size (input px) on CPU.")
    tile_context: int | None = Field(
        default=None, ge=0,
        description="Input px of context around each tile; default per architecture "
        "(upscaler.compute.engines.tiling.CONTEXT_PX), enough for tiles to match one untiled pass.")
    esrgan_torch_compile: bool = Field(
        default=False, description="torch.compile the ESRGAN models on CUDA (the first images "
        "of each size pay for compiling).")

    # --- FLUX ----------------------------------------------------------------------------
    flux_num_gpus: float | None = Field(
        default=None, ge=0,
        description="GPUs per FLUX replica; None = 0.75 when a GPU is visible (so ESRGAN's "
        "0.25 fits beside it on one card), else 0.")
    flux_num_cpus: float = Field(default=0.25, ge=0)
    flux_node_type: str | None = Field(
        default=None, min_length=1,
        description="Likewise for FLUX replicas (cluster.yaml: gpu_80gb, the big cards).")
    flux_min_replicas: int = Field(default=1, ge=0)
    flux_max_replicas: int = Field(default=1, ge=1)
    flux_idle_s: float = Field(
        default=300, ge=0,
        description="Seconds without work before an autoscaled FLUX replica stops; with "
        "flux_min_replicas 0 the last one goes too, and its GPU node can terminate.")
    flux_cold_start_s: float = Field(
        default=120, ge=0,
        description="Seconds a FLUX replica takes to start and load its weights: added to "
        "a job's estimate when none is running (scaled to zero).")
    gpu_node_start_s: float = Field(
        default=240, ge=0,
        description="Seconds a cloud GPU node takes to boot and join the cluster: added to "
        "the estimate of a job whose engine has no replica and no GPU node to start one on "
        "(its status says `waiting for a GPU node`).")
    flux_memory_mode: Literal["resident", "offload"] = Field(
        default="resident",
        description="resident: everything on the GPU (24 GB+); offload: model CPU offload "
        "and VAE tiling for 16 GB cards.")
    flux_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    flux_min_tile_size: int = Field(default=256, ge=16)
    flux_max_resumes: int = Field(default=3, ge=0,
                                  description="Times a FLUX job is resumed after a crash.")
    # fidelity (issue 23): tiles that drift are drawn again
    flux_tile_max_delta_e: float = Field(
        default=3.0, ge=0,
        description="A redrawn FLUX tile whose colours drift more than this (mean CIEDE2000 "
        "of its core vs the pixels it was drawn from, both area-averaged by the upscale "
        "factor) is drawn again: with a new seed, then with half the denoise; the best draw "
        "is kept.")
    flux_tile_max_reruns: int = Field(default=2, ge=0, le=2,
                                      description="Re-draws per drifting tile (0: none).")

    # --- Imagen (Vertex AI) -------------------------------------------------------------
    gcp_project_id: str | None = Field(default=None, description="Default project; a request's "
                                       "gcp_project_id wins, the credentials' project is last.")
    gcp_region: str = "us-central1"
    gcp_credentials_file: str | None = Field(
        default=None, description="Service-account key file; else application default "
        "credentials (GOOGLE_APPLICATION_CREDENTIALS, workload identity).")
    vertex_api_endpoint: str | None = Field(
        default=None, description="Default: REGION-aiplatform.googleapis.com. A private "
        "endpoint, or http://127.0.0.1:PORT for a test server.")
    imagen_model: str = "imagen-4.0-upscale-preview"
    imagen_add_watermark: bool = True
    imagen_deadline_s: float = Field(default=120, gt=0, description="Per request, retries in.")
    imagen_call_timeout_s: float = Field(default=60, gt=0, description="Per HTTP call.")
    imagen_max_ongoing_requests: int = Field(default=8, ge=1)
    imagen_max_replicas: int = Field(default=2, ge=1)
