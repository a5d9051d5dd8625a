"""Issue 14: `virsh save` / `virsh restore` under the real libvirtd. Save stops the domain (qemu
`stopped`/`release`: the forward goes); restore calls qemu `restore begin` before the usual
prepare/start/started: virtport checks conflicts there, before the guest runs, and the forward
comes back with history reason `hook qemu start (restore)`."""
import os
import re

from harness import out
from test_virtport_libvirt import (CLIENT, G1, G2, HOST, MAC2, answer, installed, meta,  # noqa: F401 (fixtures)
                                   start_forwarded_vm, vp)


def test_save_then_restore_moves_the_forward_and_a_conflict_refuses_the_restore(lab, installed):
    vp, vm, other = installed, "vpe-save", "vpe-thief"
    guest, client = start_forwarded_vm(lab, vm)
    image = os.path.join(lab.workdir, f"{vm}.save")

    mark = lab.log_mark()
    lab.virsh("save", vm, image, timeout=120)
    calls = lab.hook_calls(mark)
    assert ("qemu", vm, "stopped", "end") in calls and ("qemu", vm, "release", "end") in calls, calls
    assert lab.vm_state(vm) == "shut off"
    assert client.connect("tcp", HOST, 2222).startswith("ERROR")
    assert not vp.elements() and vp.mappings() == []

    # While it is saved another VM takes its port: the restore is refused before the guest runs.
    lab.define_vm(other, MAC2, meta(("tcp", 2222, 22, G2)))
    lab.start_vm(other)
    mark = lab.log_mark()
    r = lab.virsh("restore", image, check=False, timeout=120)
    err = r.stderr.decode()
    assert r.returncode != 0 and lab.vm_state(vm) == "shut off", err
    m = re.search(r"unexpected exit status 2: (.*)\Z", err.strip(), re.S)
    assert m and m.group(1).startswith(f"virtport: domain '{vm}' restore: host port tcp/2222 is already forwarded "
                                       f"to domain '{other}'"), err
    calls = lab.hook_calls(mark)
    assert calls[0] == ("qemu", vm, "restore", "begin") and ("qemu", vm, "start", "begin") not in calls, calls
    lab.destroy_vm(other)

    mark = lab.log_mark()
    lab.virsh("restore", image, timeout=120)
    calls = [c for c in lab.hook_calls(mark) if c[0] == "qemu"]
    assert [c[2] for c in calls[:4]] == ["restore", "prepare", "start", "started"], calls
    assert lab.vm_state(vm) == "running"
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert vp.mappings() == [(vm, "tcp", 2222, 2222, G1, 22, "applied")]
    mine = [(h[0], h[6]) for h in vp.history("--domain", vm)]
    assert mine == [("add", "hook qemu start"), ("remove", "hook qemu stopped"),
                    ("add", "hook qemu start (restore)")], mine
    # The note was consumed: a plain restart is a plain start again.
    lab.destroy_vm(vm)
    lab.start_vm(vm)
    assert [(h[0], h[6]) for h in vp.history("--domain", vm)][-1] == ("add", "hook qemu start")
