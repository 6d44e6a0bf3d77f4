"""The CNI bridge plugin + host-local IPAM (library API used by the kubelet).

    conf = BridgeConfig(subnet="10.244.1.0/24", mtu=1450, routes=("10.244.0.0/16",),
                        data_dir=state_dir / "cni" / "networks")
    result = cni_add(conf, container_id, "/run/netns/<pod netns>")   # -> CniResult
    cni_check(conf, container_id, netns_path)
    cni_del(conf, container_id, netns_path)                          # idempotent

`podnet cni` runs the same code as a CNI-spec plugin executable (`plugin.run_plugin`).
"""

from podnet.agent.cni.bridge import cni_add, cni_check, cni_del
from podnet.agent.cni.config import BridgeConfig, parse_netconf
from podnet.agent.cni.errors import CniError
from podnet.agent.cni.result import CniResult

__all__ = [
    "BridgeConfig",
    "CniError",
    "CniResult",
    "cni_add",
    "cni_check",
    "cni_del",
    "parse_netconf",
]
