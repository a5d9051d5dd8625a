public import VirtPortCore

/// One forward's source filter in the journal (`source=`): what `table inet <table>_src` holds
/// for it, so `stopped`, heal and reconcile work from here.
public struct SourceFilterRow: Sendable, Hashable {
    public enum State: String, Sendable { case adding, applied, removing }
    public var domain: DomainRef
    public var filter: SourceFilter
    public var state: State

    public init(domain: DomainRef, filter: SourceFilter, state: State = .adding) {
        self.domain = domain
        self.filter = filter
        self.state = state
    }
}

/// One source filter history event (`virtport history` shows them with the forwards').
public struct SourceFilterHistoryEvent: Sendable, Hashable {
    public var at: Int64
    /// `on` (the forward got a list), `change` (its list changed), `off` (the filter went).
    public var action: String
    public var reason: String
    public var domain: DomainRef
    public var proto: String
    public var hostAddress: String
    public var dev: String
    public var ports: String
    public var source: String
}

extension JournalDB {
    /// The source filter tables, created by the first filter written, not by a schema migration
    /// (README "Journal": the previous release's hooks keep reading a journal that has them).
    /// `prefixes` is `source=`'s text.
    static let sourceFilterTables = """
    CREATE TABLE IF NOT EXISTS source_filters (
        domain_uuid     TEXT    NOT NULL,
        domain_name     TEXT    NOT NULL,
        proto           TEXT    NOT NULL,
        host_addr       TEXT    NOT NULL DEFAULT '',
        dev             TEXT    NOT NULL DEFAULT '',
        host_port_start INTEGER NOT NULL,
        host_port_end   INTEGER NOT NULL,
        prefixes        TEXT    NOT NULL,
        state           TEXT    NOT NULL CHECK (state IN ('adding', 'applied', 'removing')),
        since           INTEGER NOT NULL,
        PRIMARY KEY (domain_uuid, proto, host_addr, dev, host_port_start, host_port_end)
    );
    CREATE TABLE IF NOT EXISTS source_history (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        at              INTEGER NOT NULL,
        action          TEXT    NOT NULL CHECK (action IN ('on', 'off', 'change')),
        reason          TEXT    NOT NULL,
        domain_uuid     TEXT    NOT NULL,
        domain_name     TEXT    NOT NULL,
        proto           TEXT    NOT NULL,
        host_addr       TEXT    NOT NULL DEFAULT '',
        dev             TEXT    NOT NULL DEFAULT '',
        host_port_start INTEGER NOT NULL,
        host_port_end   INTEGER NOT NULL,
        prefixes        TEXT    NOT NULL
    );
    CREATE INDEX IF NOT EXISTS source_history_at ON source_history (at);
    """

    static let sourceFilterColumns = "domain_uuid, domain_name, proto, host_addr, dev, host_port_start, host_port_end, prefixes, state"

    /// Whether a source filter was ever written (the tables exist).
    public func hasSourceFilterTables() throws(VirtPortError) -> Bool {
        conn.hasTable("source_filters")
    }

    /// Every filter row, or one domain's.
    public func sourceFilters(domainUUID: String? = nil) throws(VirtPortError) -> [SourceFilterRow] {
        var out: [SourceFilterRow] = []
        if try !hasSourceFilterTables() { return out }
        try conn.query("SELECT \(Self.sourceFilterColumns) FROM source_filters WHERE (? = '' OR domain_uuid = ?) "
                           + "ORDER BY domain_uuid, proto, host_port_start, host_addr, dev",
                       [.text(domainUUID ?? ""), .text(domainUUID ?? "")]) { (r: Row) throws(VirtPortError) in
            func bad(_ what: String) -> VirtPortError {
                .operational("database row source_filters of domain \(r.text(0)) \(r.text(2)) \(r.int(5)) has an invalid \(what)")
            }
            guard let proto = IPProto(rawValue: r.text(2)) else { throw bad("proto") }
            let addrText = r.text(3)
            let address = addrText.isEmpty ? nil : IPAddress(addrText)
            if !addrText.isEmpty && address == nil { throw bad("host_addr") }
            guard let start = UInt16(exactly: r.int(5)), let end = UInt16(exactly: r.int(6)), start <= end else { throw bad("port") }
            let prefixes: [IPPrefix]
            do { prefixes = try SourceList.parse(r.text(7), path: "journal") } catch { throw bad("prefixes") }
            guard let state = SourceFilterRow.State(rawValue: r.text(8)) else { throw bad("state") }
            let filter = SourceFilter(proto: proto, hostAddress: address, dev: r.text(4).isEmpty ? nil : r.text(4),
                                      ports: PortRange(start, end), prefixes: prefixes)
            out.append(SourceFilterRow(domain: DomainRef(name: r.text(1), uuid: r.text(0)), filter: filter, state: state))
        }
        return out
    }

    /// Makes the domain's rows `filters` (state as given) with history: `on` for a new forward
    /// filter, `change` when its list changed, `off` for a row that goes.
    /// - Returns: the domain's rows before.
    @discardableResult
    public func putSourceFilters(domain: DomainRef, _ filters: [SourceFilter], state: SourceFilterRow.State,
                                 reason: String, now: Int64) throws(VirtPortError) -> [SourceFilterRow] {
        if filters.isEmpty, try !hasSourceFilterTables() { return [] }
        // Joins the lifecycle's transaction, or is one of its own.
        return try conn.immediate { () throws(VirtPortError) -> [SourceFilterRow] in
            try conn.exec(Self.sourceFilterTables)
            let before = try sourceFilters(domainUUID: domain.uuid)
            let wanted = Set(filters.map(\.identity))
            for old in before where !wanted.contains(old.filter.identity) {
                try deleteSourceFilterRow(old)
                try appendSourceHistory("off", domain: old.domain, old.filter, reason: reason, at: now)
            }
            for f in filters {
                let old = before.first { $0.filter.identity == f.identity }
                if let old { try deleteSourceFilterRow(old) }
                try conn.run("INSERT INTO source_filters (\(Self.sourceFilterColumns), since) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [.text(domain.uuid), .text(domain.name)] + Self.forwardKey(f)
                                 + [.text(f.text), .text(state.rawValue), .int(now)])
                if old == nil || old!.filter != f {
                    try appendSourceHistory(old == nil ? "on" : "change", domain: domain, f, reason: reason, at: now)
                }
            }
            return before
        }
    }

    /// Marks the domain's rows `state`.
    public func setSourceFilterState(domainUUID: String, _ state: SourceFilterRow.State) throws(VirtPortError) {
        if try !hasSourceFilterTables() { return }
        try conn.run("UPDATE source_filters SET state = ? WHERE domain_uuid = ?", [.text(state.rawValue), .text(domainUUID)])
    }

    private func deleteSourceFilterRow(_ row: SourceFilterRow) throws(VirtPortError) {
        try conn.run("DELETE FROM source_filters WHERE domain_uuid = ? AND proto = ? AND host_addr = ? AND dev = ? "
                         + "AND host_port_start = ? AND host_port_end = ?", [.text(row.domain.uuid)] + Self.forwardKey(row.filter))
    }

    /// The forward's key columns: proto, host_addr, dev, host_port_start, host_port_end.
    private static func forwardKey(_ f: SourceFilter) -> [SQLValue] {
        [.text(f.proto.rawValue), .text(f.hostAddress.map { "\($0)" } ?? ""), .text(f.dev ?? ""),
         .int(Int64(f.ports.start)), .int(Int64(f.ports.end))]
    }

    /// Source filter events, oldest first.
    public func sourceFilterHistory(domain: String? = nil, since: Int64? = nil) throws(VirtPortError) -> [SourceFilterHistoryEvent] {
        var out: [SourceFilterHistoryEvent] = []
        if try !hasSourceFilterTables() { return out }
        try conn.query("SELECT at, action, reason, domain_uuid, domain_name, proto, host_addr, dev, host_port_start, "
                           + "host_port_end, prefixes FROM source_history "
                           + "WHERE (? = '' OR domain_name = ? OR domain_uuid = ?) AND at >= ? ORDER BY at, id",
                       [.text(domain ?? ""), .text(domain ?? ""), .text(domain ?? ""), .int(since ?? Int64.min)]) { r in
            let ports = PortRange(UInt16(clamping: r.int(8)), UInt16(clamping: r.int(9)))
            out.append(SourceFilterHistoryEvent(at: r.int(0), action: r.text(1), reason: r.text(2),
                                                domain: DomainRef(name: r.text(4), uuid: r.text(3)), proto: r.text(5),
                                                hostAddress: r.text(6), dev: r.text(7), ports: "\(ports)", source: r.text(10)))
        }
        return out
    }

    private func appendSourceHistory(_ action: String, domain: DomainRef, _ f: SourceFilter, reason: String,
                                     at: Int64) throws(VirtPortError) {
        try conn.run("INSERT INTO source_history (at, action, reason, domain_uuid, domain_name, proto, host_addr, dev, "
                         + "host_port_start, host_port_end, prefixes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     [.int(at), .text(action), .text(reason), .text(domain.uuid), .text(domain.name)] + Self.forwardKey(f)
                         + [.text(f.text)])
    }
}
