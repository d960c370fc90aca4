"""The web page in a real browser (Playwright driving Debian's chromium) against the running
service, keys on: a photo through ESRGAN to a print size, its progress, the download checked
against the API's answer; a cancel; an error in the API's own words; a model comparison.
Screenshots go to artifacts/browser/ (ignored by git)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from helpers.api import upload
from helpers.images import photo, png_bytes
from helpers.model_factory import DAT
from helpers.processes import REPO
from PIL import Image

pytestmark = pytest.mark.slow
ARTIFACTS = REPO / "artifacts" / "browser"


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def chromium_path() -> str | None:
    return os.environ.get("UPSCALER_CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium: `make test` installs it (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        # As root, Chromium runs only without its sandbox (containers, CI).
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        b = p.chromium.launch(executable_path=executable, args=args)
        yield b
        b.close()


@pytest.fixture
def page(browser, service, request):
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(str(e)))
    # Whatever the page loads comes from the service: any other host is a problem.
    context.on("request", lambda r: urlparse(r.url).scheme in ("http", "https")
               and urlparse(r.url).hostname != "127.0.0.1"
               and problems.append(f"request to {r.url}"))
    pg.goto(f"{service.url}/")
    # Keys are on: the page asks for one, keeps it, and then shows the service.
    pg.wait_for_selector("#keybar:not([hidden])")
    pg.fill("#apikey", service.api_key)
    pg.click("#savekey")
    pg.wait_for_selector("#health.ok", timeout=30_000)
    yield pg
    pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-end.png"), full_page=True)
    print(f"screenshots in {ARTIFACTS}")
    context.close()
    assert problems == [], problems


def shot(pg, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def save_photo(tmp_path: Path, name: str, size: tuple[int, int], fmt: str = "JPEG",
               dpi: int = 72) -> Path:
    path = tmp_path / f"{name}.{fmt.lower()}"
    photo(name, size).save(path, fmt, dpi=(dpi, dpi))
    return path


def test_photo_to_a_print_size(page, client, tmp_path):
    src = save_photo(tmp_path, "astronaut", (96, 96))
    page.set_input_files("#files", str(src))
    page.wait_for_selector("#queue li .info")
    assert page.inner_text("#queue li .info") == "96 × 96 px · 72 DPI"  # read by the page
    page.check("input[name=mode][value=print]", force=True)
    page.select_option("#preset", "custom")
    page.fill("#pw", "2")
    page.fill("#ph", "2")
    page.select_option("#dpi", "150")
    page.locator("#options summary").click()  # the engine options fold out
    page.select_option("#model", DAT)
    # (No wait_for_function: the page's Content-Security-Policy forbids eval, even Playwright's.)
    expect(page.locator("#plan .big")).to_have_text("300 × 300 px")
    shot(page, "1-planned")
    page.click("#go")
    page.wait_for_selector(".job .badge.completed", timeout=240_000)
    card = page.locator(".job").first
    assert card.locator(".bar").get_attribute("aria-valuenow") == "100"
    page.wait_for_selector(".job .result:not([hidden])")
    shot(page, "2-completed")

    with page.expect_download() as info:
        card.locator(".download").click()
    out = ARTIFACTS / info.value.suggested_filename
    info.value.save_as(out)
    downloaded = Image.open(out)
    status = client.get(f"/api/status/{card.get_attribute('data-job-id')}").json()
    api_size = status["output_size"]
    assert status["status"] == "completed" and status["progress"] == 100
    assert downloaded.size == (api_size["width"], api_size["height"]) == (300, 300)
    assert round(downloaded.info["dpi"][0]) == 150
    assert "300 × 300 px · 150 DPI · 2 × 2 in" in card.locator(".result-info").inner_text()
    # The fidelity badge, and the heat map of its tiles over the preview.
    fidelity = card.locator(".fidelity")
    expect(fidelity).to_be_visible()
    assert fidelity.inner_text().startswith(f"ΔE {status['quality']['delta_e_mean']:.1f}")
    assert fidelity.get_attribute("class").split()[-1] in ("good", "fair", "poor")
    expect(card.locator(".heat")).to_be_hidden()
    card.locator(".heat-toggle").click()
    expect(card.locator(".heat")).to_be_visible()
    shot(page, "3-heat-map")


def test_bleed_and_its_trim_line(page, client, tmp_path):
    """A 2x2 in print at 150 dpi with 0.1 in bleed: 330x330 px, the dashed trim line at the
    print (15 px in from every side) over the plan's preview and over the result."""
    page.set_input_files("#files", str(save_photo(tmp_path, "rocket", (96, 96))))
    page.wait_for_selector("#queue li .info")
    page.check("input[name=mode][value=print]", force=True)
    page.select_option("#preset", "custom")
    for field, value in (("#pw", "2"), ("#ph", "2"), ("#bleed", "0.1")):
        page.fill(field, value)
    page.select_option("#dpi", "150")
    expect(page.locator("#plan .big")).to_have_text("330 × 330 px")
    expect(page.locator("#plan")).to_contain_text("trims to 2 × 2 in")
    preview, line = (page.locator("#plan .plan-preview").bounding_box(),
                     page.locator("#plan .plan-preview .trim").bounding_box())
    assert line["x"] - preview["x"] == pytest.approx(preview["width"] * 15 / 330, abs=1.5)
    assert line["width"] == pytest.approx(preview["width"] * 300 / 330, abs=1.5)
    page.locator("#options summary").click()
    page.select_option("#model", "tiny-rrdb")
    page.click("#go")
    page.wait_for_selector(".job .result:not([hidden]) .compare .trim", timeout=120_000)
    card = page.locator(".job").first
    assert "bleed 0.1 in" in card.locator(".job-meta").inner_text()
    status = client.get(f"/api/status/{card.get_attribute('data-job-id')}").json()
    assert status["output_size"] == {"width": 330, "height": 330}
    assert status["trim_box"] == [15, 15, 315, 315]
    shot(page, "7-bleed")


def test_compare_models_side_by_side(page, tmp_path):
    src = tmp_path / "rocket.png"
    src.write_bytes(png_bytes(photo("rocket", (48, 32))))
    page.set_input_files("#files", str(src))
    page.wait_for_selector("#queue li .info")  # the page has read it
    page.click("#compare")
    for box in page.locator("#compareModels input").all():
        box.set_checked(box.get_attribute("value") in ("tiny-rrdb", "tiny-compact"))
    page.click("#compareGo")
    page.wait_for_selector(".side figure >> nth=1", timeout=120_000)
    figures = page.locator(".side figure")
    assert figures.count() == 2
    captions = " ".join(figures.all_inner_texts())
    assert "tiny-rrdb" in captions and "tiny-compact" in captions
    assert captions.count("192 × 128 px") == 2  # one plan, both models
    page.click("#jobs > .job:first-child .zoom .one")  # both at 100 %, scrolled together
    shot(page, "5-compare")


def test_cancel_and_an_error_in_the_apis_words(page, client, tmp_path):
    # Small tiles make a job long enough to cancel while it runs (4 tiles of DAT).
    src = save_photo(tmp_path, "coffee", (128, 96), fmt="PNG", dpi=96)
    page.set_input_files("#files", str(src))
    page.locator("#options summary").click()
    page.fill("#tile", "64")
    page.click("#go")
    card = page.locator(".job").first
    page.wait_for_selector(".job .badge:is(.queued, .processing)", timeout=60_000)
    card.locator(".cancel").click()
    page.wait_for_selector(".job .badge.cancelled", timeout=60_000)
    assert "Cancelled" in card.locator(".job-status").inner_text()
    shot(page, "3-cancelled")

    # Not an image: the service's 415 shown as the service wrote it.
    bogus = tmp_path / "notes.png"
    bogus.write_bytes(b"these are my notes, not a picture\n")
    api = upload(client, bogus.read_bytes(), filename="notes.png")
    assert api.status_code == 415
    page.click("#queue li button")  # take the photo out of the queue
    page.set_input_files("#files", str(bogus))
    page.wait_for_selector("#queue li:has-text('notes.png') .info")  # the page has read it
    page.click("#go")
    page.wait_for_selector(".job .error:not([hidden])", timeout=60_000)
    text = page.locator(".job").first.locator(".error").inner_text()
    assert api.json()["message"] in text and "415" in text
    shot(page, "4-error")


def test_docs_work_offline(page, service):
    """Swagger UI renders the API from the package's own files (the fixture fails on any
    request to another host)."""
    page.goto(f"{service.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("upscaler")
    expect(page.locator(".opblock-summary-path", has_text="/api/jobs/{job_id}/events")
           ).to_be_visible()
    shot(page, "6-docs")

