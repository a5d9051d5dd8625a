#!/usr/bin/env bash
# Installs virtport on a Debian 12 libvirt host, as root: build deps, release build, binary in
# /usr/local/bin, man pages and shell completions (scripts/install-docs.sh), libvirt hooks in place
# (`virtport install`), boot-time reconcile unit, agent unit. scripts/uninstall.sh takes it all out
# again; the Debian package takes it over (README "Debian package").
#   scripts/install.sh [--test|--libvirt] [--binary PATH]
# --test, --libvirt  passed to scripts/deps.sh (also install the test / libvirt packages)
# --binary PATH      install this already built binary: no deps, no build (tests/libvirt/test_package.py)
set -euo pipefail
BIN= DEPS=
while (($#)); do
  case "$1" in
    --test|--libvirt) DEPS="$1"; shift ;;
    --binary) BIN="$(readlink -f "${2:?install.sh: --binary needs a path}")"; shift 2 ;;
    *) echo "install.sh: unknown argument '$1' (usage: scripts/install.sh [--test|--libvirt] [--binary PATH])" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (it installs packages and writes /usr/local, /etc)" >&2; exit 1; }
# Beside the package, a source install would take its hooks and override its units.
if dpkg-query -W -f='${Status}' virtport 2>/dev/null | grep -q "ok installed"; then
  echo "install.sh: the virtport package is installed (/usr/sbin/virtport): 'apt remove virtport' first, or build a .deb (packaging/build-deb)" >&2
  exit 1
fi
[ -z "$BIN" ] || [ -x "$BIN" ] || { echo "install.sh: --binary: no executable at $BIN" >&2; exit 2; }
if [ -z "$BIN" ]; then
  bash scripts/deps.sh $DEPS
  swift build -c release
  BIN=.build/release/virtport
fi
install -D -m 0755 "$BIN" /usr/local/bin/virtport
bash scripts/install-docs.sh /usr/local/bin/virtport
if [ -d /etc/systemd/system ]; then
  install -m 0644 packaging/virtport-reconcile.service /etc/systemd/system/virtport-reconcile.service
  install -m 0644 packaging/virtport-agent.service /etc/systemd/system/virtport-agent.service
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable virtport-reconcile.service
    systemctl enable virtport-agent.service
    # The new binary. Optional: hooks work without it, so a failure to start is only reported.
    systemctl restart virtport-agent.service || echo "install.sh: virtport-agent.service did not start (hooks work without it): systemctl status virtport-agent" >&2
  fi
fi
/usr/local/bin/virtport install
