"""Path resolution inside an image root: absolute symlinks must stay inside the root."""

from __future__ import annotations

from pathlib import Path

from podnet.agent.kubelet.launcher import ensure_mountpoint, exec_failure, resolve_in_root


def test_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib64").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "lib64").symlink_to("usr/lib64")
    (root / "etc").mkdir()
    (root / "etc/resolv.conf").symlink_to("/run/resolv.conf")
    (root / "escape").symlink_to("../../..")
    r = str(root)
    assert resolve_in_root(r, "/lib64/ld.so") == f"{r}/usr/lib64/ld.so"
    assert resolve_in_root(r, "/etc/resolv.conf") == f"{r}/run/resolv.conf"
    assert resolve_in_root(r, "/escape/etc/passwd") == f"{r}/etc/passwd"
    assert resolve_in_root(r, "/../../x") == f"{r}/x"


def test_mountpoints_are_created_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hosts").symlink_to("/nowhere/hosts")
    target = ensure_mountpoint(str(root), "/etc/hosts", directory=False)
    assert target == f"{root}/nowhere/hosts" and Path(target).is_file()
    assert ensure_mountpoint(str(root), "/a/b/c", directory=True) == f"{root}/a/b/c"
    assert (root / "a/b/c").is_dir()


def test_exec_failures_use_shell_exit_codes_and_runc_messages() -> None:
    assert exec_failure("foo", FileNotFoundError(2, "x")) == (
        127,
        'exec: "foo": executable file not found in $PATH',
    )
    assert exec_failure("/bin/foo", FileNotFoundError(2, "x")) == (
        127,
        'exec: "/bin/foo": stat /bin/foo: no such file or directory',
    )
    assert exec_failure("/etc", PermissionError(13, "Permission denied")) == (
        126,
        'exec: "/etc": permission denied',
    )
