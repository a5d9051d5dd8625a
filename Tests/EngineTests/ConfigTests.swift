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
        #expect(c.policy.onInternalError == .refuse)
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
        ("[agent]\nmetrics_file = \"virtport.prom\"", "[agent] metrics_file: must be an absolute path ending in .prom"),
        ("[agent]\nmetrics_file = \"/var/lib/x/virtport.txt\"", "textfile collector reads only those"),
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


    func describe(_ c: Config) -> String {
        "\(c.databasePath) \(c.table) \(c.libvirtRunDir) \(c.libvirtConfigDir) \(c.libvirtStateDir) \(c.libvirtURI) "
            + "\(c.hooksDir) \(c.agentSocket) \(c.policy) \(c.historyRetentionDays)"
    }
}
