"""Image references: parsing and normalising `busybox`, `nginx:1.27`, `registry.k8s.io/pause:3.10`.

Pure (no I/O). The rules are Docker's reference normalisation, which is what users expect
from Kubernetes image fields:

- the first path component is a registry only if it contains "." or ":" or is "localhost";
  otherwise the registry is `docker.io`;
- a `docker.io` repository without a "/" lives under `library/` (`busybox` ->
  `docker.io/library/busybox`);
- the tag is what follows the last ":" after the last "/"; no tag and no digest means `latest`;
- a digest (`@sha256:<64 hex>`) is kept as given.

Invariant: `ImageRef.parse(ref).normalized` is canonical, so two spellings of one image
(`busybox`, `docker.io/library/busybox:latest`) compare equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_REGISTRY = re.compile(r"^[a-zA-Z0-9.-]+(?::[0-9]+)?$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class InvalidImageRef(ValueError):
    """The string is not an image reference; the message names the rule it breaks."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    registry: str  # docker.io, registry.k8s.io, localhost:5000
    repository: str  # library/busybox, e2e-test-images/agnhost
    tag: str | None  # None only when a digest is given without a tag
    digest: str | None = None

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def normalized(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    @property
    def short_name(self) -> str:
        """The last path component (`busybox`, `agnhost`): what a built-in image answers to."""
        return self.repository.rsplit("/", 1)[-1]

    @classmethod
    def parse(cls, ref: str) -> ImageRef:
        text = ref.strip()
        if not text:
            raise InvalidImageRef("image reference is empty")
        if text != ref or any(c.isspace() for c in text):
            raise InvalidImageRef(f"image reference {ref!r} contains whitespace")
        rest, digest = text, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not _DIGEST.match(digest):
                raise InvalidImageRef(
                    f"image reference {ref!r}: digest must be sha256:<64 lower-case hex digits>"
                )
        tag: str | None = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG.match(tag):
                raise InvalidImageRef(
                    f"image reference {ref!r}: tag {tag!r} must be 1-128 of [A-Za-z0-9_.-]"
                    " and not start with '.' or '-'"
                )
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        first, sep, remainder = rest.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            registry, repository = first, remainder
            if not _REGISTRY.match(registry):
                raise InvalidImageRef(f"image reference {ref!r}: bad registry {registry!r}")
        else:
            registry, repository = DEFAULT_REGISTRY, rest
        if registry == DEFAULT_REGISTRY and "/" not in repository:
            repository = f"library/{repository}"
        for component in repository.split("/"):
            if not _COMPONENT.match(component):
                raise InvalidImageRef(
                    f"image reference {ref!r}: repository component {component!r} must be"
                    " lower-case letters and digits separated by '.', '_', '__' or '-'"
                )
        return cls(registry, repository, tag, digest)
