#!/usr/bin/env bash
# Installs everything podnet needs on a Debian 12 machine, as root: the system packages the
# dataplane and the tests drive (iproute2, iptables, nftables, conntrack, etcd, busybox, nginx,
# iperf3, kubectl, perl and a newer Math::BigInt for the built-in perl image; dnsmasq, dnsperf and bind9-dnsutils for cluster DNS; a C toolchain for
# busybox; chromium, in which a test opens `podnet graph`'s page headless) and a .venv with the project and its locked dependencies, and builds busybox.
# Idempotent: running it again only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "podnet install: run as root (it installs Debian packages and podnet creates network namespaces)" >&2
  exit 1
fi

packages=(iproute2 iptables nftables conntrack ipset ipvsadm etcd-server etcd-client
          busybox-static nginx-light iperf3 procps ca-certificates python3-venv
          dnsmasq-base dnsperf bind9-dnsutils gcc make libc6-dev bzip2 chromium
          qemu-system-x86 perl libmath-bigint-perl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v kubectl >/dev/null 2>&1; then
  missing+=(kubernetes-client)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "podnet install: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's etcd-server package may start a system etcd; podnet never uses it (tests start
# their own on loopback), so leave it as the package left it.

if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --root-user-action=ignore 'uv>=0.13,<0.14'
fi
uv sync --frozen --quiet
# busybox from source with upstream's configuration, once per machine (about a minute on two
# cores): Debian's busybox-static lacks wget -T, nc -u and nc -e, which tutorials use
.venv/bin/python -m podnet.images.busybox_build \
  || echo "podnet install: busybox was not built from source; the images use Debian's busybox-static"
# the kernel VM nodes boot (`podnet up --vm-nodes K`): Debian's linux-image-amd64, fetched
# with apt-get download and unpacked into /var/lib/podnet/vm/kernels, never installed
.venv/bin/podnet vm-kernel \
  || echo "podnet install: no kernel for VM nodes; podnet up --vm-nodes needs --vm-kernel PATH"
echo "podnet install: ready (.venv/bin/podnet)"
