"""The security corpus, against the whole graph in this process with API keys on: every route
without, with a wrong and with a revoked key, other keys' jobs and results, tricks in names,
unknown fields, decompression bombs, a GCP project not allowed, rate limits and quotas. After
each: the right status, nothing stored, nothing leaked, the service healthy.

What needs a real HTTP server (chunked and slow bodies, oversized headers) is checked against
the real service in tests/test_service.py."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from helpers.api import eventually, wait_for_job
from helpers.bombs import png_bomb, rgba16_flat
from helpers.config import TEST_LIMITS, settings_from_env, vertex_env
from helpers.images import photo, png_bytes
from helpers.local_graph import local_client
from helpers.model_factory import DAT
from PIL import Image

from upscaler.domain.keys import KeyLimits, KeyStore

GOOD = png_bytes(photo("rocket", (24, 24)))
HEX = "0123456789abcdef" * 2


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, full_models_root, vertex):
    """The graph with keys on, default pixel caps, a small engine cap and no /docs."""
    data = tmp_path_factory.mktemp("keyed-data")
    store = KeyStore(str(data / "keys.json"))
    keys = {name: store.create(name, limits)[1] for name, limits in {
        "alice": KeyLimits(), "bob": KeyLimits(gcp_projects=["bobs-project"]),
        "revoked": KeyLimits(), "slow-down": KeyLimits(rate_limit_per_minute=3),
        "small": KeyLimits(max_open_jobs=1, max_output_mp_per_day=0.16)}.items()}
    store.revoke("revoked")
    env = {"UPSCALER_MAX_UPLOAD_MB": TEST_LIMITS["UPSCALER_MAX_UPLOAD_MB"], **vertex_env(vertex)}
    settings = settings_from_env(env, data_dir=data, models_dir=full_models_root, auth="keys",
                                 max_open_jobs=3, docs=False, flux_min_tile_size=32,
                                 sync_wait_s=30, device="cpu")
    with local_client(settings) as client:
        client.keys = keys
        client.data_dir = data
        yield client


def auth(keyed, who: str | None) -> dict[str, str]:
    if who is None:
        return {}
    if who.startswith("raw:"):
        return {"Authorization": who[4:]}
    return {"Authorization": f"Bearer {keyed.keys[who]}"}


def stored(keyed) -> set[str]:
    """Uploads, job records and results kept (not the quota keeper's counts, nor a record
    being rewritten at that moment by a job still running)."""
    root = Path(keyed.data_dir) / "storage"
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.suffix != ".tmp" and p.parts[-2] != "quotas"}


@pytest.fixture(scope="module")
def alices_job(keyed) -> dict:
    r = keyed.post("/api/upscale/esrgan", headers=auth(keyed, "alice"),
                   files={"file": ("p.png", GOOD, "image/png")},
                   data={"model": "tiny-rrdb", "upscale_factor": "2"})
    assert r.status_code == 200, r.text
    return r.json()


def upload(path="/api/upscale/esrgan", data=GOOD, **fields):
    return {"method": "POST", "path": path, "files": {"file": ("p.png", data, "image/png")},
            "data": fields}


ROUTES = [upload(), upload("/api/upscale/flux"), upload("/api/upscale/imagen"),
          {"method": "GET", "path": f"/api/status/{HEX}"},
          {"method": "DELETE", "path": f"/api/jobs/{HEX}"},
          {"method": "GET", "path": f"/api/results/{HEX}.png"},
          {"method": "GET", "path": "/api/models"}]
CORPUS = [
    *[(f"no key {r['method']} {r['path']}", None, r, 401, "missing_api_key") for r in ROUTES],
    *[(f"wrong key {r['path']}", "raw:Bearer upk_000000000000_" + "A" * 43, r, 401,
       "invalid_api_key") for r in ROUTES],
    *[(f"revoked key {r['path']}", "revoked", r, 403, "revoked_api_key") for r in ROUTES],
    ("not a bearer", "raw:Basic YWxpY2U6c2VjcmV0", ROUTES[0], 401, "missing_api_key"),
    ("traversal", "alice", {"method": "GET", "path": "/api/results/../../etc/passwd"}, 404,
     None),
    ("encoded traversal", "alice",
     {"method": "GET", "path": "/api/results/..%2F..%2Fetc%2Fpasswd"}, 404, None),
    ("newline in a result name", "alice",
     {"method": "GET", "path": f"/api/results/{HEX}.png%0A"}, 400, "invalid_filename"),
    ("newline in a job id", "alice", {"method": "GET", "path": f"/api/status/{HEX}%0A"}, 404,
     "not_found"),
    ("exe result", "alice", {"method": "GET", "path": f"/api/results/{HEX}.exe"}, 400,
     "invalid_filename"),
    ("unknown field", "alice", upload(upscale_facter="2"), 422, "unknown_field"),
    ("header bomb", "alice", upload(data=png_bomb(60000, 60000)), 413, "image_too_large"),
    ("16-bit RGBA 40 MP at x4", "alice", upload(data=rgba16_flat(6324)), 422,
     "output_too_large"),
    ("malformed multipart", "alice", {"method": "POST", "path": "/api/upscale/esrgan",
                                      "content": b"--x\r\nnot a part\r\n",
                                      "headers": {"Content-Type":
                                                  "multipart/form-data; boundary=x"}},
     400, "bad_request"),
    ("unlisted GCP project", "alice",
     upload("/api/upscale/imagen", gcp_project_id="someone-elses"), 403,
     "project_not_allowed"),
    ("docs closed", "alice", {"method": "GET", "path": "/docs"}, 404, None),
    ("oversized headers", "alice", {"method": "GET", "path": "/api/models",
                                    "headers": {"X-Big": "a" * 20_000}}, 431,
     "headers_too_large"),
]


@pytest.mark.parametrize("name,who,request_,status,code", CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus(keyed, name, who, request_, status, code):
    before = stored(keyed)
    headers = {**auth(keyed, who), **request_.get("headers", {})}
    r = keyed.request(request_["method"], request_["path"], headers=headers,
                      files=request_.get("files"), data=request_.get("data"),
                      content=request_.get("content"))
    assert r.status_code == status, r.text
    if code:
        assert r.json()["error"] == code, r.text
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert stored(keyed) == before  # nothing kept of a refused request
    text = r.text
    for secret in keyed.keys.values():
        assert secret.split("_", 2)[2] not in text
    assert "Traceback" not in text and str(keyed.data_dir) not in text
    assert r.headers["x-content-type-options"] == "nosniff"
    health = keyed.get("/api/health", headers=auth(keyed, "alice")).json()
    assert health["status"] == "healthy"


def test_a_job_and_its_result_are_its_keys_alone(keyed, alices_job):
    job_id, url = alices_job["jobId"], alices_job["outputUrl"]
    for who, status in (("alice", 200), ("bob", 404)):
        assert keyed.get(f"/api/status/{job_id}", headers=auth(keyed, who)).status_code == \
            status
        r = keyed.get(url, headers=auth(keyed, who))
        assert r.status_code == status
    r = keyed.get(url, headers=auth(keyed, "alice"))
    assert r.headers["cache-control"].startswith("private")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert keyed.delete(f"/api/jobs/{job_id}", headers=auth(keyed, "bob")).status_code == 404


def test_health_is_open_but_says_nothing_inside_without_a_key(keyed):
    r = keyed.get("/api/health")
    assert r.status_code == 200 and r.json() == {"status": "healthy"}
    for who in ("raw:Bearer nonsense", "revoked"):
        assert keyed.get("/api/health", headers=auth(keyed, who)).json() == {
            "status": "healthy"}
    detail = keyed.get("/api/health", headers=auth(keyed, "alice")).json()
    assert detail["models_loaded"] == ["esrgan", "flux", "imagen"] and "engines" in detail


def test_rate_limit_answers_429_with_retry_after_and_ratelimit_headers(keyed):
    headers = auth(keyed, "slow-down")
    answers = [keyed.get("/api/models", headers=headers) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["ratelimit-policy"] == '"default";q=3;w=60'
    assert answers[0].headers["ratelimit"].startswith('"default";r=2;t=')
    refused = answers[3]
    assert refused.json()["error"] == "rate_limited"
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["ratelimit"].startswith('"default";r=0;')


def test_quotas_open_jobs_and_daily_megapixels(keyed):
    headers = auth(keyed, "small")
    slow = keyed.post("/api/upscale/esrgan", headers=headers,
                      files={"file": ("p.png", png_bytes(photo("coffee", (96, 64))),
                                      "image/png")},
                      data={"model": DAT, "tile_size": "64", "wait": "0",
                            "upscale_factor": "2"})
    assert slow.status_code == 202, slow.text
    before = stored(keyed)
    second = keyed.post("/api/upscale/esrgan", headers=headers,
                        files={"file": ("p.png", GOOD, "image/png")},
                        data={"model": "tiny-rrdb", "upscale_factor": "2"})
    assert second.status_code == 429 and second.json()["error"] == "too_many_open_jobs"
    assert int(second.headers["retry-after"]) > 0 and stored(keyed) == before
    assert wait_for_job(keyed, slow.json()["jobId"], headers=headers)["status"] == "completed"
    # 0.16 MP computed a day: the first job's x4 pass and its output took 0.1229 MP; 0.0317
    # more (a 96 px pass, then 150 px) fits, 0.0192 more (96 px, then 100 px) does not.
    assert keyed.post("/api/upscale/esrgan", headers=headers,
                      files={"file": ("p.png", GOOD, "image/png")},
                      data={"model": "tiny-rrdb", "target_width": "150"}).status_code == 200
    over = keyed.post("/api/upscale/esrgan", headers=headers,
                      files={"file": ("p.png", GOOD, "image/png")},
                      data={"model": "tiny-rrdb", "target_width": "100"})
    assert over.status_code == 429 and over.json()["error"] == "daily_quota_exhausted"
    assert 0 < int(over.headers["retry-after"]) <= 86400


def test_a_full_engine_answers_503_with_retry_after(keyed):
    headers = auth(keyed, "alice")
    jobs = []
    for _ in range(3):  # the engine cap here
        r = keyed.post("/api/upscale/esrgan", headers=headers,
                       files={"file": ("p.png", png_bytes(photo("coffee", (96, 64))),
                                       "image/png")},
                       data={"model": DAT, "tile_size": "64", "wait": "0"})
        assert r.status_code == 202, r.text
        jobs.append(r.json()["jobId"])
    before = stored(keyed)
    r = keyed.post("/api/upscale/esrgan", headers=headers,
                   files={"file": ("p.png", GOOD, "image/png")}, data={"model": "tiny-rrdb"})
    assert r.status_code == 503 and r.json()["error"] == "engine_busy"
    assert int(r.headers["retry-after"]) > 0 and stored(keyed) == before
    assert keyed.get("/api/health", headers=headers).status_code == 200  # still answered
    for job_id in jobs:
        keyed.delete(f"/api/jobs/{job_id}", headers=headers)
    r = keyed.post("/api/upscale/esrgan", headers=headers,
                   files={"file": ("p.png", GOOD, "image/png")}, data={"model": "tiny-rrdb"})
    assert r.status_code == 200


def test_a_projects_key_may_name_it(keyed, vertex):
    vertex.reset()
    r = keyed.post("/api/upscale/imagen", headers=auth(keyed, "bob"),
                   files={"file": ("p.png", GOOD, "image/png")},
                   data={"gcp_project_id": "bobs-project", "upscale_factor": "x2"})
    assert r.status_code == 200, r.text
    assert "/projects/bobs-project/" in vertex.calls[0]["path"]
    r = keyed.post("/api/upscale/imagen", headers=auth(keyed, "alice"),
                   files={"file": ("p.png", GOOD, "image/png")},
                   data={"gcp_project_id": "bobs-project", "upscale_factor": "x2"})
    assert r.status_code == 403


def test_the_original_field_names_are_still_accepted(keyed):
    r = keyed.post("/api/upscale/esrgan", headers=auth(keyed, "alice"),
                   files={"image": ("p.png", GOOD, "image/png")},
                   data={"upscale_model": "tiny-rrdb", "target_width": "48",
                         "target_height": "48", "target_dpi": "300"})
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(keyed.get(r.json()["outputUrl"],
                                          headers=auth(keyed, "alice")).content))
    assert out.size == (48, 48) and np.asarray(out).std() > 0


def test_the_whole_services_health_is_for_an_admin_key_only(keyed, alices_job):
    """A tenant's key sees its own open jobs and each engine's readiness; every tenant's
    queue, the engines' detail and the Google Cloud project are an admin key's."""
    _, admin_key = KeyStore(str(keyed.data_dir / "keys.json")).create("ops", admin=True)
    # The service re-reads the keys file every 2 s: until then the new key is unknown, and
    # an unknown key on health gets the liveness answer alone.
    eventually(lambda: "scope" in keyed.get(
        "/api/health", headers={"Authorization": f"Bearer {admin_key}"}).json(), timeout=10)
    admin = keyed.get("/api/health", headers={"Authorization": f"Bearer {admin_key}"}).json()
    assert admin["scope"] == "service"
    assert admin["engines"]["imagen"]["project"]  # the project, for the operator
    assert "models_loaded" in admin["engines"]["esrgan"]
    project = admin["engines"]["imagen"]["project"]
    for who in ("alice", "bob"):
        r = keyed.get("/api/health", headers=auth(keyed, who))
        tenant = r.json()
        assert r.status_code == 200 and tenant["scope"] == "key"
        assert tenant["engines"] == {e: {"ready": True} for e in ("esrgan", "flux", "imagen")}
        assert tenant["queue_size"] == 0  # its own: alice's job is done, bob has none
        assert project not in r.text and "gpu_name" not in {
            k for k, v in tenant.items() if v is not None}
