"""upscaler: image upscaling for print. This package is the pure compute core (no Ray, no HTTP):
the print-size rule, image decode/encode, job and event types, storage, errors and the engines.
``deployments`` wraps it in Ray Serve replicas; ``serve_app`` is the HTTP app, builder and CLI."""

__version__ = "0.1.0"  # the one version string (pyproject reads it)
