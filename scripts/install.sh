#!/usr/bin/env bash
# Installs virtport on a Debian 12 libvirt host: build deps, release build, binary in
# /usr/local/bin, man pages and shell completions (scripts/install-docs.sh), libvirt hooks in place
# (`virtport install`), boot-time reconcile unit, agent unit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
bash scripts/deps.sh "${1:-}"
swift build -c release
install -D -m 0755 .build/release/virtport /usr/local/bin/virtport
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
