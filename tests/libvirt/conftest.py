"""Fixtures for the real-libvirt tests (see harness.py for the topology).

- `libvirt_lab` (session scope): one LibvirtLab for the whole run, torn down at the end even when
  tests failed. A test may tear it down itself (the smoke test does, to check teardown).
- `lab` (function scope): the same lab, started again if a test tore it down, and reset after the
  test (stand-ins, VMs, hooks removed; `default` active) so tests do not leak into each other.

Skipped, with the reason shown, when not root or when libvirtd is not installed.
Run: sudo python3 -m pytest tests/libvirt -v -rs

VIRTPORT_LAB=11 runs the same tests against the libvirt 11 lab (lab11.Lab11: libvirt 11.3, modular
daemons, nftables backend, in a lab root that scripts/lab/build-lab11.sh builds and caches); a test
that only holds on one lab says so with `only_lab("9")` / `only_lab("11")`.
"""
import os
import signal
import statistics
import time

import pytest

import harness

LAB = os.environ.get("VIRTPORT_LAB", "9")
if LAB not in ("9", "11"):
    raise pytest.UsageError(f"VIRTPORT_LAB={LAB!r}: use 9 (the machine's libvirt 9.0) or 11 (the libvirt 11 lab)")


def new_lab(**kw):
    """A lab of the kind VIRTPORT_LAB selects (not started)."""
    if LAB == "11":
        import lab11
        return lab11.Lab11(**kw)
    return harness.LibvirtLab(**kw)


def _skip_unless_possible():
    if os.geteuid() != 0:
        pytest.skip("libvirt lab needs root (network namespaces, libvirtd, /dev/kvm)")
    if LAB == "11":
        return          # everything it needs is in its own root (built on first use)
    if not harness.LIBVIRTD or not harness.VIRTLOGD:
        pytest.skip("libvirtd/virtlogd not installed (scripts/deps.sh --libvirt)")
    if not harness.shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 not installed (scripts/deps.sh --libvirt)")


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def libvirt_lab():
    _skip_unless_possible()
    # A CI job being cancelled sends SIGTERM: turn it into KeyboardInterrupt so teardown still runs.
    old = signal.getsignal(signal.SIGTERM)
    if old == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm)
    lab = new_lab()
    try:
        lab.start()
        yield lab
    finally:
        try:
            lab.teardown()
        finally:
            if old == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, old)


def pytest_configure(config):
    config.addinivalue_line("markers", "only_lab(kind): the test holds only on that lab ('9' or '11')")


# Files about libvirt 9.0 itself or the machine's own libvirtd (iptables facts, the harness's
# /run and /etc handling, the package installed on the machine): lab 9 only. Their lab-11
# counterparts are test_package_lab11.py and lab11.py's own checks.
LAB9_ONLY_FILES = {"test_harness_smoke.py": "the 9.0 harness itself", "test_libvirt_facts.py": "libvirt 9.0 iptables facts",
                   "test_package.py": "the package on the machine, beside its libvirtd",
                   "test_reload_libvirt.py": "libvirt 9.0's iptables rebuilds (lab 11's: test_daemons_libvirt.py)"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        why = LAB9_ONLY_FILES.get(os.path.basename(str(item.fspath)))
        if why and not item.get_closest_marker("only_lab"):
            item.add_marker(pytest.mark.only_lab("9", why=why))
        m = item.get_closest_marker("only_lab")
        if m and m.args[0] != LAB:
            item.add_marker(pytest.mark.skip(reason=f"libvirt {m.args[0]} lab only ({m.kwargs.get('why', '')}); "
                                                    f"this run: VIRTPORT_LAB={LAB}"))


@pytest.fixture
def lab(libvirt_lab):
    if not libvirt_lab.running:
        libvirt_lab.start()
    yield libvirt_lab
    if libvirt_lab.running:
        libvirt_lab.reset()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        lab = item.funcargs.get("lab") or item.funcargs.get("libvirt_lab")
        if lab is not None and getattr(lab, "workdir", None):
            lab.keep_workdir = True
            rep.sections.append(("libvirt lab", f"workdir kept: {lab.workdir}\n"
                                 + "\n".join(lab.hook_log()[-40:])))


_SESSION = {"t0": time.monotonic()}     # conftest import; pytest_sessionstart refines it when it runs


def pytest_sessionstart(session):
    _SESSION["t0"] = time.monotonic()


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    tr.section("libvirt lab timings (seconds)")
    counts = {k: len(tr.stats.get(k, [])) for k in ("passed", "failed", "error", "skipped")}
    tr.write_line(f"libvirt suite wall time: {time.monotonic() - _SESSION['t0']:.1f} s "
                  f"({', '.join(f'{n} {k}' for k, n in counts.items() if n) or 'no tests'})")
    by = {}
    for label, dt in harness.TIMINGS:
        by.setdefault(label, []).append(dt)
    for label, v in by.items():
        tr.write_line(f"{label:34s} n={len(v):<3d} min={min(v):6.3f} median={statistics.median(v):6.3f} "
                      f"max={max(v):6.3f}")
