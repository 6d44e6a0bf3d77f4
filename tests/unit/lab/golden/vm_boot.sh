#!/run/podnet-vm/busybox sh
# podnet VM node: sysinit (rendered by podnet.lab.vminit, which explains it)
B=/run/podnet-vm/busybox
die() { echo "podnet-vm: FAILED: $*"; $B poweroff -f; }
. /run/podnet-vm/vm.env || die "reading /run/podnet-vm/vm.env"
$B hostname "$NODE_NAME"
$B ip link set lo up
$B ip addr add "$NODE_CIDR" dev eth0 && $B ip link set eth0 up \
  && $B ip route add default via "$GATEWAY" || die "configuring eth0 with $NODE_CIDR"
echo 1 > /proc/sys/net/ipv4/ip_forward
echo /run/podnet-vm/modprobe > /proc/sys/kernel/modprobe
/run/podnet-vm/modprobe br_netfilter ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh tun overlay nf_conntrack || die "loading br_netfilter ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh tun overlay nf_conntrack"
$B mkdir -p "$STATE_DIR" && $B mount -t tmpfs -o mode=0700 tmpfs "$STATE_DIR" \
  || die "tmpfs on $STATE_DIR"
echo "podnet-vm: $NODE_NAME booted ($($B uname -r)), $NODE_CIDR"
