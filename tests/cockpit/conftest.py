"""Browser tests of virtport's Cockpit page (cockpit/virtport/) against a real Cockpit and a real
libvirtd lab (tests/libvirt/harness.py), driven by Debian's chromium + chromedriver through
python3-selenium. See tests/cockpit/README.md.

Topology: cockpit-ws runs in the host's namespace on 127.0.0.1 (a free port) with
`--local-session=WRAPPER`: it serves one session without a login, and the wrapper starts
`cockpit-bridge` *inside* the lab's namespace (`ip netns exec`), so the page's `virtport …` commands
see what the hooks see: the lab's /etc/virtport overlay (config, database), its nftables, libvirtd's
sockets. The bridge runs as root: `superuser: "require"` is met without a password. The page comes
from this checkout (XDG_DATA_HOME/cockpit/virtport -> cockpit/virtport), `virtport` from
$VIRTPORT_BIN (first on the bridge's PATH).

Every test: screenshots under $VP_ARTIFACTS (default .build/cockpit-artifacts/), and it fails on
any browser console error (level SEVERE) the page caused.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "libvirt"))
import harness                          # noqa: E402  (tests/libvirt/harness.py, used as it is)

ROOT = harness.ROOT
BIN = os.environ.get("VIRTPORT_BIN") or os.path.join(ROOT, ".build", "release", "virtport")
COCKPIT_WS = "/usr/lib/cockpit/cockpit-ws"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = os.environ.get("VP_ARTIFACTS") or os.path.join(ROOT, ".build", "cockpit-artifacts")
PAGE = "/cockpit/@localhost/virtport/index.html"


def _skip_unless_possible():
    if os.geteuid() != 0:
        pytest.skip("the Cockpit browser tests need root (libvirt lab, network namespaces)")
    missing = [p for p in (COCKPIT_WS, shutil.which("cockpit-bridge"), CHROMEDRIVER, CHROMIUM) if not p or not os.path.exists(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("python3-selenium")
    if not harness.LIBVIRTD:
        missing.append("libvirtd")
    if missing:
        msg = f"missing {', '.join(map(str, missing))} (scripts/deps.sh --test)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    if not os.access(BIN, os.X_OK):
        msg = f"no virtport binary at {BIN} (swift build -c release, or set VIRTPORT_BIN)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def libvirt_lab():
    _skip_unless_possible()
    old = signal.getsignal(signal.SIGTERM)
    if old == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm)
    lab = harness.LibvirtLab()
    try:
        lab.start()
        yield lab
    finally:
        try:
            lab.teardown()
        finally:
            if old == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, old)


@pytest.fixture
def lab(libvirt_lab):
    if not libvirt_lab.running:
        libvirt_lab.start()
    yield libvirt_lab
    if libvirt_lab.running:
        libvirt_lab.reset()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cockpit:
    """cockpit-ws on 127.0.0.1:port, its bridge in the lab's namespace."""

    def __init__(self, lab):
        self.lab = lab
        self.dir = tempfile.mkdtemp(prefix="vp-cockpit-")
        os.makedirs(os.path.join(self.dir, "data", "cockpit"))
        os.symlink(os.path.join(ROOT, "cockpit", "virtport"), os.path.join(self.dir, "data", "cockpit", "virtport"))
        os.makedirs(os.path.join(self.dir, "bin"))
        os.symlink(os.path.abspath(BIN), os.path.join(self.dir, "bin", "virtport"))
        self.bridge = os.path.join(self.dir, "bridge")
        with open(self.bridge, "w") as f:
            f.write("#!/bin/sh\n"
                    f"exec {harness.IP} netns exec {lab.ns} env -i HOME=/root LANG=C.UTF-8 "
                    f"XDG_DATA_HOME={self.dir}/data PATH={self.dir}/bin:/usr/sbin:/usr/bin:/sbin:/bin "
                    "cockpit-bridge \"$@\"\n")
        os.chmod(self.bridge, 0o755)
        self.port = free_port()
        self.log = open(os.path.join(self.dir, "cockpit-ws.log"), "wb")
        self.proc = subprocess.Popen([COCKPIT_WS, "--no-tls", "--address", "127.0.0.1", "--port", str(self.port),
                                      f"--local-session={self.bridge}"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        harness.wait_for(self._answers, 10, 0.05, "cockpit-ws answering")
        self.url = f"http://127.0.0.1:{self.port}{PAGE}"

    def _answers(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def stop(self):
        # cockpit-ws and the bridge it started (its own session, started here: killed by its group id)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # a bridge left in the lab's namespace (ip netns exec keeps the group): by PID
        for pid in harness.pids_in_netns(self.lab.ns):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"cockpit-bridge" in f.read():
                        harness.kill_pid(pid)
            except OSError:
                pass
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Browser:
    """Headless chromium through chromedriver; console errors collected."""

    def __init__(self, name):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        o = webdriver.ChromeOptions()
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=1280,960", "--force-device-scale-factor=1", "--lang=en-US"):
            o.add_argument(a)
        o.binary_location = CHROMIUM
        o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.name = name
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)
        self.driver.set_script_timeout(20)
        self.console = []
        self.shots = []

    def logs(self):
        entries = self.driver.get_log("browser")
        self.console.extend(entries)
        return entries

    def shot(self, label):
        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(ARTIFACTS, f"{self.name}-{len(self.shots):02d}-{label}.png")
        self.driver.save_screenshot(path)
        self.shots.append(path)
        return path

    def quit(self):
        self.driver.quit()


@pytest.fixture
def vp(lab, request):
    """The lab's virtport config (database in the lab's workdir, one per test), virtport installed
    as the hooks; afterwards VMs, hooks and virtport's table gone."""
    db = os.path.join(lab.workdir, f"virtport-{request.node.name}.db")
    lab.write_etc("virtport/virtport.conf", f'database = "{db}"\n')
    lab.exec("nft", "delete", "table", "inet", "virtport", check=False)
    lab.install_hooks(BIN)
    yield db
    for n in list(lab.vms):
        if lab.vm_state(n) not in (None, "shut off"):
            lab.destroy_vm(n, check=False)
    lab.exec("nft", "delete", "table", "inet", "virtport", check=False)
    lab.exec("nft", "delete", "table", "bridge", "virtport", check=False)


@pytest.fixture
def cockpit(lab, vp):
    c = Cockpit(lab)
    yield c
    c.stop()


@pytest.fixture
def browser(cockpit, request):
    b = Browser(request.node.name)
    yield b
    try:
        if b.driver.current_url.startswith("http"):
            b.shot("end")
        errors = [e for e in b.console + b.logs() if e.get("level") == "SEVERE"]
    finally:
        b.quit()
    with open(os.path.join(ARTIFACTS, f"{request.node.name}-console.json"), "w") as f:
        json.dump(b.console, f, indent=1)
    assert not errors, "browser console errors:\n" + "\n".join(e["message"] for e in errors)
