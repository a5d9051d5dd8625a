#if canImport(Glibc)
import Glibc
#endif
import Testing
import VirtPortCore
@testable import Commands
@testable import Hook
import Engine
import Agent

@Suite struct DispatchTests {
    @Test func hookModeByArgv0() {
        #expect(HookProcess.kind(invokedAs: "/etc/libvirt/hooks/qemu") == .qemu)
        #expect(HookProcess.kind(invokedAs: "/etc/libvirt/hooks/network") == .network)
        #expect(HookProcess.kind(invokedAs: "/etc/libvirt/hooks/qemu.d/virtport") == .qemu)
        #expect(HookProcess.kind(invokedAs: "/etc/libvirt/hooks/network.d/50-virtport") == .network)
        #expect(HookProcess.kind(invokedAs: "/usr/local/bin/virtport") == nil)
        #expect(HookProcess.kind(invokedAs: "virtport") == nil)
    }

    @Test func argumentsOptionsAndFlags() throws {
        var a = Arguments(["--json", "--network-xml", "a.xml", "--network-xml=b.xml", "--port", "80"])
        let json = a.flag("--json")
        #expect(json)
        #expect(try a.options("--network-xml") == ["a.xml", "b.xml"])
        #expect(try a.option("--port") == "80")
        #expect(a.isEmpty)
        var b = Arguments(["--port"])
        #expect((try? b.option("--port")) == nil)
        let c = Arguments(["extra"])
        #expect(throws: VirtPortError.self) { try c.finish("list") }
    }

    @Test func unknownCommandIsUsageError() {
        #expect(CLI.main(["virtport", "frobnicate"]) == 2)
        #expect(CLI.main(["virtport"]) == 2)
        #expect(CLI.main(["virtport", "list", "--json", "--csv"]) == 2)
    }

    @Test func statusPID() {
        #expect(RunningDomains.statusPID(Array("<domstatus state='running' reason='booted' pid='4242'>".utf8)) == 4242)
        #expect(RunningDomains.statusPID(Array("<domstatus state=\"running\" pid=\"7\">".utf8)) == 7)
        #expect(RunningDomains.statusPID(Array("<domstatus state='running'>".utf8)) == nil)
    }
}
