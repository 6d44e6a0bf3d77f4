"""Streams with the real clients against a real lab: interactive exec and attach in a terminal,
`kubectl run -it --rm`, cp both ways, port-forward (pod, service, deployment, several ports,
parallel downloads), logs options, the Python client's stream and portforward — and the core
commands of every kubectl from 1.27 to 1.33.

One lab per module (`podnet.testing.kubectl_lab`); every test keeps to objects it names.
kubectl 1.27-1.29 speak SPDY for exec/cp/attach and 1.27-1.30 for port-forward; later ones
WebSocket (port-forward: SPDY tunnelled in a WebSocket), so the version parameters below pick
one of each where a protocol matters.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import re
import secrets
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from podnet.testing.kubectl_lab import KUBECTL_VERSIONS, KubectlLab, kubectl_binary

pexpect = pytest.importorskip("pexpect")

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.kubectl, pytest.mark.timeout(300)]

SPDY = "1.27"  # exec, cp, attach and port-forward over SPDY/3.1
SPDY_PORT_FORWARD = "1.30"  # the last kubectl whose port-forward is plain SPDY
WEBSOCKET = None  # the kubectl on PATH (1.32): WebSocket v5; port-forward SPDY-in-WebSocket
BIG = 4 * 1024 * 1024

WORKLOAD = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: busybox
        command:
        - sh
        - -c
        - >-
          mkdir -p /w /x && echo hello-80 > /w/index.html && echo hello-8080 > /x/index.html
          && head -c {BIG} /dev/urandom > /w/big.bin
          && sha256sum /w/big.bin | cut -d' ' -f1 > /w/big.sha
          && httpd -p 8080 -h /x && exec httpd -f -p 80 -h /w
        readinessProbe:
          httpGet: {{path: /big.sha, port: 80}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: 80}}
  - {{name: alt, port: 8080, targetPort: 8080}}
---
apiVersion: v1
kind: Pod
metadata: {{name: tty, labels: {{app: tty}}}}
spec:
  containers:
  - {{name: shell, image: busybox, command: [sh], stdin: true, tty: true}}
---
apiVersion: v1
kind: Pod
metadata: {{name: logger, labels: {{app: logger}}}}
spec:
  containers:
  - name: count
    image: busybox
    command: [sh, -c, 'i=1; while [ $i -le 3 ]; do echo "count $i"; i=$((i+1)); done; exit 1']
  - name: ticker
    image: busybox
    command: [sh, -c, 'i=1; while true; do echo "tick $i"; i=$((i+1)); sleep 0.2; done']
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: scaler}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: scaler}}}}
  template:
    metadata: {{labels: {{app: scaler}}}}
    spec:
      containers:
      - {{name: main, image: busybox, command: [sleep, "3600"]}}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubectlLab]:
    if kubectl_binary() is None:
        pytest.skip("kubectl is not installed")
    with KubectlLab(tmp_path_factory.mktemp("streams-lab")) as running:
        running.apply(WORKLOAD)
        running.wait_ready("app in (web, tty, scaler)", count=3)
        yield running


@pytest.fixture(scope="module")
def web(lab: KubectlLab) -> str:
    return lab.wait_ready("app=web")[0]


def spawn(lab: KubectlLab, *args: str, version: str | None = None) -> pexpect.spawn:
    argv = lab.argv(*args, version=version)
    return pexpect.spawn(argv[0], argv[1:], env=lab.env(version), timeout=30, dimensions=(24, 80))


def forwarded_ports(proc: subprocess.Popen[bytes], count: int) -> list[int]:
    """The local ports `kubectl port-forward` reports, in order (it prints one line per
    port and address family before it serves)."""
    assert proc.stdout is not None
    ports: list[int] = []
    while len(ports) < count:
        line = proc.stdout.readline().decode()
        assert line, (
            f"port-forward ended early: {proc.stderr.read().decode() if proc.stderr else ''}"
        )
        found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) ->", line)
        if found:
            ports.append(int(found.group(1)))
    return ports


def fetch(port: int, path: str = "/") -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
        data: bytes = answer.read()
        return data


def stop(proc: subprocess.Popen[bytes]) -> str:
    """End a background kubectl (if it still runs) and return its stderr."""
    if proc.poll() is None:
        proc.terminate()
    try:
        _, errors = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, errors = proc.communicate()
    return errors.decode(errors="replace")


# -- exec and attach in a terminal -----------------------------------------------------------


@pytest.mark.parametrize("version", [SPDY, WEBSOCKET], ids=["spdy", "websocket"])
def test_interactive_exec_in_a_terminal(lab: KubectlLab, web: str, version: str | None) -> None:
    shell = spawn(lab, "exec", "-it", web, "-c", "web", "--", "sh", version=version)
    shell.expect("# ")
    shell.sendline("tty; stty size")
    shell.expect(r"/dev/pts/\d+")
    shell.expect("24 80")
    shell.setwinsize(40, 132)  # SIGWINCH: kubectl sends the new size on the resize stream
    shell.sendline("stty size")
    shell.expect("40 132")
    # `sh -c` dies of SIGINT before its exec as well as sleep after it, so ^C may come as
    # soon as the output shows the command runs
    shell.sendline("sh -c 'echo started; exec sleep 60'")
    shell.expect("\r\nstarted\r\n")
    shell.sendcontrol("c")  # raw mode: ^C reaches the pty in the container, not kubectl
    shell.expect("# ")
    shell.sendline("exit 5")
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 5, shell.before


def test_attach_to_a_container_with_stdin_and_tty(lab: KubectlLab) -> None:
    session = spawn(lab, "attach", "-it", "tty", "-c", "shell")
    session.sendline("")
    session.expect("# ")
    session.sendline("echo attached-$((6 * 7)); stty size")
    session.expect("attached-42")
    session.expect("24 80")
    session.setwinsize(30, 100)
    session.sendline("stty size")
    session.expect("30 100")
    session.sendline("exit 3")  # the container's own shell: attach ends with its exit code
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 3, session.before


def test_run_it_rm(lab: KubectlLab) -> None:
    name = f"t{secrets.token_hex(3)}"
    session = spawn(lab, "run", "-it", "--rm", "--image=busybox", name, "--", "sh")
    session.expect("# ")
    session.sendline("echo inside-$HOSTNAME")
    session.expect(f"inside-{name}")
    session.sendline("exit")
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0, session.before
    assert f'pod "{name}" deleted' in session.before.decode()


def test_exec_streams_as_it_happens(lab: KubectlLab, web: str) -> None:
    """Output arrives while the command still runs, not at its end."""
    proc = lab.popen("exec", web, "--", "sh", "-c", "echo first; sleep 30; echo never")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"first\n"
    finally:
        stop(proc)


# -- cp ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [SPDY, WEBSOCKET], ids=["spdy", "websocket"])
def test_cp_round_trip_and_large_stdin(
    lab: KubectlLab, web: str, tmp_path: Path, version: str | None
) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "big.bin").write_bytes(secrets.token_bytes(3_000_000))
    (source / "sub" / "small.txt").write_text("small\n")
    remote = f"/tmp/cp-{secrets.token_hex(3)}"
    lab.kubectl("cp", str(source), f"{web}:{remote}", version=version)
    listing = lab.text("exec", web, "--", "sh", "-c", f"wc -c {remote}/big.bin {remote}/sub/*")
    assert "3000000" in listing and "6 " in listing
    back = tmp_path / "back"
    lab.kubectl("cp", f"{web}:{remote}", str(back), version=version)
    for name in ("big.bin", "sub/small.txt"):
        assert (back / name).read_bytes() == (source / name).read_bytes(), name
    # stdin arrives in reads of any size (SPDY: up to the relay's high water and beyond)
    counted = lab.text("exec", "-i", web, "--", "wc", "-c", stdin="x" * (12 << 20), version=version)
    assert counted.split() == [str(12 << 20)]


# -- port-forward ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version", [SPDY_PORT_FORWARD, WEBSOCKET], ids=["spdy", "spdy-in-websocket"]
)
def test_port_forward_two_ports_with_parallel_downloads(
    lab: KubectlLab, web: str, version: str | None
) -> None:
    proc = lab.popen("port-forward", "svc/web", ":80", ":8080", version=version)
    try:
        http, alt = forwarded_ports(proc, 2)
        expected = fetch(http, "/big.sha").decode().strip()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda _: fetch(http, "/big.bin"), range(8)))
        assert all(len(b) == BIG and hashlib.sha256(b).hexdigest() == expected for b in bodies)
        assert fetch(alt) == b"hello-8080\n"
    finally:
        stop(proc)


def test_port_forward_to_pod_deployment_and_a_closed_port(lab: KubectlLab, web: str) -> None:
    for target in (f"pod/{web}", "deploy/web", web):
        proc = lab.popen("port-forward", target, ":80")
        try:
            (port,) = forwarded_ports(proc, 1)
            assert fetch(port) == b"hello-80\n", target
        finally:
            stop(proc)
    proc = lab.popen("port-forward", f"pod/{web}", ":81")  # nothing listens on 81
    try:
        (port,) = forwarded_ports(proc, 1)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.settimeout(10)
            assert conn.recv(1) == b""  # kubectl hangs up on the local connection
        assert proc.wait(10) == 1  # and, like with any kubelet, gives up on the pod
    finally:
        errors = stop(proc)
    assert f"error forwarding port 81 to pod {web}" in errors, errors
    assert "dial tcp4 127.0.0.1:81: connect: connection refused" in errors, errors


# -- logs --------------------------------------------------------------------------------------


def test_logs_options(lab: KubectlLab) -> None:
    deadline = time.monotonic() + 60
    while True:  # `count` exits after three lines and is restarted: wait for a previous one
        statuses = lab.get("pod", "logger")["status"].get("containerStatuses") or []
        if any(s["name"] == "count" and s.get("restartCount", 0) >= 1 for s in statuses):
            break
        assert time.monotonic() < deadline, statuses
        time.sleep(0.5)
    assert lab.text("logs", "logger", "-c", "count", "-p") == "count 1\ncount 2\ncount 3\n"
    assert lab.text("logs", "logger", "-c", "count", "-p", "--tail=1") == "count 3\n"
    stamped = lab.text("logs", "logger", "-c", "count", "-p", "--timestamps").splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z count \d", s) for s in stamped)
    everything = lab.text("logs", "logger", "--all-containers", "--tail=2").splitlines()
    assert any(line.startswith("tick ") for line in everything), everything
    future = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    recent = lab.text("logs", "logger", "-c", "ticker", f"--since-time={future}", "--tail=-1")
    assert "tick 1\n" not in recent  # written long before
    assert "tick 1\n" in lab.text("logs", "logger", "-c", "ticker", "--since=1h")
    follow = lab.popen("logs", "-f", "logger", "-c", "ticker", "--tail=1")
    try:
        assert follow.stdout is not None
        first = int(follow.stdout.readline().split()[1])
        second = int(follow.stdout.readline().split()[1])  # written after we started following
        assert second == first + 1
    finally:
        stop(follow)


# -- the Python client -------------------------------------------------------------------------


def test_python_client_interactive_exec_and_portforward(lab: KubectlLab, web: str) -> None:
    from kubernetes import client, config
    from kubernetes.stream import portforward, stream

    api = client.CoreV1Api(config.new_client_from_config(str(lab.kubeconfig)))
    try:
        session = stream(
            api.connect_get_namespaced_pod_exec,
            web,
            "default",
            command=["/bin/sh"],
            stderr=True,
            stdin=True,
            stdout=True,
            tty=False,
            _preload_content=False,
        )
        try:
            session.write_stdin("echo test string 1\n")  # str: a text WebSocket message
            assert session.readline_stdout(timeout=5) == "test string 1"
            session.write_stdin(b"echo to-stderr >&2\n")
            assert session.readline_stderr(timeout=5) == "to-stderr"
            session.write_stdin("exit 4\n")
            session.run_forever(timeout=10)
            assert session.returncode == 4
        finally:
            session.sock.shutdown()  # once the server closed, close() would do nothing

        # the pod's side ends (HTTP/1.0): the tunnel ends within the agent's 1 s grace
        forward = portforward(
            api.connect_get_namespaced_pod_portforward, web, "default", ports="80"
        )
        sock = forward.socket(80)
        try:
            sock.setblocking(True)
            sock.settimeout(30)
            sock.sendall(b"GET /big.sha HTTP/1.0\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.") and len(answer.split(b"\r\n\r\n")[1].strip()) == 64
            assert forward.error(80) is None
            deadline = time.monotonic() + 10  # the server closes the WebSocket after the pod
            while forward.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not forward.connected
        finally:
            sock.close()
            forward.websocket.shutdown()
    finally:
        api.api_client.close()


def test_debug_answers_not_supported(lab: KubectlLab, web: str) -> None:
    result = lab.kubectl("debug", web, "--image=busybox", "--", "true", check=False)
    assert result.returncode != 0
    assert b"ephemeral containers are disabled for this cluster" in result.stderr, result.stderr
    assert b"podnet does not run ephemeral containers" in result.stderr, result.stderr


# -- every kubectl -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBECTL_VERSIONS)
def test_core_commands_of_every_kubectl(lab: KubectlLab, web: str, version: str) -> None:
    if kubectl_binary(version) is None:
        pytest.skip(f"kubectl {version} is not installed")
    run = lab.text
    assert "Ready" in run("get", "nodes", version=version)
    assert web in run("get", "pods", "-o", "wide", version=version)
    # describe aligns its columns to the longest label ("Service Account:" since pods get one)
    described = run("describe", "pod", web, version=version)
    assert re.search(rf"^Name:\s+{re.escape(web)}$", described, re.MULTILINE), described
    name = f"cm-{version.replace('.', '-')}"
    manifest = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name},
            "data": {"v": version},
        }
    )
    assert "created" in run("apply", "-f", "-", stdin=manifest, version=version)
    assert "unchanged" in run("apply", "-f", "-", stdin=manifest, version=version)
    assert "deleted" in run("delete", "configmap", name, version=version)
    assert run("exec", web, "--", "cat", "/w/index.html", version=version) == "hello-80\n"
    assert run("logs", "logger", "-c", "ticker", "--tail=1", version=version).startswith("tick")
    proc = lab.popen("port-forward", f"pod/{web}", ":80", version=version)
    try:
        (port,) = forwarded_ports(proc, 1)
        assert fetch(port) == b"hello-80\n"
    finally:
        stop(proc)
    run("scale", "deployment/scaler", "--replicas=2", version=version)
    run("rollout", "status", "deployment/scaler", "--timeout=90s", version=version)
    run("scale", "deployment/scaler", "--replicas=1", version=version)
    wait_for_a_new_restart_stamp(lab, "scaler")
    run("rollout", "restart", "deployment/scaler", version=version)
    assert "successfully rolled out" in run(
        "rollout", "status", "deployment/scaler", "--timeout=90s", version=version
    )


def wait_for_a_new_restart_stamp(lab: KubectlLab, deployment: str) -> None:
    """kubectl stamps a restart to the second and refuses a second one within the same second
    (the patch would be empty). One version's whole sequence takes under a second on an idle
    machine, so the next version's restart could fall in the previous one's second."""
    template = lab.get("deployment", deployment)["spec"]["template"]["metadata"]
    stamp = (template.get("annotations") or {}).get("kubectl.kubernetes.io/restartedAt")
    if stamp:
        later = datetime.fromisoformat(stamp) + timedelta(seconds=1)
        time.sleep(max(0.0, (later - datetime.now(UTC)).total_seconds()))
