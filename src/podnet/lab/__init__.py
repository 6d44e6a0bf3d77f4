"""The lab: a whole podnet cluster on one machine (`podnet up/down/status/kubeconfig`).

`Lab` is the facade (`Lab.up(LabSpec(...))`, `lab["node1"]`, `lab.status()`, `lab.down()`);
`spec` plans names and addresses, `topology` builds the network, `kubeconfig` merges contexts.
`Cluster` is the same class under the name DESIGN.md's examples use.
"""

from podnet.lab.lab import Lab, LabStatus, NodeStatus, down_lab, list_labs
from podnet.lab.spec import LabError, LabPlan, LabSpec, NodePlan

Cluster = Lab

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
