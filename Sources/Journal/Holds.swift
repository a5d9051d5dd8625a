public import VirtPortCore

/// Fail-closed across rule kinds (README "Development: adding a rule kind"): an element of one
/// kind (a forward) that must not be in the kernel because the rules of another kind it depends
/// on (its source filter) could not be put in place. The held element keeps its intent row (a
/// forward stays `adding`); the hold says why, until the guarding kind has its rules in place.
public struct Hold: Sendable {
    /// The held element's kind (`RuleKind.name`: `forwards`).
    public var kind: String
    public var domain: DomainRef
    /// The element's key in the held kind's terms (a forward: `Mapping.hostKey`).
    public var key: String
    /// The element for people: `tcp *:3389`.
    public var what: String
    /// The kind whose rules are missing (`RuleKind.name`: `source filters`).
    public var by: String
    /// Why they are missing: the kernel's refusal.
    public var cause: String
    /// µs since the epoch.
    public var since: Int64

    public init(kind: String, domain: DomainRef, key: String, what: String, by: String, cause: String, since: Int64 = 0) {
        self.kind = kind
        self.domain = domain
        self.key = key
        self.what = what
        self.by = by
        self.cause = cause
        self.since = since
    }

    /// The line the system log, `list` and `doctor` show.
    public var line: String {
        "domain '\(Quoted.message(domain.name))' \(what) not applied: \(by) not in place (\(cause))"
    }
}

extension JournalDB {
    /// Created by the first hold, not by a schema migration (like the source filter tables: the
    /// previous release's hooks keep working on a journal that has it).
    static let holdTable = """
    CREATE TABLE IF NOT EXISTS holds (
        kind        TEXT    NOT NULL,
        domain_uuid TEXT    NOT NULL,
        domain_name TEXT    NOT NULL,
        key         TEXT    NOT NULL,
        what        TEXT    NOT NULL,
        by_kind     TEXT    NOT NULL,
        cause       TEXT    NOT NULL,
        since       INTEGER NOT NULL,
        PRIMARY KEY (kind, domain_uuid, key)
    );
    """

    /// Every hold, or those on elements of `kind`.
    public func holds(kind: String? = nil) throws(VirtPortError) -> [Hold] {
        var out: [Hold] = []
        if !conn.hasTable("holds") { return out }
        try conn.query("SELECT kind, domain_uuid, domain_name, key, what, by_kind, cause, since FROM holds "
                           + "WHERE (? = '' OR kind = ?) ORDER BY domain_name, what",
                       [.text(kind ?? ""), .text(kind ?? "")]) { r in
            out.append(Hold(kind: r.text(0), domain: DomainRef(name: r.text(2), uuid: r.text(1)), key: r.text(3),
                            what: r.text(4), by: r.text(5), cause: r.text(6), since: r.int(7)))
        }
        return out
    }

    /// Writes `holds`; a hold on an element already held takes the new cause and keeps its `since`
    /// (held since the first failure).
    public func putHolds(_ holds: [Hold], now: Int64) throws(VirtPortError) {
        if holds.isEmpty { return }
        try conn.immediate { () throws(VirtPortError) in
            try conn.exec(Self.holdTable)
            for h in holds {
                try conn.run("INSERT INTO holds (kind, domain_uuid, domain_name, key, what, by_kind, cause, since) "
                                 + "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, domain_uuid, key) DO UPDATE SET "
                                 + "domain_name = excluded.domain_name, what = excluded.what, by_kind = excluded.by_kind, "
                                 + "cause = excluded.cause",
                             [.text(h.kind), .text(h.domain.uuid), .text(h.domain.name), .text(h.key), .text(h.what),
                              .text(h.by), .text(h.cause), .int(h.since == 0 ? now : h.since)])
            }
        }
    }

    /// Drops the holds `by` placed (one domain's, or all): its rules are in place.
    /// - Returns: the holds dropped.
    @discardableResult
    public func clearHolds(by: String, domainUUID: String? = nil) throws(VirtPortError) -> [Hold] {
        if !conn.hasTable("holds") { return [] }
        let gone = try holds().filter { $0.by == by && (domainUUID == nil || $0.domain.uuid == domainUUID) }
        if gone.isEmpty { return [] }
        try conn.run("DELETE FROM holds WHERE by_kind = ? AND (? = '' OR domain_uuid = ?)",
                     [.text(by), .text(domainUUID ?? ""), .text(domainUUID ?? "")])
        return gone
    }

    /// Drops the holds on a domain's elements of `kind` that are not in `keys` (the element went).
    public func pruneHolds(kind: String, domainUUID: String, keeping keys: Set<String>) throws(VirtPortError) {
        if !conn.hasTable("holds") { return }
        for h in try holds(kind: kind) where h.domain.uuid == domainUUID && !keys.contains(h.key) {
            try conn.run("DELETE FROM holds WHERE kind = ? AND domain_uuid = ? AND key = ?",
                         [.text(kind), .text(domainUUID), .text(h.key)])
        }
    }
}
