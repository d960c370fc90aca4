"""Super-resolution models: a folder of weight files behind spandrel's one loader, weights only
(no pickled code, no TorchScript), in a small per-process LRU cache.
Design: docs/design/engines.md
"""

from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from upscaler.compute.engines import MODEL_BUILD_LOCK
from upscaler.errors import UnknownModel, UnsupportedModel

# torch loads with the first model, not with this module: the Ingress imports ModelInfo and
# has no use for torch.
if TYPE_CHECKING:
    import torch

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")  # preference order for equal stems
PICKLED_SUFFIXES = (".pth", ".ckpt")  # loaded with weights_only
REFUSED_SUFFIXES = (".pt",)  # TorchScript: listed, never loaded


def unknown_model(name: str, available: list[str]) -> UnknownModel:
    hint = ", ".join(available) if available else "none; run `upscaler models pull`"
    return UnknownModel(f"unknown model '{name}'; available models: {hint}")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str
    scale: int
    input_channels: int
    output_channels: int
    supports_half: bool
    supports_bfloat16: bool
    size_bytes: int
    file: str

    def as_dict(self) -> dict:
        return asdict(self)


def load_descriptor(path: Path):
    """Load a weight file through spandrel and check it is a usable image-to-image model."""
    import spandrel

    suffix = path.suffix.lower()
    if suffix in REFUSED_SUFFIXES:
        raise UnsupportedModel(
            f"{path.name}: TorchScript (.pt) files are not loaded, they can run code; use "
            "the model as .safetensors, or as a .pth / .ckpt state dict (loaded with "
            "weights_only)", code="unsafe_model_format")
    loader = spandrel.ModelLoader(device="cpu")
    try:
        if suffix in PICKLED_SUFFIXES:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
            desc = loader.load_from_state_dict(spandrel.canonicalize_state_dict(state))
        else:
            desc = loader.load_from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - spandrel raises many kinds for unknown files
        raise UnsupportedModel(f"{path.name}: spandrel cannot load it ({exc})") from exc
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise UnsupportedModel(
            f"{path.name}: not a single-image model ({type(desc).__name__})")
    if desc.input_channels not in (1, 3) or desc.output_channels != desc.input_channels:
        raise UnsupportedModel(
            f"{path.name}: {desc.input_channels}->{desc.output_channels} channels; "
            "RGB or grayscale models are supported")
    desc.model.eval()
    return desc


class ModelRegistry:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._info_cache: dict[tuple[str, float, int], ModelInfo] = {}
        self._lock = threading.Lock()

    def files(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        if not self.folder.is_dir():
            return found
        for suffix in reversed(WEIGHT_SUFFIXES):  # preferred suffixes overwrite
            for path in self.folder.glob(f"*{suffix}"):
                if path.is_file():
                    found[path.stem] = path
        return dict(sorted(found.items()))

    def names(self) -> list[str]:
        return list(self.files())

    def resolve(self, name: str) -> Path:
        files = self.files()
        if name not in files:
            raise unknown_model(name, list(files))
        return files[name]

    def info(self, name: str) -> ModelInfo:
        path = self.resolve(name)
        stat = path.stat()
        key = (str(path), stat.st_mtime, stat.st_size)
        with self._lock:
            if key in self._info_cache:
                return self._info_cache[key]
        with MODEL_BUILD_LOCK:
            desc = load_descriptor(path)
        info = ModelInfo(
            name=name, architecture=desc.architecture.name, scale=int(desc.scale),
            input_channels=desc.input_channels, output_channels=desc.output_channels,
            supports_half=bool(desc.supports_half),
            supports_bfloat16=bool(desc.supports_bfloat16),
            size_bytes=stat.st_size, file=path.name)
        del desc
        with self._lock:
            self._info_cache[key] = info
        return info

    def list_info(self) -> tuple[list[ModelInfo], dict[str, str]]:
        """All loadable models, and the files that could not be loaded with the reason."""
        infos, errors = [], {}
        for name in self.files():
            try:
                infos.append(self.info(name))
            except UnsupportedModel as exc:
                errors[name] = str(exc)
        return infos, errors


@dataclass
class LoadedModel:
    name: str
    descriptor: object  # spandrel.ImageModelDescriptor
    device: torch.device
    dtype: torch.dtype
    load_seconds: float


class ModelCache:
    """Bounded LRU of models loaded on one device; thread-safe."""

    def __init__(self, registry: ModelRegistry, device: torch.device, capacity: int = 3,
                 compile_models: bool = False):
        self.registry = registry
        self.device = device
        self.capacity = capacity
        self.compile_models = compile_models and device.type == "cuda"
        self._models: OrderedDict[tuple[str, torch.dtype], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def loaded_names(self) -> list[str]:
        with self._lock:
            return sorted({name for name, _ in self._models})

    def get(self, name: str, dtype: torch.dtype) -> LoadedModel:
        key = (name, dtype)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            path = self.registry.resolve(name)
            start = time.perf_counter()
            with MODEL_BUILD_LOCK:
                desc = load_descriptor(path)
            import torch

            desc.to(self.device)
            if dtype != torch.float32:
                desc.to(dtype)
            if self.device.type == "cuda":  # NHWC is what tensor cores read fastest
                desc.model.to(memory_format=torch.channels_last)
            if self.compile_models:
                # spandrel calls the module it holds; hand it the compiled one (the first
                # images of a new shape pay for compiling).
                desc._model = torch.compile(desc.model)
            loaded = LoadedModel(name, desc, self.device, dtype, time.perf_counter() - start)
            self._models[key] = loaded
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
                self._release()
            return loaded

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            self._release()

    def _release(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
