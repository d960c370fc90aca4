"""upscaler: image upscaling for print. ``compute`` (pure image work and the engines),
``domain`` (jobs, storage, keys, quotas, webhooks), ``ray_support``, ``commands`` (the CLI), and
the one error hierarchy and settings. Map: docs/architecture.md."""

__version__ = "0.1.0"  # the one version string (pyproject reads it)
