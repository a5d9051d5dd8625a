import VirtPortCore

/// One rule kind's share of a netlink batch that several kinds send together (Engine's
/// `DomainLifecycle`: a domain's start is one batch for its forwards and its port guards, an
/// nf_tables transaction may span families). Built ahead, with any read it needs done then;
/// appended to the shared batch as is. A part is never retried alone: when the kernel refuses the
/// shared batch nothing of it applied, and each kind falls back to its own call and its recovery.
///
/// A new kind's messages live in its own file of this module (they need `NetlinkBatch`'s
/// message builders), conforming to this protocol.
public protocol BatchPart {
    /// Appends the part's messages (the table names are the session's).
    func append(to batch: inout NetlinkBatch, session: NetfilterSession)
    /// One line about what the part changes: logs and the recording fake.
    var summary: String { get }
}

/// Forward map elements and hairpin subnets of `table inet <table>` (`NetfilterSession.apply`'s
/// change, without its retries).
struct ForwardBatchPart: BatchPart {
    let change: Change
    func append(to batch: inout NetlinkBatch, session: NetfilterSession) {
        change.append(to: &batch, table: session.table)
    }
    var summary: String {
        "inet: +\(change.adding.count) -\(change.removing.count) elements, "
            + "+\(change.hairpinAdding.count) -\(change.hairpinRemoving.count) hairpin"
    }
}

extension NetfilterSession {
    /// Sends `parts` in one atomic batch, or nothing when `parts` is empty. No retry: on failure
    /// nothing of the batch applied and the error names the first failing object.
    public func send(_ parts: [any BatchPart]) throws(NetfilterError) {
        if parts.isEmpty { return }
        let failures = try execute { batch in
            for part in parts { part.append(to: &batch, session: self) }
        }
        if !failures.isEmpty { throw BatchExchange.combine(failures) }
    }

    /// `apply`'s change as a part of a shared batch (the table must exist: no skeleton, no retry).
    /// Nil when there is nothing to change.
    public func forwardPart(adding: [ForwardElement], removing: [ForwardElement], hairpinAdding: [Subnet],
                            hairpinRemoving: [Subnet]) throws(NetfilterError) -> (any BatchPart)? {
        let change = try Change(adding: adding, removing: removing, hairpinAdding: hairpinAdding,
                                hairpinRemoving: hairpinRemoving)
        return change.isEmpty ? nil : ForwardBatchPart(change: change)
    }
}
