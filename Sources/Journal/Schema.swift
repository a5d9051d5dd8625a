import VirtPortCore

/// The schema, as an append-only list of migrations: migration `i` takes `PRAGMA user_version`
/// from `i` to `i + 1`. Never edit a shipped entry; append a new one.
///
/// Columns mirror `Mapping` one to one. Optional text fields are stored as '' rather than NULL so
/// that identity comparisons are plain `=` (host_addr '' = any local address, dev '' = any
/// interface, guest_addr '' = pending, mac/network '' = unknown).
enum Schema {
    static let migrations: [String] = [
        // 1: active mappings + append-only history.
        """
        CREATE TABLE mappings (
            id               INTEGER PRIMARY KEY AUTOINCREMENT,
            domain_uuid      TEXT    NOT NULL,
            domain_name      TEXT    NOT NULL,
            state            TEXT    NOT NULL CHECK (state IN ('adding', 'applied', 'pending', 'removing')),
            since            INTEGER NOT NULL,
            proto            TEXT    NOT NULL,
            host_addr        TEXT    NOT NULL DEFAULT '',
            dev              TEXT    NOT NULL DEFAULT '',
            host_port_start  INTEGER NOT NULL CHECK (host_port_start BETWEEN 0 AND 65535),
            host_port_end    INTEGER NOT NULL CHECK (host_port_end BETWEEN host_port_start AND 65535),
            guest_addr       TEXT    NOT NULL DEFAULT '',
            guest_port_start INTEGER NOT NULL CHECK (guest_port_start BETWEEN 0 AND 65535),
            mac              TEXT    NOT NULL DEFAULT '',
            network          TEXT    NOT NULL DEFAULT '',
            guest_source     TEXT    NOT NULL
        );
        CREATE INDEX mappings_port ON mappings (proto, host_port_start);
        CREATE INDEX mappings_domain ON mappings (domain_uuid);
        CREATE UNIQUE INDEX mappings_identity ON mappings (
            domain_uuid, proto, host_port_start, host_port_end, host_addr, dev,
            guest_addr, guest_port_start, mac, network, guest_source);

        CREATE TABLE history (
            id               INTEGER PRIMARY KEY AUTOINCREMENT,
            at               INTEGER NOT NULL,
            action           TEXT    NOT NULL CHECK (action IN ('add', 'remove')),
            reason           TEXT    NOT NULL,
            domain_uuid      TEXT    NOT NULL,
            domain_name      TEXT    NOT NULL,
            proto            TEXT    NOT NULL,
            host_addr        TEXT    NOT NULL DEFAULT '',
            dev              TEXT    NOT NULL DEFAULT '',
            host_port_start  INTEGER NOT NULL,
            host_port_end    INTEGER NOT NULL,
            guest_addr       TEXT    NOT NULL DEFAULT '',
            guest_port_start INTEGER NOT NULL,
            mac              TEXT    NOT NULL DEFAULT '',
            network          TEXT    NOT NULL DEFAULT '',
            guest_source     TEXT    NOT NULL
        );
        CREATE INDEX history_at ON history (at);
        CREATE INDEX history_domain ON history (domain_uuid, host_port_start);
        CREATE INDEX history_domain_name ON history (domain_name);
        CREATE INDEX history_port ON history (host_port_start);
        """,
        // 2: the hook's queries stay O(matching rows) with 10,000 mappings: the conflict check
        // reads the port range, protocol and owner from the index alone, and "does this network
        // still have forwards" is one index probe.
        """
        DROP INDEX mappings_port;
        CREATE INDEX mappings_port ON mappings (proto, host_port_start, host_port_end, domain_uuid);
        CREATE INDEX mappings_network ON mappings (network, state);
        """,
        // 3: the widest held range in O(log n), which bounds the conflict check's index scan.
        """
        CREATE INDEX mappings_span ON mappings ((host_port_end - host_port_start));
        """,
        // 4: one index less to write per row: every lookup by domain uses mappings_identity,
        // whose first column is domain_uuid.
        """
        DROP INDEX mappings_domain;
        """,
    ]

    /// Indexes that come without a schema version, created (if missing) by every read-write open:
    /// a journal keeps the version the previous release reads, so that release's hooks keep working
    /// beside this release's agent during an upgrade (the same reason the guard tables come with the
    /// first guard). An index is invisible to older code.
    ///
    /// history_released: "was this port released in the last 3 minutes" (a forward's start, per
    /// mapping) reads only the recent removals of that protocol, from the index alone. Without it
    /// SQLite walked history_port over every row below the port: O(history), ~10,000 instructions
    /// per history row at every start (issue 24: 13 M -> 38 M instructions after 120 cycles).
    static let versionlessIndexes = """
        CREATE INDEX IF NOT EXISTS history_released ON history (action, proto, at, host_port_start, host_port_end);
        """

    /// The mapping columns, in the order `bind(_:)` produces and `decode(_:from:)` reads them.
    static let mappingColumnNames = ["proto", "host_addr", "dev", "host_port_start", "host_port_end", "guest_addr",
                                     "guest_port_start", "mac", "network", "guest_source"]

    /// `mappingColumnNames` as a column list, each name prefixed by `qualifier`.
    ///
    /// These SQL fragments are built with plain loops over `[String]`: a hook is a fresh process, and
    /// `split`/`map`/`joined` here made the Swift runtime instantiate and check the metadata of
    /// half a dozen generic types (~1 M instructions, a tenth of a hook `start`; measured with callgrind).
    static func columnList(_ qualifier: String = "") -> String {
        var s = ""
        for c in mappingColumnNames {
            if !s.isEmpty { s += ", " }
            s += qualifier + c
        }
        return s
    }

    static let mappingColumns = columnList()

    /// `a.col = b.col` for every mapping column plus the domain: the identity of a mapping.
    static func sameIdentity(_ a: String, _ b: String) -> String {
        var s = a + ".domain_uuid = " + b + ".domain_uuid"
        for c in mappingColumnNames { s += " AND " + a + "." + c + " = " + b + "." + c }
        return s
    }

    /// `domain_uuid = ? AND proto = ? AND …`: binds `[uuid] + bind(mapping)`.
    static let identityWhere: String = {
        var s = "domain_uuid = ?"
        for c in mappingColumnNames { s += " AND " + c + " = ?" }
        return s
    }()

    /// The mapping as column values, in `mappingColumns` order.
    static func bind(_ m: Mapping) -> [SQLValue] {
        [.text(m.proto.rawValue),
         .text(m.hostAddress.map { $0.description } ?? ""),
         .text(m.dev ?? ""),
         .int(Int64(m.hostPorts.start)),
         .int(Int64(m.hostPorts.end)),
         .text(m.guestAddress.map { $0.description } ?? ""),
         .int(Int64(m.guestPortStart)),
         .text(m.mac.map { $0.description } ?? ""),
         .text(m.network ?? ""),
         .text(m.guestSource.rawValue)]
    }

    /// Reads the ten `mappingColumns` starting at column `first`.
    static func decode(_ r: Row, from first: Int32, table: String, id: Int64) throws(VirtPortError) -> Mapping {
        func bad(_ column: String, _ value: String) -> VirtPortError {
            .operational("database row \(table).id=\(id) has an invalid \(column) '\(value)'")
        }
        func port(_ column: Int32, _ name: String) throws(VirtPortError) -> UInt16 {
            let v = r.int(column)
            guard let p = UInt16(exactly: v) else { throw bad(name, "\(v)") }
            return p
        }
        func address(_ column: Int32, _ name: String) throws(VirtPortError) -> IPAddress? {
            let s = r.text(column)
            if s.isEmpty { return nil }
            guard let a = IPAddress(s) else { throw bad(name, s) }
            return a
        }
        let protoText = r.text(first)
        guard let proto = IPProto(rawValue: protoText) else { throw bad("proto", protoText) }
        let hostAddress = try address(first + 1, "host_addr")
        let dev = r.text(first + 2)
        let start = try port(first + 3, "host_port_start")
        let end = try port(first + 4, "host_port_end")
        guard start <= end else { throw bad("host_port_end", "\(end)") }
        let guestAddress = try address(first + 5, "guest_addr")
        let guestStart = try port(first + 6, "guest_port_start")
        let macText = r.text(first + 7)
        var mac: MACAddress?
        if !macText.isEmpty {
            guard let m = MACAddress(macText) else { throw bad("mac", macText) }
            mac = m
        }
        let network = r.text(first + 8)
        let sourceText = r.text(first + 9)
        guard let source = GuestSource(rawValue: sourceText) else { throw bad("guest_source", sourceText) }
        return Mapping(proto: proto, hostAddress: hostAddress, dev: dev.isEmpty ? nil : dev,
                       hostPorts: PortRange(start, end), guestAddress: guestAddress, guestPortStart: guestStart,
                       mac: mac, network: network.isEmpty ? nil : network, guestSource: source)
    }

    /// Normalises a mapping to what the database stores, so identity is the stored identity
    /// ("" dev/network become nil, like the columns).
    static func normalised(_ m: Mapping) -> Mapping {
        var m = m
        if m.dev == "" { m.dev = nil }
        if m.network == "" { m.network = nil }
        return m
    }
}
