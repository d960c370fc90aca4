"""The repository's deployment files (serve configs, compose, k8s manifests), read as YAML."""

from __future__ import annotations

import yaml

from helpers.processes import REPO

__all__ = ["REPO", "load"]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())
