"""A throwaway lab cluster driven by real kubectl binaries, for the streams compat tests and
`benchmarks/streams.py`.

What belongs here: `KubectlLab` — brings a `podnet.lab.Lab` up under a random name (never
touching ~/.kube/config), runs any installed kubectl version against it with its own cache
dir, applies manifests and waits for pods, and always takes the lab down again.

`kubectl_binary("1.27")` finds `kubectl.1.27` next to the `kubectl` on PATH (following its
symlink), where the Google Cloud SDK installs every supported version.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from podnet.lab.lab import Lab
from podnet.lab.spec import LabSpec

KUBECTL_VERSIONS = ("1.27", "1.28", "1.29", "1.30", "1.31", "1.32", "1.33")


def kubectl_binary(version: str | None = None) -> Path | None:
    """The kubectl of `version` (None: the one on PATH), or None if not installed."""
    found = shutil.which("kubectl")
    if found is None:
        return None
    default = Path(found)
    if version is None:
        return default
    candidate = default.resolve().parent / f"kubectl.{version}"
    return candidate if candidate.exists() else None


class KubectlLab:
    """`with KubectlLab(tmp) as lab:` — a one-node lab; `lab.kubectl(...)` runs kubectl."""

    def __init__(self, work_dir: Path, nodes: int = 1, prefix: str = "ks") -> None:
        self.work_dir = work_dir
        self.name = f"{prefix}{secrets.token_hex(3)}"
        self.nodes = nodes
        self.lab: Lab | None = None

    def __enter__(self) -> KubectlLab:
        self.lab = Lab.up(LabSpec(name=self.name, nodes=self.nodes), merge_kubeconfig=False)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.lab is not None:
            self.lab.down()
            self.lab = None

    @property
    def kubeconfig(self) -> Path:
        assert self.lab is not None
        return self.lab.kubeconfig

    def env(self, version: str | None = None) -> dict[str, str]:
        cache = self.work_dir / f"kube-home-{version or 'default'}"
        cache.mkdir(parents=True, exist_ok=True)
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(cache)}

    def argv(self, *args: str, version: str | None = None) -> list[str]:
        binary = kubectl_binary(version)
        if binary is None:
            raise FileNotFoundError(f"kubectl {version or ''} is not installed".replace("  ", " "))
        cache = self.work_dir / f"kube-cache-{version or 'default'}"
        return [str(binary), f"--cache-dir={cache}", *args]

    def kubectl(
        self,
        *args: str,
        version: str | None = None,
        stdin: str | bytes | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[bytes]:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        result = subprocess.run(
            self.argv(*args, version=version),
            input=data,
            capture_output=True,
            env=self.env(version),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {version or ''} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}\n{result.stderr.decode(errors='replace')}"
                f"\n{self.server_log_tail()}"
            )
        return result

    def text(self, *args: str, version: str | None = None, stdin: str | None = None) -> str:
        return self.kubectl(*args, version=version, stdin=stdin).stdout.decode()

    def popen(self, *args: str, version: str | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv(*args, version=version),
            env=self.env(version),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def apply(self, manifest: str | Sequence[dict[str, Any]]) -> None:
        text = (
            manifest
            if isinstance(manifest, str)
            else json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifest)})
        )
        self.kubectl("apply", "-f", "-", stdin=text)

    def get(self, *args: str) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.text("get", *args, "-o", "json"))
        return obj

    def wait_ready(self, selector: str, count: int = 1, timeout: float = 90) -> list[str]:
        """Names of `count` Ready pods matching the label selector, once they are."""
        deadline = time.monotonic() + timeout
        while True:
            pods = self.get("pods", "-l", selector)["items"]
            ready = [
                p["metadata"]["name"]
                for p in pods
                if p["metadata"].get("deletionTimestamp") is None
                and any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (p.get("status") or {}).get("conditions") or ()
                )
            ]
            if len(ready) >= count:
                return sorted(ready)[:count]
            if time.monotonic() > deadline:
                statuses = json.dumps([p.get("status") for p in pods])[:2000]
                raise AssertionError(f"pods {selector} not Ready in {timeout}s: {statuses}")
            time.sleep(0.2)

    def server_log_tail(self, lines: int = 40) -> str:
        if self.lab is None:
            return ""
        log = self.lab.state_dir / "server.log"
        if not log.exists():
            return ""
        return "server log:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
