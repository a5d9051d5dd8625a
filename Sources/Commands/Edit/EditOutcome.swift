import Engine
import VirtPortCore

/// What `virtport add`/`remove` say about each forward they touched (DESIGN "add output"), and
/// the guest address an added forward takes from the metadata. Pure: unit-tested without libvirt.
///
///     applied: tcp *:2223 -> 192.168.122.10:22 (domain 'web')
///     pending: no address known for NIC 52:54:00:aa:bb:01; give --guest, a DHCP reservation, or wait for a lease (domain 'web', tcp *:2223 -> (pending):22)
///     removed: tcp *:2222 -> 192.168.122.10:22 (domain 'web')
enum EditOutcome {
    /// One forward's state after the edit.
    enum State: Equatable {
        case applied, pending, removed
    }

    struct Line: Equatable {
        var state: State
        var mapping: Mapping
        var text: String
    }

    /// The address a forward added without `--guest` uses: what the metadata already states for
    /// its NIC, first another forward's `guest=`, then the guard's `ip=`; of the family `address=`
    /// fixes when it is given. nil when nothing states one (the planner's reservation/lease
    /// look-up then answers, or the forward is pending).
    static func statedGuest(for forward: ForwardSpec, metadata: VirtPortMetadata?, interfaces: [Interface]) -> IPAddress? {
        guard forward.guest == nil, let metadata else { return nil }
        let only = interfaces.count == 1 ? interfaces[0].mac : nil
        guard let nic = forward.mac ?? only else { return nil }
        let family = forward.address?.family
        let fits: (IPAddress) -> Bool = { family == nil || $0.family == family }
        for f in metadata.forwards where (f.mac ?? only) == nic {
            if let g = f.guest, fits(g) { return g }
        }
        for g in metadata.guards where (g.mac ?? only) == nic {
            if let ip = g.addresses.first(where: fits) { return ip }
        }
        return nil
    }

    /// The forwards an edit changed: mappings of `after` not in `before` (applied or pending),
    /// then mappings of `before` gone from `after` (removed). A domain that does not run applies
    /// nothing: its new forwards are pending until it starts.
    static func lines(before: [Mapping], after: [Mapping], domain: String, running: Bool) -> [Line] {
        let who = "domain '\(Quoted.message(domain))'"
        var out: [Line] = []
        let old = Set(before), new = Set(after)
        for m in after where !old.contains(m) {
            let text = MappingText.describe(m)
            if !running {
                out.append(Line(state: .pending, mapping: m,
                                text: "pending: \(who) is not running; the forward applies at its next start (\(text))"))
            } else if m.isPending {
                out.append(Line(state: .pending, mapping: m, text: "pending: \(missing(m)) (\(who), \(text))"))
            } else {
                out.append(Line(state: .applied, mapping: m, text: "applied: \(text) (\(who))"))
            }
        }
        for m in before where !new.contains(m) {
            let where_ = running ? "" : ", definition only: not running"
            out.append(Line(state: .removed, mapping: m, text: "removed: \(MappingText.describe(m)) (\(who)\(where_))"))
        }
        return out
    }

    /// What a pending forward lacks, and the three ways to give it.
    static func missing(_ m: Mapping) -> String {
        let nic = m.mac.map { "NIC \($0)" } ?? "the NIC"
        let net = m.network.map { " on network \($0)" } ?? ""
        return "no address known for \(nic)\(net); give --guest, a DHCP reservation, or wait for a lease"
    }
}

extension EditOutcome {
    /// The same forward of the same NIC (its address aside): a pending row and the row that
    /// completes it.
    static func sameSlot(_ a: Mapping, _ b: Mapping) -> Bool {
        a.proto == b.proto && a.hostAddress == b.hostAddress && a.dev == b.dev && a.hostPorts == b.hostPorts
            && a.mac == b.mac && a.guestPortStart == b.guestPortStart
    }
}
