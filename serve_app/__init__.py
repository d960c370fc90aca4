"""upscaler: image upscaling for print as a Ray Serve deployment graph."""

__version__ = "0.1.0"
