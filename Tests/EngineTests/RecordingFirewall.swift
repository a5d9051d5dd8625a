#if canImport(Glibc)
import Glibc
#endif
@testable import Engine
import Netfilter
import VirtPortCore

/// A `FirewallDriver` with no kernel behind it: it keeps what the kernel would hold (virtport's
/// two tables, bridge port flags), records every call and every batch, and can be told to fail
/// (a table missing, EEXIST, ENOENT on the next shared batch or guard change).
final class RecordingFirewall: FirewallDriver {
    // What the fake kernel holds.
    var inetTable = true
    var inetSkeletonIntact = true
    var elements: Set<ForwardElement> = []
    var hairpin: Set<Subnet> = []
    var bridgeTable = true
    var bridgeSkeletonIntact = true
    var ports: [String: GuardPort] = [:]
    /// Bridge ports' isolated flag and group_fwd_mask (absent: not a bridge port).
    var isolatedFlags: [String: Bool] = [:]
    var masks: [String: UInt16] = [:]

    /// Every call, in order, one line each.
    private(set) var calls: [String] = []
    /// Every batch the kernel committed, as the summaries of what it held.
    private(set) var batches: [[String]] = []

    /// The next `send` fails with this errno (nothing applied).
    var failNextSend: Int32?
    /// The next `changeGuards` fails with this errno.
    var failNextChangeGuards: Int32?
    /// Every `send` with a part whose summary starts with a key fails with its errno, until
    /// removed (the kernel refusing one kind's table, say `inet src`, and not the others').
    var refuseParts: [String: Int32] = [:]
    /// Deletes of conntrack entries to released ports fail with this errno.
    var failConntrack: Int32?

    /// Calls that change something (anything but reads): a dry run makes none.
    var writes: [String] {
        calls.filter { c in !["list", "skeleton", "guardTableDamage", "guardSkeleton", "isolated", "mask", "chainExists",
                              "flowRecord", "guardPart", "forwardPart"].contains { c.hasPrefix($0) } }
    }

    struct Part: BatchPart {
        let summary: String
        let inet: Bool
        let effect: (RecordingFirewall) -> Void
        func append(to batch: inout NetlinkBatch, session: NetfilterSession) {}
    }

    static func error(_ errno: Int32, _ what: String) -> NetfilterError { NetfilterError(errno: errno, operation: what) }

    func send(_ parts: [any BatchPart]) throws(NetfilterError) {
        calls.append("send \(parts.map(\.summary))")
        if let e = failNextSend {
            failNextSend = nil
            throw Self.error(e, "shared batch")
        }
        for (prefix, e) in refuseParts where parts.contains(where: { $0.summary.hasPrefix(prefix) }) {
            throw Self.error(e, "batch with \(prefix)")
        }
        let mine = parts.compactMap { $0 as? Part }
        if mine.contains(where: { $0.inet && !inetTable }) { throw Self.error(ENOENT, "table inet missing") }
        if mine.contains(where: { !$0.inet && !bridgeTable }) { throw Self.error(ENOENT, "table bridge missing") }
        for part in mine { part.effect(self) }
        batches.append(parts.map(\.summary))
    }

    func forwardPart(adding: [ForwardElement], removing: [ForwardElement], hairpinAdding: [Subnet],
                     hairpinRemoving: [Subnet]) throws(NetfilterError) -> (any BatchPart)? {
        calls.append("forwardPart")
        if adding.isEmpty && removing.isEmpty && hairpinAdding.isEmpty && hairpinRemoving.isEmpty { return nil }
        return Part(summary: "inet +\(adding.count) -\(removing.count)", inet: true) { fw in
            fw.elements.subtract(removing)
            fw.elements.formUnion(adding)
            fw.hairpin.subtract(hairpinRemoving)
            fw.hairpin.formUnion(hairpinAdding)
        }
    }

    func guardPart(adding: [GuardPort], previous: [GuardPort], removing: [GuardPort]) throws(NetfilterError) -> any BatchPart {
        calls.append("guardPart")
        return Part(summary: "bridge +\(adding.count) -\(removing.count)", inet: false) { fw in
            for p in removing { fw.ports[p.tap] = nil }
            for p in adding { fw.ports[p.tap] = p }
        }
    }

    @discardableResult
    func apply(adding: [ForwardElement], removing: [ForwardElement], hairpinAdding: [Subnet],
               hairpinRemoving: [Subnet]) throws(NetfilterError) -> Bool {
        calls.append("apply +\(adding.count) -\(removing.count)")
        var created = false
        if !inetTable {
            inetTable = true
            inetSkeletonIntact = true
            created = true
        }
        elements.subtract(removing)
        elements.formUnion(adding)
        hairpin.subtract(hairpinRemoving)
        hairpin.formUnion(hairpinAdding)
        batches.append(["inet +\(adding.count) -\(removing.count)"])
        return created
    }

    func replaceAll(elements: [ForwardElement], hairpin: [Subnet], others: [any BatchPart]) throws(NetfilterError) {
        calls.append("replaceAll \(elements.count)")
        inetTable = true
        inetSkeletonIntact = true
        self.elements = Set(elements)
        self.hairpin = Set(hairpin)
        batches.append(["inet rebuilt \(elements.count)"] + others.map(\.summary))
    }

    func deleteTable() throws(NetfilterError) {
        calls.append("deleteTable")
        inetTable = false
        elements = []
        hairpin = []
    }

    func listElements() throws(NetfilterError) -> [ForwardElement] {
        calls.append("listElements")
        if !inetTable { throw NetfilterError.missingTable("virtport") }
        return Array(elements)
    }

    func listHairpin() throws(NetfilterError) -> [Subnet] {
        calls.append("listHairpin")
        if !inetTable { throw NetfilterError.missingTable("virtport") }
        return Array(hairpin)
    }

    func skeletonIsIntact() throws(NetfilterError) -> Bool {
        calls.append("skeletonIsIntact")
        return inetTable && inetSkeletonIntact
    }

    func changeGuards(adding: [GuardPort], previous: [GuardPort], removing: [GuardPort]) throws(NetfilterError) {
        calls.append("changeGuards +\(adding.count) -\(removing.count)")
        if let e = failNextChangeGuards {
            failNextChangeGuards = nil
            throw Self.error(e, "change guards")
        }
        if !bridgeTable { throw Self.error(ENOENT, "table bridge missing") }
        for p in removing { ports[p.tap] = nil }
        for p in adding { ports[p.tap] = p }
        batches.append(["bridge +\(adding.count) -\(removing.count)"])
    }

    func replaceGuards(_ ports: [GuardPort]) throws(NetfilterError) {
        calls.append("replaceGuards \(ports.count)")
        bridgeTable = true
        bridgeSkeletonIntact = true
        self.ports = Dictionary(ports.map { ($0.tap, $0) }, uniquingKeysWith: { a, _ in a })
        batches.append(["bridge rebuilt \(ports.count)"])
    }

    func deleteGuardTable() throws(NetfilterError) {
        calls.append("deleteGuardTable")
        bridgeTable = false
        ports = [:]
    }

    func guardTableDamage(expecting ports: [GuardPort]) throws(NetfilterError) -> String? {
        calls.append("guardTableDamage")
        if !bridgeTable { return "table bridge virtport is missing" }
        if !bridgeSkeletonIntact { return "table bridge virtport has chains or rules missing" }
        let broken = ports.filter { self.ports[$0.tap] != $0 }.map(\.tap)
        return broken.isEmpty ? nil : "table bridge virtport has elements of ports \(broken.joined(separator: ", "))"
    }

    func guardSkeletonIsIntact() throws(NetfilterError) -> Bool {
        calls.append("guardSkeletonIsIntact")
        return bridgeTable && bridgeSkeletonIntact
    }

    func guardCounters() throws(NetfilterError) -> [GuardCounter] {
        calls.append("guardCounters")
        return []
    }

    func isolated(_ tap: String) -> Bool? {
        calls.append("isolated \(tap)")
        return isolatedFlags[tap]
    }

    func setIsolated(_ tap: String, _ on: Bool) throws(NetfilterError) {
        calls.append("setIsolated \(tap) \(on)")
        guard isolatedFlags[tap] != nil else { throw Self.error(ENODEV, "set isolated on \(tap)") }
        isolatedFlags[tap] = on
    }

    func groupForwardMask(_ tap: String) -> UInt16? {
        calls.append("mask \(tap)")
        return masks[tap]
    }

    func setGuardedGroups(_ tap: String, _ on: Bool) throws(NetfilterError) {
        calls.append("setGuardedGroups \(tap) \(on)")
        guard let now = masks[tap] else { throw Self.error(ENODEV, "set group_fwd_mask on \(tap)") }
        masks[tap] = on ? now | BridgePort.guardedGroups : now & ~BridgePort.guardedGroups
    }

    func chainExists(family: Family, table: String, chain: String) throws(NetfilterError) -> Bool {
        calls.append("chainExists")
        return false
    }

    func listRules(family: Family, table: String, chain: String) throws(NetfilterError) -> [ForeignRule]? {
        calls.append("listRules")
        return nil
    }

    func deleteRules(family: Family, table: String, chain: String, handles: [UInt64]) throws(NetfilterError) {
        calls.append("deleteRules")
    }

    func insertAtTop(_ rule: AcceptRule, table: String, chain: String, replacing: [UInt64]) throws(NetfilterError) {
        calls.append("insertAtTop")
    }

    func flowRecord() -> FlowRecord {
        calls.append("flowRecord")
        return FlowRecord()
    }

    func forgetFlows(of elements: [ForwardElement]) throws(NetfilterError) -> ConntrackCleanup {
        calls.append("forgetFlows \(elements.count) elements")
        return ConntrackCleanup()
    }

    func forgetFlows(of elements: [ForwardElement], record: FlowRecord?) throws(NetfilterError) -> ConntrackCleanup {
        calls.append("forgetFlows \(elements.count) elements by record")
        return ConntrackCleanup()
    }

    func forgetFlowsByWalking(_ elements: [ForwardElement]) throws(NetfilterError) {
        calls.append("forgetFlowsByWalking \(elements.count)")
    }

    func forgetFlows(toHostPort port: UInt16, proto: IPProto, family: Family) throws(NetfilterError) {
        calls.append("forgetFlows port \(port)")
    }

    func forgetFlows(toHostPorts ports: [(port: UInt16, proto: IPProto, family: Family)]) throws(NetfilterError) {
        for p in ports { calls.append("forgetFlows port \(p.port)") }
        if let e = failConntrack { throw Self.error(e, "delete conntrack entries") }
    }

    func forgetFlows(of address: IPAddress) throws(NetfilterError) {
        calls.append("forgetFlows \(address)")
    }

    func closeInBackground() { calls.append("closeInBackground") }
}
