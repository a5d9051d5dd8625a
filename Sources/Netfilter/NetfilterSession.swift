#if canImport(Glibc)
import Glibc
#endif
import VirtPortCore

/// virtport's connection to nf_tables: programs and reads `table inet <table>` over one netlink
/// socket, every change one atomic batch.
///
/// Wraps one libmnl socket: use it from one thread at a time (it is deliberately not Sendable).
/// Every call needs CAP_NET_ADMIN in the socket's network namespace.
public final class NetfilterSession {
    /// The nftables table name (family inet).
    public let table: String
    let transport: any NetlinkTransport
    let scratch = ScratchBuffer()
    var sequence: UInt32

    /// Opens a netlink socket to nf_tables.
    /// - Parameters:
    ///   - table: name of virtport's table in family inet.
    ///   - netnsPath: a network namespace file (e.g. `/run/netns/NAME`) to open the socket in;
    ///     nil: the caller's own. Only the socket lives there; the calling thread returns at once.
    /// Wraps `mnl_socket_open2(NETLINK_NETFILTER)` + `mnl_socket_bind`; `setns(2)` with `netnsPath`
    /// (CAP_SYS_ADMIN).
    public convenience init(table: String = "virtport", netnsPath: String? = nil) throws(NetfilterError) {
        let transport = try MnlSocket(netnsPath: netnsPath)
        try self.init(table: table, transport: transport, firstSequence: UInt32(truncatingIfNeeded: time(nil)))
    }

    /// A session over another transport: `RecordingTransport` in unit tests.
    public init(table: String, transport: any NetlinkTransport, firstSequence: UInt32) throws(NetfilterError) {
        // NFT_NAME_MAXLEN is 256 including the NUL.
        guard !table.isEmpty, table.utf8.count < 256, !table.utf8.contains(0) else {
            throw NetfilterError(errno: EINVAL, operation: "use table name \"\(table)\"",
                                 detail: "must be 1-255 bytes")
        }
        self.table = table
        self.transport = transport
        self.sequence = firstSequence
    }

    /// Whether `table inet <table>` exists: one NFT_MSG_GETTABLE round trip.
    public func tableExists() throws(NetfilterError) -> Bool {
        try getTable()
    }

    /// Changes the forwards in one atomic batch.
    ///
    /// Creates the table skeleton if it is absent, in the same batch (NEWTABLE with NLM_F_EXCL:
    /// when two first callers race, the loser gets EEXIST and retries without the skeleton, so
    /// the rules exist once). Deletes `removing` first, then adds `adding`, so one call can move a
    /// host port to a new guest. Adding an element that is already there is harmless; adding a key
    /// that is there with other data fails with EEXIST naming the element. Removing an element
    /// that is already gone is not an error: on ENOENT the maps concerned are read back and the
    /// batch is sent once more with only the elements still present (and only if they still
    /// point where `removing` says).
    ///
    /// The happy path is a single round trip: no table check, no dump.
    /// - Returns: true when this call created the table (it held nothing before: a caller that keeps
    ///   a journal should add what else belongs there).
    /// - Throws: `NetfilterError` naming the first failing object; `others` lists the rest.
    @discardableResult
    public func apply(adding: [ForwardElement], removing: [ForwardElement], hairpinAdding: [Subnet] = [],
                      hairpinRemoving: [Subnet] = []) throws(NetfilterError) -> Bool {
        var change = try Change(adding: adding, removing: removing, hairpinAdding: hairpinAdding,
                                hairpinRemoving: hairpinRemoving)
        var skeleton = false
        if change.isEmpty {
            // Nothing to change: just make sure the table is there.
            if try getTable() { return false }
            skeleton = true
        }
        var checkedTable = false
        var filteredRemovals = false
        while true {
            let failures = try execute { batch in
                if skeleton { TableSkeleton.append(to: &batch, table: table) }
                change.append(to: &batch, table: table)
            }
            if failures.isEmpty { return skeleton }

            if skeleton, failures.contains(where: { if case .createTable = $0.operation { $0.error.isExists } else { false } }) {
                skeleton = false  // someone else created the table first: theirs stays, ours goes
                continue
            }
            guard failures.allSatisfy({ $0.error.isMissingObject }) else { throw BatchExchange.combine(failures) }
            if !skeleton, !checkedTable {
                checkedTable = true
                if try !getTable() {
                    // No table: nothing to remove; create it if there is anything to add.
                    change.removing = []
                    change.hairpinRemoving = []
                    if change.isEmpty { return false }
                    skeleton = true
                    continue
                }
                // The table exists now: another process created it between our batch and this
                // check (its maps appear in the same transaction). Send the change once more.
                if !failures.allSatisfy(\.operation.isRemoval) { continue }
            }
            if !filteredRemovals, failures.allSatisfy(\.operation.isRemoval) {
                filteredRemovals = true
                try change.keepPresentRemovals(in: self)
                if change.isEmpty { return false }
                continue
            }
            throw BatchExchange.combine(failures)
        }
    }

    /// Every element of every `fwd*` map (NFT_MSG_GETSETELEM dumps), in map order.
    /// Elements virtport cannot decode (a protocol it does not know) are skipped.
    /// - Throws: `NetfilterError.missingTable` when the table does not exist.
    public func listElements() throws(NetfilterError) -> [ForwardElement] {
        var out: [ForwardElement] = []
        for map in ForwardMap.all { out += try forwardElements(of: map) }
        return out
    }

    /// The prefixes in the `hairpin4` and `hairpin6` sets.
    /// - Throws: `NetfilterError.missingTable` when the table does not exist.
    public func listHairpin() throws(NetfilterError) -> [Subnet] {
        var out: [Subnet] = []
        for set in HairpinSet.all { out += try hairpinSubnets(of: set) }
        return out
    }

    /// Deletes the table with everything in it; no error when it is absent. One batch.
    public func deleteTable() throws(NetfilterError) {
        let failures = try execute { TableSkeleton.appendDeleteTable(to: &$0, table: table) }
        if !failures.isEmpty { throw BatchExchange.combine(failures) }
    }

    /// Rebuilds the table from scratch in one batch: delete it if present, create the skeleton,
    /// add `elements` and `hairpin`. For repair and reconcile: whatever someone flushed or deleted,
    /// the result is exactly this state, and packets never see a half-built table. `others`: what
    /// other rule kinds keep in the same table (their full state), in the same batch.
    public func replaceAll(elements: [ForwardElement], hairpin: [Subnet], others: [any BatchPart] = []) throws(NetfilterError) {
        let change = try Change(adding: elements, removing: [], hairpinAdding: hairpin, hairpinRemoving: [])
        // The kernel's record of translated connections survives the rebuild (README "Connection
        // tracking"): without it a later stop could not find them by tuple. Best effort.
        var flows: [(FlowSet, [[UInt8]])] = []
        for set in FlowSet.all {
            if let recorded = try? dumpSet(set.name), !recorded.isEmpty {
                flows.append((set, recorded.map(\.key).filter { $0.count == set.keyLength }))
            }
        }
        let failures = try execute { batch in
            TableSkeleton.appendDeleteTable(to: &batch, table: table)
            TableSkeleton.append(to: &batch, table: table)
            change.append(to: &batch, table: table)
            for part in others { part.append(to: &batch, session: self) }
            for (set, keys) in flows {
                let perMessage = max(1, NetlinkBatch.messageBudget / (28 + set.keyLength))
                var start = 0
                while start < keys.count {
                    let chunk = keys[start..<min(start + perMessage, keys.count)]
                    ElementMessages.append(to: &batch, table: table, set: set.name, adding: true,
                                           chunk.map { (key: $0, data: nil, flags: UInt32(0)) },
                                           operation: .object("add elements to set \(set.name)"))
                    start += perMessage
                }
            }
        }
        if !failures.isEmpty { throw BatchExchange.combine(failures) }
    }

    /// Builds one batch with `build`, sends it, and returns its failures (empty: committed).
    func execute(_ build: (inout NetlinkBatch) -> Void) throws(NetfilterError) -> [BatchFailure] {
        var batch = NetlinkBatch(firstSequence: sequence, scratch: scratch)
        build(&batch)
        defer { sequence = batch.nextSequence }
        return try BatchExchange.run(&batch, on: transport)
    }

    /// A long-lived process (the agent) keeps this session's socket open for good: it never pays
    /// the socket's slow release, so `closeInBackground` does nothing.
    public var keepsSocketOpen = false

    /// Call last in a short-lived process whose batches deleted something: the socket's slow
    /// final release (an RCU grace period, ~10 ms) then happens in a detached child after this
    /// process exits, instead of in this process's exit. The session stays usable. Nothing when
    /// `keepsSocketOpen` (the child would wait for the long-lived process to exit).
    public func closeInBackground() {
        if keepsSocketOpen { return }
        transport.closeInBackground()
    }

    /// Takes `count` sequence numbers.
    func takeSequence(_ count: UInt32 = 1) -> UInt32 {
        let first = sequence
        sequence &+= count
        return first
    }
}

@available(*, unavailable)
extension NetfilterSession: Sendable {}
