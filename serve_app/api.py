"""The FastAPI app of one Ingress replica, built by a factory around that replica's services
(Ray Serve calls ``Ingress.__serve_build_asgi_app__``); tests build it around fakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from serve_app.access import rate_limit_headers, result_gone
from serve_app.deps import Services
from serve_app.errors import install_error_handlers
from serve_app.gate import AccessGate
from serve_app.headers import ResponseHeaders
from serve_app.limits import RequestLimits, request_limits
from serve_app.openapi_docs import install_openapi
from serve_app.routes import events, jobs, system, upscale, usage
from serve_app.routes.pages import install_pages
from upscaler import __version__
from upscaler.domain.retention import sweep_periodically

DESCRIPTION = ("Image upscaling for print: ESRGAN-family models, FLUX (Ultimate SD Upscale) and "
               "Imagen on Vertex AI, on Ray Serve. Upload an image, get a larger one sized for "
               "the print you want (see the print-size rule in the README).")


def create_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Serve runs this when the replica starts and when it stops (a rollout, a shutdown).
        services.runner.start()
        services.webhooks.start()
        sweeps = asyncio.get_running_loop().create_task(sweep_periodically(
            services.retention, services.settings.retention_sweep_s,
            on_expired=lambda job: result_gone(services.quotas, job)))
        yield
        await services.runner.stop()
        sweeps.cancel()
        await services.webhooks.stop()
        services.decoder.close()

    settings = services.settings
    app = FastAPI(title="upscaler", version=__version__, description=DESCRIPTION,
                  # /docs from the package's own files (routes/pages.py); no ReDoc (a CDN's).
                  docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if settings.docs else None, lifespan=lifespan)
    app.state.services = services
    install_error_handlers(app)
    for module in (upscale, jobs, events, system, usage):
        app.include_router(module.router)
    install_pages(app, settings)
    install_openapi(app)

    @app.middleware("http")
    async def common_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.update(rate_limit_headers(request))
        return response

    # Before the app: the key, the rate limit and the slots, from the headers alone.
    app.add_middleware(AccessGate, settings=settings, keys=services.keys,
                       quotas=services.quotas, uploads=services.uploads)
    # Outside it: counts and times the body before anything reads it.
    app.add_middleware(RequestLimits, **request_limits(settings))
    # Outermost of all: every answer, the limits' and the gate's own included, gets the
    # cache/HSTS headers.
    app.add_middleware(ResponseHeaders, hsts_max_age_s=settings.hsts_max_age_s,
                       tls=settings.tls_certfile is not None)
    return app
