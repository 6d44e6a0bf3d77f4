"""The lab: a whole podnet cluster on one machine (`podnet up/down/status/kubeconfig`).

`Lab` is the facade (`Lab.up(LabSpec(...))`, `lab["node1"]`, `lab.status()`, `lab.down()`);
`spec` plans names and addresses, `topology` builds the network, `kubeconfig` merges contexts.
`Cluster` is the same class under the name DESIGN.md's examples use.

The names below are imported when first used (PEP 562): importing a light submodule such as
`podnet.lab.spec` (what `podnet up` parses its arguments with) must not import `lab.lab` and
the netlink, store and API client libraries behind it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from podnet.lazy import lazy_names

if TYPE_CHECKING:
    from podnet.lab.lab import Lab, LabStatus, NodeStatus, down_lab, list_labs
    from podnet.lab.spec import LabError, LabPlan, LabSpec, NodePlan

    Cluster = Lab

_WHERE = {
    "Cluster": ("podnet.lab.lab", "Lab"),
    "Lab": ("podnet.lab.lab", "Lab"),
    "LabStatus": ("podnet.lab.lab", "LabStatus"),
    "NodeStatus": ("podnet.lab.lab", "NodeStatus"),
    "down_lab": ("podnet.lab.lab", "down_lab"),
    "list_labs": ("podnet.lab.lab", "list_labs"),
    "LabError": ("podnet.lab.spec", "LabError"),
    "LabPlan": ("podnet.lab.spec", "LabPlan"),
    "LabSpec": ("podnet.lab.spec", "LabSpec"),
    "NodePlan": ("podnet.lab.spec", "NodePlan"),
}

__all__ = [
    "Cluster",
    "Lab",
    "LabError",
    "LabPlan",
    "LabSpec",
    "LabStatus",
    "NodePlan",
    "NodeStatus",
    "down_lab",
    "list_labs",
]


__getattr__ = lazy_names(__name__, _WHERE)
