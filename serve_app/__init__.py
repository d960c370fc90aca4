"""The HTTP app (FastAPI ingress), the application builder and the `upscaler` command."""
