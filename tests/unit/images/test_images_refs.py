"""Image reference normalisation (Docker's rules) and the errors for bad references."""

from __future__ import annotations

import pytest

from podnet.images.refs import ImageRef, InvalidImageRef


@pytest.mark.parametrize(
    ("ref", "normalized", "short"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox"),
        ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest", "busybox"),
        ("library/nginx", "docker.io/library/nginx:latest", "nginx"),
        ("bitnami/nginx:1.25", "docker.io/bitnami/nginx:1.25", "nginx"),
        (
            "registry.k8s.io/e2e-test-images/agnhost:2.52",
            "registry.k8s.io/e2e-test-images/agnhost:2.52",
            "agnhost",
        ),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10", "pause"),
        ("localhost/app", "localhost/app:latest", "app"),
        ("localhost:5000/team/app:v2", "localhost:5000/team/app:v2", "app"),
        ("busybox@sha256:" + "a" * 64, "docker.io/library/busybox@sha256:" + "a" * 64, "busybox"),
        (
            "busybox:1@sha256:" + "b" * 64,
            "docker.io/library/busybox:1@sha256:" + "b" * 64,
            "busybox",
        ),
    ],
)
def test_references_normalise(ref: str, normalized: str, short: str) -> None:
    parsed = ImageRef.parse(ref)
    assert parsed.normalized == normalized
    assert parsed.short_name == short


def test_two_spellings_of_one_image_are_equal() -> None:
    assert ImageRef.parse("nginx") == ImageRef.parse("docker.io/library/nginx:latest")


@pytest.mark.parametrize(
    ("ref", "complaint"),
    [
        ("", "empty"),
        ("Busybox", "lower-case"),
        ("busy box", "whitespace"),
        ("busybox:", "tag ''"),
        ("busybox:-x", "tag '-x'"),
        ("busybox@sha256:xyz", "digest"),
        ("a//b", "component ''"),
    ],
)
def test_bad_references_say_which_rule(ref: str, complaint: str) -> None:
    with pytest.raises(InvalidImageRef) as info:
        ImageRef.parse(ref)
    assert complaint in str(info.value)
