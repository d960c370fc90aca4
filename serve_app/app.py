"""The application builder: one graph for `serve run serve_config.yaml`, `serve deploy` and
`upscaler serve`. Settings come from the config's ``args`` on top of the environment."""

# No `from __future__ import annotations`: Ray reads build_app's parameter annotation as a class
# to validate a config file's ``args`` with it.
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model
from ray.serve import Application

from serve_app.deploy_options import CPU_NODE_RESOURCE
from serve_app.engine_specs import INGRESS, graph_deployments
from serve_app.ingress import Ingress
from upscaler.ray_support import cluster_declares, require_shared_storage
from upscaler.settings import Settings, load_settings

# A Serve config's ``args``: any of the settings, nothing else, so a misspelt key stops the
# deploy with its name instead of being ignored. Values are checked by Settings itself.
AppArgs: type[BaseModel] = create_model(
    "AppArgs", __config__=ConfigDict(extra="forbid"),
    **{name: (Any, None) for name in Settings.model_fields})


def build_graph(settings: Settings) -> Application:
    """Every deployment of the table (serve_app/engine_specs.py) with its options, each bound
    with the settings and the handles it calls; the Ingress with all of them by name."""
    bound: dict[str, Application] = {}
    cpu_nodes = cluster_declares(CPU_NODE_RESOURCE)
    for spec in graph_deployments():
        assert spec.deployment is not None
        bound[spec.name] = spec.deployment.options(**spec.deploy_options(
            settings, cpu_nodes)).bind(settings, *(bound[name] for name in spec.calls))
    return Ingress.options(**INGRESS.deploy_options(settings, cpu_nodes)).bind(bound, settings)


def build_app(args: AppArgs) -> Application:  # type: ignore[valid-type]
    """Application builder for Serve config files (``import_path: serve_app.app:build_app``)."""
    if isinstance(args, dict):  # called directly rather than by Serve
        args = AppArgs.model_validate(args)
    settings = load_settings(args.model_dump(exclude_none=True))
    # `serve deploy`/`serve run` on a cluster: local storage stops the deploy here, named.
    require_shared_storage(settings)
    return build_graph(settings)
