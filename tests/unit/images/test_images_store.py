"""The image cache: built-in images built on first use, imports (directory, tarball,
`docker save`), lookups and the ErrImagePull errors. No root needed."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from podnet.images.builtin import BUILTIN_IMAGES, python_binds
from podnet.images.model import ImageConfig, ImageError
from podnet.images.store import ImageStore


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ImageStore:
    return ImageStore(tmp_path_factory.mktemp("images"))


def test_builtin_busybox_is_built_once_with_all_applets(store: ImageStore) -> None:
    image = store.resolve("busybox:1.36")
    assert image.ref == "docker.io/library/busybox:1.36"
    assert image.source == "builtin:busybox"
    assert (image.entrypoint, image.cmd) == ((), ("sh",))
    for applet in ("bin/sh", "bin/hostname", "usr/bin/wget", "bin/ping", "usr/bin/nslookup"):
        assert os.readlink(image.rootfs / applet) == "/bin/busybox", applet
    assert (image.rootfs / "etc/passwd").read_text().startswith("root:x:0:0:")
    mtime = (image.rootfs.parent / "image.json").stat().st_mtime_ns
    again = store.resolve("docker.io/library/busybox")
    assert again.rootfs == image.rootfs and again.id == image.id
    assert (image.rootfs.parent / "image.json").stat().st_mtime_ns == mtime  # not rebuilt


def test_every_builtin_answers_to_its_references(store: ImageStore) -> None:
    agnhost = store.resolve("registry.k8s.io/e2e-test-images/agnhost:2.52")
    assert (agnhost.entrypoint, agnhost.cmd) == (("/agnhost",), ("pause",))
    script = (agnhost.rootfs / "agnhost").read_text()
    assert "-m podnet.images.agnhost" in script
    assert {b.target for b in python_binds()} <= {b.target for b in agnhost.binds}
    assert all(b.read_only for b in agnhost.binds)
    nginx = store.resolve("nginx:1.27")
    assert nginx.cmd == ("nginx", "-g", "daemon off;")
    assert "access_log /dev/stdout;" in (nginx.rootfs / "etc/nginx/nginx.conf").read_text()
    assert any(b.target == "/usr/sbin/nginx" for b in nginx.binds)
    # what the Kubernetes docs' pages use: liveness-exec, the StatefulSet tutorial
    assert store.resolve("registry.k8s.io/busybox").source == "builtin:busybox"
    assert store.resolve("registry.k8s.io/nginx-slim:0.24").source == "builtin:nginx"
    pause = store.resolve("registry.k8s.io/pause:3.10")
    assert pause.entrypoint == ("/pause",)
    coredns = store.resolve("registry.k8s.io/coredns/coredns:v1.11.3")
    assert coredns.entrypoint == ("/coredns",)
    assert "-m podnet.cli.dns" in (coredns.rootfs / "coredns").read_text()
    assert {b.target for b in python_binds()} <= {b.target for b in coredns.binds}
    dnsutils = store.resolve("registry.k8s.io/e2e-test-images/jessie-dnsutils:1.3")
    assert {"/usr/bin/dig", "/usr/bin/nslookup", "/usr/bin/host"} <= {
        b.target for b in dnsutils.binds
    }
    assert not (dnsutils.rootfs / "usr/bin/nslookup").is_symlink()  # bind's, not busybox's
    perl = store.resolve("perl:5.34.0")  # the Job page's pi example
    assert (perl.source, perl.cmd) == ("builtin:perl", ("perl", "-de0"))
    assert {"/usr/bin/perl", "/usr/share/perl5"} <= {b.target for b in perl.binds}
    assert (perl.rootfs / "usr/bin/perl").is_file()  # the binary's mount point
    assert {b.name for b in BUILTIN_IMAGES} == {
        "busybox", "agnhost", "nginx", "pause", "coredns", "jessie-dnsutils", "perl",
    }  # fmt: skip


def test_unknown_and_invalid_images_fail_clearly(store: ImageStore) -> None:
    with pytest.raises(ImageError) as info:
        store.resolve("quay.io/team/app:v1")
    assert info.value.reason == "ErrImagePull"
    assert "quay.io/team/app:v1" in info.value.message
    assert "podnet image import quay.io/team/app:v1 DIR|TARBALL" in info.value.message
    with pytest.raises(ImageError) as info:
        store.resolve("Not Valid")
    assert info.value.reason == "InvalidImageName"


def make_rootfs(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin/app").write_text("#!/bin/sh\necho app\n")
    (root / "bin/sh").symlink_to("/bin/busybox")
    (root / "etc").mkdir()
    (root / "etc/motd").write_text("hi\n")
    return root


def test_import_a_directory_and_a_tarball(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "cache")
    source = make_rootfs(tmp_path / "src")
    image = store.import_image("myapp:1.0", source, ImageConfig(cmd=("/bin/app",)))
    assert image.ref == "docker.io/library/myapp:1.0" and image.source == "imported"
    assert (image.rootfs / "bin/app").read_text() == "#!/bin/sh\necho app\n"
    assert os.readlink(image.rootfs / "bin/sh") == "/bin/busybox"
    assert store.resolve("docker.io/library/myapp:1.0").cmd == ("/bin/app",)

    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(source, arcname=".")
    other = store.import_image("registry.example/team/busybox:9", tarball)
    assert (other.rootfs / "etc/motd").read_text() == "hi\n"
    assert other.cmd == () and other.entrypoint == ()
    refs = [i.ref for i in store.list() if i.source == "imported"]
    assert sorted(refs) == ["docker.io/library/myapp:1.0", "registry.example/team/busybox:9"]


def test_an_imported_image_shadows_the_builtin_of_the_same_name(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "cache")
    store.import_image("busybox:custom", make_rootfs(tmp_path / "src"))
    assert store.resolve("busybox:custom").source == "imported"
    assert store.resolve("busybox:other").source == "builtin:busybox"


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def layer(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            add_bytes(tar, name, data)
    return buffer.getvalue()


def test_import_a_docker_save_archive_applies_layers_whiteouts_and_config(
    tmp_path: Path,
) -> None:
    config = {
        "config": {
            "Entrypoint": ["/bin/server"],
            "Cmd": ["--port", "80"],
            "Env": ["PATH=/bin", "MODE=prod"],
            "WorkingDir": "/srv",
        }
    }
    archive = tmp_path / "saved.tar"
    with tarfile.open(archive, "w") as tar:
        add_bytes(
            tar,
            "l1/layer.tar",
            layer({"bin/server": b"v1", "etc/old": b"gone", "etc/keep": b"kept"}),
        )
        add_bytes(tar, "l2/layer.tar", layer({"bin/server": b"v2", "etc/.wh.old": b""}))
        add_bytes(tar, "cfg.json", json.dumps(config).encode())
        add_bytes(
            tar,
            "manifest.json",
            json.dumps(
                [
                    {
                        "Config": "cfg.json",
                        "RepoTags": ["server:1"],
                        "Layers": ["l1/layer.tar", "l2/layer.tar"],
                    }
                ]
            ).encode(),
        )
    image = ImageStore(tmp_path / "cache").import_image("server:1", archive)
    assert (image.rootfs / "bin/server").read_bytes() == b"v2"
    assert not (image.rootfs / "etc/old").exists()
    assert (image.rootfs / "etc/keep").read_bytes() == b"kept"
    assert (image.entrypoint, image.cmd, image.working_dir) == (
        ("/bin/server",),
        ("--port", "80"),
        "/srv",
    )
    assert image.env == (("PATH", "/bin"), ("MODE", "prod"))


def test_import_errors_name_the_problem(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "cache")
    with pytest.raises(ImageError, match="does not exist"):
        store.import_image("x", tmp_path / "missing")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(ImageError, match="neither a directory nor a readable tar archive"):
        store.import_image("x", junk)
