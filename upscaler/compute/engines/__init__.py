"""The engines: ESRGAN-family models through spandrel, FLUX through diffusers, Imagen on Vertex
AI, and the tiling they share."""

import threading

# Building a model is serialised within a process: the FLUX loader's init_empty_weights
# (accelerate) patches torch.nn.Module for every thread while it runs, so a model built beside
# it in another thread would get empty (meta) weights and compute nothing.
MODEL_BUILD_LOCK = threading.RLock()
