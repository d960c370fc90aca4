"""What work costs in memory, per pixel: the one place the admission budgets read it from."""

from __future__ import annotations

from typing import TYPE_CHECKING

from upscaler.compute.dimensions import OutputPlan

if TYPE_CHECKING:
    from upscaler.compute.images import ImageProbe

# Peak bytes per pixel of an upload's check decode, by (Pillow mode, bit depth, alpha): the
# [bracketed] peak RSS rise bench/bench_decode_memory.py measured at 2000x2000, plus ~20% room.
DECODE_BYTES_PER_PIXEL: dict[tuple[str, int, bool], int] = {
    ("L", 8, False): 22,  # [18] 8-bit gray: PNG, JPEG
    ("I;16", 16, False): 28,  # [22] 16-bit gray PNG
    ("P", 8, False): 38,  # [31] palette: PNG, GIF
    ("RGB", 8, False): 40,  # [34] PNG, JPEG, WebP, TIFF, BMP
    ("RGB", 16, False): 40,  # [34] 16-bit PNG, TIFF
    ("CMYK", 8, False): 46,  # [38] CMYK JPEG, converted to RGB
    ("RGBA", 8, True): 52,  # [44] PNG, WebP, TIFF
    ("P", 8, True): 52,  # [36] palette with a transparent entry, decoded as RGBA
    ("RGBA", 16, True): 52,  # [44] 16-bit PNG, TIFF
}
# Any other kind (LA, 32-bit gray, ...): the most any kind above takes.
DECODE_BYTES_PER_PIXEL_OTHER = max(DECODE_BYTES_PER_PIXEL.values())


def decode_bytes_per_pixel(probe: ImageProbe) -> int:
    return DECODE_BYTES_PER_PIXEL.get((probe.mode, probe.bit_depth, probe.has_alpha),
                                      DECODE_BYTES_PER_PIXEL_OTHER)


def decode_bytes(probe: ImageProbe) -> int:
    """Memory the check decode of this upload takes at its peak (the decode budget's unit)."""
    return probe.width * probe.height * decode_bytes_per_pixel(probe)

# One FLUX job's image in the coordinator, per output pixel, at its peak: the pre-pass as it
# comes (RGB + alpha in float32, 16 B), stored and read back in float16 (8 + 8 B), and made
# float32 again (16 B). The tiles then take ~8 B; the blend is made by bands into an on-disk
# canvas and streamed from it (it took ~64 B when made whole).
COORDINATOR_BYTES_PER_PIXEL = 48


def coordinator_bytes(plan: OutputPlan) -> int:
    return plan.output_width * plan.output_height * COORDINATOR_BYTES_PER_PIXEL


# glibc's mallopt parameter: allocations at least this large are mmap'd, so freeing one gives
# its pages back at once (upscaler/compute/memory.py: return_big_buffers).
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


def trim_heap() -> bool:
    """Give freed heap pages back to the system now (glibc's malloc_trim): after a check
    decode, so an idle decode worker holds little. Returns whether it applied."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):
        return False
