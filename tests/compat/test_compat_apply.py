"""Real kubectl against a real `podnet server`: `kubectl explain` from the OpenAPI v3 schemas,
`--validate=strict` answered by server-side field validation, server-side apply (create,
update, conflicts, --force-conflicts, the client-side → server-side upgrade) and `kubectl diff`."""

from __future__ import annotations

import functools
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from tests.compat.conftest import Kubectl

from podnet.testing.kubectl_lab import KUBECTL_VERSIONS, kubectl_binary

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

pytestmark = pytest.mark.kubectl

DEPLOYMENT = textwrap.dedent(
    """\
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
    spec:
      replicas: 1
      selector:
        matchLabels: {app: web}
      template:
        metadata:
          labels: {app: web}
        spec:
          containers:
          - name: c
            image: busybox
    """
)


def test_explain_pod_spec_containers(kubectl: Kubectl) -> None:
    out = kubectl("explain", "pod.spec.containers").stdout
    assert "FIELD: containers <[]Container>" in out
    assert "List of containers belonging to the pod." in out
    assert "  image\t<string>" in out
    assert "  ports\t<[]ContainerPort>" in out
    ports = kubectl("explain", "svc.spec.ports").stdout
    assert "  targetPort\t<IntOrString>" in ports
    resources = kubectl("explain", "deploy.spec.template.spec.containers.resources").stdout
    assert "GROUP:      apps" in resources
    assert "  limits\t<map[string]Quantity>" in resources


def test_validate_strict_refuses_unknown_fields(kubectl: Kubectl) -> None:
    bad = DEPLOYMENT.replace("  replicas: 1\n", "  replicas: 1\n  foo: bar\n")
    refused = kubectl("apply", "--validate=strict", "-f", "-", stdin=bad, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        'Error from server (BadRequest): error when creating "STDIN": Deployment in version "v1" '
        'cannot be handled as a Deployment: strict decoding error: unknown field "spec.foo"'
    )
    kubectl("apply", "-f", "-", stdin=DEPLOYMENT)
    # an existing object: kubectl patches it, and the patch is what upstream quotes
    patched = kubectl("apply", "--validate=strict", "-f", "-", stdin=bad, check=False)
    assert patched.returncode == 1
    assert patched.stderr.startswith("The request is invalid: patch: Invalid value: ")
    assert patched.stderr.strip().endswith('strict decoding error: unknown field "spec.foo"')
    # --validate=false: the field is dropped, the rest applies
    kubectl("apply", "--validate=false", "-f", "-", stdin=bad)


def _managers(kubectl: Kubectl, name: str = "web") -> dict[str, Any]:
    out = kubectl("get", "deploy", name, "-o", "json", "--show-managed-fields").stdout
    return {(e["manager"], e["operation"]): e for e in json.loads(out)["metadata"]["managedFields"]}


def test_server_side_apply_conflicts_force_and_edit(kubectl: Kubectl, tmp_path: Path) -> None:
    bad = DEPLOYMENT.replace("  replicas: 1\n", "  replicas: 1\n  foo: bar\n")
    refused = kubectl("apply", "--server-side", "-f", "-", stdin=bad, check=False)
    assert refused.stderr.strip() == (
        "Error from server (BadRequest): failed to create typed patch object "
        f"({kubectl.namespace}/web; apps/v1, Kind=Deployment): .spec.foo: field not declared "
        "in schema"
    )
    applied = kubectl("apply", "--server-side", "-f", "-", stdin=DEPLOYMENT)
    assert applied.stdout.strip() == "deployment.apps/web serverside-applied"
    mine = _managers(kubectl)[("kubectl", "Apply")]
    containers = mine["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
    assert containers == {'k:{"name":"c"}': {".": {}, "f:image": {}, "f:name": {}}}

    kubectl("patch", "deploy", "web", "--type=merge", "-p", '{"spec":{"replicas":3}}')
    more = DEPLOYMENT.replace("image: busybox", "image: busybox:1.36")
    refused = kubectl("apply", "--server-side", "-f", "-", stdin=more, check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        'error: Apply failed with 1 conflict: conflict with "kubectl-patch" using apps/v1: '
        ".spec.replicas\nPlease review the fields above--they currently have other managers."
    )
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=more)
    got = kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.replicas}").stdout
    assert got == "1"
    assert ("kubectl-patch", "Update") not in _managers(kubectl)

    # kubectl edit (client-side, an Update by kubectl-edit) takes the image over
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/image: busybox:1.36/image: busybox:1.37/' \"$1\"\n")
    editor.chmod(0o755)
    kubectl("edit", "deploy", "web", env={"KUBE_EDITOR": str(editor)})
    owners = _managers(kubectl)
    edited = owners[("kubectl-edit", "Update")]["fieldsV1"]["f:spec"]["f:template"]
    assert edited == {"f:spec": {"f:containers": {'k:{"name":"c"}': {"f:image": {}}}}}
    refused = kubectl("apply", "--server-side", "-f", "-", stdin=more, check=False)
    assert 'conflict with "kubectl-edit" using apps/v1: .spec.template.spec.containers' in (
        refused.stderr
    )
    # kubectl diff --server-side shows what the apply would do, without doing it
    diff = kubectl("diff", "--server-side", "--force-conflicts", "-f", "-", stdin=more, check=False)
    assert diff.returncode == 1
    assert "-      - image: busybox:1.37\n+      - image: busybox:1.36\n" in diff.stdout
    got = kubectl(
        "get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"
    )
    assert got.stdout == "busybox:1.37"


def test_client_side_apply_then_server_side_and_back(kubectl: Kubectl) -> None:
    client_side = DEPLOYMENT.replace("name: web", "name: csa", 1)
    kubectl("apply", "-f", "-", stdin=client_side)
    assert ("kubectl-client-side-apply", "Update") in _managers(kubectl, "csa")
    # the upgrade: same config server-side, a changed field, no conflict and no --force
    kubectl(
        "apply", "--server-side", "-f", "-", stdin=client_side.replace("replicas: 1", "replicas: 2")
    )
    owners = _managers(kubectl, "csa")
    assert "f:replicas" in owners[("kubectl", "Apply")]["fieldsV1"]["f:spec"]
    obj = json.loads(kubectl("get", "deploy", "csa", "-o", "json").stdout)
    last = json.loads(obj["metadata"]["annotations"][LAST_APPLIED])
    assert last["spec"]["replicas"] == 2  # the annotation follows the server-side apply
    # and client-side apply still works on the object
    kubectl("apply", "-f", "-", stdin=client_side.replace("replicas: 1", "replicas: 4"))
    got = kubectl("get", "deploy", "csa", "-o", "jsonpath={.spec.replicas}").stdout
    assert got == "4"
    # and so does a client-side kubectl diff (a dry-run patch)
    five = client_side.replace("replicas: 1", "replicas: 5")
    diff = kubectl("diff", "-f", "-", stdin=five, check=False)
    assert diff.returncode == 1 and "-  replicas: 4\n+  replicas: 5\n" in diff.stdout


def test_server_side_apply_with_every_kubectl(kubectl: Kubectl, podnet_store: str) -> None:
    """kubectl 1.27-1.33 each apply server-side, meet a conflict worded the same, and force
    (on one store: what differs between versions is the client)."""
    if podnet_store != "sqlite":
        pytest.skip("kubectl versions are covered on the SQLite server")
    for version in KUBECTL_VERSIONS:
        binary = kubectl_binary(version)
        if binary is None:
            continue
        name = "v" + version.replace(".", "")
        config = DEPLOYMENT.replace("name: web", f"name: {name}", 1)
        run = functools.partial(kubectl, binary=str(binary))
        assert "serverside-applied" in run("apply", "--server-side", "-f", "-", stdin=config).stdout
        kubectl("patch", "deploy", name, "--type=merge", "-p", '{"spec":{"replicas":3}}')
        refused = run("apply", "--server-side", "-f", "-", stdin=config, check=False)
        assert refused.stderr.startswith(
            'error: Apply failed with 1 conflict: conflict with "kubectl-patch" using apps/v1: '
            ".spec.replicas\n"
        ), (version, refused.stderr)
        run("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=config)
