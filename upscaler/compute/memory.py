"""What work costs in memory, per pixel: the one place the admission budgets read it from."""

from __future__ import annotations

from typing import TYPE_CHECKING

from upscaler.compute.dimensions import OutputPlan

if TYPE_CHECKING:
    from upscaler.compute.engines.usdu import SeamFix, TileOrder
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


# A streamed check decode (upscaler.compute.streamed_decode), whatever the image's size: its
# strip a few times over (the bytes libvips writes, its region) and libvips's buffers. Rises
# of [50 MB] for a 64 MP PNG 8000 px wide and [73 MB] for 60 MP 30000 px wide, both with
# 16 MB strips (``ImageProbe.strip_bytes``): 32 MB + 4 strips, with room.
STREAMED_DECODE_BASE_BYTES = 32 << 20
STREAMED_DECODE_STRIPS = 4


def decode_bytes(probe: ImageProbe) -> int:
    """Memory the check decode of this upload takes at its peak (the decode budget's unit)."""
    if probe.streamed:
        return STREAMED_DECODE_BASE_BYTES + STREAMED_DECODE_STRIPS * probe.strip_bytes
    return probe.width * probe.height * decode_bytes_per_pixel(probe)

# One FLUX job in the coordinator at its peak (bench/bench_flux_coordinator.py: peak RSS over
# the imports, torch included; [bracketed] B per output pixel). The pre-pass is read by bands
# from the npz the ESRGAN replica stored (it arrived whole over the handle before: [16.5]); the
# image is then on disk (page cache, not RSS) and the coordinator holds tiles: every crop sent
# and not yet back (float32 RGB, all of the largest wave at once: they wait in the handle's
# queue) and the crop or band being made: chess [12.2] at 4096x4096, [8.7] at 8192x8192;
# parallel [19.4] (covered by the crops' term).
COORDINATOR_BYTES_PER_PIXEL = 18  # a floor over chess's peaks (was 48 with the image in memory)
CROP_BYTES_PER_PIXEL = 12  # a crop waiting for its replica
# Making one crop (its window canvas replayed, the colour fix) or one band of the blend (a
# window canvas BLEND_ROWS high), per pixel of it: [~220] over the crops in flight.
WORK_BYTES_PER_PIXEL = 256


def coordinator_bytes(plan: OutputPlan, tile_size: int = 512, tile_padding: int = 32,
                      order: TileOrder = "chess", seam_fix: SeamFix = "none",
                      seam_width: int = 64) -> int:
    """Memory one FLUX job takes in the coordinator (its budget's unit), for its tiling."""
    from upscaler.compute.engines.usdu import BLEND_ROWS, plan_tiles, waves

    height, width = plan.output_height, plan.output_width
    tiles = plan_tiles(height, width, tile_size, tile_padding, order, seam_fix, seam_width)
    in_flight = max(sum((t.crop[1] - t.crop[0]) * (t.crop[3] - t.crop[2]) for t in wave)
                    for wave in waves(tiles))
    largest_crop = max((t.crop[1] - t.crop[0]) * (t.crop[3] - t.crop[2]) for t in tiles)
    work = max(largest_crop, min(BLEND_ROWS, height) * width) * WORK_BYTES_PER_PIXEL
    return max(height * width * COORDINATOR_BYTES_PER_PIXEL,
               in_flight * CROP_BYTES_PER_PIXEL) + work


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
