#if canImport(Glibc)
import Glibc
#endif
import Testing
import VirtPortCore
@testable import VirtPortApp

@Suite struct ConfigTests {
    @Test func emptyFileGivesDefaults() throws {
        let c = try Config.parse("")
        #expect(c.databasePath == "/var/lib/virtport/virtport.db")
        #expect(c.table == "virtport")
        #expect(c.policy.hostPorts == [PortRange(1024, 65535)])
        #expect(c.policy.allowAnyAddress)
        #expect(c.policy.onJournalError == .warn)
        #expect(c.historyRetentionDays == 0)
        #expect(c.agentSocket == "/run/virtport/agent.sock")
    }

    /// Line numbers survive blank lines, comments and a missing final newline (the byte-level reader).
    @Test func errorsNameTheRightLine() {
        do {
            _ = try Config.parse("# c\n\n  \t\ntable = \"x\" # ok\n\n[policy]\nbogus = 1")
            Issue.record("accepted")
        } catch {
            #expect(error.message.hasPrefix("virtport.conf:7: unknown key [policy] bogus ([policy] keys: host_ports, "))
        }
    }

    @Test func everyDocumentedKey() throws {
        let c = try Config.parse("""
            # comment
            database = "/srv/vp.db"   # trailing comment
            table = "vp_test"
            [paths]
            libvirt_run_dir = "/tmp/run"
            libvirt_config_dir = "/tmp/etc"
            libvirt_state_dir = "/tmp/lib"
            hooks_dir = "/tmp/hooks"
            agent_socket = "/tmp/vp-agent.sock"
            [policy]
            host_ports = ["2000-2999", "8080"]
            listen_addresses = ["203.0.113.5", "2001:db8::1"]
            max_forwards_per_domain = 3
            max_ports_per_domain = 10
            on_internal_error = "refuse"
            [history]
            retention_days = 30
            """)
        #expect(c.databasePath == "/srv/vp.db")
        #expect(c.table == "vp_test")
        #expect(c.libvirtRunDir == "/tmp/run" && c.libvirtConfigDir == "/tmp/etc" && c.libvirtStateDir == "/tmp/lib")
        #expect(c.hooksDir == "/tmp/hooks")
        #expect(c.agentSocket == "/tmp/vp-agent.sock")
        #expect(c.policy.hostPorts == [PortRange(2000, 2999), PortRange(8080, 8080)])
        #expect(c.policy.listenAddresses == [IPAddress("203.0.113.5")!, IPAddress("2001:db8::1")!])
        #expect(!c.policy.allowAnyAddress)
        #expect(c.policy.maxForwardsPerDomain == 3 && c.policy.maxPortsPerDomain == 10)
        #expect(c.policy.onJournalError == .refuse)
        #expect(c.historyRetentionDays == 30)
    }

    @Test(arguments: [
        ("bogus = 1", "virtport.conf:1: unknown key bogus (top level keys: database, table, libvirt_uri)"),
        ("[nope]", "unknown section [nope]"),
        ("database = relative", "strings need double quotes"),
        ("database = \"relative\"", "database: must be an absolute path"),
        ("[policy]\nhost_ports = [\"0-10\"]", "[policy] host_ports: \"0-10\" is not a port"),
        ("[policy]\nhost_ports = [\"3000-2000\"]", "is not a port or port range"),
        ("[policy]\nlisten_addresses = [\"nothost\"]", "\"nothost\" is not an IP address"),
        ("[policy]\nmax_forwards_per_domain = -1", "expected an integer >= 0"),
        ("[policy]\non_internal_error = \"panic\"", "must be \"warn\" or \"refuse\""),
        ("[policy]\nhost_ports = [\"1\"", "unterminated array"),
        ("table = \"bad name\"", "not a valid table name"),
        ("novalue", "expected key = value"),
        ("[policy]\nhost_ports = [\n  \"2000\",\n  # no closing bracket\n", "virtport.conf:2: unterminated array"),
        ("[policy]\nhost_ports = [\"2000\",,\"3000\"]", "empty item in array"),
        ("[policy]\nhost_ports = [\n  2000,\n]", "[policy] host_ports: expected a string"),
    ])
    func invalidConfigNamesLineAndKey(text: String, fragment: String) {
        do {
            _ = try Config.parse(text)
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.exitCode == 2)
            #expect(error.message.contains(fragment), "\(error.message)")
            #expect(!error.message.contains("\n"))
        }
    }
}

@Suite struct ConfigSyntaxTests {
    /// TOML arrays across lines: comments inside, a trailing comma, blank lines; the keys after
    /// them keep their line numbers.
    @Test func multiLineArrays() throws {
        let c = try Config.parse("""
            [policy]
            host_ports = [
              "2222",          # ssh
              "8000-8099",     # web, with a ] in a comment

              "9000",
            ]
            listen_addresses = ["203.0.113.5",
                                "2001:db8::1"]  # trailing
            max_forwards_per_domain = 3
            """)
        #expect(c.policy.hostPorts == [PortRange(2222, 2222), PortRange(8000, 8099), PortRange(9000, 9000)])
        #expect(c.policy.listenAddresses == [IPAddress("203.0.113.5")!, IPAddress("2001:db8::1")!])
        #expect(c.policy.maxForwardsPerDomain == 3)
        #expect(c.warnings.isEmpty)
        do {
            _ = try Config.parse("[policy]\nhost_ports = [\n  \"1\",\n  \"x\",\n]\nbogus = 2")
            Issue.record("accepted")
        } catch {
            #expect(error.message.hasPrefix("virtport.conf:2: [policy] host_ports: \"x\""), "\(error.message)")
        }
        do {
            _ = try Config.parse("[policy]\nhost_ports = [\n  \"1024-65535\",\n]\nbogus = 2")
            Issue.record("accepted")
        } catch {
            #expect(error.message.hasPrefix("virtport.conf:5: unknown key [policy] bogus"), "\(error.message)")
        }
    }

    /// One documented spelling per key; the old ones are read with a warning naming the new one.
    @Test func deprecatedSpellingsWarn() throws {
        let c = try Config.parse("agent_socket = \"/tmp/a.sock\"\n[paths]\ndatabase = \"/tmp/x.db\"\nlibvirt_uri = \"\"")
        #expect(c.agentSocket == "/tmp/a.sock" && c.databasePath == "/tmp/x.db" && c.libvirtURI == "")
        #expect(c.warnings == [
            "virtport.conf:1: agent_socket is a deprecated spelling: write [paths] agent_socket",
            "virtport.conf:3: [paths] database is a deprecated spelling: write database (top level)",
            "virtport.conf:4: [paths] libvirt_uri is a deprecated spelling: write libvirt_uri (top level)",
        ])
    }

    /// Every key of the table (the man page, the template) is read in its documented spelling and
    /// its documented default is the built-in default.
    @Test func keyTableMatchesTheParser() throws {
        for k in ConfigKeys.keys {
            let text = (k.section.isEmpty ? "" : "[\(k.section)]\n") + "\(k.name) = \(k.defaultValue)"
            let c = try Config.parse(text)
            #expect(c.warnings.isEmpty, "\(k.name)")
            #expect(describe(c) == describe(Config()), "\(k.section).\(k.name) = \(k.defaultValue)")
        }
    }

    /// The template `install` writes parses, and with every key uncommented gives the defaults.
    @Test func templateUncommentedGivesDefaults() throws {
        let template = ConfigKeys.template
        #expect(describe(try Config.parse(template)) == describe(Config()))
        var uncommented = ""
        for line in template.split(separator: "\n", omittingEmptySubsequences: false) {
            let l = String(line)
            let isKey = ConfigKeys.keys.contains { l.hasPrefix("# \($0.name) = ") }
            uncommented += (isKey ? String(l.dropFirst(2)) : l) + "\n"
        }
        let c = try Config.parse(uncommented)
        #expect(c.warnings.isEmpty)
        #expect(describe(c) == describe(Config()))
        #expect(uncommented.contains("[paths]\n") && uncommented.contains("agent_socket = \"/run/virtport/agent.sock\""))
        let keyLines = uncommented.split(separator: "\n").filter { !$0.hasPrefix("#") && $0.contains(" = ") }
        #expect(keyLines.count == ConfigKeys.keys.count)
    }

    func describe(_ c: Config) -> String {
        "\(c.databasePath) \(c.table) \(c.libvirtRunDir) \(c.libvirtConfigDir) \(c.libvirtStateDir) \(c.libvirtURI) "
            + "\(c.hooksDir) \(c.agentSocket) \(c.policy) \(c.historyRetentionDays)"
    }
}

@Suite struct DispatchTests {
    @Test func hookModeByArgv0() {
        #expect(CLI.hookKind(path: "/etc/libvirt/hooks/qemu") == .qemu)
        #expect(CLI.hookKind(path: "/etc/libvirt/hooks/network") == .network)
        #expect(CLI.hookKind(path: "/etc/libvirt/hooks/qemu.d/virtport") == .qemu)
        #expect(CLI.hookKind(path: "/etc/libvirt/hooks/network.d/50-virtport") == .network)
        #expect(CLI.hookKind(path: "/usr/local/bin/virtport") == nil)
        #expect(CLI.hookKind(path: "virtport") == nil)
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
}

@Suite struct HookInputTests {
    @Test func uuidFromFixtureShapedXML() {
        let xml = Array("<domain type='qemu'>\n  <name>x</name>\n  <uuid>10CA34A4-D7DE-462E-8906-BE833E7F6CAE</uuid>\n</domain>".utf8)
        #expect(HookInput.domainUUID(xml) == "10ca34a4-d7de-462e-8906-be833e7f6cae")
        #expect(HookInput.domainUUID(Array("<domain><name>x</name></domain>".utf8)) == nil)
        #expect(HookInput.domainUUID(Array("<domain><uuid>not-a-uuid</uuid></domain>".utf8)) == nil)
    }

    @Test func statusPID() {
        #expect(RunningDomains.statusPID(Array("<domstatus state='running' reason='booted' pid='4242'>".utf8)) == 4242)
        #expect(RunningDomains.statusPID(Array("<domstatus state=\"running\" pid=\"7\">".utf8)) == 7)
        #expect(RunningDomains.statusPID(Array("<domstatus state='running'>".utf8)) == nil)
    }
}

@Suite struct ProcNetTests {
    @Test func decodesProcNetAddresses() {
        #expect(HostSockets.decode("0100007F", v6: false) == IPAddress("127.0.0.1"))
        #expect(HostSockets.decode("00000000", v6: false) == IPAddress("0.0.0.0"))
        #expect(HostSockets.decode("0000000000000000FFFF00000100007F", v6: true) == IPAddress("::ffff:127.0.0.1"))
        #expect(HostSockets.decode("00000000000000000000000001000000", v6: true) == IPAddress("::1"))
        #expect(HostSockets.decode("zz", v6: false) == nil)
    }

    /// A socket bound in this process, on an ephemeral port: (fd, port).
    func bound(_ family: Int32, _ type: Int32) throws -> (Int32, UInt16) {
        let fd = socket(family, type, 0)
        try #require(fd >= 0)
        var storage = sockaddr_storage()
        var length = socklen_t(family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
        storage.ss_family = sa_family_t(family)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { a in
                bind(fd, a, length) == 0 && getsockname(fd, a, &length) == 0
            }
        }
        try #require(ok)
        if type == Int32(SOCK_STREAM.rawValue) { try #require(listen(fd, 1) == 0) }
        let port = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
        }
        return (fd, port)
    }

    /// sock_diag and /proc/net agree on real sockets: a TCP listener (IPv6) and an unconnected UDP
    /// socket (IPv4) bound here show up in both, with the same address, port and inode.
    @Test func sockDiagSeesWhatProcNetSees() throws {
        let (tcp, tcpPort) = try bound(AF_INET6, Int32(SOCK_STREAM.rawValue))
        defer { close(tcp) }
        let (udp, udpPort) = try bound(AF_INET, Int32(SOCK_DGRAM.rawValue))
        defer { close(udp) }
        let diag = try #require(HostSockets.fromKernel())
        let proc = HostSockets.read(procRoot: "/proc")
        for (proto, port) in [(IPProto.tcp, tcpPort), (.udp, udpPort)] {
            let fromDiag = diag.filter { $0.proto == proto && $0.port == port }
            #expect(fromDiag.count == 1, "\(proto) \(port): \(fromDiag)")
            #expect(fromDiag == proc.filter { $0.proto == proto && $0.port == port })
        }
        #expect(diag.first { $0.port == tcpPort }?.address == IPAddress("::"))
        #expect(diag.first { $0.port == udpPort }?.address == IPAddress("0.0.0.0"))
    }
}

@Suite struct LeaseFileTests {
    @Test func parsesLibvirtLeaseStatus() {
        let text = """
            [
              {
                "ip-address": "192.168.122.45",
                "mac-address": "52:54:00:AA:BB:01",
                "hostname": "vm1",
                "client-id": "01:52:54:00:aa:bb:01",
                "expiry-time": 1764410000
              },
              {
                "iaid": "1234",
                "ip-address": "fd00::45",
                "mac-address": "52:54:00:aa:bb:01",
                "expiry-time": 1764410001
              },
              { "ip-address": "garbage", "mac-address": "52:54:00:aa:bb:02" }
            ]
            """
        let leases = DnsmasqStatus.leases(Array(text.utf8))
        #expect(leases.count == 2)
        #expect(leases[0] == .init(address: IPAddress("192.168.122.45")!, mac: MACAddress("52:54:00:aa:bb:01")!, expiry: 1764410000))
        #expect(leases[1].address == IPAddress("fd00::45"))
        #expect(DnsmasqStatus.leases(Array("[]".utf8)).isEmpty)
    }
}

@Suite struct AgentFrameTests {
    @Test func requestAndReplyRoundTrip() {
        let request = AgentFrame.Request(configPath: "/etc/virtport/virtport.conf", kind: "qemu",
                                         args: ["vm1", "start", "begin", "-"], input: Array("<domain/>".utf8) + [0, 255])
        #expect(AgentFrame.decodeRequest(AgentFrame.encode(request)) == request)
        for lines in [[], ["one"], ["domain 'vm1' start: host port tcp/2222 is already forwarded", "", "third"]] {
            let reply = AgentFrame.Reply(served: true, code: -2, lines: lines)
            #expect(AgentFrame.decodeReply(AgentFrame.encode(reply)) == reply)
        }
        #expect(AgentFrame.decodeReply(AgentFrame.encode(AgentFrame.Reply(served: false, code: 0, lines: [])))?.served == false)
    }

    @Test func truncatedOrForeignFramesAreRefused() {
        let whole = AgentFrame.encode(AgentFrame.Request(configPath: "/c", kind: "qemu", args: ["a", "b"], input: [1, 2, 3]))
        for cut in 0..<whole.count {
            #expect(AgentFrame.decodeRequest(Array(whole[0..<cut])) == nil)
        }
        #expect(AgentFrame.decodeRequest(whole + [0]) == nil)
        #expect(AgentFrame.decodeReply(whole) == nil)
        #expect(AgentFrame.decodeRequest(Array("VPA1".utf8) + [255, 255, 255, 255]) == nil)
    }
}
