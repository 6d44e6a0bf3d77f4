#!/bin/busybox sh
# podnet VM node: /init of the initramfs (rendered by podnet.lab.vminit, which explains it)
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
die() { echo "podnet-vm: FAILED: $*"; poweroff -f; }
env_file= root=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    podnet.probe) echo "podnet-vm: probe-ok"; poweroff -f ;;
    podnet.env=*) env_file="${arg#podnet.env=}" ;;
    podnet.root=*) root="${arg#podnet.root=}" ;;
  esac
done
for m in virtio.ko 9p.ko; do insmod "/modules/$m" || die "insmod $m"; done
mkdir -p /lower /rw /root
case "$root" in
  virtiofs) mount -t virtiofs -o ro hostroot /lower ;;
  9p) mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot /lower ;;
  *) false ;;
esac || die "mounting the host's root over ${root:-nothing}"
[ -r "/lower$env_file" ] || die "the node's settings ${env_file:-(podnet.env=)} are not readable"
mount -t tmpfs -o mode=0755 tmpfs /rw || die "tmpfs for the overlay"
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /root \
  || die "the overlay over the host's root"
for d in proc sys dev; do mount --move "/$d" "/root/$d" || die "moving /$d"; done
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /root/run || die "tmpfs on /run"
mkdir -p /root/run/podnet-vm /root/etc
cp /bin/busybox /podnet/* /root/run/podnet-vm/ || die "copying the podnet-vm files"
ln -s "$env_file" /root/run/podnet-vm/vm.env
cp /podnet/inittab /root/etc/inittab
exec switch_root /root /run/podnet-vm/busybox init
