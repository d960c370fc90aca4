"""What work costs in memory, per pixel: the one place the admission budgets read it from."""

from __future__ import annotations

from upscaler.dimensions import OutputPlan

# Decoding an upload to check it: its native pixels and the float32 planes engines use.
DECODE_BYTES_PER_PIXEL = 24

# One FLUX job's image in the coordinator, per output pixel, float32 throughout: the pre-pass
# (RGB + alpha, 16 B), the canvas's source, sums, weights and base (40 B), and the blended
# image and its encoding (~24 B).
COORDINATOR_BYTES_PER_PIXEL = 80


def coordinator_bytes(plan: OutputPlan) -> int:
    return plan.output_width * plan.output_height * COORDINATOR_BYTES_PER_PIXEL
