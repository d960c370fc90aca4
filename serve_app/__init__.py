"""The HTTP app: the Ingress (FastAPI behind its ASGI gate), the routes, the job runner and
webhooks, and the application builder (`app.py`, built from `engine_specs.py`)."""
