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


# glibc's mallopt parameter: allocations at least this large are mmap'd, so freeing one gives
# its pages back at once (upscaler/memory.py: return_big_buffers).
_M_MMAP_THRESHOLD = -3
BIG_BUFFER_BYTES = 1 << 20


def return_big_buffers() -> bool:
    """Have glibc map every buffer of 1 MiB or more on its own, so freed tiles, images and
    encodings go back to the system at once. By default glibc raises that threshold as big
    buffers are freed (up to 32 MiB), after which a replica's tile-sized buffers come from heap
    arenas that keep freed pages: a 4x job's peak RSS rose 2.6x its output's bytes, 1.9x with
    this (bench/bench_memory.py). Returns whether it applied (glibc only; else a no-op)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, BIG_BUFFER_BYTES))
    except (OSError, AttributeError):
        return False
