public import VirtPortCore

/// One guarded bridge port in the journal: what `table bridge virtport` and the port's isolated
/// flag hold for it, so `stopped` (whose XML names no tap) and reconcile work from here.
public struct GuardRow: Sendable, Hashable {
    public enum State: String, Sendable { case adding, applied, removing }
    public var domain: DomainRef
    public var tap: String
    public var mac: MACAddress
    public var bridge: String?
    public var network: String?
    public var addresses: [GuardAddress]
    public var spoofing: Bool
    public var dhcpServer: Bool
    public var routerAdvert: Bool
    public var isolated: Bool
    /// virtport turned the port's isolated flag on (it was off): it turns it off again at stopped.
    public var isolatedByUs: Bool
    public var state: State

    public init(domain: DomainRef, plan g: GuardPlan, tap: String, isolatedByUs: Bool, state: State = .adding) {
        self.domain = domain
        self.tap = tap
        mac = g.mac
        bridge = g.bridge
        network = g.network
        addresses = g.addresses
        spoofing = g.spoofing
        dhcpServer = g.dhcpServer
        routerAdvert = g.routerAdvert
        isolated = g.isolated
        self.isolatedByUs = isolatedByUs
        self.state = state
    }

    /// "spoofing dhcp-block ra-block isolated" as history and `list` show the flags.
    public var flags: String {
        [spoofing ? "spoofing" : "no-spoofing", dhcpServer ? "dhcp-allow" : "dhcp-block",
         routerAdvert ? "ra-allow" : "ra-block"].joined(separator: " ") + (isolated ? " isolated" : "")
    }

    /// "192.168.122.10=dhcp-lease fd00::10=ip-attribute".
    public var addressText: String {
        addresses.map { "\($0.address)=\($0.source.rawValue)" }.joined(separator: " ")
    }

    /// Same guard, ignoring journal state and who set the isolated flag.
    public func sameGuard(_ o: GuardRow) -> Bool {
        var a = self, b = o
        a.state = .applied; b.state = .applied
        a.isolatedByUs = false; b.isolatedByUs = false
        return a == b
    }
}

/// One guard history event.
public struct GuardHistoryEvent: Sendable, Hashable {
    public var at: Int64
    public var action: String
    public var reason: String
    public var domain: DomainRef
    public var tap: String
    public var mac: String
    public var addresses: String
    public var flags: String
}

extension JournalDB {
    static let guardColumns = "domain_uuid, domain_name, tap, mac, bridge, network, addresses, spoofing, dhcp_server, "
        + "router_advert, isolated, isolated_by_us, state"

    /// The guard tables, created by the first guard written (`putGuards`), not by a schema
    /// migration: a journal that never held a guard stays at the schema the previous release
    /// reads, so an upgrade (or a downgrade, or the previous release's hooks beside the current
    /// agent) keeps working; one that did is still read by it (SQLite ignores tables it is not
    /// asked about). `addresses` is "ADDR=SOURCE ADDR=SOURCE…"; `isolated_by_us` says whether
    /// virtport set the port's isolated flag (and so clears it at stopped).
    static let guardTables = """
    CREATE TABLE IF NOT EXISTS guards (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        domain_uuid    TEXT    NOT NULL,
        domain_name    TEXT    NOT NULL,
        tap            TEXT    NOT NULL UNIQUE,
        mac            TEXT    NOT NULL,
        bridge         TEXT    NOT NULL DEFAULT '',
        network        TEXT    NOT NULL DEFAULT '',
        addresses      TEXT    NOT NULL DEFAULT '',
        spoofing       INTEGER NOT NULL,
        dhcp_server    INTEGER NOT NULL,
        router_advert  INTEGER NOT NULL,
        isolated       INTEGER NOT NULL,
        isolated_by_us INTEGER NOT NULL,
        state          TEXT    NOT NULL CHECK (state IN ('adding', 'applied', 'removing')),
        since          INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS guards_domain ON guards (domain_uuid);
    CREATE TABLE IF NOT EXISTS guard_history (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at          INTEGER NOT NULL,
        action      TEXT    NOT NULL CHECK (action IN ('on', 'off', 'change')),
        reason      TEXT    NOT NULL,
        domain_uuid TEXT    NOT NULL,
        domain_name TEXT    NOT NULL,
        tap         TEXT    NOT NULL,
        mac         TEXT    NOT NULL,
        addresses   TEXT    NOT NULL DEFAULT '',
        flags       TEXT    NOT NULL DEFAULT ''
    );
    CREATE INDEX IF NOT EXISTS guard_history_at ON guard_history (at);
    """

    /// Whether a guard was ever written (the tables exist).
    func hasGuardTables() throws(VirtPortError) -> Bool {
        conn.hasTable("guards")
    }

    /// Every guard row, or one domain's, by tap.
    public func activeGuards(domainUUID: String? = nil) throws(VirtPortError) -> [GuardRow] {
        try guardRows(where: domainUUID == nil ? "1" : "domain_uuid = ?", domainUUID.map { [.text($0)] } ?? [])
    }

    /// Other domains' rows on any of `taps`: stale ones (that domain stopped without a hook)
    /// when libvirt has given a tap to `uuid`'s domain.
    public func guardsHeldByOthers(taps: [String], except uuid: String) throws(VirtPortError) -> [GuardRow] {
        if taps.isEmpty { return [] }
        return try guardRows(where: "domain_uuid <> ? AND tap IN (\(taps.map { _ in "?" }.joined(separator: ", ")))",
                             [.text(uuid)] + taps.map { .text($0) })
    }

    private func guardRows(where condition: String, _ args: [SQLValue]) throws(VirtPortError) -> [GuardRow] {
        var out: [GuardRow] = []
        if try !hasGuardTables() { return out }
        try conn.query("SELECT \(Self.guardColumns) FROM guards WHERE \(condition) ORDER BY tap", args) { (r: Row) throws(VirtPortError) in
            guard let mac = MACAddress(r.text(3)), let state = GuardRow.State(rawValue: r.text(12)) else {
                throw .operational("database row guards tap=\(r.text(2)) has an invalid mac or state")
            }
            var addresses: [GuardAddress] = []
            for word in r.text(6).split(separator: " ") {
                let parts = word.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2, let a = IPAddress(parts[0]), let s = GuardAddressSource(rawValue: parts[1]) else {
                    throw .operational("database row guards tap=\(r.text(2)) has an invalid address '\(word)'")
                }
                addresses.append(GuardAddress(address: a, source: s))
            }
            let plan = GuardPlan(mac: mac, tap: r.text(2), bridge: r.text(4).isEmpty ? nil : r.text(4),
                                 network: r.text(5).isEmpty ? nil : r.text(5), spoofing: r.int(7) != 0,
                                 dhcpServer: r.int(8) != 0, routerAdvert: r.int(9) != 0, isolated: r.int(10) != 0,
                                 addresses: addresses)
            out.append(GuardRow(domain: DomainRef(name: r.text(1), uuid: r.text(0)), plan: plan, tap: r.text(2),
                                isolatedByUs: r.int(11) != 0, state: state))
        }
        return out
    }

    /// Writes `rows` (state as given) and removes the domain's other rows, with history: `on` for
    /// a new tap, `change` when its addresses or flags changed, `off` for a row that goes. One
    /// transaction.
    public func putGuards(domain: DomainRef, _ rows: [GuardRow], reason: String, now: Int64) throws(VirtPortError) {
        try conn.immediate { () throws(VirtPortError) in
            try conn.exec(Self.guardTables)
            let before = try activeGuards(domainUUID: domain.uuid)
            for row in rows {
                let old = before.first { $0.tap == row.tap }
                // A tap another domain held (it stopped without a hook) changes hands: that
                // domain's guard ends here, and its history says so (no `stopped` will).
                if old == nil {
                    for holder in try guardsHeldByOthers(taps: [row.tap], except: domain.uuid) {
                        try appendGuardHistory("off", holder, reason: "\(reason) (tap now guarded for domain '\(domain.name)')", at: now)
                    }
                }
                try conn.run("DELETE FROM guards WHERE tap = ?", [.text(row.tap)])
                try conn.run("INSERT INTO guards (\(Self.guardColumns), since) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                    .text(row.domain.uuid), .text(row.domain.name), .text(row.tap), .text(row.mac.description),
                    .text(row.bridge ?? ""), .text(row.network ?? ""), .text(row.addressText), .int(row.spoofing ? 1 : 0),
                    .int(row.dhcpServer ? 1 : 0), .int(row.routerAdvert ? 1 : 0), .int(row.isolated ? 1 : 0),
                    .int(row.isolatedByUs ? 1 : 0), .text(row.state.rawValue), .int(now),
                ])
                if old == nil || !(old!.sameGuard(row)) {
                    try appendGuardHistory(old == nil ? "on" : "change", row, reason: reason, at: now)
                }
            }
            for old in before where !rows.contains(where: { $0.tap == old.tap }) {
                try conn.run("DELETE FROM guards WHERE tap = ?", [.text(old.tap)])
                try appendGuardHistory("off", old, reason: reason, at: now)
            }
        }
    }

    /// Marks the domain's rows `state`.
    public func setGuardState(domainUUID: String, _ state: GuardRow.State) throws(VirtPortError) {
        if try !hasGuardTables() { return }
        try conn.run("UPDATE guards SET state = ? WHERE domain_uuid = ?", [.text(state.rawValue), .text(domainUUID)])
    }

    /// Removes the domain's rows with an `off` event each.
    public func deleteGuards(domainUUID: String, reason: String, now: Int64) throws(VirtPortError) {
        try conn.immediate { () throws(VirtPortError) in
            for old in try activeGuards(domainUUID: domainUUID) {
                try conn.run("DELETE FROM guards WHERE tap = ?", [.text(old.tap)])
                try appendGuardHistory("off", old, reason: reason, at: now)
            }
        }
    }

    /// Guard events, oldest first (`virtport history` merges them with the forwards').
    public func guardHistory(domain: String? = nil, since: Int64? = nil) throws(VirtPortError) -> [GuardHistoryEvent] {
        var out: [GuardHistoryEvent] = []
        if try !hasGuardTables() { return out }
        try conn.query("SELECT at, action, reason, domain_uuid, domain_name, tap, mac, addresses, flags FROM guard_history "
                           + "WHERE (? = '' OR domain_name = ? OR domain_uuid = ?) AND at >= ? ORDER BY at, id",
                       [.text(domain ?? ""), .text(domain ?? ""), .text(domain ?? ""), .int(since ?? Int64.min)]) { r in
            out.append(GuardHistoryEvent(at: r.int(0), action: r.text(1), reason: r.text(2),
                                         domain: DomainRef(name: r.text(4), uuid: r.text(3)), tap: r.text(5),
                                         mac: r.text(6), addresses: r.text(7), flags: r.text(8)))
        }
        return out
    }

    private func appendGuardHistory(_ action: String, _ row: GuardRow, reason: String, at: Int64) throws(VirtPortError) {
        try conn.run("INSERT INTO guard_history (at, action, reason, domain_uuid, domain_name, tap, mac, addresses, flags) "
                         + "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            .int(at), .text(action), .text(reason), .text(row.domain.uuid), .text(row.domain.name), .text(row.tap),
            .text(row.mac.description), .text(row.addressText), .text(row.flags),
        ])
    }
}
