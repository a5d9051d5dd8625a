public import VirtPortCore

extension JournalDB {
    /// History events matching `filter`, oldest first.
    ///
    /// With `filter.at`, returns the "add" event of every mapping active at that instant: added at
    /// or before it, with no later "remove" of the same domain + mapping at or before it.
    public func history(_ filter: HistoryFilter) throws(VirtPortError) -> [HistoryEvent] {
        var conditions: [String] = []
        var args: [SQLValue] = []
        if let d = filter.domain {
            conditions.append("(h.domain_uuid = ? OR h.domain_name = ?)")
            args += [.text(d), .text(d)]
        }
        if let p = filter.port {
            conditions.append("h.host_port_start <= ? AND h.host_port_end >= ?")
            args += [.int(Int64(p)), .int(Int64(p))]
        }
        if let s = filter.since {
            conditions.append("h.at >= ?")
            args.append(.int(s))
        }
        if let u = filter.until {
            conditions.append("h.at <= ?")
            args.append(.int(u))
        }
        if let t = filter.at {
            conditions.append("h.action = 'add' AND h.at <= ? AND NOT EXISTS (SELECT 1 FROM history r "
                + "WHERE r.action = 'remove' AND r.id > h.id AND r.at <= ? AND \(Schema.sameIdentity("r", "h")))")
            args += [.int(t), .int(t)]
        }
        let whereClause = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        let columns = "h.id, h.at, h.action, h.reason, h.domain_uuid, h.domain_name, "
            + Schema.columnList("h.")
        var out: [HistoryEvent] = []
        try conn.query("SELECT \(columns) FROM history h \(whereClause) ORDER BY h.at, h.id", args) {
            r throws(VirtPortError) in
            let id = r.int(0)
            // The schema's CHECK admits only these two.
            let action = HistoryAction(rawValue: r.text(2)) ?? .remove
            out.append(HistoryEvent(id: id, at: r.int(1), action: action, reason: r.text(3),
                                    domain: DomainRef(name: r.text(5), uuid: r.text(4)),
                                    mapping: try Schema.decode(r, from: 6, table: "history", id: id)))
        }
        return out
    }

    /// Retention: deletes events before `olderThan` (µs) that no longer matter — every "remove" and
    /// every "add" whose mapping was removed before then. The "add" of a mapping still active (or
    /// removed later) is kept, so `HistoryFilter.at` stays right for any instant. Returns the number
    /// of events deleted.
    @discardableResult
    public func pruneHistory(olderThan cutoff: Int64) throws(VirtPortError) -> Int {
        try conn.immediate { () throws(VirtPortError) -> Int in
            // Adds first: they are found through their removes.
            let adds = try conn.run(
                "DELETE FROM history WHERE action = 'add' AND at < ? AND EXISTS (SELECT 1 FROM history r "
                    + "WHERE r.action = 'remove' AND r.id > history.id AND r.at < ? "
                    + "AND \(Schema.sameIdentity("r", "history")))",
                [.int(cutoff), .int(cutoff)])
            let removes = try conn.run("DELETE FROM history WHERE action = 'remove' AND at < ?", [.int(cutoff)])
            return adds + removes
        }
    }
}
