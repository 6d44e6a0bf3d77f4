"""Real kubectl against a real `podnet server`: `kubectl explain` from the OpenAPI v3 schemas,
`--validate=strict` answered by server-side field validation, server-side apply (create,
update, conflicts, --force-conflicts, the client-side → server-side upgrade) and `kubectl diff`."""

from __future__ import annotations

import textwrap

import pytest
from tests.compat.conftest import Kubectl

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
