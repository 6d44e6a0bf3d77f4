"""The machine-wide image cache: resolve an image reference to a root filesystem + its config.

No registry is reachable, so an image is a directory: built-in images (busybox, agnhost,
nginx, pause; see `builtin.py`) are built into the cache on first use, any other root
filesystem is added with `podnet image import`. Layout under `root` (default
/var/lib/podnet/images, shared by every agent on the machine):

    builtin/<name>-v<version>/image.json + rootfs/   built on first use; a new builder
                                                     version builds a new directory
    imported/<hash of ref>/image.json + rootfs/  one per imported reference

Invariants:
- An image directory appears only complete: it is built in a sibling temporary directory and
  renamed into place, so concurrent agents never see half an image (the loser of a race
  discards its copy). A published root filesystem is never deleted or changed in place
  (containers mount it as their overlay's lower layer); a re-import moves the old one aside.
- Image root filesystems are never written by containers: the runtime mounts them as the
  read-only lower layer of a per-container overlay.
- `resolve` never raises anything but `ImageError` (reason `ErrImagePull` or
  `InvalidImageName`), whose message says what to do.
- Imported images shadow built-in ones with the same reference.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import shutil
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from podnet.images.builtin import BUILTIN_IMAGES
from podnet.images.model import (
    DEFAULT_PATH,
    BindMount,
    BuiltinImage,
    ImageConfig,
    ImageError,
)
from podnet.images.refs import ImageRef, InvalidImageRef

DEFAULT_ROOT = Path("/var/lib/podnet/images")


@dataclass(frozen=True, slots=True)
class Image:
    ref: str  # normalised reference the user asked for
    rootfs: Path
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = (("PATH", DEFAULT_PATH),)
    working_dir: str = "/"
    binds: tuple[BindMount, ...] = ()
    source: str = "imported"  # "builtin:<name>" or "imported"
    id: str = ""  # sha256 of the image config


@dataclass(frozen=True, slots=True)
class ImageInfo:
    ref: str
    source: str
    present: bool  # False for a built-in image not built yet
    path: Path


def config_id(config: ImageConfig, salt: str) -> str:
    blob = json.dumps({"config": config.to_json(), "salt": salt}, sort_keys=True).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


class ImageStore:
    def __init__(self, root: Path = DEFAULT_ROOT, builtins: Sequence[BuiltinImage] | None = None):
        self.root = root
        self.builtins = tuple(BUILTIN_IMAGES if builtins is None else builtins)

    # -- lookup --------------------------------------------------------------------------

    def resolve(self, image_ref: str) -> Image:
        try:
            ref = ImageRef.parse(image_ref)
        except InvalidImageRef as exc:
            raise ImageError(
                "InvalidImageName", f"Failed to apply default image tag: {exc}"
            ) from exc
        imported = self._imported_dir(ref.normalized)
        if (imported / "image.json").is_file():
            return self._load(imported, ref.normalized, "imported", ())
        builtin = self.builtin_for(ref)
        if builtin is not None:
            directory = self.ensure_builtin(builtin)
            return self._load(directory, ref.normalized, f"builtin:{builtin.name}", builtin.binds())
        raise ImageError(
            "ErrImagePull",
            f'Failed to pull image "{image_ref}": no registry is reachable from podnet and '
            f"{ref.normalized} is neither a built-in image "
            f"({', '.join(b.name for b in self.builtins)}) nor imported; add it with "
            f"`podnet image import {image_ref} DIR|TARBALL`",
        )

    def builtin_for(self, ref: ImageRef) -> BuiltinImage | None:
        for builtin in self.builtins:
            if ref.name in builtin.repositories:
                return builtin
        return None

    def list(self) -> list[ImageInfo]:
        out: list[ImageInfo] = []
        imported_root = self.root / "imported"
        if imported_root.is_dir():
            for directory in sorted(imported_root.iterdir()):
                meta = directory / "image.json"
                if meta.is_file():
                    ref = str(json.loads(meta.read_text())["ref"])
                    out.append(ImageInfo(ref, "imported", True, directory))
        for builtin in self.builtins:
            directory = self.builtin_dir(builtin)
            for repo in sorted(builtin.repositories):
                out.append(
                    ImageInfo(
                        f"{repo}:*",
                        f"builtin:{builtin.name}",
                        (directory / "image.json").is_file(),
                        directory,
                    )
                )
        return out

    # -- building and importing ----------------------------------------------------------

    def ensure_builtin(self, builtin: BuiltinImage) -> Path:
        directory = self.builtin_dir(builtin)
        if (directory / "image.json").is_file():
            return directory

        def fill(rootfs: Path) -> ImageConfig:
            builtin.build(rootfs)
            return builtin.config

        try:
            self._publish(directory, f"builtin:{builtin.name}", fill, version=builtin.version)
        except OSError as exc:
            raise ImageError(
                "ErrImagePull",
                f"building the built-in image {builtin.name} into {directory} failed: {exc}",
            ) from exc
        return directory

    def import_image(
        self,
        image_ref: str,
        source: Path,
        config: ImageConfig | None = None,
    ) -> Image:
        """Add a root filesystem (a directory, a rootfs tarball or a `docker save` tarball)."""
        try:
            ref = ImageRef.parse(image_ref)
        except InvalidImageRef as exc:
            raise ImageError("InvalidImageName", str(exc)) from exc
        if not source.exists():
            raise ImageError("ErrImagePull", f"cannot import {image_ref}: {source} does not exist")

        def fill(rootfs: Path) -> ImageConfig:
            found = populate_rootfs(rootfs, source)
            return config or found or ImageConfig()

        directory = self._imported_dir(ref.normalized)
        try:
            self._publish(directory, ref.normalized, fill, replace=True)
        except (OSError, tarfile.TarError) as exc:
            raise ImageError(
                "ErrImagePull",
                f"importing {ref.normalized} from {source} into {self.root} failed: {exc}",
            ) from exc
        return self._load(directory, ref.normalized, "imported", ())

    # -- internals -----------------------------------------------------------------------

    def _imported_dir(self, normalized: str) -> Path:
        return self.root / "imported" / hashlib.sha256(normalized.encode()).hexdigest()[:20]

    def builtin_dir(self, builtin: BuiltinImage) -> Path:
        """One directory per builder version: a new version never touches the rootfs that
        running containers use as their lower layer."""
        name = f"{builtin.name}-v{builtin.version}"
        variant = builtin.variant()
        if variant:
            name += "-" + hashlib.sha256(variant.encode()).hexdigest()[:12]
        return self.root / "builtin" / name

    def _publish(
        self,
        directory: Path,
        ref: str,
        fill: Callable[[Path], ImageConfig],
        *,
        version: int = 0,
        replace: bool = False,
    ) -> None:
        """Build in a temporary sibling, then rename into place.

        Without `replace` an existing directory wins (another agent published the same
        built-in version first). With `replace` (re-import) the old directory is moved to
        `.replaced-*` and kept: running containers may still have it as their lower layer.
        """
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.parent / f".tmp-{directory.name}-{secrets.token_hex(4)}"
        try:
            rootfs = tmp / "rootfs"
            rootfs.mkdir(parents=True)
            config = fill(rootfs)
            meta = {"ref": ref, "version": version, "config": config.to_json()}
            (tmp / "image.json").write_text(json.dumps(meta, indent=1) + "\n")
            if replace and directory.exists():
                aside = directory.parent / f".replaced-{directory.name}-{secrets.token_hex(4)}"
                with contextlib.suppress(FileNotFoundError):
                    directory.rename(aside)
            try:
                tmp.rename(directory)
            except OSError:
                if not replace and (directory / "image.json").is_file():
                    return  # another agent published it first: theirs is as good as ours
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _load(self, directory: Path, ref: str, source: str, binds: tuple[BindMount, ...]) -> Image:
        try:
            meta = json.loads((directory / "image.json").read_text())
        except (OSError, ValueError) as exc:
            raise ImageError(
                "ErrImagePull", f"image {ref} in {directory} is unreadable ({exc}); re-import it"
            ) from exc
        config = ImageConfig.from_json(meta.get("config", {}))
        return Image(
            ref=ref,
            rootfs=directory / "rootfs",
            entrypoint=config.entrypoint,
            cmd=config.cmd,
            env=config.env,
            working_dir=config.working_dir,
            binds=binds,
            source=source,
            id=config_id(config, f"{source}:{meta.get('version', 0)}"),
        )


# -- importing root filesystems -----------------------------------------------------------


def populate_rootfs(rootfs: Path, source: Path) -> ImageConfig | None:
    """Fill `rootfs` from a directory, a rootfs tarball, or a `docker save` tarball.

    Returns the image config when the source carries one (docker save), else None.
    """
    if source.is_dir():
        shutil.copytree(source, rootfs, symlinks=True, dirs_exist_ok=True)
        return None
    try:
        archive = tarfile.open(source)  # noqa: SIM115 - closed by the `with` just below
    except (tarfile.TarError, OSError) as exc:
        raise ImageError(
            "ErrImagePull", f"{source} is neither a directory nor a readable tar archive: {exc}"
        ) from exc
    with archive:
        names = set(archive.getnames())
        if "manifest.json" in names:
            return _apply_docker_save(rootfs, archive)
        archive.extractall(rootfs, filter="tar")
    return None


def _apply_docker_save(rootfs: Path, archive: tarfile.TarFile) -> ImageConfig:
    def read(name: str) -> bytes:
        member = archive.extractfile(name)
        if member is None:
            raise ImageError("ErrImagePull", f"docker save archive: {name} is not a file")
        return member.read()

    manifest = json.loads(read("manifest.json"))
    if not isinstance(manifest, list) or not manifest:
        raise ImageError("ErrImagePull", "docker save archive: manifest.json lists no image")
    entry = manifest[0]
    for layer in entry.get("Layers", []):
        member = archive.extractfile(layer)
        if member is None:
            raise ImageError("ErrImagePull", f"docker save archive: layer {layer} is missing")
        with tarfile.open(fileobj=member) as layer_tar:
            _apply_layer(rootfs, layer_tar)
    raw = json.loads(read(entry["Config"])).get("config") or {}
    env: list[tuple[str, str]] = []
    for item in raw.get("Env") or []:
        key, _, value = str(item).partition("=")
        env.append((key, value))
    return ImageConfig(
        entrypoint=tuple(raw.get("Entrypoint") or ()),
        cmd=tuple(raw.get("Cmd") or ()),
        env=tuple(env) or (("PATH", DEFAULT_PATH),),
        working_dir=raw.get("WorkingDir") or "/",
    )


def _apply_layer(rootfs: Path, layer: tarfile.TarFile) -> None:
    """Apply one image layer: OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`) delete lower files."""
    keep: list[tarfile.TarInfo] = []
    for member in layer.getmembers():
        path = PurePosixPath(member.name.lstrip("/"))
        base = path.name
        if base == ".wh..wh..opq":
            target = rootfs / path.parent
            if target.is_dir():
                for child in target.iterdir():
                    _remove_path(child)
            continue
        if base.startswith(".wh."):
            _remove_path(rootfs / path.parent / base[len(".wh.") :])
            continue
        existing = rootfs / path
        if existing.is_symlink() or (existing.exists() and not existing.is_dir()):
            existing.unlink()
        keep.append(member)
    layer.extractall(rootfs, members=keep, filter="tar")


def _remove_path(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
