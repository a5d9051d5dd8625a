import Foundation
import Testing
import VirtPortCore
@testable import Commands
@testable import Engine

@Suite struct ConfigTemplateTests {
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

    /// The package's conffile is byte for byte the file `virtport install` writes: dpkg then takes
    /// over a source install's untouched default without a conffile prompt (README "Debian package").
    @Test func packagedConffileIsTheTemplate() throws {
        let packaged = try String(contentsOfFile: "\(SelfContainedTests.root)/packaging/virtport.conf", encoding: .utf8)
        #expect(packaged == ConfigKeys.template, "packaging/virtport.conf differs from `virtport install`'s default: regenerate it")
    }

    func describe(_ c: Config) -> String {
        "\(c.databasePath) \(c.table) \(c.libvirtRunDir) \(c.libvirtConfigDir) \(c.libvirtStateDir) \(c.libvirtURI) "
            + "\(c.hooksDir) \(c.agentSocket) \(c.policy) \(c.historyRetentionDays)"
    }
}
