"""What a browser loads: the page at `/` and Swagger UI at `/docs` come from this service alone
(nothing from a CDN: they work offline), and GET /api/plan, the page's source for sizes."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlparse

import pytest

URL_RE = re.compile(r"""https?://[^\s"'`)<>\\]+""")
# Not fetched: the namespace name an SVG file must declare.
NAMESPACES = {"http://www.w3.org/2000/svg"}


class _Refs(HTMLParser):
    """Every URL an HTML page makes the browser load or link to."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href", "action", "srcset") and v]

    def handle_data(self, data):
        self.inline.append(data)


def foreign_urls(text: str, host: str) -> list[str]:
    return [u for u in URL_RE.findall(text)
            if u not in NAMESPACES and urlparse(u).hostname not in (host, None)]


def page_and_its_files(client, path: str) -> dict[str, str]:
    """The page and every same-host file it references (scripts, styles, icons), by URL."""
    r = client.get(path)
    assert r.status_code == 200, r.text
    parser = _Refs()
    parser.feed(r.text)
    found = {path: r.text}
    for ref in parser.refs:
        url = urljoin(path, ref)
        assert not urlparse(url).netloc, f"{path} loads {ref} from another host"
        if url.startswith("/static/"):
            asset = client.get(url)
            assert asset.status_code == 200, url
            if not url.endswith((".png", "bundle.js")):  # text we wrote or can read
                found[url] = asset.text
    return found


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_pages_reference_no_other_host(bare_app, path):
    files = page_and_its_files(bare_app, path)
    assert len(files) >= 2, files.keys()  # the page and at least its script or style
    for url, text in files.items():
        assert foreign_urls(text, "localhost") == [], url


def test_page_and_docs_are_served_from_the_package(bare_app):
    r = bare_app.get("/")
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for name, kind in (("app.js", "javascript"), ("app.css", "text/css"),
                       ("swagger/swagger-ui-bundle.js", "javascript"),
                       ("swagger/swagger-ui.css", "text/css"),
                       ("swagger/favicon-32x32.png", "image/png")):
        r = bare_app.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"], name
    docs = bare_app.get("/docs").text
    assert "/static/swagger/swagger-ui-bundle.js" in docs and '"validatorUrl": null' in docs
    assert bare_app.get("/redoc").status_code == 404  # ReDoc would load from a CDN
    assert bare_app.get("/static/../upscaler/settings/__init__.py").status_code == 404


def test_plan_gives_the_uploads_answer(bare_app):
    """640x480 to 8x10 in at 300 dpi, landscape: fills 3200x2400, 200 px overhang."""
    q = {"width": 640, "height": 480, "target_width_inches": 10, "target_height_inches": 8,
         "target_dpi": 300}
    plan = bare_app.get("/api/plan", params=q).json()
    assert plan["outputSize"] == plan["finalSize"] == {"width": 3200, "height": 2400}
    assert plan["cropInfo"]["direction"] == "horizontal"
    assert plan["cropInfo"]["amount_px"] == 200 and plan["estimatedTime"] > 0
    cropped = bare_app.get("/api/plan", params={**q, "crop_to_target": "true"}).json()
    assert cropped["finalSize"] == {"width": 3000, "height": 2400} and cropped["cropApplied"]
    assert cropped["printInches"] == [10, 8]
    imagen = bare_app.get("/api/plan", params={"width": 100, "height": 50, "engine": "imagen",
                                               "upscale_factor": "x3"}).json()
    assert imagen["finalSize"] == {"width": 300, "height": 150}
    # The upload's own 4xx, in its own words.
    for params, code in (({"upscale_factor": 99}, "invalid_request"),
                         ({"width": 60000, "height": 60000}, "output_too_large"),
                         ({"target_width": 10, "target_width_inches": 2}, "invalid_request"),
                         ({"tile_size": 64}, "unknown_field")):
        r = bare_app.get("/api/plan", params={"width": 64, "height": 64, **params})
        assert r.status_code == 422 and r.json()["error"] == code, r.text
