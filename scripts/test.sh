#!/usr/bin/env bash
# Runs every test: Swift unit tests, then the root integration tests (network namespaces, real
# nftables, real traffic; libvirt suite with a real libvirtd + QEMU; the Cockpit page in a real
# browser). Installs what they need.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
bash scripts/deps.sh --test
modprobe -q nf_tables 2>/dev/null || true
# The release build must print no compiler warning (a fresh clone, as in CI, compiles every file).
swift build -c release 2>&1 | tee /tmp/virtport-release-build.log
if grep -q 'warning:' /tmp/virtport-release-build.log; then
  echo "test.sh: the release build printed compiler warnings (above); none are allowed" >&2
  exit 1
fi
swift build --build-tests
swift test --skip-build 2>&1 | tee /tmp/virtport-swift-test.log
# Integration suites (root), one pytest run each (each directory has its own conftest):
# netns + nftables + real traffic, then the real libvirtd + QEMU suite. Debian's python3, whose
# pytest deps.sh installed (python3-pytest): not whichever python3 comes first on PATH.
PY=/usr/bin/python3
$PY -m pytest -p no:cacheprovider -q -rs --durations=5 tests/integration "$@"
$PY -m pytest -p no:cacheprovider -q -rs --durations=5 tests/libvirt "$@"
# The Cockpit page in a real browser (headless chromium) against cockpit-ws and a real libvirtd lab;
# screenshots and console logs under .build/cockpit-artifacts/ (tests/cockpit/README.md).
$PY -m pytest -p no:cacheprovider -q -rs --durations=5 tests/cockpit "$@"
# The real-libvirt suite again against libvirt 11.3 (modular daemons, nftables backend; firewalld and
# two hosts migrating are lab-11 only), in a lab root scripts/lab/build-lab11.sh builds once and caches
# under /var/tmp (~5-8 min the first time on a fresh machine, then nothing).
bash scripts/lab/build-lab11.sh >/dev/null
VIRTPORT_LAB=11 $PY -m pytest -p no:cacheprovider -q -rs --durations=5 tests/libvirt "$@"
