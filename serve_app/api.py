"""The FastAPI app of one Ingress replica, built by a factory around that replica's services
(Ray Serve calls ``Ingress.__serve_build_asgi_app__``); tests build it around fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from serve_app.deps import Services
from serve_app.errors import error_response, install_error_handlers
from serve_app.routes import jobs, system, upscale
from upscaler import __version__

DESCRIPTION = ("Image upscaling for print: ESRGAN-family models, FLUX (Ultimate SD Upscale) and "
               "Imagen on Vertex AI, on Ray Serve. Upload an image, get a larger one sized for "
               "the print you want (see the print-size rule in the README).")
# Multipart framing around the file: a body this much over the upload cap is still refused.
MULTIPART_SLACK = 64 * 1024


def create_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Serve runs this when the replica starts and when it stops (a rollout, a shutdown).
        services.runner.start()
        yield
        await services.runner.stop()

    app = FastAPI(title="upscaler", version=__version__, description=DESCRIPTION,
                  docs_url="/docs", lifespan=lifespan)
    app.state.services = services
    install_error_handlers(app)
    for module in (upscale, jobs, system):
        app.include_router(module.router)
    limit = services.settings.max_upload_bytes

    @app.middleware("http")
    async def refuse_oversize_uploads(request: Request, call_next):
        # From the header, before the body is read.
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit + MULTIPART_SLACK:
            return error_response(413, "upload_too_large",
                                  f"the upload is {int(length):,} bytes; the limit is "
                                  f"{limit:,} bytes ({limit / 1024 / 1024:.0f} MB)")
        return await call_next(request)

    return app
