"""What a job waits for while its engine has no replica running (scaled to zero when idle, or
its node gone): a GPU node Ray's autoscaler is launching, or a replica starting on a node that
is up; and for about how long (``gpu_node_start_s``, each engine's cold start)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GPU_NODE = "waiting for a GPU node"
ENGINE_START = "waiting for its engine to start"


@dataclass(frozen=True)
class Placement:
    """Where one engine's replicas run: the resources a node must declare (its GPUs, its node
    type's custom resource), and how long a replica takes to start there."""

    needs: frozenset[str]
    start_s: float

    @classmethod
    def of(cls, ray_actor_options: Mapping[str, Any], start_s: float) -> Placement:
        needs = set(ray_actor_options.get("resources") or {})
        if ray_actor_options.get("num_gpus"):
            needs.add("GPU")
        return cls(frozenset(needs), start_s)

    def fits(self, node: Mapping[str, float]) -> bool:
        """Whether a node of these total resources can run a replica at all (busy or not)."""
        return all(node.get(name, 0) > 0 for name in self.needs)


@dataclass(frozen=True)
class EngineWait:
    reason: str  # GPU_NODE or ENGINE_START, shown in the job's status
    seconds: float  # added to the job's estimate


def engine_wait(placement: Placement, nodes: Iterable[Mapping[str, float]] | None,
                node_start_s: float) -> EngineWait:
    """The wait of a job whose engine has no running replica, given each live node's total
    resources (None: unknown, taken as a node being up): no node can run it, so the
    autoscaler has one to launch first."""
    if nodes is not None and not any(placement.fits(node) for node in nodes):
        return EngineWait(GPU_NODE, round(node_start_s + placement.start_s, 1))
    return EngineWait(ENGINE_START, round(placement.start_s, 1))
