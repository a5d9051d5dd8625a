#if canImport(Glibc)
import Glibc
#endif
import CNftnl
import VirtPortCore

/// One port's dropped frames for one reason.
public struct GuardCounter: Sendable, Hashable {
    public var tap: String
    public var reason: GuardDropReason
    public var packets: UInt64
    public var bytes: UInt64
}

/// `changeGuards`' messages: ports that go, stale elements of ports that stay, ports that come.
struct GuardBatchPart: BatchPart {
    let adding: [GuardPort]
    let removing: [GuardPort]
    let stale: [(set: String, key: [UInt8])]

    func append(to batch: inout NetlinkBatch, session: NetfilterSession) {
        let table = session.table
        GuardTable.appendPorts(to: &batch, table: table, adding: false, removing, counters: true)
        for set in Set(stale.map(\.set)).sorted() {
            GuardTable.appendKeys(to: &batch, table: table, set: set, adding: false,
                                  stale.filter { $0.set == set }.map(\.key), objrefs: nil,
                                  operation: "delete stale elements in set \(set) of table bridge \(table)")
        }
        GuardTable.appendPorts(to: &batch, table: table, adding: true, adding, counters: true)
    }

    var summary: String { "bridge: +\(adding.count) -\(removing.count) ports, \(stale.count) stale elements" }
}

/// `table bridge <table>`: the port guards, over the same socket as the inet table.
extension NetfilterSession {
    /// Changes guarded ports in one batch: `removing` loses every element and its counters;
    /// each of `adding` gets its elements (and counters, kept when they exist), and loses the
    /// elements its `previous` version had that it no longer has (an address that moved).
    /// Adding an element that is already there is harmless.
    /// - Throws: ENOENT (`isMissingObject`) when the table, a set or an element to delete is
    ///   missing: the caller rebuilds the table from its journal (`replaceGuards`).
    public func changeGuards(adding: [GuardPort], previous: [GuardPort], removing: [GuardPort]) throws(NetfilterError) {
        try send([try guardPart(adding: adding, previous: previous, removing: removing)])
    }

    /// `changeGuards`' batch as a part of a shared one (`BatchPart`): the reads it needs (learned
    /// elements to purge) are done now.
    public func guardPart(adding: [GuardPort], previous: [GuardPort], removing: [GuardPort]) throws(NetfilterError) -> any BatchPart {
        for port in adding + previous + removing { try GuardTable.validate(port) }
        let old = Dictionary(previous.map { ($0.tap, $0) }, uniquingKeysWith: { a, _ in a })
        var stale: [(set: String, key: [UInt8])] = []
        for port in adding {
            guard let before = old[port.tap] else { continue }
            let now = Set(GuardTable.elements(port).map { "\($0.set)/\($0.key)" })
            stale += GuardTable.elements(before).filter { !now.contains("\($0.set)/\($0.key)") }
        }
        // What the data path learned for a port (link-locals claimed by DAD) goes with the port,
        // or with its MAC when the tap changed hands.
        var purge: [String: MACAddress?] = [:]
        for port in removing where port.spoofing { purge[port.tap] = .some(nil) }
        for port in adding {
            if let before = old[port.tap], before.spoofing, before.mac != port.mac || !port.spoofing {
                purge[port.tap] = .some(port.spoofing ? port.mac : nil)
            }
        }
        var deleting = Set(stale.map { "\($0.set)/\($0.key)" })
        for port in removing { for e in GuardTable.elements(port) { deleting.insert("\(e.set)/\(e.key)") } }
        if !purge.isEmpty { stale += try learnedElements { key in
            let tap = GuardTable.tap(of: key)
            guard let keep = purge[tap] else { return false }
            return keep == nil || Array(key[16..<22]) != keep!.bytes
        }.filter { !deleting.contains("\($0.set)/\($0.key)") } }
        // Their link-locals leave taken6 with them (a static EUI-64 one goes with the port's elements).
        let kept = Set(stale.map { "\($0.set)/\($0.key)" }).union(deleting)
            .union(adding.flatMap { GuardTable.elements($0).map { "\($0.set)/\($0.key)" } })
        var derived = Set<String>()
        let taken = GuardTable.taken(stale).filter { !kept.contains("\($0.set)/\($0.key)") && derived.insert("\($0.key)").inserted }
        if !taken.isEmpty {
            // Only those there: a missing one would fail the batch (and the caller would rebuild).
            let present: Set<[UInt8]>
            do { present = Set(try dumpSet("taken6", family: .bridge).map(\.key)) } catch where error.isMissingObject { present = [] }
            stale += taken.filter { present.contains($0.key) }
        }
        return GuardBatchPart(adding: adding, removing: removing, stale: stale)
    }

    /// Rebuilds `table bridge <table>` in one batch: deleted if present, the skeleton, `ports`.
    /// Counters start from zero. An empty list still leaves the (empty) table.
    public func replaceGuards(_ ports: [GuardPort]) throws(NetfilterError) {
        for port in ports { try GuardTable.validate(port) }
        // Link-locals the ports still there (same tap, same MAC) claimed survive the rebuild:
        // their guests will not probe them again.
        let kept = Set(ports.filter(\.spoofing).map { GuardTable.key($0.tap, $0.mac.bytes) })
        var learned = (try? learnedElements { kept.contains(Array($0.prefix(24))) }) ?? []
        learned += GuardTable.taken(learned)
        let failures = try execute { batch in
            TableSkeleton.appendDeleteTable(to: &batch, table: table, family: .bridge)
            GuardTable.append(to: &batch, table: table)
            GuardTable.appendPorts(to: &batch, table: table, adding: true, ports, counters: true)
            for set in Set(learned.map(\.set)).sorted() {
                GuardTable.appendKeys(to: &batch, table: table, set: set, adding: true,
                                      learned.filter { $0.set == set }.map(\.key), objrefs: nil,
                                      operation: "add learned elements in set \(set) of table bridge \(table)")
            }
        }
        if !failures.isEmpty { throw BatchExchange.combine(failures) }
    }

    /// Elements of the sets the data path adds to (`GuardTable.learned`) whose key `wanted`;
    /// nothing when the table or a set is missing.
    func learnedElements(_ wanted: ([UInt8]) -> Bool) throws(NetfilterError) -> [(set: String, key: [UInt8])] {
        var out: [(set: String, key: [UInt8])] = []
        for set in GuardTable.learned {
            let present: [KernelElement]
            do { present = try dumpSet(set, family: .bridge) } catch where error.isMissingObject { return [] }
            out += present.map(\.key).filter(wanted).map { (set, $0) }
        }
        return out
    }

    /// Deletes `table bridge <table>`; no error when it is absent.
    public func deleteGuardTable() throws(NetfilterError) {
        let failures = try execute { TableSkeleton.appendDeleteTable(to: &$0, table: table, family: .bridge) }
        if !failures.isEmpty { throw BatchExchange.combine(failures) }
    }

    /// What is missing from `table bridge <table>` for `ports` to be guarded as given: nil when
    /// nothing; else one line ("table bridge virtport is missing", "chains or rules are missing",
    /// "elements of port vnet3 are missing"). Reads the rules and every set (one dump each).
    public func guardTableDamage(expecting ports: [GuardPort]) throws(NetfilterError) -> String? {
        guard try getTable(family: .bridge) else { return "table bridge \(table) is missing" }
        if try !guardSkeletonIsIntact() { return "table bridge \(table) has chains or rules missing" }
        var present: [String: Set<[UInt8]>] = [:]
        let wanted = ports.flatMap { port in GuardTable.elements(port).map { (port.tap, $0.set, $0.key) } }
            + ports.flatMap { port in GuardDropReason.allCases.map { (port.tap, $0.map, GuardTable.key(port.tap)) } }
        for set in Set(wanted.map(\.1)) {
            do { present[set] = Set(try dumpSet(set, family: .bridge).map(\.key)) } catch where error.isMissingObject {
                return "table bridge \(table) has set \(set) missing"
            }
        }
        let broken = Set(wanted.filter { !(present[$0.1]?.contains($0.2) ?? false) }.map(\.0)).sorted()
        if broken.isEmpty { return nil }
        return "table bridge \(table) has elements of port" + (broken.count == 1 ? " " : "s ") + broken.joined(separator: ", ")
            + " missing"
    }

    /// Whether every chain and rule of the bridge table is there (one rule dump; a missing table
    /// reads as not intact).
    public func guardSkeletonIsIntact() throws(NetfilterError) -> Bool {
        let rules = try dumpRules(nfproto: UInt16(NFPROTO_BRIDGE), table: table, chain: nil) ?? []
        var shapes = rules.map { Self.shape($0.message) }
        shapes.sort(by: Self.bytesBefore)
        return shapes == Self.shapes(of: GuardTable.chains)
    }

    /// Every guard drop counter of the table (NFT_MSG_GETOBJ dump), by port and reason. Empty when
    /// the table does not exist.
    public func guardCounters() throws(NetfilterError) -> [GuardCounter] {
        try counterObjects(table: table, family: .bridge).compactMap(Self.guardCounter)
            .sorted { ($0.tap, $0.reason.rawValue) < ($1.tap, $1.reason.rawValue) }
    }

    /// The counter `<reason>_<tap>` as a guard counter; nil for a name of another shape.
    private static func guardCounter(_ c: CounterObject) -> GuardCounter? {
        let name = c.name
        guard let cut = name.firstIndex(of: "_"), let reason = GuardDropReason(rawValue: String(name[..<cut])) else {
            return nil
        }
        return GuardCounter(tap: String(name[name.index(after: cut)...]), reason: reason, packets: c.packets, bytes: c.bytes)
    }
}
