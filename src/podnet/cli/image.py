"""`podnet image import NAME DIR|TARBALL` and `podnet image list`: the machine's image cache.

No registry is reachable from podnet, so images other than the built-in ones (busybox,
agnhost, nginx, pause) are imported from a root filesystem: a directory, a tarball of one
(`docker export`), or a `docker save` archive (its layers and config are applied). The cache
is shared by every agent on the machine (default /var/lib/podnet/images).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from podnet.images.model import DEFAULT_PATH, ImageConfig, ImageError
from podnet.images.store import DEFAULT_ROOT, ImageStore


def parse_argv_option(value: str) -> tuple[str, ...]:
    """A JSON array (`["/app", "--flag"]`) or a shell-quoted string (`/app --flag`)."""
    text = value.strip()
    if text.startswith("["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{value!r} is not a JSON array: {exc}") from exc
        if not isinstance(data, list) or not all(isinstance(a, str) for a in data):
            raise argparse.ArgumentTypeError(f"{value!r} must be a JSON array of strings")
        return tuple(data)
    return tuple(shlex.split(text))


def parse_env_option(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--env {value!r}: want NAME=VALUE")
    return key, val


def register(subparsers: Any) -> None:
    image = subparsers.add_parser("image", help="import and list container images")
    sub = image.add_subparsers(dest="image_command", metavar="COMMAND", required=True)

    imp = sub.add_parser(
        "import",
        help="add a root filesystem as an image",
        description="Add a root filesystem (directory, tarball, or `docker save` archive) to "
        "the machine's image cache under NAME (e.g. myapp:1.0 or registry.example/team/app:v2).",
    )
    imp.add_argument("name", help="image reference the pods will use")
    imp.add_argument("source", type=Path, help="directory or tarball with the root filesystem")
    imp.add_argument(
        "--entrypoint",
        type=parse_argv_option,
        default=None,
        help='entrypoint, as JSON ["/app"] or a shell-quoted string',
    )
    imp.add_argument(
        "--cmd", type=parse_argv_option, default=None, help="default arguments (the image's CMD)"
    )
    imp.add_argument(
        "--env",
        type=parse_env_option,
        action="append",
        default=[],
        help="NAME=VALUE for the image's environment (repeatable)",
    )
    imp.add_argument("--workdir", default=None, help="working directory (default /)")
    imp.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help=f"image cache directory (default {DEFAULT_ROOT})",
    )
    imp.set_defaults(func=cmd_import)

    lst = sub.add_parser("list", help="list imported and built-in images")
    lst.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help=f"image cache directory (default {DEFAULT_ROOT})",
    )
    lst.set_defaults(func=cmd_list)


def cmd_import(args: argparse.Namespace) -> int:
    store = ImageStore(args.root)
    config: ImageConfig | None = None
    if args.entrypoint is not None or args.cmd is not None or args.env or args.workdir:
        env = dict([("PATH", DEFAULT_PATH), *args.env])
        config = ImageConfig(
            entrypoint=args.entrypoint or (),
            cmd=args.cmd or (),
            env=tuple(env.items()),
            working_dir=args.workdir or "/",
        )
    try:
        image = store.import_image(args.name, args.source, config)
    except ImageError as exc:
        print(f"podnet image import: {exc.message}", file=sys.stderr)
        return 1
    command = [*image.entrypoint, *image.cmd]
    print(f"imported {image.ref} from {args.source}")
    print(f"  command: {json.dumps(command) if command else '(none: pods must set command)'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = ImageStore(args.root)
    rows = [("IMAGE", "SOURCE", "STATUS")]
    for info in store.list():
        status = "ready" if info.present else "built on first use"
        rows.append((info.ref, info.source, status))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
