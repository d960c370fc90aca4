"""What a person opens in a browser: the web page at `/` and Swagger UI at `/docs`, both from
files in the installed package (serve_app/static/), so they work with no internet at all."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.routing import Router

from upscaler.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_URL = "/static"
SWAGGER = f"{STATIC_URL}/swagger"
# The page's own files only, from this host: the browser refuses anything else.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
            "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")


def install_pages(app: FastAPI, settings: Settings) -> None:
    """`/`, `/docs` (when on) and the static files they load."""
    router = APIRouter(include_in_schema=False)
    if not settings.docs:  # Swagger UI's files go with /docs: an empty mount, found first
        app.mount(SWAGGER, Router(), name="swagger")
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")

    @router.get("/")
    async def root() -> Response:
        if not settings.web_page:
            return RedirectResponse("/docs" if settings.docs else "/api/health")
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP,
                                     "Cache-Control": "no-cache"})

    if settings.docs:
        @router.get("/docs")
        async def docs() -> HTMLResponse:
            return get_swagger_ui_html(
                openapi_url="/openapi.json", title=f"{app.title} - API",
                swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
                swagger_css_url=f"{SWAGGER}/swagger-ui.css",
                swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png",
                # Swagger UI would send the whole spec to validator.swagger.io for its badge.
                swagger_ui_parameters={"validatorUrl": None})

    app.include_router(router)
