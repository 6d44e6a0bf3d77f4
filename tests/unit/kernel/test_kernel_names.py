"""Kernel object names (`podnet.kernel.names`): interface names fit IFNAMSIZ, chain names hash
like kube-proxy's."""

from __future__ import annotations

from podnet.kernel import names


def test_ifname_fits_ifnamsiz() -> None:
    n = names.ifname("veth", "default/web-0")
    assert n.startswith("veth") and len(n) == 15


def test_chain_matches_kube_proxy_hash() -> None:
    # kube-proxy's fixture: KUBE-SVC- + base32(sha256("ns1/svc1:p80" + "tcp"))[:16]
    assert names.chain("KUBE-SVC-", "ns1/svc1:p80tcp") == "KUBE-SVC-XPGD46QRK7WJZT7O"
