#!/usr/bin/env bash
# Builds (or reuses) the libvirt 11 lab root: Debian bookworm (debootstrap minbase) with
# bookworm-backports inside the root only (the host's apt sources are never touched): libvirt 11.3
# with the nftables firewall backend, qemu 10.0, dnsmasq, nftables, firewalld + dbus, and the modular
# daemons (virtqemud, virtnetworkd, virtproxyd), which Debian's backport does not ship, built from
# Debian's own 11.3 source package with meson/ninja inside the root.
#
# The root is cached at /var/tmp/virtport-lab11-<hash of this script>/root ($VIRTPORT_LAB11_CACHE
# instead of /var/tmp); a change to this script builds a new one (older ones there are removed).
# Prints the root's path on stdout, progress on stderr (with the seconds each stage took).
# Usage: scripts/lab/build-lab11.sh [--print-path]   (--print-path: path only, build nothing)
set -euo pipefail
SELF="$(readlink -f "$0")"
KEY="$(sha256sum "$SELF" | cut -c1-12)"
CACHE=${VIRTPORT_LAB11_CACHE:-/var/tmp}
BASE=$CACHE/virtport-lab11-$KEY
ROOT=$BASE/root
if [ "${1:-}" = --print-path ]; then echo "$ROOT"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "build-lab11.sh: must run as root" >&2; exit 2; }
log() { echo "build-lab11: $*" >&2; }
mkdir -p "$BASE"
exec 9>"$BASE.lock"
flock 9
if [ -e "$BASE/done" ]; then log "cached: $ROOT"; echo "$ROOT"; exit 0; fi
T0=$(date +%s)
stage() { [ -e "$BASE/stage-$1" ]; }
mark() { touch "$BASE/stage-$1"; log "$1 done after $(( $(date +%s) - T0 )) s"; }

# The Debian mirror the host uses (its deb822 or one-line sources), deb.debian.org otherwise.
MIRROR=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}')
[ -n "$MIRROR" ] || MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}')
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
log "mirror $MIRROR, root $ROOT"

command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2

# Runs a command inside the root with /proc, /dev and /sys mounted, in a private mount namespace so
# nothing leaks to the host (building only: no libvirt daemon ever runs here).
inroot() {
    unshare --mount --propagation private -- sh -c '
        r=$1; shift
        mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; mount -t sysfs sys "$r/sys"
        exec chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
            DEBIAN_FRONTEND=noninteractive "$@"' sh "$ROOT" "$@"
}

if ! stage debootstrap; then
    rm -rf "$ROOT"
    nice debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >&2
    mark debootstrap
fi

if ! stage packages; then
    cat > "$ROOT/etc/apt/sources.list" <<SRC
deb $MIRROR bookworm main
deb $MIRROR bookworm-backports main
deb-src $MIRROR bookworm-backports main
SRC
    # no service starts from package scripts inside the root
    printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    inroot apt-get update -q >&2
    inroot nice apt-get install -y -q --no-install-recommends -t bookworm-backports \
        libvirt-daemon-driver-qemu libvirt-daemon-driver-network libvirt-daemon libvirt-clients \
        qemu-system-x86 dnsmasq-base nftables iptables iproute2 libmnl0 >&2
    # firewalld (bookworm's 1.3, nftables backend) on its own D-Bus system bus
    inroot nice apt-get install -y -q --no-install-recommends firewalld dbus-daemon >&2
    # what the trimmed meson build of the modular daemons needs
    inroot nice apt-get install -y -q --no-install-recommends -t bookworm-backports \
        dpkg-dev gcc meson ninja-build pkg-config python3 python3-docutils xsltproc libxml2-utils gettext perl patchelf \
        libglib2.0-dev libgnutls28-dev libxml2-dev libjson-c-dev libtirpc-dev libnl-3-dev libnl-route-3-dev \
        libcap-ng-dev libselinux1-dev libacl1-dev libattr1-dev libudev-dev libdevmapper-dev \
        libpciaccess-dev libyajl-dev libsasl2-dev libpolkit-gobject-1-dev >&2 || \
    inroot nice apt-get install -y -q --no-install-recommends \
        dpkg-dev gcc meson ninja-build pkg-config python3 python3-docutils xsltproc libxml2-utils gettext perl patchelf \
        libglib2.0-dev libgnutls28-dev libxml2-dev libjson-c-dev libtirpc-dev libnl-3-dev libnl-route-3-dev >&2
    mark packages
fi

if ! stage source; then
    # Debian's own 11.3 source package; where the mirror serves only the upstream tarball
    # (libvirt_11.3.0.orig.tar.xz) and not the .dsc/.debian.tar.xz, that tarball alone.
    inroot sh -c 'rm -rf /src && mkdir /src && cd /src && { apt-get source -q --download-only -t bookworm-backports libvirt >&2 || true; }
        if [ -e libvirt_*.dsc ]; then dpkg-source -x libvirt_*.dsc libvirt >&2; echo debian >/src/origin
        else mkdir libvirt && tar -xJf libvirt_*.orig.tar.xz -C libvirt --strip-components=1 && echo upstream-orig >/src/origin; fi'
    log "source: $(cat "$ROOT/src/origin")"
    mark source
fi

if ! stage build; then
    # Only what the three daemons need: every other driver, storage backend, docs and tests off.
    inroot sh -c 'cd /src/libvirt && rm -rf build && nice meson setup build --prefix=/usr \
        --libdir=lib/x86_64-linux-gnu --sysconfdir=/etc --localstatedir=/var -Drunstatedir=/run \
        -Ddocs=disabled -Dtests=disabled -Dexpensive_tests=disabled -Dnls=disabled \
        -Ddriver_qemu=enabled -Ddriver_network=enabled -Ddriver_remote=enabled -Ddriver_libvirtd=enabled \
        -Ddriver_lxc=disabled -Ddriver_ch=disabled -Ddriver_libxl=disabled -Ddriver_vbox=disabled \
        -Ddriver_vmware=disabled -Ddriver_esx=disabled -Ddriver_hyperv=disabled -Ddriver_openvz=disabled \
        -Ddriver_vz=disabled -Ddriver_bhyve=disabled -Ddriver_test=disabled \
        -Dstorage_dir=disabled -Dstorage_disk=disabled -Dstorage_fs=disabled -Dstorage_iscsi=disabled \
        -Dstorage_iscsi_direct=disabled -Dstorage_lvm=disabled -Dstorage_mpath=disabled \
        -Dstorage_rbd=disabled -Dstorage_scsi=disabled -Dstorage_vstorage=disabled -Dstorage_zfs=disabled \
        >/src/meson-setup.log 2>&1 || { tail -30 /src/meson-setup.log >&2; exit 1; }'
    mark configure
    inroot sh -c 'cd /src/libvirt && nice ninja -C build src/virtqemud src/virtnetworkd src/virtproxyd >/src/ninja.log 2>&1 \
        || { tail -30 /src/ninja.log >&2; exit 1; }'
    mark build
fi

if ! stage install; then
    # Beside Debian's packaged drivers (same paths and version), without the build tree's rpath
    # (the daemons must load the packaged libvirt.so.0 that the driver modules use).
    inroot sh -c 'set -e; cd /src/libvirt/build/src
        for d in virtqemud virtnetworkd virtproxyd; do
            install -m 0755 $d /usr/sbin/$d; patchelf --remove-rpath /usr/sbin/$d
            install -m 0644 $d.conf /etc/libvirt/$d.conf
        done'
    # the nftables firewall backend
    sed -i 's/^#\?\s*firewall_backend\s*=.*/firewall_backend = "nftables"/' "$ROOT/etc/libvirt/network.conf"
    grep -q '^firewall_backend = "nftables"' "$ROOT/etc/libvirt/network.conf" \
        || echo 'firewall_backend = "nftables"' >> "$ROOT/etc/libvirt/network.conf"
    # The lab has no cgroup hierarchy in its root (it must not create cgroups in the host's).
    echo 'cgroup_controllers = [ ]' >> "$ROOT/etc/libvirt/qemu.conf"
    # This kernel may lack act_csum: libvirt 11's nftables backend adds one
    # `tc filter add dev BR ... action csum ip and udp` per NAT network start (DHCP checksums) and fails
    # the start without it. The wrapper runs tc; only a csum command failing where the kernel has no
    # act_csum is accepted as a no-op (and said on stderr, which libvirt logs).
    if [ ! -e "$ROOT/usr/sbin/tc.real" ]; then mv "$ROOT/usr/sbin/tc" "$ROOT/usr/sbin/tc.real"; fi
    cat > "$ROOT/usr/sbin/tc" <<'TC'
#!/bin/sh
# Lab wrapper (scripts/lab/build-lab11.sh): the real tc is tc.real.
/usr/sbin/tc.real "$@" && exit 0
rc=$?
case " $* " in
*" csum "*) if ! modprobe -q act_csum 2>/dev/null && [ ! -d /sys/module/act_csum ]; then
        echo "tc (lab wrapper): kernel has no act_csum, skipped: tc $*" >&2; exit 0; fi ;;
esac
exit $rc
TC
    chmod 0755 "$ROOT/usr/sbin/tc"
    mark install
fi

du -sh "$ROOT" >&2 || true
touch "$BASE/done"
log "built in $(( $(date +%s) - T0 )) s: $ROOT"
# older roots (another version of this script) go
for d in "$CACHE"/virtport-lab11-*; do
    case "$d" in "$BASE"|"$BASE.lock") ;; *.lock) [ -d "${d%.lock}" ] || rm -f "$d" ;; *) rm -rf "$d" ;; esac
done
echo "$ROOT"
