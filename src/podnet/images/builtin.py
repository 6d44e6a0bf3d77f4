"""The built-in images (busybox, agnhost, nginx, pause, coredns, jessie-dnsutils, perl), built
from what the machine has.

Each builder fills an empty directory with a root filesystem; `ImageStore` caches the result
(see store.py). What they are made of:

- busybox: busybox built from source with upstream's default configuration (busybox_build.py;
  Debian's busybox-static when that cannot be built) copied to /bin/busybox, every applet a
  symlink to it at the path `busybox --list-full` names (sh, wget, nc, ping, nslookup,
  hostname, ...), plus /etc/passwd and /etc/group. Entrypoint none, cmd ["sh"], like
  docker.io/library/busybox. Every image's cache directory names the busybox it holds.
- agnhost: the busybox tree plus `/agnhost`, a script running podnet's agnhost
  (`podnet.images.agnhost`) with the machine's Python. The interpreter, the venv and podnet's
  source are bind-mounted read-only at their host paths (`python_binds`), the shared
  libraries too (`library_binds`). Entrypoint ["/agnhost"], cmd ["pause"].
- nginx: the busybox tree plus the official image's config and welcome page, the machine's
  /usr/sbin/nginx and libraries bind-mounted read-only; logs go to stdout/stderr so
  `kubectl logs` shows them. cmd ["nginx", "-g", "daemon off;"] like the official image.
- pause: /pause, a busybox-sh loop that exits 0 on SIGINT/SIGTERM (registry.k8s.io/pause).
- coredns: the agnhost recipe with `/coredns`, a script running `podnet dns` (podnet's cluster
  DNS server, `podnet.dns`). Entrypoint ["/coredns"] (registry.k8s.io/coredns/coredns).
- jessie-dnsutils: the busybox tree plus the machine's dig, nslookup and host (Debian's
  bind9-dnsutils) bind-mounted read-only, like the e2e image the DNS debugging guide uses.
- perl: the busybox tree plus the machine's /usr/bin/perl and its module directories
  (Debian's perl) bind-mounted read-only, so the Job page's `perl -Mbignum=bpi -wle
  'print bpi(2000)'` runs (with Debian's libmath-bigint-perl: perl 5.36's own Math::BigInt
  fails above 1,000 digits, as docker.io/library/perl:5.36 does, which is why the page pins
  5.34.0). cmd ["perl", "-de0"] like docker.io/library/perl.

Invariant: builders only read from the machine; everything they write is inside `rootfs`.
Binds are computed when an image is resolved, so a moved venv never leaves a stale image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import podnet
from podnet.images.busybox_build import ensure_busybox
from podnet.images.model import DEFAULT_PATH, BindMount, BuiltinImage, ImageConfig, ImageError

BUSYBOX_CANDIDATES = (Path("/usr/bin/busybox"), Path("/bin/busybox"))
NGINX_BINARY = Path("/usr/sbin/nginx")
PERL_BINARY = Path("/usr/bin/perl")
# the module directories of Debian's perl outside /usr/lib (which library_binds covers)
PERL_DIRS = (Path("/usr/share/perl"), Path("/usr/share/perl5"), Path("/etc/perl"))
LIBRARY_DIRS = ("usr/lib", "usr/lib64", "lib", "lib64")

USERS = (  # /etc/passwd
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUPS = "root:x:0:\ndaemon:x:1:\ntty:x:5:\nnogroup:x:65534:\n"

PAUSE_SCRIPT = """#!/bin/sh
# podnet's pause: sleeps until SIGINT or SIGTERM, then exits 0 (registry.k8s.io/pause)
trap 'exit 0' INT TERM
while :; do sleep 3600 & wait $!; done
"""

NGINX_CONF = """# podnet's built-in nginx: the official image's default site; logs to stdout/stderr
user nobody nogroup;
worker_processes 1;
pid /run/nginx.pid;
error_log stderr notice;

events {
    worker_connections 1024;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /dev/stdout;
    sendfile on;
    keepalive_timeout 65;

    server {
        listen 80;
        server_name localhost;
        location / {
            root /usr/share/nginx/html;
            index index.html index.htm;
        }
        error_page 500 502 503 504 /50x.html;
        location = /50x.html {
            root /usr/share/nginx/html;
        }
    }
}
"""

WELCOME_PAGE = """<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>
<p><em>Thank you for using nginx.</em></p>
</body>
</html>
"""

ERROR_PAGE = """<!DOCTYPE html>
<html>
<head><title>Error</title></head>
<body>
<h1>An error occurred.</h1>
<p>Sorry, the page you are looking for is currently unavailable.</p>
</body>
</html>
"""

MINIMAL_MIME_TYPES = """types {
    text/html html htm shtml;
    text/css css;
    text/plain txt;
    application/javascript js;
    application/json json;
    image/png png;
    image/jpeg jpeg jpg;
}
"""


def find_busybox() -> Path:
    """busybox built from source with upstream's configuration (busybox_build.py), else
    Debian's busybox-static."""
    built = ensure_busybox()
    if built is not None:
        return built
    for candidate in BUSYBOX_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise ImageError(
        "ErrImagePull",
        "the built-in images need a static busybox at /usr/bin/busybox or /bin/busybox: "
        "install Debian's busybox-static (apt-get install busybox-static)",
    )


def busybox_variant() -> str:
    """Which busybox the images are built with: a newly built one makes new image dirs."""
    return str(find_busybox())


def busybox_applets(busybox: Path) -> list[str]:
    """Relative paths (bin/sh, usr/bin/wget, ...) of every applet this busybox provides."""
    result = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, timeout=10, check=False
    )
    if result.returncode != 0:
        raise ImageError("ErrImagePull", f"{busybox} --list-full failed: {result.stderr.strip()}")
    return [line.strip().lstrip("/") for line in result.stdout.splitlines() if line.strip()]


def make_skeleton(rootfs: Path) -> None:
    """The directories and files every built-in image has (mount points included)."""
    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "root",
        "home",
        "var/tmp",
        "run",
    ):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "var/tmp").chmod(0o1777)
    (rootfs / "etc/passwd").write_text(USERS)
    (rootfs / "etc/group").write_text(GROUPS)
    for name in ("hosts", "resolv.conf", "hostname"):
        (rootfs / "etc" / name).touch()


def install_busybox(rootfs: Path, applets: list[str] | None = None) -> None:
    """Copy busybox to /bin/busybox and link the applets (all of them by default)."""
    busybox = find_busybox()
    target = rootfs / "bin/busybox"
    shutil.copy2(busybox, target)
    target.chmod(0o755)
    for rel in busybox_applets(busybox) if applets is None else applets:
        link = rootfs / rel
        if rel == "bin/busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")


def build_busybox(rootfs: Path) -> None:
    make_skeleton(rootfs)
    install_busybox(rootfs)


def mirror_library_layout(rootfs: Path) -> None:
    """Recreate the machine's /lib, /lib64 symlinks (merged /usr) or mount points in rootfs."""
    for rel in LIBRARY_DIRS:
        host = Path("/") / rel
        inside = rootfs / rel
        if inside.is_symlink() or inside.exists():
            continue
        if host.is_symlink():
            inside.symlink_to(host.readlink())
        elif host.is_dir():
            inside.mkdir(parents=True)


def library_binds() -> tuple[BindMount, ...]:
    """The machine's shared-library directories (real directories only, not symlinks)."""
    out = []
    for rel in LIBRARY_DIRS:
        host = Path("/") / rel
        if host.is_dir() and not host.is_symlink():
            out.append(BindMount(host, "/" + rel))
    return tuple(out)


def python_binds() -> tuple[BindMount, ...]:
    """The interpreter, its prefix, the venv and podnet's source, each at its host path."""
    package_root = Path(podnet.__file__).resolve().parent.parent
    candidates = [
        Path(sys.base_prefix).resolve(),
        Path(sys.prefix).resolve(),
        package_root,
        Path(os.path.realpath(sys.executable)),
    ]
    covered = [Path("/usr/lib"), Path("/usr/lib64")]  # bound by library_binds
    chosen: list[Path] = []
    for path in sorted(set(candidates), key=lambda p: len(p.parts)):
        if path in (Path("/"), Path("/usr")) or not path.exists():
            continue
        if any(path == c or c in path.parents for c in [*covered, *chosen]):
            continue
        chosen.append(path)
    return tuple(BindMount(path, str(path)) for path in chosen)


def python_entrypoint(rootfs: Path, name: str, module: str, *args: str) -> None:
    """The busybox tree plus `/<name>`, a script running `python -m module args... "$@"`."""
    build_busybox(rootfs)
    mirror_library_layout(rootfs)
    script = rootfs / name
    command = " ".join([sys.executable, "-m", module, *args])
    script.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    script.chmod(0o755)


def build_agnhost(rootfs: Path) -> None:
    python_entrypoint(rootfs, "agnhost", "podnet.images.agnhost")
    (rootfs / "uploads").mkdir()


def build_coredns(rootfs: Path) -> None:
    python_entrypoint(rootfs, "coredns", "podnet.cli.dns")


def python_image_binds() -> tuple[BindMount, ...]:
    return library_binds() + python_binds()


DNSUTILS = tuple(Path("/usr/bin") / tool for tool in ("dig", "nslookup", "host"))


def build_dnsutils(rootfs: Path) -> None:
    missing = [str(tool) for tool in DNSUTILS if not tool.is_file()]
    if missing:
        raise ImageError(
            "ErrImagePull",
            f"the built-in jessie-dnsutils image needs {', '.join(missing)}: "
            "apt-get install bind9-dnsutils",
        )
    build_busybox(rootfs)
    mirror_library_layout(rootfs)
    for tool in DNSUTILS:
        target = rootfs / str(tool).lstrip("/")
        if target.is_symlink():
            target.unlink()  # busybox's nslookup gives way to bind's
        target.touch()  # mount point for the machine's binary


def dnsutils_binds() -> tuple[BindMount, ...]:
    return (*library_binds(), *(BindMount(tool, str(tool)) for tool in DNSUTILS))


def build_nginx(rootfs: Path) -> None:
    if not NGINX_BINARY.is_file():
        raise ImageError(
            "ErrImagePull",
            f"the built-in nginx image needs {NGINX_BINARY}: apt-get install nginx-light",
        )
    build_busybox(rootfs)
    mirror_library_layout(rootfs)
    (rootfs / "usr/sbin/nginx").touch()  # mount point for the machine's binary
    etc = rootfs / "etc/nginx"
    etc.mkdir(parents=True)
    (etc / "nginx.conf").write_text(NGINX_CONF)
    mime = Path("/etc/nginx/mime.types")
    (etc / "mime.types").write_text(mime.read_text() if mime.is_file() else MINIMAL_MIME_TYPES)
    html = rootfs / "usr/share/nginx/html"
    html.mkdir(parents=True)
    host_page = Path("/usr/share/nginx/html/index.html")
    (html / "index.html").write_text(host_page.read_text() if host_page.is_file() else WELCOME_PAGE)
    (html / "50x.html").write_text(ERROR_PAGE)
    for d in ("var/log/nginx", "var/lib/nginx", "var/cache/nginx"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)


def nginx_binds() -> tuple[BindMount, ...]:
    return (*library_binds(), BindMount(NGINX_BINARY, str(NGINX_BINARY)))


def build_perl(rootfs: Path) -> None:
    if not PERL_BINARY.is_file():
        raise ImageError(
            "ErrImagePull", f"the built-in perl image needs {PERL_BINARY}: apt-get install perl"
        )
    build_busybox(rootfs)
    mirror_library_layout(rootfs)
    (rootfs / "usr/bin/perl").touch()  # mount point for the machine's binary
    for directory in PERL_DIRS:
        (rootfs / str(directory).lstrip("/")).mkdir(parents=True, exist_ok=True)


def perl_binds() -> tuple[BindMount, ...]:
    dirs = tuple(BindMount(d, str(d)) for d in PERL_DIRS if d.is_dir())
    return (*library_binds(), BindMount(PERL_BINARY, str(PERL_BINARY)), *dirs)


def build_pause(rootfs: Path) -> None:
    make_skeleton(rootfs)
    install_busybox(rootfs, applets=["bin/sh", "bin/sleep"])
    script = rootfs / "pause"
    script.write_text(PAUSE_SCRIPT)
    script.chmod(0o755)


def _repos(*names: str) -> frozenset[str]:
    return frozenset(names)


BUILTIN_IMAGES: tuple[BuiltinImage, ...] = (
    BuiltinImage(
        name="busybox",
        repositories=_repos(
            "docker.io/library/busybox",
            "registry.k8s.io/busybox",  # the Kubernetes docs' probe and volume examples
            "k8s.gcr.io/busybox",
            "registry.k8s.io/e2e-test-images/busybox",
            "k8s.gcr.io/e2e-test-images/busybox",
            "gcr.io/google-containers/busybox",
        ),
        config=ImageConfig(cmd=("sh",), env=(("PATH", DEFAULT_PATH),)),
        build=build_busybox,
        variant=busybox_variant,
    ),
    BuiltinImage(
        name="agnhost",
        repositories=_repos(
            "registry.k8s.io/e2e-test-images/agnhost",
            "k8s.gcr.io/e2e-test-images/agnhost",
            "gcr.io/kubernetes-e2e-test-images/agnhost",
        ),
        config=ImageConfig(entrypoint=("/agnhost",), cmd=("pause",)),
        build=build_agnhost,
        binds=python_image_binds,
        variant=lambda: sys.executable + busybox_variant(),  # the interpreter is in /agnhost
    ),
    BuiltinImage(
        name="nginx",
        repositories=_repos(
            "docker.io/library/nginx",
            "registry.k8s.io/nginx-slim",  # the StatefulSet tutorial's (nginx, one config)
            "k8s.gcr.io/nginx-slim",
            "registry.k8s.io/e2e-test-images/nginx",
            "k8s.gcr.io/e2e-test-images/nginx",
        ),
        config=ImageConfig(cmd=("nginx", "-g", "daemon off;")),
        build=build_nginx,
        variant=busybox_variant,
        binds=nginx_binds,
    ),
    BuiltinImage(
        name="pause",
        repositories=_repos("registry.k8s.io/pause", "k8s.gcr.io/pause"),
        config=ImageConfig(entrypoint=("/pause",)),
        build=build_pause,
        variant=busybox_variant,
    ),
    BuiltinImage(
        name="coredns",
        repositories=_repos(
            "registry.k8s.io/coredns/coredns",
            "k8s.gcr.io/coredns/coredns",
            "docker.io/coredns/coredns",
        ),
        config=ImageConfig(entrypoint=("/coredns",)),
        build=build_coredns,
        binds=python_image_binds,
        variant=lambda: sys.executable + busybox_variant(),  # the interpreter is in /coredns
    ),
    BuiltinImage(
        name="jessie-dnsutils",
        repositories=_repos(
            "registry.k8s.io/e2e-test-images/jessie-dnsutils",
            "k8s.gcr.io/e2e-test-images/jessie-dnsutils",
            "gcr.io/kubernetes-e2e-test-images/dnsutils",
        ),
        config=ImageConfig(cmd=("sh",)),
        build=build_dnsutils,
        variant=busybox_variant,
        binds=dnsutils_binds,
    ),
    BuiltinImage(
        name="perl",
        repositories=_repos("docker.io/library/perl"),  # the Job page's pi example
        config=ImageConfig(cmd=("perl", "-de0")),
        build=build_perl,
        variant=busybox_variant,
        binds=perl_binds,
    ),
)
