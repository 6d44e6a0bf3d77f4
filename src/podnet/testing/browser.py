"""A real headless Chromium for tests that must see a page as a person would.

`dump_dom(url)` returns the DOM after the page ran (scripts included, within `budget_ms` of
virtual time); `screenshot(url, path)` writes a PNG. Each call uses a fresh profile directory
that is removed afterwards, and the flags that keep Chromium from reaching the network
(background networking, component updates, sync) — tests only open loopback and file URLs.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium() -> str | None:
    """The browser's path (Debian's `chromium` package), or None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="podnet-chromium-") as profile:
        return subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )


def dump_dom(url: str, budget_ms: int = 3000, timeout: float = 60.0) -> str:
    return _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout).stdout


def screenshot(url: str, path: Path, size: str = "1200,1000", timeout: float = 60.0) -> None:
    _run([f"--screenshot={path}", f"--window-size={size}", url], timeout)
