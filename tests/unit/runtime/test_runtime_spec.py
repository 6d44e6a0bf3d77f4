"""Container spec building: Kubernetes command/args/env semantics and the spec round trip."""

from __future__ import annotations

from podnet.agent.kubelet.launchspec import (
    LaunchSpec,
    SpecBind,
    expand_references,
    merge_env,
    resolve_argv,
)

ENV = {"NAME": "world", "PORT": "8080"}


def test_command_and_args_follow_kubernetes() -> None:
    entrypoint, cmd = ("/agnhost",), ("pause",)
    # neither: entrypoint + cmd
    assert resolve_argv((), (), entrypoint, cmd, ENV) == ("/agnhost", "pause")
    # args only: entrypoint + args
    assert resolve_argv((), ("netexec",), entrypoint, cmd, ENV) == ("/agnhost", "netexec")
    # command only: the image cmd is dropped too
    assert resolve_argv(("sh",), (), entrypoint, cmd, ENV) == ("sh",)
    # both
    assert resolve_argv(("sh", "-c"), ("echo",), entrypoint, cmd, ENV) == ("sh", "-c", "echo")


def test_variable_references_expand_like_kubernetes() -> None:
    assert expand_references("$(NAME):$(PORT)", ENV) == "world:8080"
    assert expand_references("$$(NAME) $(MISSING) $NAME $$", ENV) == "$(NAME) $(MISSING) $NAME $"
    assert resolve_argv(("echo", "--port=$(PORT)"), (), (), (), ENV) == ("echo", "--port=8080")


def test_env_merges_image_hostname_then_container_values() -> None:
    merged = merge_env(
        [("PATH", "/bin"), ("MODE", "image")],
        [("MODE", "pod"), ("URL", "http://$(HOSTNAME):$(MISSING)"), ("PATH", "$(PATH):/x")],
        "web-0",
    )
    assert merged == (
        ("PATH", "/bin:/x"),
        ("MODE", "pod"),
        ("HOSTNAME", "web-0"),
        ("URL", "http://web-0:$(MISSING)"),
    )


def test_spec_round_trips_through_json() -> None:
    spec = LaunchSpec(
        id="abc",
        pod_uid="u",
        namespace="default",
        pod_name="p",
        name="c",
        attempt=2,
        image_ref="docker.io/library/busybox:latest",
        image_id="sha256:x",
        netns="/run/netns/n",
        hostname="p",
        rootfs="/img",
        upper_dir="/c/upper",
        work_dir="/c/work",
        merged_dir="/c/merged",
        argv=("sh", "-c", "echo hi"),
        env=(("A", "1"),),
        working_dir="/",
        log_path="/logs/2.log",
        pids_dir="/state/pids",
        binds=(SpecBind("/usr/lib", "/usr/lib"),),
        etc_files=(("/etc/hosts", "/pod/hosts"),),
        tty=True,
    )
    assert LaunchSpec.from_json(spec.to_json()) == spec
