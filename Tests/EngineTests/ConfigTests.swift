#if canImport(Glibc)
import Glibc
#endif
import Testing
import VirtPortCore
@testable import Engine

@Suite struct ConfigTests {
    @Test func emptyFileGivesDefaults() throws {
        let c = try Config.parse("")
        #expect(c.databasePath == "/var/lib/virtport/virtport.db")
        #expect(c.table == "virtport")
        #expect(c.policy.hostPorts == [PortRange(1024, 65535)])
        #expect(c.policy.allowAnyAddress)
        #expect(c.policy.onInternalError == .warn)
        #expect(c.historyRetentionDays == 0)
        #expect(c.agentSocket == "/run/virtport/agent.sock")
    }

    /// Line numbers survive blank lines, comments and a missing final newline (the byte-level reader).
    @Test func errorsNameTheRightLine() {
        do {
            _ = try Config.parse("# c\n\n  \t\ntable = \"x\" # ok\n\n[policy]\nbogus = 1")
            Issue.record("accepted")
        } catch {
            #expect(error.message == "virtport.conf:7: unknown key policy.bogus")
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
        #expect(c.policy.onInternalError == .refuse)
        #expect(c.historyRetentionDays == 30)
    }

    @Test(arguments: [
        ("bogus = 1", "virtport.conf:1: unknown key bogus"),
        ("[nope]", "unknown section [nope]"),
        ("database = relative", "strings need double quotes"),
        ("database = \"relative\"", "database: must be an absolute path"),
        ("[policy]\nhost_ports = [\"0-10\"]", "policy.host_ports: \"0-10\" is not a port"),
        ("[policy]\nhost_ports = [\"3000-2000\"]", "is not a port or port range"),
        ("[policy]\nlisten_addresses = [\"nothost\"]", "\"nothost\" is not an IP address"),
        ("[policy]\nmax_forwards_per_domain = -1", "expected an integer >= 0"),
        ("[policy]\non_internal_error = \"panic\"", "must be \"warn\" or \"refuse\""),
        ("[policy]\nhost_ports = [\"1\"", "unterminated array"),
        ("table = \"bad name\"", "not a valid table name"),
        ("novalue", "expected key = value"),
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
