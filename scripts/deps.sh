#!/usr/bin/env bash
# Debian 12 packages virtport needs to build (-dev libraries) and to run its tests. Idempotent.
set -euo pipefail
# The release binary links libxml2 (+ ICU, liblzma, zlib), SQLite, libnftnl and libstdc++ statically:
# their -dev packages carry the archives.
BUILD_PKGS=(pkg-config libnftnl-dev libmnl-dev libxml2-dev libicu-dev liblzma-dev zlib1g-dev libsqlite3-dev
            libstdc++-12-dev libvirt-dev)
RUN_PKGS=(nftables iproute2 sqlite3)
# groff-base/man-db render the man pages; bash-completion, zsh and fish load the completion scripts;
# apparmor's apparmor_parser compiles libvirt's profiles with virtport's override (no kernel needed);
# python3-scapy crafts the hostile-guest frames, isc-dhcp-client is the victim's DHCP client there.
TEST_PKGS=(hyperfine iptables socat time python3-pytest groff-base man-db bash-completion zsh fish apparmor
           python3-scapy isc-dhcp-client)
LIBVIRT_PKGS=(libvirt-daemon-system libvirt-clients qemu-system-x86 dnsmasq-base bridge-utils)
# The Cockpit page's browser tests (tests/cockpit): Cockpit itself, a headless browser and its driver.
COCKPIT_PKGS=(cockpit-ws cockpit-bridge cockpit-system chromium chromium-driver python3-selenium)
want=("${BUILD_PKGS[@]}" "${RUN_PKGS[@]}")
case "${1:-}" in
  --test) want+=("${TEST_PKGS[@]}" "${LIBVIRT_PKGS[@]}" "${COCKPIT_PKGS[@]}") ;;
  --libvirt) want+=("${LIBVIRT_PKGS[@]}") ;;
esac
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "installed: ${missing[*]}"
fi
command -v swift >/dev/null || { echo "swift is not on PATH (expected /opt/swift/usr/bin)" >&2; exit 1; }
