import Testing
import VirtPortCore
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
