#!/usr/bin/env bash
# Removes a source install (scripts/install.sh) completely, as root: `virtport uninstall` (hooks out,
# libvirt's daemons told, forwards down with history reason "uninstall", AppArmor rule out, units
# disabled and stopped), then the units in /etc/systemd/system, /usr/local/bin/virtport and the man
# pages and completions under /usr/local/share. The journal (/var/lib/virtport) and the configuration
# (/etc/virtport) stay unless --purge.
#   scripts/uninstall.sh [--purge]
# With the Debian package installed, only the source install's files go: the package's hooks,
# forwards, units and journal stay (its `virtport install` puts the hooks back on /usr/sbin/virtport).
set -euo pipefail
PURGE=
case "${1:-}" in
  --purge) PURGE=1 ;;
  "") ;;
  *) echo "uninstall.sh: unknown argument '$1' (usage: scripts/uninstall.sh [--purge])" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "uninstall.sh: run as root" >&2; exit 1; }
SRC=/usr/local/bin/virtport
SHARE=/usr/local/share
DOCS=("$SHARE/man/man8/virtport.8" "$SHARE/man/man5/virtport.conf.5" "$SHARE/bash-completion/completions/virtport"
      "$SHARE/zsh/site-functions/_virtport" "$SHARE/fish/vendor_completions.d/virtport.fish")
package=
dpkg-query -W -f='${Status}' virtport 2>/dev/null | grep -q "ok installed" && package=1

if [ -n "$package" ]; then
  echo "the virtport package is installed: its hooks, forwards, units and journal stay"
elif [ -x "$SRC" ]; then
  "$SRC" uninstall
else
  echo "no $SRC: hooks and forwards left as they are"
fi
# Hook links to the source binary that `uninstall` could not see (binary already gone).
for h in /etc/libvirt/hooks/qemu /etc/libvirt/hooks/network /etc/libvirt/hooks/qemu.d/virtport /etc/libvirt/hooks/network.d/virtport; do
  if [ -L "$h" ] && [ "$(readlink "$h")" = "$SRC" ]; then rm -f "$h"; echo "$h: removed"; fi
done
systemd=
[ -d /run/systemd/system ] && systemd=1
for unit in virtport-agent.service virtport-reconcile.service; do
  f="/etc/systemd/system/$unit"
  # Only install.sh's units (they run the source binary); an admin's own are left.
  if [ -f "$f" ] && grep -q "^ExecStart=$SRC " "$f"; then
    [ -n "$systemd" ] && systemctl stop "$unit" 2>/dev/null || true
    for link in /etc/systemd/system/*.wants/"$unit"; do
      if [ -L "$link" ]; then rm -f "$link"; fi
    done
    rm -f "$f"
    echo "$f: removed"
  fi
done
[ -n "$systemd" ] && systemctl daemon-reload
for f in "$SRC" "${DOCS[@]}"; do
  if [ -e "$f" ]; then rm -f "$f"; echo "$f: removed"; fi
done
if command -v mandb >/dev/null; then mandb -q 2>/dev/null || true; fi
if [ -n "$package" ]; then
  /usr/sbin/virtport install --no-reconcile    # hooks (and AppArmor's rule) on the package's binary again
elif [ -n "$PURGE" ]; then
  rm -rf /var/lib/virtport /run/virtport
  rm -f /etc/virtport/virtport.conf*
  rmdir /etc/virtport 2>/dev/null || true
  echo "purged: /var/lib/virtport (journal), /etc/virtport, /run/virtport"
else
  echo "kept: /var/lib/virtport (journal) and /etc/virtport (scripts/uninstall.sh --purge deletes them)"
fi
