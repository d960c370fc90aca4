"""Operator commands: the `upscaler` CLI (serve, keys, models, usage) and model pulls."""
