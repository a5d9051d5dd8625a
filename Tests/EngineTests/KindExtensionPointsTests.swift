import Testing
import VirtPortCore
@testable import Engine

/// The Engine's extension points for rule kinds: config keys a kind declares, and the owners of
/// its tables (`trace`, `doctor`).
@Suite struct KindExtensionPointsTests {
    /// Every kind's key is documented with the core's, once, right after the key it names.
    @Test func kindKeysAreDocumentedAfterTheirAnchor() {
        let dotted = ConfigKeys.keys.map(\.dotted)
        #expect(Set(dotted).count == dotted.count)
        for k in ConfigKeys.kindKeys {
            guard let at = dotted.firstIndex(of: k.key.dotted) else {
                Issue.record("\(k.key.dotted) not in ConfigKeys.keys")
                continue
            }
            #expect(at > 0 && ConfigKeys.keys[at - 1].section == k.key.section)
            #expect(!ConfigKeys.coreKeys.map(\.dotted).contains(k.key.dotted))
        }
    }

    /// A kind's key goes through `Config.parse` to the kind's place, and a bad value is one line
    /// naming the key.
    @Test func kindKeyParsesAndRefuses() throws {
        let c = try Config.parse("[policy]\nrequire_source_ports = [3389, \"5900-5999\"]\n")
        #expect(c.policy.requireSourcePorts == [PortRange(3389, 3389), PortRange(5900, 5999)])
        #expect(c.policy != Config().policy)
        do {
            _ = try Config.parse("[policy]\nrequire_source_ports = [\"x\"]\n")
            Issue.record("accepted")
        } catch {
            #expect(error.message == "virtport.conf:2: [policy] require_source_ports: \"x\" is not a port or port range (1-65535)")
        }
        do {
            _ = try Config.parse("[policy]\nrequire_source_portz = []\n")
            Issue.record("accepted")
        } catch {
            #expect(error.message.contains("unknown key [policy] require_source_portz"))
            #expect(error.message.contains("require_source_ports"))
        }
    }

    /// Each kind's tables have an owner, and the lookup matches family and name.
    @Test func tableOwners() {
        #expect(RuleKinds.owner(family: "inet", table: "vp", base: "vp") == "virtport's forwards")
        #expect(RuleKinds.owner(family: "bridge", table: "vp", base: "vp") == "virtport's guard")
        #expect(RuleKinds.owner(family: "inet", table: "vp_src", base: "vp") == "virtport's source filter")
        #expect(RuleKinds.owner(family: "ip", table: "vp_src", base: "vp") == nil)
        #expect(RuleKinds.owner(family: "inet", table: "firewalld", base: "vp") == nil)
        // Every table a kind keeps (the agent's watch) has an owner.
        var config = Config()
        config.table = "vp"
        for kind in RuleKinds.all {
            for t in kind.tables(config) {
                let parts = t.split(separator: " ").map(String.init)
                #expect(RuleKinds.owner(family: parts[0], table: parts[1], base: "vp") != nil, "\(t)")
            }
        }
    }
}
