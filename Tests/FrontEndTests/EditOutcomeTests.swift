import Testing
import VirtPortCore
import Engine
@testable import Commands

/// `add`/`remove` output (DESIGN "add output") and the guest address an added forward takes from
/// the metadata, without libvirt.
struct EditOutcomeTests {
    let mac1 = MACAddress("52:54:00:aa:bb:01")!, mac2 = MACAddress("52:54:00:aa:bb:02")!
    let g10 = IPAddress("192.168.122.10")!, g11 = IPAddress("192.168.122.11")!, g6 = IPAddress("fd00::10")!

    func mapping(_ port: UInt16, guest: IPAddress?, mac: MACAddress? = nil) -> Mapping {
        Mapping(proto: .tcp, hostAddress: nil, dev: nil, hostPorts: PortRange(port, port), guestAddress: guest,
                guestPortStart: 22, mac: mac ?? mac1, network: "default", guestSource: guest == nil ? .pending : .attribute)
    }

    @Test func appliedLineNamesTheMappingFirst() {
        let lines = EditOutcome.lines(before: [], after: [mapping(2223, guest: g10)], domain: "web", running: true)
        #expect(lines.map(\.text) == ["applied: tcp *:2223 -> 192.168.122.10:22 (domain 'web')"])
        #expect(lines.map(\.state) == [.applied])
    }

    @Test func pendingLineSaysWhatIsMissing() {
        let lines = EditOutcome.lines(before: [], after: [mapping(2223, guest: nil)], domain: "web", running: true)
        #expect(lines.count == 1)
        #expect(lines[0].state == .pending)
        #expect(lines[0].text.hasPrefix("pending: no address known for NIC 52:54:00:aa:bb:01 on network default; give --guest, a DHCP reservation, or wait for a lease"))
        #expect(lines[0].text.contains("tcp *:2223 -> (pending):22"))
    }

    @Test func onlyChangedForwardsAreReported() {
        let kept = mapping(2222, guest: g10), added = mapping(2223, guest: g10)
        let lines = EditOutcome.lines(before: [kept], after: [kept, added], domain: "web", running: true)
        #expect(lines.map(\.mapping) == [added])
    }

    @Test func removedLines() {
        let a = mapping(2222, guest: g10), b = mapping(2223, guest: nil)
        let lines = EditOutcome.lines(before: [a, b], after: [b], domain: "web", running: true)
        #expect(lines.map(\.text) == ["removed: tcp *:2222 -> 192.168.122.10:22 (domain 'web')"])
    }

    @Test func aDomainThatDoesNotRunIsPendingUntilItStarts() {
        let lines = EditOutcome.lines(before: [], after: [mapping(2223, guest: g10)], domain: "web", running: false)
        #expect(lines.map(\.state) == [.pending])
        #expect(lines[0].text.hasPrefix("pending: domain 'web' is not running"))
    }

    @Test func statedGuestFromAnotherForwardOfTheSameNIC() {
        let nics = [Interface(type: "network", mac: mac1, sourceNetwork: "default")]
        let meta = VirtPortMetadata(forwards: [ForwardSpec(proto: .tcp, guest: g10, ranges: [])])
        #expect(EditOutcome.statedGuest(for: ForwardSpec(proto: .tcp), metadata: meta, interfaces: nics) == g10)
        // An explicit --guest wins; nothing stated: nil (the planner looks up reservation and lease).
        #expect(EditOutcome.statedGuest(for: ForwardSpec(proto: .tcp, guest: g11), metadata: meta, interfaces: nics) == nil)
        #expect(EditOutcome.statedGuest(for: ForwardSpec(proto: .tcp), metadata: VirtPortMetadata(), interfaces: nics) == nil)
        #expect(EditOutcome.statedGuest(for: ForwardSpec(proto: .tcp), metadata: nil, interfaces: nics) == nil)
    }

    @Test func statedGuestOnlyForTheSameNICAndFamily() {
        let nics = [Interface(type: "network", mac: mac1, sourceNetwork: "default"),
                    Interface(type: "network", mac: mac2, sourceNetwork: "default")]
        let meta = VirtPortMetadata(forwards: [ForwardSpec(proto: .tcp, mac: mac1, guest: g10, ranges: [])],
                                    guards: [GuardSpec(mac: mac2, addresses: [g6, g11])])
        #expect(EditOutcome.statedGuest(for: ForwardSpec(proto: .udp, mac: mac1), metadata: meta, interfaces: nics) == g10)
        // The guard's ip= of the second NIC, of the family address= fixes.
        #expect(EditOutcome.statedGuest(for: ForwardSpec(proto: .udp, mac: mac2), metadata: meta, interfaces: nics) == g6)
        #expect(EditOutcome.statedGuest(for: ForwardSpec(proto: .udp, address: IPAddress("203.0.113.5")!, mac: mac2),
                                        metadata: meta, interfaces: nics) == g11)
        #expect(EditOutcome.statedGuest(for: ForwardSpec(proto: .udp, address: IPAddress("2001:db8::5")!, mac: mac1),
                                        metadata: meta, interfaces: nics) == nil)
        // Two NICs and no mac=: no NIC to take it from.
        #expect(EditOutcome.statedGuest(for: ForwardSpec(proto: .udp), metadata: meta, interfaces: nics) == nil)
    }
}

/// `virtport plan`'s JSON with the refusal check: `refused` is only added (per forward and at the
/// top); every field the plan printed before stays, in its order.
struct PlanJSONTests {
    @Test func refusedIsAddedPerForwardAndAtTheTop() {
        let m = Mapping(proto: .tcp, hostAddress: nil, dev: nil, hostPorts: PortRange(8080, 8080),
                        guestAddress: IPAddress("192.168.122.10")!, guestPortStart: 80, mac: nil, network: "default",
                        guestSource: .attribute)
        let plan = Plan(domainName: "b", domainUUID: "u", mappings: [m, m])
        let why = "host port tcp/8080 is already forwarded to domain 'a' (uuid x)"
        let out = PlanCommand.json(plan, Refusals(line: "domain 'b' prepare: " + why, perMapping: [why, nil]))
        guard case .object(let top) = out, case .object(let before) = plan.json else { Issue.record("not an object"); return }
        #expect(top.map { $0.0 } == before.map { $0.0 } + ["refused"])
        #expect(top.last?.1 == .string("domain 'b' prepare: " + why))
        guard case .array(let forwards) = top[1].1 else { Issue.record("no forwards"); return }
        #expect(forwards.count == 2)
        for (k, f) in forwards.enumerated() {
            guard case .object(let fields) = f, case .object(let old) = m.json else { Issue.record("not an object"); return }
            // `source` (issue 24: null without source=) and `refused` are added; nothing else changes.
            #expect(fields.dropLast().map { $0.0 } == old.map { $0.0 } + ["source"])
            #expect(fields.dropLast().last?.1 == .null)
            #expect(fields.last?.0 == "refused")
            #expect(fields.last?.1 == (k == 0 ? .string(why) : .null))
        }
        #expect(PlanCommand.json(plan, Refusals(line: nil, perMapping: [nil, nil])).serialized().contains("\"refused\":null"))
    }
}
