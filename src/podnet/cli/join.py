"""`podnet join` / `podnet leave`: make this machine a node of a cluster with one bootstrap
token, and undo it (kubeadm join/reset, k3s agent; #15 item 1).

    podnet join https://SERVER:PORT --token abcdef.0123456789abcdef [--ca-cert-hash sha256:H]
                [--node-name N] [--node-ip IP] [--install | --no-start]
    podnet leave

What `join` does, in order:
1. Discovery (kubeadm's token discovery): read `kube-public/cluster-info` anonymously, without
   trusting the server yet, and accept its CA only if the cluster-info kubeconfig carries a
   valid signature by this token (`jws-kubeconfig-<id>`; the token's secret never left this
   machine), and, with `--ca-cert-hash`, only if the CA's public key hashes to it. From then
   on every connection verifies the server against that pinned CA.
2. Exchange: `POST /podnet/v1/node-credential` with the token returns this node's own
   credential (`system:node:<name>`, limited by the Node authorizer to what a node needs) and
   its kubelet serving certificate for the node's address, from the cluster CA.
3. It makes the state dir and the run_dir, each with podnet's marker (`.podnet-join`), and
   writes `STATE/kubeconfig` (every server listed, so the agent fails over),
   `STATE/kubelet.crt` and `STATE/kubelet.key`, and `STATE/join.json` (what `leave` must
   undo), then runs the agent in this machine's own network namespace on its real interface:
   in the foreground (exec, pid recorded), or with `--install` as the systemd unit
   `podnet-agent.service`, enabled so it survives reboots.

`leave` stops the agent (the unit, or the recorded pid), then by their records what it started
and left running (pods' shims and containers, userspace mode's relay, the udp datapath: under
the state dir and the run_dir), deletes what the agent made on the host by its markers (pod
namespaces with the recorded prefix, cni0, flannel.1/flannel0, every proxy mode's rules) and
removes the state and the run_dir. The Node object stays: deleting it is the admin's
call (`kubectl delete node N`), as after `kubeadm reset`.

Never deleting what podnet did not make (`check_dirs`, `claim_dir`, `remove_dir`):
- `join` checks both directories before it contacts the server or writes anything, and
  refuses the filesystem root, one directory given as both, and a directory that exists, is
  not empty and carries no marker (someone's files: `leave` would delete them). A missing
  directory is made, an empty one adopted, and either gets the marker; a marked one (an
  earlier join, or one that crashed half-way) is joined again as is, unless its agent still
  runs (`check_not_joined`: `leave` first). Nesting (a run_dir inside
  the state dir, or the other way round) is allowed: the outer one is claimed first, while it
  is still new or empty, so everything under it is podnet's and removing either one takes
  nothing else's.
- `leave` removes a marked directory with everything in it (the marker says podnet made it,
  and the user was told so by its text). A directory without the marker (a state dir of a
  podnet from before the marker, or a run_dir such as /run or / given to it) loses only what
  podnet writes there, by name (`STATE_ENTRIES`, `RUN_ENTRIES`), then the directory itself
  only if that left it empty (an empty directory holds nobody's data); what remains is kept,
  and `leave` says so and why.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from podnet import procs
from podnet.agent.flannel import registry as flannel_registry
from podnet.agent.proxy import registry as proxy_registry
from podnet.apiserver.auth import bootstrap as bt
from podnet.apiserver.credentials import KUBELET_CERT, KUBELET_KEY, render_kubeconfig
from podnet.private import private_dir, write_private

DEFAULT_STATE = Path("/var/lib/podnet/node")
DEFAULT_RUN = Path("/run/podnet")
UNIT = "podnet-agent.service"
UNIT_PATH = Path("/etc/systemd/system") / UNIT
HOST_LINKS = ("cni0", "flannel.1", "flannel0")
RECORD = "join.json"
MARKER = ".podnet-join"  # in a directory `join` made or adopted: `leave` may remove it whole
# What join and the agent write by name, which `leave` removes from a directory without the
# marker (and nothing else there): join's files, their write_private temporaries, the pid
# records, the agent's own state dir; under the run_dir flannel's subnet.env, the udp
# datapath's records and userspace mode's relay (then flannel/ if that emptied it).
_JOIN_FILES = ("kubeconfig", KUBELET_CERT, KUBELET_KEY, RECORD, "agent.argv")
STATE_ENTRIES = (
    *_JOIN_FILES,
    *(f".{name}.tmp" for name in _JOIN_FILES),
    "pids",
    "agent",
)
RUN_ENTRIES = ("flannel/subnet.env", "flannel/subnet.env.tmp", "flannel/datapath", "proxy-relay")


class JoinError(Exception):
    """Joining or leaving failed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class JoinRecord:
    node_name: str
    node_ip: str
    server: str
    state_dir: str
    run_dir: str
    netns_prefix: str
    unit: str | None  # the systemd unit file written by --install


def register(subparsers: Any) -> None:
    join = subparsers.add_parser(
        "join",
        help="make this machine a node of a cluster (with a bootstrap token)",
        description="Join the cluster at SERVER with a token from `podnet token create`: pin "
        "the cluster CA, exchange the token for this node's credential, run the agent here.",
    )
    join.add_argument("server", help="API server URL, https://HOST:PORT")
    join.add_argument("--token", required=True, help="bootstrap token (abcdef.0123456789abcdef)")
    join.add_argument(
        "--ca-cert-hash",
        action="append",
        default=[],
        metavar="sha256:HEX",
        help="also require the CA's public key to hash to this (kubeadm's form)",
    )
    join.add_argument("--node-name", default=None, help="Node name (default: the host name)")
    join.add_argument("--node-ip", default=None, help="InternalIP (default: source to SERVER)")
    join.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE,
        help=f"where the node keeps its credentials and state (default {DEFAULT_STATE})",
    )
    join.add_argument(
        "--run-dir",
        type=Path,
        default=DEFAULT_RUN,
        help=f"the node's volatile state (default {DEFAULT_RUN})",
    )
    join.add_argument(
        "--netns-prefix",
        default=None,
        help="marker of the pods' namespace names, PREFIXpod-<hash> (default podnet-<node>-; "
        "`leave` removes them)",
    )
    join.add_argument(
        "--backend",
        choices=list(flannel_registry.BACKENDS),
        default="vxlan",
        help="flannel backend",
    )
    join.add_argument(
        "--proxy-mode",
        choices=list(proxy_registry.PROXIERS),
        default="iptables",
        help="how kube-proxy programs Services (default iptables)",
    )
    start = join.add_mutually_exclusive_group()
    start.add_argument(
        "--install", action="store_true", help=f"run the agent as systemd unit {UNIT}"
    )
    start.add_argument(
        "--no-start", action="store_true", help="only write the credential and the agent's argv"
    )
    join.set_defaults(func=run_join)
    leave = subparsers.add_parser(
        "leave",
        help="undo `podnet join` on this machine",
        description="Undo `podnet join` on this machine: stop the agent (and its systemd unit), "
        "remove the pods' namespaces, cni0, the flannel device, every proxy mode's rules and "
        "the node's state. The Node object stays until the admin deletes it (kubectl delete "
        "node NAME), as after kubeadm reset.",
    )
    leave.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE,
        help=f"the state dir `podnet join` used (default {DEFAULT_STATE})",
    )
    leave.set_defaults(func=run_leave)


# -- discovery and exchange ------------------------------------------------------------------


def ca_cert_hash(ca_pem: bytes) -> str:
    """kubeadm's `sha256:<hex>` of the CA certificate's SubjectPublicKeyInfo."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _split(server: str) -> tuple[str, int]:
    parts = urlsplit(server)
    if parts.scheme != "https" or not parts.hostname:
        raise JoinError(f"bad server {server!r}: use https://HOST:PORT")
    return parts.hostname, parts.port or 443


def _request(
    server: str, method: str, path: str, context: ssl.SSLContext, token: str = "", body: Any = None
) -> tuple[int, Any]:
    host, port = _split(server)
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=15)
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise JoinError(f"cannot reach the API server at {server}: {exc}") from None
    finally:
        connection.close()
    try:
        return response.status, json.loads(raw) if raw else {}
    except ValueError:
        return response.status, {"message": raw.decode(errors="replace")[:200]}


def verified_cluster_info(info: Any, token: str, pins: list[str]) -> tuple[bytes, list[str]]:
    """(CA PEM, server URLs) from a cluster-info ConfigMap, only if this token signed it."""
    token_id, secret = bt.parse_token(token)
    data = (info.get("data") or {}) if isinstance(info, dict) else {}
    content = str(data.get("kubeconfig") or "")
    signature = data.get(bt.JWS_PREFIX + token_id)
    if not content or not isinstance(signature, str):
        raise JoinError(
            f"the cluster has no signature for token {token_id}: the token is unknown, "
            "expired or deleted (on the control host: podnet token list / podnet token create)"
        )
    if not bt.verify_detached(content, signature, token_id, secret):
        raise JoinError(
            "the cluster-info signature does not match this token: wrong token, or something "
            "between this machine and the server altered the answer; nothing was trusted"
        )
    doc = yaml.safe_load(content) or {}
    cluster = ((doc.get("clusters") or [{}])[0] or {}).get("cluster") or {}
    ca = base64.b64decode(str(cluster.get("certificate-authority-data") or ""))
    if not ca:
        raise JoinError("the signed cluster-info holds no certificate authority")
    if pins and ca_cert_hash(ca) not in pins:
        raise JoinError(
            f"the cluster CA hashes to {ca_cert_hash(ca)}, not to --ca-cert-hash "
            f"{', '.join(pins)}: refusing to trust it"
        )
    servers = [str(cluster.get("server") or "")]
    for entry in cluster.get("extensions") or []:
        if isinstance(entry, dict) and entry.get("name") == "podnet.io/servers":
            servers = [str(s) for s in (entry.get("extension") or {}).get("servers") or []]
    return ca, [s for s in servers if s]


def discover(server: str, token: str, pins: list[str]) -> tuple[bytes, list[str]]:
    untrusted = ssl.create_default_context()
    untrusted.check_hostname = False
    untrusted.verify_mode = ssl.CERT_NONE  # nothing read here is trusted unless signed
    status, info = _request(server, "GET", bt.CLUSTER_INFO_PATH, untrusted)
    if status != 200:
        raise JoinError(
            f"the server answered {status} for the cluster-info: create a token there first "
            f"(podnet token create), which publishes it ({info.get('message', '')})"
        )
    return verified_cluster_info(info, token, pins)


@dataclass(frozen=True, slots=True)
class NodeCredential:
    token: str  # system:node:<name>
    kubelet_cert: bytes  # the kubelet endpoint's serving certificate (PEM), from the cluster CA
    kubelet_key: bytes


def exchange(
    server: str, ca_pem: bytes, token: str, node_name: str, node_ip: str
) -> NodeCredential:
    trusted = ssl.create_default_context(cadata=ca_pem.decode())
    body = {"nodeName": node_name, "nodeIPs": [node_ip]}
    status, answer = _request(server, "POST", bt.CREDENTIAL_PATH, trusted, token, body)
    fields = ("token", "kubeletCertificate", "kubeletKey")
    if status == 401:  # its signature was in cluster-info, so the server knew it once
        token_id = token.split(".", 1)[0]
        raise JoinError(
            f"the server did not accept token {token_id} (401): it has expired or was deleted "
            "since it signed the cluster-info; create a new one on the control host (podnet "
            "token create) and join with that"
        )
    if status == 409:  # the name is another machine's (apiserver.auth.bootstrap._taken)
        raise JoinError(
            f"the server will not make this machine node {node_name} ({status}): "
            f"{answer.get('message', answer)}"
        )
    if status != 201 or not all(isinstance(answer.get(f), str) for f in fields):
        raise JoinError(f"the server refused the token ({status}): {answer.get('message', answer)}")
    return NodeCredential(
        str(answer["token"]),
        str(answer["kubeletCertificate"]).encode(),
        str(answer["kubeletKey"]).encode(),
    )


def node_ip_towards(server: str) -> str:
    """The address this machine uses to reach `server` (no packet is sent)."""
    host, port = _split(server)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((socket.gethostbyname(host), port))
        return str(probe.getsockname()[0])


def interface_of(address: str) -> str:
    from podnet.kernel.links import Netlink

    with Netlink() as netlink:
        for entry in netlink.addresses():
            if entry.address == address:
                link = netlink.link_by_index(entry.ifindex)
                if link is not None:
                    return link.name
    raise JoinError(f"no interface of this machine has the address {address} (--node-ip)")


def agent_argv(record: JoinRecord, backend: str, proxy_mode: str, underlay: str) -> list[str]:
    state = Path(record.state_dir)
    return [
        sys.executable, "-m", "podnet.cli.main", "agent",
        "--kubeconfig", str(state / "kubeconfig"),
        "--tls-cert-file", str(state / KUBELET_CERT),
        "--tls-private-key-file", str(state / KUBELET_KEY),
        "--node-name", record.node_name,
        "--node-ip", record.node_ip,
        "--state-dir", str(state / "agent"),
        "--run-dir", record.run_dir,
        "--netns-prefix", record.netns_prefix,
        "--backend", backend,
        "--proxy-mode", proxy_mode,
        "--underlay-ifname", underlay,
    ]  # fmt: skip


def render_unit(argv: list[str]) -> str:
    command = " ".join(argv)
    return (
        "[Unit]\nDescription=podnet node agent (kubelet, flannel, kube-proxy)\n"
        "After=network-online.target\nWants=network-online.target\n\n"
        f"[Service]\nExecStart={command}\nRestart=always\nRestartSec=2\nKillMode=process\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


# -- the state dir and the run_dir: never someone else's ----------------------------------------


def is_marked(path: Path) -> bool:
    """`path` carries the marker of a directory `join` made or adopted (a regular file, not a
    symlink; never the filesystem root, whatever it holds)."""
    if path == Path(path.anchor):
        return False
    try:
        return stat.S_ISREG((path / MARKER).lstat().st_mode)
    except OSError:
        return False


def check_dir(kind: str, path: Path) -> None:
    """Refuse `path` as the `kind` ("state" or "run") dir unless `leave` may remove it whole:
    missing, empty, or marked. Reads only."""
    option, default = (
        ("--state-dir", DEFAULT_STATE) if kind == "state" else ("--run-dir", DEFAULT_RUN)
    )
    if path == Path(path.anchor):
        raise JoinError(
            f"{option} {path} is the filesystem root: `podnet leave` removes the {kind} dir, "
            f"so it must be a directory of its own (the default is {default})"
        )
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise JoinError(f"{option} {path} exists and is not a directory: pass another path")
    if is_marked(path):
        return
    try:
        entries = sorted(p.name for p in path.iterdir())
    except OSError as exc:
        raise JoinError(f"{option} {path}: cannot list it ({exc.strerror})") from None
    if not entries:
        return
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    hint = (
        f"; it holds the {RECORD} of a join by an earlier podnet: run "
        f"`podnet leave --state-dir {path}` first"
        if RECORD in entries
        else ""
    )
    raise JoinError(
        f"{option} {path} already holds files podnet did not make ({shown}) and `podnet leave` "
        f"removes the {kind} dir: pass a new or empty directory (the default is {default})" + hint
    )


def check_dirs(state: Path, run: Path) -> None:
    """Refuse, before anything is contacted or written, a state dir or run_dir that `leave`
    could not remove without taking someone's files (see the module's docstring).

    Both paths are absolute and resolved (symlinks followed), as `join` records them."""
    check_dir("state", state)
    check_dir("run", run)
    if state == run:
        raise JoinError(
            f"--state-dir and --run-dir are both {state}: give each a directory of its own "
            f"(the defaults are {DEFAULT_STATE} and {DEFAULT_RUN})"
        )


def check_not_joined(state: Path) -> None:
    """Refuse a state dir whose agent still runs (its recorded pid alive, or the systemd unit
    `--install` wrote still there): joining again would rewrite the credentials under it and
    record the new agent over the running one, which `leave` would then no longer stop.
    A state dir whose agent is gone (stopped, crashed, half-way) is joined again as is."""
    try:
        record = JoinRecord(**json.loads((state / RECORD).read_text()))
    except (OSError, ValueError, TypeError):
        return  # no join from here (check_dir refused anything that is not podnet's)
    running = [rec.pid for rec in procs.recorded(state / "pids") if procs.is_alive(rec)]
    if running:
        how = f"its agent runs, pid {running[0]}"
    elif record.unit and Path(record.unit).exists():
        how = f"its agent is installed as {UNIT}"
    else:
        return
    raise JoinError(
        f"this machine already joined as node {record.node_name} from {state} ({how}): "
        f"run `podnet leave --state-dir {state}` first, then join again"
    )


def claim_dir(kind: str, path: Path) -> None:
    """Make `path` (mode 0700) and mark it as `join`'s, checking it again first."""
    check_dir(kind, path)
    private_dir(path)
    if not is_marked(path):
        write_private(
            path / MARKER,
            f"podnet join {kind} dir: made by `podnet join`, removed with everything in it by "
            "`podnet leave`. Keep nothing of yours here.\n".encode(),
        )


def claim_dirs(state: Path, run: Path) -> None:
    """Claim both, the outer first when one is inside the other (see the module's docstring)."""
    for kind, path in sorted((("state", state), ("run", run)), key=lambda kp: len(kp[1].parts)):
        claim_dir(kind, path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_dir(kind: str, path: Path, known: tuple[str, ...]) -> str | None:
    """Remove the `kind` dir at `path`: whole if marked, else only the `known` entries podnet
    writes there (and the directory if that emptied it). Returns what was left and why, or
    None if nothing was."""
    if is_marked(path):
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            return f"could not remove all of the {kind} dir {path} (a mount point, or busy?)"
        return None
    if not path.is_dir() or path.is_symlink():
        return None
    for entry in known:
        with contextlib.suppress(OSError):
            _remove(path / entry)
    for parent in {Path(entry).parent for entry in known} - {Path()}:
        with contextlib.suppress(OSError):
            (path / parent).rmdir()  # only if that emptied it
    with contextlib.suppress(OSError):
        path.rmdir()  # an empty directory holds nobody's data
    try:
        left = sorted(p.name for p in path.iterdir())
    except OSError:
        return None
    shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    return (
        f"left the {kind} dir {path} with {len(left)} entries podnet did not write ({shown}): "
        f"it has no {MARKER} marker, so `podnet join` did not make it; podnet removed only "
        "its own files there"
    )


def remove_dirs(state: Path, run: Path) -> list[str]:
    """Remove the run_dir, then the state dir, as `remove_dir` does; returns what was left."""
    notes = [remove_dir("run", run, RUN_ENTRIES), remove_dir("state", state, STATE_ENTRIES)]
    return [note for note in notes if note]


def run_join(args: argparse.Namespace) -> int:
    try:
        return _join(args)
    except (JoinError, bt.BadToken) as exc:
        print(f"podnet join: {exc}", file=sys.stderr)
        return 1


def _join(args: argparse.Namespace) -> int:
    bt.parse_token(args.token)
    state, run = args.state_dir.resolve(), args.run_dir.resolve()
    check_dirs(state, run)  # before the server is contacted or anything written
    check_not_joined(state)
    node_name = args.node_name or socket.gethostname().lower()
    if bt.requested_node_name({"nodeName": node_name}) is None:  # before the server is asked
        given = "--node-name" if args.node_name else "this machine's host name"
        raise JoinError(
            f"node name {node_name!r} is not a valid Node name ({given}): lower-case letters, "
            "digits, '-' and '.', starting and ending with a letter or digit; choose one with "
            "--node-name"
        )
    ca, servers = discover(args.server, args.token, args.ca_cert_hash)
    node_ip = args.node_ip or node_ip_towards(args.server)
    underlay = interface_of(node_ip)
    credential = exchange(args.server, ca, args.token, node_name, node_ip)
    claim_dirs(state, run)
    servers = [args.server] + [s for s in servers if s != args.server]
    kubeconfig = render_kubeconfig(args.server, ca, credential.token, servers=servers)
    write_private(state / "kubeconfig", kubeconfig.encode())
    write_private(state / KUBELET_CERT, credential.kubelet_cert)
    write_private(state / KUBELET_KEY, credential.kubelet_key)
    record = JoinRecord(
        node_name=node_name,
        node_ip=node_ip,
        server=args.server,
        state_dir=str(state),
        run_dir=str(run),
        netns_prefix=args.netns_prefix or f"podnet-{node_name}-",
        unit=str(UNIT_PATH) if args.install else None,
    )
    write_private(state / RECORD, json.dumps(asdict(record), indent=2).encode())
    argv = agent_argv(record, args.backend, args.proxy_mode, underlay)
    write_private(state / "agent.argv", "\0".join(argv).encode())
    print(f"joined as node {node_name} ({node_ip} on {underlay}); credential in {state}")
    if args.no_start:
        return 0
    if args.install:
        UNIT_PATH.write_text(render_unit(argv))
        for command in (["daemon-reload"], ["enable", "--now", UNIT]):
            if subprocess.run(["systemctl", *command], check=False).returncode != 0:
                raise JoinError(f"systemctl {' '.join(command)} failed (is systemd running?)")
        print(f"the agent runs as {UNIT} (journalctl -u {UNIT})")
        return 0
    procs.record(state / "pids", "agent", os.getpid())  # exec keeps the pid and start time
    os.execv(argv[0], argv)  # noqa: S606 - our own agent, argv built above


def run_leave(args: argparse.Namespace) -> int:
    try:
        leave(args.state_dir.resolve())
    except JoinError as exc:
        print(f"podnet leave: {exc}", file=sys.stderr)
        return 1
    return 0


def leave(state: Path) -> None:
    try:
        record = JoinRecord(**json.loads((state / RECORD).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise JoinError(
            f"{state / RECORD} is missing or unreadable ({exc}); nothing joined from there "
            "(pass the --state-dir that `podnet join` used)"
        ) from None
    if record.unit:
        subprocess.run(["systemctl", "disable", "--now", UNIT], check=False)
        with contextlib.suppress(FileNotFoundError):
            Path(record.unit).unlink()
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    procs.stop_all(state / "pids")  # the agent first: it would start what the next line stops
    stopped = stop_left_running(state, Path(record.run_dir))
    remove_host_state(record)
    for note in remove_dirs(state, Path(record.run_dir)):
        print(note)
    if stopped:
        print(f"stopped {len(stopped)} processes the agent left running: {', '.join(stopped)}")
    print(f"node {record.node_name} left: agent stopped, its host state removed "
          f"(delete the Node with: kubectl delete node {record.node_name})")  # fmt: skip


def record_dirs(path: Path, known: tuple[str, ...]) -> list[Path]:
    """Where `leave` looks for the agent's pid records under `path`: all of it when `join`
    marked it, else only the entries podnet writes there (an unmarked /run is not walked, and
    a pid file of someone else's that happens to read "pid starttime" is never taken)."""
    return [path] if is_marked(path) else [path / entry for entry in known]


def stop_left_running(state: Path, run_dir: Path) -> list[str]:
    """Stop, by their records, the processes the agent started that outlive it; returns the
    labels of those that were alive.

    Under the state dir (state/agent/pids): its launcher zygote, the pods' shims and
    containers. Under its run_dir, which `join --run-dir` may put anywhere (/run/podnet by
    default): userspace mode's relay (run_dir/proxy-relay, made to outlive the agent) and the
    flannel udp datapath pair (run_dir/flannel/datapath). The records go with their
    directories right after this, so this is the last chance to stop them by pid. All at
    once: one grace period for all of them.
    """
    places = record_dirs(state, STATE_ENTRIES) + record_dirs(run_dir, RUN_ENTRIES)
    unique = {rec.path: rec for place in places for rec in procs.recorded_under(place)}
    recs = list(unique.values())
    alive = [rec.label for rec in recs if procs.is_alive(rec)]
    procs.stop_together(recs)
    return sorted(alive)


def own_pod_netns(names: list[str], netns_prefix: str) -> list[str]:
    """Of `names`, the pods' namespaces of the agent run with `netns_prefix`
    (`<prefix>pod-<hash>`): not everything that begins with the prefix, which for a machine
    named like a lab on it (podnet-podnet-) also begins that lab's namespaces."""
    from podnet.agent.kubelet.sandbox import sandbox_netns_prefix

    own = sandbox_netns_prefix(netns_prefix)
    return [name for name in names if name.startswith(own)]


def remove_host_state(record: JoinRecord) -> None:
    """What the agent made on this host, by its markers (pods' netns, links, proxy rules)."""
    from podnet.agent.proxy.config import ProxyConfig
    from podnet.agent.proxy.modes import ProxyKernel
    from podnet.kernel import netns
    from podnet.kernel.links import Netlink

    for name in own_pod_netns(netns.list_names(record.netns_prefix), record.netns_prefix):
        netns.delete(name)
    with Netlink() as netlink:
        for link in HOST_LINKS:
            netlink.delete_link(link)
    proxy_registry.remove_other_modes(ProxyKernel(), ProxyConfig(), running="")
