"""virtport's Cockpit page in a real browser (headless chromium) against a real Cockpit (cockpit-ws +
cockpit-bridge) and a real libvirtd lab with the virtport binary as its hooks (conftest.py).

Each test checks the page against what the CLI and the kernel say, and real traffic from the lab's
client namespace to a stand-in guest, and saves screenshots (VP_ARTIFACTS). Any browser console
error fails the test (conftest's `browser` fixture).
"""
import json
import os
import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.support.ui import WebDriverWait

import harness

BIN = os.environ.get("VIRTPORT_BIN") or os.path.join(harness.ROOT, ".build", "release", "virtport")

HOST = harness.CLIENT_HOST_IP
CLIENT = harness.CLIENT_IP
G1 = "192.168.122.50"
MAC1, MAC2, MAC3 = "52:54:00:76:70:11", "52:54:00:76:70:12", "52:54:00:76:70:13"
DOCS = os.environ.get("VP_DOCS_SCREENSHOTS")     # a directory: also write the README's screenshots there


def meta(*forwards, guard=""):
    """<vp:virtport> with one portForward per (proto, host_port, guest_port, guest or None)."""
    xml = "<vp:virtport xmlns:vp='urn:virtport:domain:1'>"
    for proto, host_port, guest_port, guest in forwards:
        g = f" guest='{guest}'" if guest else ""
        xml += f"<vp:portForward proto='{proto}'{g}><vp:range start='{host_port}' to='{guest_port}'/></vp:portForward>"
    return xml + guard + "</vp:virtport>"


def virtport(lab, *args, check=True):
    r = lab.exec(BIN, *args, check=False)
    if check:
        assert r.returncode == 0, f"virtport {' '.join(args)}: exit {r.returncode}: {r.stderr.decode()}"
    return r


def mappings(lab):
    return sorted((m["domain"], m["proto"], m["host_port_start"], m["guest_address"], m["state"])
                  for m in json.loads(virtport(lab, "list", "--json").stdout))


def answer(tag, port):
    return f"{tag} {port} from {CLIENT}"


# -- page helpers ------------------------------------------------------------------------------------

def wait(b, pred, timeout=10, what="condition"):
    try:
        return WebDriverWait(b.driver, timeout, poll_frequency=0.05).until(lambda d: pred())
    except Exception:
        b.shot("timeout")
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; console: {b.logs()}")


def open_page(b, cockpit, query=""):
    b.driver.get(cockpit.url + query)
    wait(b, lambda: b.driver.execute_script("return document.body.dataset.loaded === 'true'"), 20, "the page to load")


def forward_rows(b):
    """[(domain, proto, host port, state, text)] of the Forwards table."""
    return b.driver.execute_script(
        "return [...document.querySelectorAll('tr.vp-forward')].map(r => [r.dataset.domain, r.dataset.proto,"
        " Number(r.dataset.hostPort), r.dataset.state, r.innerText])")


def row(b, domain, port):
    for d, _, p, st, text in forward_rows(b):
        if d == domain and p == port:
            return st, text
    return None


def show_tab(b, name):
    b.driver.find_element(By.ID, f"tab-{name}").click()
    wait(b, lambda: b.driver.find_element(By.ID, f"view-{name}").is_displayed(), 5, f"the {name} view")


def docs_shot(b, name):
    if DOCS:
        os.makedirs(DOCS, exist_ok=True)
        b.driver.save_screenshot(os.path.join(DOCS, f"cockpit-{name}.png"))


# -- tests -----------------------------------------------------------------------------------------------

def test_forwards_with_states_guards_and_doctor(lab, vp, cockpit, browser):
    """A running VM with an applied forward (guest=), a pending one (no address known: no lease, no
    reservation) and a guard on its tap; a VM without forwards; a VM that does not run but declares one.
    The page lists the three VMs, each forward with its domain, host port, guest address or "pending"
    (with why), the stopped VM's forward as declared, the guard with its tap, MAC and addresses, and
    doctor's findings; the page agrees with `virtport list --json` and `virtport plan`."""
    lab.define_vm("vpc-web", MAC1, meta(("tcp", 2222, 22, G1), ("tcp", 5432, 5432, None),
                                        guard=f"<vp:guard mac='{MAC1}' spoofing='on' ip='{G1}'/>"))
    lab.define_vm("vpc-idle", MAC2)
    lab.define_vm("vpc-off", MAC3, meta(("tcp", 3000, 80, G1)))
    guest = lab.stand_in_guest(G1)
    guest.listen("tcp", 22, "G1")
    lab.start_vm("vpc-web")
    assert lab.client().connect("tcp", HOST, 2222) == answer("G1", 22)
    cli = mappings(lab)
    assert [(m[0], m[2]) for m in cli] == [("vpc-web", 2222), ("vpc-web", 5432)], cli

    b = browser
    open_page(b, cockpit)
    wait(b, lambda: len(forward_rows(b)) == 3, 10, "three forward rows")
    st, text = row(b, "vpc-web", 2222)
    assert st == "applied" and "vpc-web" in text and "2222" in text and G1 in text, text
    st, text = row(b, "vpc-web", 5432)
    assert st == "pending" and "vpc-web" in text and "5432" in text and "pending" in text, text
    assert "no address yet" in text, text                         # what it waits for
    st, text = row(b, "vpc-off", 3000)                            # from `virtport plan vpc-off`
    assert st == "declared" and "vpc-off" in text and G1 in text and "when the VM starts" in text, text
    # The VM without forwards is there, and can be chosen in the add form.
    groups = b.driver.execute_script("return [...document.querySelectorAll('tbody.vp-vm')].map(t => t.dataset.domain)")
    assert groups == ["vpc-idle", "vpc-off", "vpc-web"], groups
    options = [o.get_attribute("value") for o in b.driver.find_elements(By.CSS_SELECTOR, "#add-domain option")]
    assert "vpc-idle" in options and "vpc-web" in options, options
    b.shot("forwards")
    docs_shot(b, "forwards")

    # Filters: by state, by VM.
    from selenium.webdriver.support.ui import Select
    Select(b.driver.find_element(By.ID, "filter-state")).select_by_value("pending")
    assert [r[2] for r in forward_rows(b)] == [5432]
    Select(b.driver.find_element(By.ID, "filter-state")).select_by_value("declared")
    assert [r[2] for r in forward_rows(b)] == [3000]
    Select(b.driver.find_element(By.ID, "filter-state")).select_by_value("")
    Select(b.driver.find_element(By.ID, "filter-domain")).select_by_value("vpc-idle")
    assert forward_rows(b) == []
    Select(b.driver.find_element(By.ID, "filter-domain")).select_by_value("")

    # Guards: the tap libvirt picked, as `virtport list --guards` has it.
    guards = json.loads(virtport(lab, "list", "--guards", "--json").stdout)
    assert [g["tap"] for g in guards] == [lab.vm_tap("vpc-web")], guards
    show_tab(b, "guards")
    tap = guards[0]["tap"]
    wait(b, lambda: b.driver.find_elements(By.CSS_SELECTOR, f'#guards tr[data-tap="{tap}"]'), 10, "the guard row")
    text = b.driver.find_element(By.CSS_SELECTOR, f'#guards tr[data-tap="{tap}"]').text
    assert "vpc-web" in text and MAC1 in text and G1 in text and "total" in text, text
    b.shot("guards")
    docs_shot(b, "guards")
    # Refreshed while the view is open (drop counters change without any file changing).
    stamp = b.driver.find_element(By.ID, "guards").get_attribute("data-refreshed")
    wait(b, lambda: b.driver.find_element(By.ID, "guards").get_attribute("data-refreshed") != stamp, 5, "the guards to refresh")

    # Doctor: the same findings as the CLI, each fix command shown.
    r = virtport(lab, "doctor", "--json", check=False)
    findings = json.loads(r.stdout)
    show_tab(b, "doctor")
    wait(b, lambda: len(b.driver.find_elements(By.CSS_SELECTOR, "li.vp-finding")) == len(findings), 20, "doctor's findings")
    checks = sorted(e.get_attribute("data-check") for e in b.driver.find_elements(By.CSS_SELECTOR, "li.vp-finding"))
    assert checks == sorted(f["check"] for f in findings)
    fixes = [e.text for e in b.driver.find_elements(By.CSS_SELECTOR, ".vp-fix code")]
    assert fixes == [f["fix"] for f in sorted(findings, key=lambda f: {"fail": 0, "warn": 1, "ok": 2}.get(f["status"], 1)) if f["fix"]]
    b.shot("doctor")
    docs_shot(b, "doctor")

    # Cockpit's dark theme (the shell's setting, shell:style in localStorage) applies at once.
    show_tab(b, "forwards")
    light = b.driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    b.driver.execute_script("localStorage.setItem('shell:style', 'dark');"
                            "window.dispatchEvent(new StorageEvent('storage', {key: 'shell:style'}))")
    assert "pf-theme-dark" in b.driver.find_element(By.TAG_NAME, "html").get_attribute("class")
    dark = b.driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert dark != light, (light, dark)
    b.shot("forwards-dark")
    docs_shot(b, "forwards-dark")
    b.driver.execute_script("localStorage.removeItem('shell:style')")


def keyboard_to(b, element_id, limit=40):
    """Presses Tab from where the focus is until `element_id` has it (keyboard only)."""
    for _ in range(limit):
        if b.driver.execute_script("return document.activeElement && document.activeElement.id") == element_id:
            return
        ActionChains(b.driver).send_keys(Keys.TAB).perform()
    raise AssertionError(f"Tab never reached #{element_id}")


def test_add_with_keyboard_conflict_and_remove(lab, vp, cockpit, browser):
    """The add form completed with the keyboard alone adds tcp 8080 -> guest 22 to a running VM: the
    CLI's line appears inline, the row appears, real traffic reaches the stand-in guest. The same
    port for a second VM is refused with the CLI's one line naming the holder, and nothing changes
    (journal, kernel, the second VM's XML). Remove takes it down."""
    lab.define_vm("vpc-a", MAC1)
    lab.define_vm("vpc-b", MAC2)
    guest = lab.stand_in_guest(G1)
    guest.listen("tcp", 22, "G1")
    lab.start_vm("vpc-a")
    lab.start_vm("vpc-b")
    client = lab.client()
    assert client.connect("tcp", HOST, 8080).startswith("ERROR")

    b = browser
    open_page(b, cockpit)
    wait(b, lambda: len(b.driver.find_elements(By.CSS_SELECTOR, "#add-domain option")) == 2, 10, "both VMs in the form")
    # Keyboard only: from the top of the page, Tab into the form, type, Enter.
    b.driver.execute_script("document.activeElement && document.activeElement.blur()")
    keyboard_to(b, "add-domain")
    ActionChains(b.driver).send_keys("vpc-a").perform()           # a focused <select> selects by typing
    keyboard_to(b, "add-proto")
    ActionChains(b.driver).send_keys("t").perform()
    keyboard_to(b, "add-ports")
    ActionChains(b.driver).send_keys("8080:22").perform()
    keyboard_to(b, "add-guest")
    ActionChains(b.driver).send_keys(G1).perform()
    assert b.driver.execute_script("return [document.getElementById('add-domain').value, document.getElementById('add-proto').value]") == ["vpc-a", "tcp"]
    b.shot("add-form-filled")
    ActionChains(b.driver).send_keys(Keys.ENTER).perform()
    wait(b, lambda: b.driver.find_element(By.ID, "add-result").text.strip(), 20, "add's answer")
    result = b.driver.find_element(By.ID, "add-result").text
    assert "vpc-a" in result and "8080" in result, result
    wait(b, lambda: row(b, "vpc-a", 8080), 5, "the new row")
    st, text = row(b, "vpc-a", 8080)
    assert st == "applied" and G1 in text, text
    assert client.connect("tcp", HOST, 8080) == answer("G1", 22)
    b.shot("added")
    docs_shot(b, "add")
    before = mappings(lab)
    xml_b = lab.dumpxml("vpc-b")

    # Conflict: the refusal inline, in the live region, naming the holder; nothing changed.
    from selenium.webdriver.support.ui import Select
    Select(b.driver.find_element(By.ID, "add-domain")).select_by_value("vpc-b")
    ports = b.driver.find_element(By.ID, "add-ports")
    ports.clear()
    ports.send_keys("8080:22")
    b.driver.find_element(By.ID, "add-submit").click()
    wait(b, lambda: b.driver.find_element(By.ID, "add-error").text.strip(), 20, "the refusal")
    err = b.driver.find_element(By.ID, "add-error")
    assert "vpc-a" in err.text and "8080" in err.text and "(exit 2)" in err.text, err.text
    assert err.get_attribute("role") == "alert"
    cli = virtport(lab, "add", "vpc-b", "tcp", "8080:22", check=False)
    assert cli.returncode == 2 and cli.stderr.decode().strip().splitlines()[-1] in err.text, (cli.stderr, err.text)
    assert mappings(lab) == before
    assert lab.dumpxml("vpc-b") == xml_b
    assert client.connect("tcp", HOST, 8080) == answer("G1", 22)
    b.shot("refused")
    docs_shot(b, "refused")

    # Remove: the row's button.
    b.driver.find_element(By.CSS_SELECTOR, 'tr.vp-forward[data-domain="vpc-a"][data-host-port="8080"] .vp-remove').click()
    wait(b, lambda: row(b, "vpc-a", 8080) is None, 20, "the row to go")
    assert "8080" in b.driver.find_element(By.ID, "add-result").text
    assert mappings(lab) == []
    assert client.connect("tcp", HOST, 8080).startswith("ERROR")
    assert "urn:virtport:domain:1" not in lab.dumpxml("vpc-a")


def test_timeline_after_start_stop_start(lab, vp, cockpit, browser):
    """Start, stop, start: host port 2222's lane has two bars for the VM, the first ended, the
    second still open, and between them the bar of another VM that held the port meanwhile;
    focusing a bar gives its details; the table view and the CSV export hold the same holdings."""
    lab.define_vm("vpc-tl", MAC1, meta(("tcp", 2222, 22, G1)))
    lab.define_vm("vpc-tl2", MAC2, meta(("udp", 5353, 53, G1)))
    lab.define_vm("vpc-tl3", MAC3, meta(("tcp", 2222, 22, G1)))
    lab.start_vm("vpc-tl")
    lab.start_vm("vpc-tl2")
    time.sleep(1.5)
    lab.destroy_vm("vpc-tl")
    lab.start_vm("vpc-tl3")
    time.sleep(1.5)
    lab.destroy_vm("vpc-tl3")
    time.sleep(0.5)
    lab.start_vm("vpc-tl")
    time.sleep(1)
    events = json.loads(virtport(lab, "history", "--port", "2222", "--json").stdout)
    assert [(e["action"], e["domain"]) for e in events] == [
        ("add", "vpc-tl"), ("remove", "vpc-tl"), ("add", "vpc-tl3"), ("remove", "vpc-tl3"), ("add", "vpc-tl")], events

    b = browser
    open_page(b, cockpit, "#/?view=history")
    sel = '.vp-bar[data-port="2222"]'
    wait(b, lambda: len(b.driver.find_elements(By.CSS_SELECTOR, sel)) == 3, 10, "three bars on 2222")
    bars = b.driver.find_elements(By.CSS_SELECTOR, sel)
    assert [x.get_attribute("data-domain") for x in bars] == ["vpc-tl", "vpc-tl3", "vpc-tl"]
    assert ["vp-open" in x.get_attribute("class") for x in bars] == [False, False, True]
    assert bars[0].location["x"] < bars[1].location["x"] < bars[2].location["x"]
    assert len(b.driver.find_elements(By.CSS_SELECTOR, '.vp-bar[data-port="5353"]')) == 1
    lanes = b.driver.execute_script("return [...document.querySelectorAll('.vp-tl-lane')].map(l => l.dataset.lane)")
    assert lanes == ["tcp 2222", "udp 5353"], lanes
    # Keyboard: Tab reaches the bars; focus shows the details.
    bars[0].send_keys("")            # focus
    b.driver.execute_script("arguments[0].focus()", bars[0])
    details = b.driver.find_element(By.ID, "bar-details").text
    assert "vpc-tl" in details and "tcp 2222" in details and "removed by hook qemu" in details, details
    b.shot("timeline")
    docs_shot(b, "history")
    for zoom in ("day", "week", "all"):
        b.driver.find_element(By.CSS_SELECTOR, f'#zoom [data-zoom="{zoom}"]').click()
        assert len(b.driver.find_elements(By.CSS_SELECTOR, sel)) == 3, zoom

    b.driver.find_element(By.CSS_SELECTOR, '#history-mode [data-mode="table"]').click()
    rows = b.driver.find_elements(By.CSS_SELECTOR, '#history-table tr[data-port="2222"]')
    assert [r.text.split()[2] for r in rows] == ["vpc-tl", "vpc-tl3", "vpc-tl"], [r.text for r in rows]
    b.shot("history-table")
    docs_shot(b, "history-table")
    # CSV export: what the download would hold (the Blob the page builds), without a download dir.
    csv = b.driver.execute_async_script("""
        const done = arguments[0];
        const orig = URL.createObjectURL;
        URL.createObjectURL = blob => { blob.text().then(done); URL.createObjectURL = orig; return orig.call(URL, blob) };
        document.getElementById('csv-export').click();""")
    lines = csv.strip().splitlines()
    assert lines[0].startswith("Host port,VM,"), lines
    assert sum(l.startswith("tcp 2222,vpc-tl,") for l in lines) == 2 and len(lines) == 5, lines
    assert sum(l.startswith("tcp 2222,vpc-tl3,") for l in lines) == 1, lines


def test_cli_add_appears_live(lab, vp, cockpit, browser):
    """A forward added with the CLI while the page is open appears within 2 s, without a reload
    (the journal's directory is watched); removing it with the CLI takes the row away again."""
    lab.define_vm("vpc-live", MAC1)
    lab.start_vm("vpc-live")
    b = browser
    open_page(b, cockpit)
    wait(b, lambda: b.driver.execute_script("return !!document.body.dataset.watch && !document.body.dataset.watch.startsWith('closed')"),
         5, "the change watch")
    b.driver.execute_script("window.vpNoReload = 42")
    assert row(b, "vpc-live", 9090) is None
    t0 = time.monotonic()
    virtport(lab, "add", "vpc-live", "tcp", "9090:22", "--guest", G1)
    wait(b, lambda: row(b, "vpc-live", 9090), 2.0, "the CLI's forward on the page within 2 s")
    dt = time.monotonic() - t0
    assert b.driver.execute_script("return window.vpNoReload") == 42       # same document: no reload
    st, text = row(b, "vpc-live", 9090)
    assert st == "applied" and G1 in text, text
    print(f"cockpit live update: {dt:.2f} s from `virtport add` returning to the row")
    virtport(lab, "remove", "vpc-live", "tcp", "9090")
    wait(b, lambda: row(b, "vpc-live", 9090) is None, 2.0, "the row gone within 2 s")
    b.shot("live")


def test_refused_forward_names_the_holder(lab, vp, cockpit, browser):
    """A forward whose VM's start would be refused shows "refused" with the CLI's line naming the
    holder: for a stopped VM declaring host port 2222 that a running VM holds (`virtport plan`'s
    `refused`, prepare's own check), and for a running VM whose live metadata gained that port
    without it being applied. The stopped VM's start is then refused by the hook with the very
    line `plan` printed; the holder's forward stays applied and keeps its traffic."""
    G2 = "192.168.122.51"
    lab.define_vm("vpc-hold", MAC1, meta(("tcp", 2222, 22, G1)))
    lab.define_vm("vpc-late", MAC2, meta(("tcp", 2222, 22, G2), ("tcp", 2223, 22, G2)))
    lab.define_vm("vpc-live2", MAC3)
    guest = lab.stand_in_guest(G1)
    guest.listen("tcp", 22, "G1")
    lab.start_vm("vpc-hold")
    lab.start_vm("vpc-live2")
    # Live metadata set behind virtport's back (no agent in this lab): declared, not applied. libvirt
    # declares the key's prefix itself, so the text uses the namespace as its default one.
    lab.virsh("metadata", "vpc-live2", "--uri", "urn:virtport:domain:1", "--key", "vp", "--live", "--set",
              meta(("tcp", 2222, 22, G2)).replace("vp:", "").replace("xmlns:vp=", "xmlns="))
    assert client_answer(lab) == answer("G1", 22)

    plan = json.loads(virtport(lab, "plan", "vpc-late").stdout)       # read-only: exit 0
    by_port = {f["host_port_start"]: f for f in plan["forwards"]}
    why = by_port[2222]["refused"]
    assert "vpc-hold" in why and "2222" in why, plan
    assert by_port[2223]["refused"] is None, plan
    assert plan["refused"] == f"domain 'vpc-late' prepare: {why}", plan
    live = json.loads(virtport(lab, "plan", "vpc-live2").stdout)
    assert "vpc-hold" in live["forwards"][0]["refused"], live

    b = browser
    open_page(b, cockpit)
    wait(b, lambda: row(b, "vpc-late", 2222) and row(b, "vpc-live2", 2222), 10, "the refused rows")
    st, text = row(b, "vpc-late", 2222)
    assert st == "refused" and "refused" in text and why in text and G2 in text, text
    st, text = row(b, "vpc-live2", 2222)
    assert st == "refused" and "vpc-hold" in text, text
    st, text = row(b, "vpc-late", 2223)                               # not refused: declared
    assert st == "declared" and "when the VM starts" in text, text
    st, text = row(b, "vpc-hold", 2222)
    assert st == "applied", text
    from selenium.webdriver.support.ui import Select
    Select(b.driver.find_element(By.ID, "filter-state")).select_by_value("refused")
    assert sorted((r[0], r[2]) for r in forward_rows(b)) == [("vpc-late", 2222), ("vpc-live2", 2222)]
    Select(b.driver.find_element(By.ID, "filter-state")).select_by_value("declared")
    assert [(r[0], r[2]) for r in forward_rows(b)] == [("vpc-late", 2223)]
    Select(b.driver.find_element(By.ID, "filter-state")).select_by_value("")
    b.shot("refused-state")
    docs_shot(b, "refused-state")

    # What the page said is what the start gets: the hook refuses it with plan's line.
    r = lab.start_vm("vpc-late", check=False)
    assert r.returncode != 0 and plan["refused"] in r.stderr.decode(), r.stderr
    assert lab.vm_state("vpc-late") == "shut off"
    assert client_answer(lab) == answer("G1", 22)


def client_answer(lab):
    return lab.client().connect("tcp", HOST, 2222)
