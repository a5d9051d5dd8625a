"""`virtport add` against the real libvirtd (issue 24): it says what became of the forward
(`applied:` with the guest address, or `pending:` with what is missing), `--wait` exits 1 for a
forward that stays pending, and a forward added without --guest takes the address another
forward of the same NIC states. Real traffic checks the applied one."""
from test_virtport_libvirt import (CLIENT, G1, HOST, MAC1, MAC2, answer, installed, meta, vp)  # noqa: F401 (fixtures)


def test_add_prints_applied_or_pending_and_wait_exits_1(lab, installed):
    vp = installed
    vm, bare = "vpe-add", "vpe-add-bare"
    lab.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1)))
    lab.define_vm(bare, MAC2, "")
    guest = lab.stand_in_guest(G1)
    guest.listen("tcp", 22, "G1")
    client = lab.client()
    lab.start_vm(vm)
    lab.start_vm(bare)

    # No --guest: the NIC's address comes from the other forward's guest=.
    r = vp.run("add", vm, "tcp", "2223:22")
    lines = r.stdout.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"applied: tcp *:2223 -> {G1}:22"), lines
    assert client.connect("tcp", HOST, 2223) == answer("G1", 22, CLIENT)
    assert f"guest='{G1}'" in lab.dumpxml(vm) or f'guest="{G1}"' in lab.dumpxml(vm)

    # A NIC nobody states an address for, no reservation, no lease: pending, exit 0, says what is missing.
    r = vp.run("add", bare, "tcp", "2224:22")
    lines = r.stdout.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"pending: no address known for NIC {MAC2}"), lines
    assert "give --guest, a DHCP reservation, or wait for a lease" in lines[0]
    assert ("vpe-add-bare", "tcp", 2224, 2224, None, 22, "pending") in vp.mappings()

    # --wait: still pending when the time is up: exit 1, one line saying so.
    r = vp.run("add", bare, "tcp", "2225:22", "--wait", "1", check=False)
    assert r.returncode == 1, r
    assert r.stdout.decode().startswith("pending: "), r.stdout
    assert "still pending after 1 s" in r.stderr.decode(), r.stderr

    # remove says removed:.
    r = vp.run("remove", vm, "tcp", "2223")
    assert r.stdout.decode().strip().splitlines() == [f"removed: tcp *:2223 -> {G1}:22 (domain '{vm}')"], r.stdout
    assert client.connect("tcp", HOST, 2223).startswith("ERROR")
