"""The headers of every answer (serve_app/headers.py): JSON and event streams are never stored
by a cache and vary with the key, a result is revalidated on each use (so a DELETE shows at
once), HTTPS answers carry HSTS; with docs off nothing of the API's map is served, and Serve's
proxies hide their route table."""

from __future__ import annotations

import dataclasses

from fastapi.testclient import TestClient
from helpers.api import upload
from helpers.images import photo, png_bytes

from serve_app.api import create_app

GOOD = png_bytes(photo("rocket", (24, 24)))
HSTS = "max-age=31536000"


def vary(r) -> set[str]:
    return {t.strip().lower() for t in r.headers.get("vary", "").split(",")}


def assert_private_json(r) -> None:
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert r.headers["cache-control"] == "no-store"
    assert {"authorization", "x-api-key"} <= vary(r)


def test_json_answers_are_never_stored_and_vary_with_the_key(bare_app):
    job = upload(bare_app, GOOD, model="tiny-rrdb", upscale_factor=2)
    for r in (job, bare_app.get("/api/health"), bare_app.get(f"/api/status/{job.json()['jobId']}"),
              bare_app.get("/api/models"), bare_app.get("/api/status/" + "0" * 32),
              upload(bare_app, b"not an image"), bare_app.get("/openapi.json")):
        assert_private_json(r)
    assert "strict-transport-security" not in job.headers  # plain http: no HSTS


def test_event_streams_are_never_stored(bare_app):
    job_id = upload(bare_app, GOOD, model="tiny-rrdb", upscale_factor=2).json()["jobId"]
    r = bare_app.get(f"/api/jobs/{job_id}/events")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-store" and "x-api-key" in vary(r)
    assert "event: completed" in r.text  # the stream itself flows as before


def test_a_result_is_revalidated_on_each_use_and_gone_once_deleted(bare_app):
    job = upload(bare_app, GOOD, model="tiny-rrdb", upscale_factor=2).json()
    r = bare_app.get(job["outputUrl"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "private, no-cache"  # was: private, max-age=3600
    assert {"authorization", "x-api-key"} <= vary(r)
    etag, modified = r.headers["etag"], r.headers["last-modified"]
    again = bare_app.get(job["outputUrl"], headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert bare_app.get(job["outputUrl"], headers={"If-Modified-Since": modified}
                        ).status_code == 304
    assert bare_app.get(job["outputUrl"], headers={"If-None-Match": '"other"'}
                        ).status_code == 200
    assert bare_app.delete(f"/api/jobs/{job['jobId']}").json()["result_deleted"] is True
    gone = bare_app.get(job["outputUrl"], headers={"If-None-Match": etag})
    assert gone.status_code == 410 and gone.headers["cache-control"] == "no-store"


def test_hsts_on_every_answer_over_https_only(bare_app):
    for path in ("/api/health", "/api/status/" + "0" * 32, "/static/app.js", "/"):
        assert bare_app.get(f"https://localhost{path}").headers[
            "strict-transport-security"] == HSTS, path
        assert "strict-transport-security" not in bare_app.get(path).headers


def app_with(bare_app, **settings) -> TestClient:
    """The bare graph's services under another app built with these settings (no lifespan:
    the graph's own app runs the services)."""
    services = bare_app.graph.services
    changed = dataclasses.replace(services,
                                  settings=services.settings.model_copy(update=settings))
    return TestClient(create_app(changed), raise_server_exceptions=False,
                      base_url="http://localhost")


def test_a_service_told_it_serves_tls_sends_hsts_even_behind_its_proxy(bare_app, tmp_path):
    """`upscaler serve --tls-cert/--tls-key` gives the app its TLS settings: HSTS on every
    answer, whatever scheme the proxy hands on; the max-age is a setting, 0 sends none."""
    client = app_with(bare_app, tls_certfile=tmp_path / "cert.pem", hsts_max_age_s=600)
    for path in ("/api/health", "/api/nothing", "/docs"):
        assert client.get(path).headers["strict-transport-security"] == "max-age=600"
    client = app_with(bare_app, tls_certfile=tmp_path / "cert.pem", hsts_max_age_s=0)
    assert "strict-transport-security" not in client.get("/api/health").headers


def test_docs_off_serves_no_docs_spec_or_swagger_files(bare_app):
    client = app_with(bare_app, docs=False)
    for path in ("/docs", "/openapi.json", "/static/swagger/swagger-ui-bundle.js",
                 "/static/swagger/swagger-ui.css", "/static/swagger/favicon-32x32.png"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"] == "not_found"
    assert client.get("/static/app.js").status_code == 200  # the web page's own files stay
    assert client.get("/").status_code == 200


def test_the_proxies_hide_serves_route_table_and_add_the_headers(monkeypatch):
    """What Serve's proxies run (serve_app.proxy, wrapped in Serve's own order): no route
    table; health for load balancers stays; the same headers, HSTS when serving HTTPS."""
    from ray.serve._private.http_util import _apply_middlewares
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from serve_app.proxy import proxy_middlewares

    monkeypatch.delenv("UPSCALER_HSTS_MAX_AGE_S", raising=False)
    proxy = Starlette(routes=[  # Serve's own answers at these paths
        Route("/-/routes", lambda _: JSONResponse({"/": "upscaler"})),
        Route("/-/healthz", lambda _: PlainTextResponse("success"))])
    # No lifespan (Ray's request-id middleware expects headers on every scope).
    client = TestClient(_apply_middlewares(proxy, proxy_middlewares()))
    r = client.get("/-/routes")
    assert r.status_code == 404 and "upscaler" not in r.text
    assert client.get("/-/routes/").status_code == 404
    assert client.get("/-/healthz").text == "success"
    secure = client.get("https://testserver/-/healthz")
    assert secure.headers["strict-transport-security"] == HSTS
    assert "strict-transport-security" not in client.get("/-/healthz").headers
    assert_private_json(client.get("https://testserver/-/routes"))
