"""The Ingress's questions to the engines (health, the ESRGAN model list) with engines that
answer late or not at all: a busy engine is told from a lost one by Serve's replica count, and
an upload's model check never waits behind another job. Handles and Serve's counts are
stand-ins; the lost node itself: tests/test_cluster.py."""

from __future__ import annotations

import asyncio

import pytest

from serve_app import gateway as gateway_module
from serve_app.gateway import ClusterView, EngineGateway
from upscaler.compute.engines.models import ModelInfo
from upscaler.domain.contracts import EngineStatus, ModelList
from upscaler.domain.jobs import Engine

ASK_S = 0.2  # the status timeout here: a question unanswered this long is late


def info(name: str) -> ModelInfo:
    return ModelInfo(name, "RRDB", 4, 3, 3, True, True, 1, f"{name}.safetensors")


class Replica:
    """A deployment's handle: each method answers at once, or only once ``free`` is set (its
    every slot holds image work)."""

    def __init__(self, models: ModelList):
        self.free = asyncio.Event()
        self.free.set()
        self.models, self.asked = models, 0
        self.status = self._method(lambda: EngineStatus(device="cpu", replica="r1"))
        self.list_models = self._method(lambda: self.models)

    def options(self, **_: object) -> Replica:
        return self

    def _method(self, answer):
        replica = self

        class Method:
            @staticmethod
            def remote():
                async def call():
                    replica.asked += 1
                    await replica.free.wait()
                    return answer()
                return call()
        return Method()


class NodeModels:
    """The Ingress node's own models folder, as deployments.esrgan.ModelQuestions lists it."""

    def __init__(self, models: ModelList):
        self.models = models

    def list_models(self) -> ModelList:
        return self.models

    def model_info(self, name: str | None) -> ModelInfo:
        raise AssertionError("not asked here")


def gateway(replica: Replica, running: dict[str, int] | None,
            local: NodeModels | None = None) -> EngineGateway:
    def counts() -> dict[str, int]:
        if running is None:
            raise RuntimeError("outside Serve")
        return running

    handles = dict.fromkeys(Engine, replica)
    return EngineGateway(replica, handles, handles, local_models=local,
                         cluster=ClusterView(counts, list), status_deployments={
                             Engine.esrgan: "ESRGAN", Engine.flux: "FLUX",
                             Engine.imagen: "Imagen"})


@pytest.fixture(autouse=True)
def quick_questions(monkeypatch):
    monkeypatch.setattr(gateway_module, "STATUS_TIMEOUT_S", ASK_S)
    monkeypatch.setattr(gateway_module, "STATUS_FRESH_S", 0.0)
    monkeypatch.setattr(gateway_module, "REPLICAS_FRESH_S", 0.0)


@pytest.mark.parametrize(("running", "state"), [
    ({"ESRGAN": 1}, "busy"),  # every slot holds image work: its last answer, marked busy
    (None, "busy"),  # Serve cannot say (outside it): assumed busy, as before
    ({"ESRGAN": 0}, None),  # its node was lost: no replica runs it, so it does not answer
])
def test_a_late_status_is_busy_only_while_serve_counts_a_replica(running, state):
    async def run() -> EngineStatus:
        replica = Replica(ModelList(()))
        engines = gateway(replica, running)
        assert (await engines.status(Engine.esrgan)).answered
        replica.free.clear()
        return await engines._ask_status(Engine.esrgan)

    status = asyncio.run(run())
    assert status.answered is (state is not None), status
    assert status.state == state
    if state is None:
        assert status.error == "no answer: TimeoutError"


def test_the_first_model_check_does_not_wait_behind_image_work():
    """An Ingress replica with no model list yet, ESRGAN's every slot busy: the upload's
    model check is answered from this node's models folder within a status question's wait,
    and ESRGAN's own list replaces it once it answers."""
    node, served = ModelList((info("tiny-rrdb"),)), ModelList((info("tiny-rrdb"), info("x")))

    async def run() -> None:
        replica = Replica(served)
        replica.free.clear()
        engines = gateway(replica, {"ESRGAN": 1}, NodeModels(node))
        loop = asyncio.get_running_loop()
        started = loop.time()
        first, second = await asyncio.gather(engines.list_models(), engines.list_models())
        assert first == second == node and loop.time() - started < 5 * ASK_S
        assert replica.asked == 1  # one question in flight, not one per upload
        assert (await engines.model_info("tiny-rrdb")).name == "tiny-rrdb"
        replica.free.set()
        await asyncio.sleep(0.05)
        assert await engines.list_models() == served
        assert replica.asked == 1

    asyncio.run(run())


def test_without_a_node_list_the_first_model_check_waits_for_esrgan():
    async def run() -> ModelList:
        replica = Replica(ModelList((info("a"),)))
        replica.free.clear()
        engines = gateway(replica, {"ESRGAN": 1})
        asyncio.get_running_loop().call_later(3 * ASK_S, replica.free.set)
        return await engines.list_models()

    assert asyncio.run(run()).find("a") is not None
