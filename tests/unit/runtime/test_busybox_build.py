"""Where busybox's source comes from: deb-src lines for the machine's own Debian mirror."""

from __future__ import annotations

from pathlib import Path

from podnet.images.busybox_build import built_binary, deb_src_lines

DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""

ONE_LINE = """# the classic format
deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib
deb http://mirror.example/debian bookworm-updates main
deb-src http://mirror.example/debian bookworm main
"""


def test_deb_src_lines_for_the_main_suite_of_either_format() -> None:
    assert deb_src_lines({Path("/etc/apt/sources.list.d/debian.sources"): DEB822}) == [
        "deb-src http://deb.debian.org/debian bookworm main"
    ]
    assert deb_src_lines({Path("/etc/apt/sources.list"): ONE_LINE}) == [
        "deb-src http://mirror.example/debian bookworm main"
    ]


def test_the_newest_built_binary_is_used(tmp_path: Path) -> None:
    assert built_binary(tmp_path) is None
    for version in ("1.35.0", "1.36.1"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "busybox").write_bytes(b"")
    assert built_binary(tmp_path) == tmp_path / "1.36.1" / "busybox"
