// The journal: every port mapping virtport has put (or is about to put) into the kernel, and an
// append-only history of every mapping that ever went live.
//
// # Protocol
//
// Every row of `mappings` has a state:
//
// - `adding`   intent written, kernel not yet confirmed;
// - `applied`  in the kernel;
// - `pending`  no guest address yet, so not in the kernel (the agent completes it later);
// - `removing` intent to remove written, kernel not yet confirmed.
//
// A hook that installs a domain's forwards does, in this order:
//
// 1. plan (pure, in VirtPortCore);
// 2. `beginApply`: one `BEGIN IMMEDIATE` transaction that checks the plan against every *other*
//    domain's rows (any state) and writes the intent: new mappings become `adding` (or `pending`),
//    mappings no longer wanted become `removing`. Nothing is written when there is a conflict;
// 3. one netlink batch: add `delta.adding` (those with a guest address), delete `delta.removing`
//    (those whose prior state was not `pending`);
// 4. `commitApply`: `adding` → `applied`, `removing` rows deleted, history written.
//
// Removing a domain is the same with `beginRemoveAll` / `commitRemove`.
//
// A crash between any two steps leaves `adding`/`removing` rows behind. They still count for
// conflicts (a port someone may be holding is never handed to another domain), and a later
// `beginApply` of the same domain, or `virtport reconcile` (with `setState`, `deleteRows`,
// `record`), finishes or rolls them back after looking at the kernel. Because the kernel state of
// such rows is unknown, adds must not use NLM_F_EXCL and deletes must tolerate ENOENT.
//
// History is written only when the kernel is confirmed, and for each domain + mapping identity
// the events alternate strictly `add`, `remove`, `add`, … (an event that would repeat the last
// one is skipped). That is what makes "active at instant T" (`HistoryFilter.at`) a simple query,
// and it keeps history correct when a crashed intent is retried.
//
// Concurrency: hooks of different domains run at the same time, each with its own connection.
// The database is in WAL mode, so readers never wait; writers serialise on `BEGIN IMMEDIATE`
// with a 10 s busy timeout, and every write transaction is a few milliseconds long. The conflict
// check and the intent are in the same write transaction, so of two domains racing for one port
// exactly one wins.

#if canImport(Glibc)
import Glibc
#endif
import CSQLite
public import POSIX
public import VirtPortCore

/// The SQLite journal. Wraps one `sqlite3*` connection: use it from one thread (it is not
/// Sendable); open one per thread or process.
public final class JournalDB {
    /// `PRAGMA user_version` this code writes; a database with a higher one is refused.
    public static let schemaVersion = Int32(Schema.migrations.count)

    /// How long a writer waits for another connection's write transaction.
    static let busyTimeoutMs: Int32 = 10_000

    public let path: String
    public let readOnly: Bool
    let conn: SQLiteConnection

    /// Opens (read-write: creating, with its parent directory, and migrating) the journal at `path`.
    ///
    /// Read-write: the parent directory is created with mode 0700 and the file with mode 0600
    /// (whatever the umask); the database is put in WAL mode with `synchronous = NORMAL` and
    /// migrated to `schemaVersion`. Read-only: the file must exist and be at `schemaVersion`.
    ///
    /// - Throws: `.operational` when the file cannot be opened, was written by a newer virtport,
    ///   or is not a database (then `JournalDB.isCorrupt(error)` is true).
    /// - Wraps: `sqlite3_open_v2`, `sqlite3_busy_timeout`, `sqlite3_db_config`.
    public init(path: String, readOnly: Bool = false) throws(VirtPortError) {
        self.path = path
        self.readOnly = readOnly
        if readOnly {
            try Files.checkReadable(path)
        } else {
            try Files.makeParent(of: path)
            try Files.createPrivate(path)
        }
        conn = try SQLiteConnection(path: path, readOnly: readOnly)
        try conn.setBusyTimeout(ms: Self.busyTimeoutMs)
        // A checkpoint + fdatasync on every close costs ~2 ms per hook, so the last connection
        // leaves the WAL behind. The next process to open the database then rebuilds the WAL index
        // by reading every frame since the last checkpoint (measured: 850 reads, ~3 ms, with the
        // default 1000-page auto-checkpoint). A 64-page auto-checkpoint bounds that replay to a
        // few dozen frames; its cost (one checkpoint every few hooks) is far smaller.
        try conn.config(SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, "cannot disable checkpoint on close")
        // Statement journals and sorter spill in memory: a multi-row DELETE inside a transaction
        // otherwise creates, writes (~64 KiB) and unlinks a temp file in /var/tmp on every stop.
        try conn.exec("PRAGMA temp_store = MEMORY")
        if !readOnly {
            try enableWAL()
            try conn.exec("PRAGMA synchronous = NORMAL")
            try conn.exec("PRAGMA wal_autocheckpoint = 64")
            try conn.exec("PRAGMA journal_size_limit = 1048576")
        }
        try migrate()
        if !readOnly { try conn.exec(Schema.versionlessIndexes) }
    }

    /// For a long-lived connection (the agent's): no checkpoint inside its commits; another
    /// connection, on a thread of its own, calls `checkpoint()` instead, so no hook waits for the
    /// checkpoint's fsyncs.
    public func disableAutoCheckpoint() throws(VirtPortError) {
        try conn.exec("PRAGMA wal_autocheckpoint = 0")
    }

    /// A journal kept open across operations (the agent's warm resources): a table another
    /// connection created since it read the schema (a kind's rows created on first write, the
    /// holds) is seen at once.
    public func keepOpen() { conn.longLived = true }

    /// `PRAGMA wal_checkpoint(PASSIVE)`: copies what it can of the WAL into the database without
    /// waiting for anyone. Returns the number of WAL frames it found (0: nothing to do).
    @discardableResult
    public func checkpoint() throws(VirtPortError) -> Int {
        var frames: Int64 = 0
        try conn.query("PRAGMA wal_checkpoint(PASSIVE)") { r throws(VirtPortError) in frames = r.int(1) }
        return Int(max(frames, 0))
    }

    /// The database file's identity, to notice that it was replaced or removed under a long-lived
    /// connection; nil when the path is gone.
    public static func fileIdentity(path: String) -> FileIdentity? { FileSystem.identity(path) }

    /// True when `error` says the file is not a usable SQLite database (the caller may move it
    /// aside with `moveAside(path:now:)` and start a fresh journal).
    public static func isCorrupt(_ error: VirtPortError) -> Bool { error.code == .corruptJournal }

    /// `PRAGMA quick_check`: a database whose header is fine can still have garbage pages, which
    /// opening does not notice. Reconcile runs this before trusting the journal.
    /// - Throws: the corrupt-database error (`isCorrupt` is true for it) naming what SQLite found.
    public func quickCheck() throws(VirtPortError) {
        let result: String?
        do { result = try conn.scalarText("PRAGMA quick_check(1)") } catch {
            throw VirtPortError(.corruptJournal, "database \(path)\(SQLiteConnection.corruptSuffix)",
                                cause: error.cause ?? TextCause(error.message))
        }
        if result != "ok" {
            throw VirtPortError(.corruptJournal, "database \(path)\(SQLiteConnection.corruptSuffix)",
                                cause: TextCause(result ?? "quick_check returned nothing"))
        }
    }

    /// Whether a journal file exists at `path` (cheap `stat`, for read-only commands).
    public static func exists(path: String) -> Bool { Files.exists(path) }

    /// Renames the database and its -wal/-shm files to `<path>.corrupt-<UTC time>`; returns the new
    /// path of the database file.
    public static func moveAside(path: String, now: Int64 = nowMicros()) throws(VirtPortError) -> String {
        try Files.moveAside(path, suffix: formatISO8601UTC(now).filter { $0 != ":" && $0 != "-" })
    }

    // MARK: open

    private func enableWAL() throws(VirtPortError) {
        if try conn.scalarText("PRAGMA journal_mode") == "wal" { return }
        // Switching needs an exclusive lock; when many processes create the journal at once the
        // losers see SQLITE_BUSY here and retry until the busy timeout.
        let deadline = nowMicros() + Int64(Self.busyTimeoutMs) * 1000
        while true {
            do throws(VirtPortError) {
                let mode = try conn.scalarText("PRAGMA journal_mode = WAL")
                if mode == "wal" { return }
                throw VirtPortError.operational("database \(path): cannot switch to WAL (journal mode is \(mode ?? "?"))")
            } catch {
                if !conn.lastErrorIsBusy || nowMicros() > deadline { throw error }
                Thread.sleep(millis: 5)
            }
        }
    }

    private func migrate() throws(VirtPortError) {
        let known = Self.schemaVersion
        func newer(_ v: Int32) -> VirtPortError {
            VirtPortError(.newerJournal, "database \(path) was written by a newer virtport (schema \(v) > \(known))")
        }
        let version = Int32(truncatingIfNeeded: try conn.scalar("PRAGMA user_version") ?? 0)
        if version == known { return }
        if version > known { throw newer(version) }
        if readOnly {
            throw VirtPortError(.olderJournal, "database \(path) has schema \(version) < \(known); "
                + "open it read-write (any hook or `virtport reconcile`) to upgrade it")
        }
        try conn.immediate { () throws(VirtPortError) in
            let v = Int32(truncatingIfNeeded: try conn.scalar("PRAGMA user_version") ?? 0)
            if v > known { throw newer(v) }
            if v == 0, try conn.scalar("SELECT count(*) FROM sqlite_master") ?? 0 > 0 {
                throw .operational("database \(path) is not a virtport journal (it has tables but no schema version)")
            }
            for i in Int(v)..<Int(known) { try conn.exec(Schema.migrations[i]) }
            try conn.exec("PRAGMA user_version = \(known)")
        }
    }

    // MARK: apply

    /// Checks `desired` against every other domain's rows (any state) without writing anything:
    /// the read-only early check of qemu `prepare`. `beginApply` repeats it inside its transaction.
    ///
    /// - Throws: `.invalid("host port tcp/8080 is already forwarded to domain 'web1' (uuid …)")`.
    public func checkConflicts(domain: DomainRef, desired: [Mapping]) throws(VirtPortError) {
        let wanted = Self.unique(desired)
        // A held range overlapping [start, end] starts at most `span` ports before `start`, so the
        // index scan covers [start - span, end] instead of every row below `end` (the widest
        // range comes from an expression index in O(log n)).
        let span = try conn.scalar("SELECT MAX(host_port_end - host_port_start) FROM mappings") ?? 0
        // Overlaps inside the plan: a sweep over the runs sorted by protocol and first port.
        let sorted = wanted.sorted { ($0.proto, $0.hostPorts.start) < ($1.proto, $1.hostPorts.start) }
        for (k, m) in sorted.enumerated() {
            for other in sorted[(k + 1)...] {
                if other.proto != m.proto || other.hostPorts.start > m.hostPorts.end { break }
                if Conflicts.overlap(m, other) {
                    throw .invalid("host port \(m.proto.rawValue)/\(other.hostPorts.start) is forwarded twice by domain \(domain)")
                }
            }
        }
        for m in wanted {
            try conn.query(
                "SELECT \(Self.rowColumns) FROM mappings WHERE proto = ? AND host_port_start BETWEEN ? AND ? "
                    + "AND host_port_end >= ? AND domain_uuid <> ? ORDER BY id",
                [.text(m.proto.rawValue), .int(max(0, Int64(m.hostPorts.start) - span)), .int(Int64(m.hostPorts.end)),
                 .int(Int64(m.hostPorts.start)), .text(domain.uuid)]
            ) { r throws(VirtPortError) in
                let holder = try Self.decodeRow(r)
                if Conflicts.overlap(m, holder.mapping) { throw .invalid(Conflicts.message(m, holder)) }
            }
        }
    }

    /// Writes the intent to make `domain`'s mappings exactly `desired` (step 2 of the protocol).
    ///
    /// In one `BEGIN IMMEDIATE` transaction: the conflict check of `checkConflicts`, then a diff of
    /// `desired` against this domain's rows (identity = every `Mapping` field). New mappings are
    /// inserted as `adding` (`pending` without a guest address); rows no longer desired become
    /// `removing`; identical `applied`/`pending` rows are unchanged. A crash leftover that is desired
    /// again is returned in `adding`. Rows take the domain's current name.
    ///
    /// - Parameters:
    ///   - reason: why (kept for symmetry with `commitApply`; history is written at commit).
    ///   - now: µs since the epoch (`nowMicros()`), stored as the rows' `since`.
    /// - Throws: `.invalid` on a conflict (nothing written), `.operational` on database trouble.
    public func beginApply(domain: DomainRef, desired: [Mapping], reason: String,
                           now: Int64) throws(VirtPortError) -> ApplyDelta {
        _ = reason
        let wanted = Self.unique(desired)
        if wanted.isEmpty, try !hasRows(domainUUID: domain.uuid) { return ApplyDelta() }
        return try conn.immediate { () throws(VirtPortError) -> ApplyDelta in
            try checkConflicts(domain: domain, desired: wanted)
            try conn.run("UPDATE mappings SET domain_name = ? WHERE domain_uuid = ? AND domain_name <> ?",
                         [.text(domain.name), .text(domain.uuid), .text(domain.name)])
            let current = try rows(where: "domain_uuid = ?", [.text(domain.uuid)])
            var byMapping: [Mapping: ActiveMapping] = [:]
            for row in current { byMapping[row.mapping] = row }
            var delta = ApplyDelta()
            for m in wanted {
                if var row = byMapping.removeValue(forKey: m) {
                    switch row.state {
                    case .applied, .pending:
                        delta.unchanged.append(row)
                    case .adding:
                        delta.adding.append(row)
                    case .removing:
                        row.state = m.isPending ? .pending : .adding
                        try setState(id: row.id, row.state)
                        delta.adding.append(row)
                    }
                } else {
                    let state: MappingState = m.isPending ? .pending : .adding
                    try conn.run(
                        "INSERT INTO mappings (domain_uuid, domain_name, state, since, \(Schema.mappingColumns)) "
                            + "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [.text(domain.uuid), .text(domain.name), .text(state.rawValue), .int(now)] + Schema.bind(m))
                    delta.adding.append(ActiveMapping(id: conn.lastInsertRowID, domain: domain, mapping: m,
                                                      state: state, since: now))
                }
            }
            for row in current where byMapping[row.mapping] != nil {
                if row.state != .removing { try setState(id: row.id, .removing) }
                delta.removing.append(row)  // with its prior state
            }
            return delta
        }
    }

    /// Records that the kernel batch for `delta` succeeded (step 4 of the protocol).
    ///
    /// `adding` rows become `applied` (`pending` rows stay `pending`) and get an "add" history
    /// event; `removing` rows are deleted and get a "remove" event if they had an "add". Rows that
    /// another process changed in between (deleted, or taken over by `beginRemoveAll`) are skipped.
    public func commitApply(domain: DomainRef, delta: ApplyDelta, reason: String,
                            now: Int64) throws(VirtPortError) {
        if delta.isEmpty { return }
        try conn.immediate { () throws(VirtPortError) in
            // Set-based, and only the statements a delta needs: a hook is a new process, so each
            // statement is prepared (the larger part of its cost) for one run. The ids are bound,
            // not spliced, so the agent's statement cache keeps these statements across hooks.
            let mine: [SQLValue] = [.text(domain.uuid)]
            if !delta.adding.isEmpty {
                let adding = "\(Self.idIn) AND domain_uuid = ? AND state <> 'removing'"
                let args = [Self.idArray(delta.adding)] + mine
                // A row whose identity's last event is already "add" (a crashed removal taken back)
                // keeps its `since` and gets no second "add". The history insert below sees the
                // same last events: it runs after this update, which writes no history.
                try conn.run(
                    "UPDATE mappings SET state = CASE state WHEN 'adding' THEN 'applied' ELSE state END, "
                        + "since = CASE WHEN \(Self.lastActionSQL) IS 'add' THEN since ELSE ? END WHERE \(adding)",
                    [.int(now)] + args)
                try appendHistory(.add, reason: reason, domainName: domain.name, at: now, rows: adding, args)
            }
            if !delta.removing.isEmpty {
                try deleteRows(where: "\(Self.idIn) AND domain_uuid = ? AND state = 'removing'",
                               [Self.idArray(delta.removing)] + mine, reason: reason, domainName: domain.name, now: now)
            }
        }
    }

    /// Marks every row of a domain `removing` (qemu `stopped`/`release`) and returns them, each with
    /// its prior state. Returns [] (without taking the write lock) when the domain has no rows.
    public func beginRemoveAll(domainUUID: String, reason: String,
                               now: Int64) throws(VirtPortError) -> [ActiveMapping] {
        _ = (reason, now)
        if try !hasRows(domainUUID: domainUUID) { return [] }
        return try conn.immediate { () throws(VirtPortError) -> [ActiveMapping] in
            let rows = try rows(where: "domain_uuid = ?", [.text(domainUUID)])
            try conn.run("UPDATE mappings SET state = 'removing' WHERE domain_uuid = ? AND state <> 'removing'",
                         [.text(domainUUID)])
            return rows
        }
    }

    /// Deletes `rows` (still `removing`) after the kernel batch removed them, with a "remove"
    /// history event for each that had an "add". Rows already gone or no longer `removing` are skipped.
    public func commitRemove(_ rows: [ActiveMapping], reason: String, now: Int64) throws(VirtPortError) {
        if rows.isEmpty { return }
        try conn.immediate { () throws(VirtPortError) in
            try deleteRows(where: "\(Self.idIn) AND state = 'removing'", [Self.idArray(rows)], reason: reason,
                           domainName: nil, now: now)
        }
    }

    // MARK: queries

    /// Every row, or one domain's, ordered by domain name, protocol and host port.
    public func activeMappings(domainUUID: String? = nil) throws(VirtPortError) -> [ActiveMapping] {
        if let domainUUID { return try rows(where: "domain_uuid = ?", [.text(domainUUID)]) }
        return try rows(where: "1", [])
    }

    /// Whether the domain has any row (the hook's fast path: most domains forward nothing).
    public func hasRows(domainUUID: String) throws(VirtPortError) -> Bool {
        try conn.scalar("SELECT EXISTS (SELECT 1 FROM mappings WHERE domain_uuid = ?)", [.text(domainUUID)]) == 1
    }

    /// Whether `network` has forwards in the kernel (`applied` or `adding` with a guest address)
    /// other than the rows `excluding`: decides whether its hairpin subnet and libvirt accept rule
    /// are still needed. One index probe.
    public func networkHasForwards(_ network: String, excluding ids: [Int64]) throws(VirtPortError) -> Bool {
        try conn.scalar(
            "SELECT EXISTS (SELECT 1 FROM mappings WHERE network = ? AND state IN ('applied', 'adding') "
                + "AND guest_addr <> '' AND id NOT IN (SELECT value FROM json_each(?)))",
            [.text(network), Self.idArray(ids)]) == 1
    }

    /// Whether any mapping is applied (a freshly created table must then be filled from the journal).
    public func hasAppliedMappings() throws(VirtPortError) -> Bool {
        try conn.scalar("SELECT EXISTS (SELECT 1 FROM mappings WHERE state = 'applied')") == 1
    }

    // MARK: reconcile

    /// Appends a history event for a fix made by reconcile. Skipped when it would repeat the last
    /// event of this domain + mapping (history alternates add/remove per mapping).
    public func record(event action: HistoryAction, reason: String, domain: DomainRef, mapping: Mapping,
                       now: Int64) throws(VirtPortError) {
        try conn.immediate { () throws(VirtPortError) in
            _ = try appendHistory(action, reason: reason, domain: domain, mapping: Schema.normalised(mapping), at: now)
        }
    }

    /// Deletes rows by id, whatever their state, without writing history (pair with `record`).
    /// Returns how many rows existed.
    @discardableResult
    public func deleteRows(ids: [Int64]) throws(VirtPortError) -> Int {
        if ids.isEmpty { return 0 }
        return try conn.immediate { () throws(VirtPortError) -> Int in
            var n = 0
            for id in ids { n += try conn.run("DELETE FROM mappings WHERE id = ?", [.int(id)]) }
            return n
        }
    }

    /// Sets the state of rows by id (reconcile: `adding` found in the kernel → `applied`, …).
    /// Returns how many rows existed.
    @discardableResult
    public func setState(ids: [Int64], state: MappingState) throws(VirtPortError) -> Int {
        if ids.isEmpty { return 0 }
        return try conn.immediate { () throws(VirtPortError) -> Int in
            var n = 0
            for id in ids { n += try setState(id: id, state) }
            return n
        }
    }

    // MARK: internals

    /// `SELECT` list for `decodeRow`.
    static let rowColumns = "id, domain_uuid, domain_name, state, since, \(Schema.mappingColumns)"

    static func decodeRow(_ r: Row) throws(VirtPortError) -> ActiveMapping {
        let id = r.int(0)
        let stateText = r.text(3)
        guard let state = MappingState(rawValue: stateText) else {
            throw .operational("database row mappings.id=\(id) has an invalid state '\(stateText)'")
        }
        return ActiveMapping(id: id, domain: DomainRef(name: r.text(2), uuid: r.text(1)),
                             mapping: try Schema.decode(r, from: 5, table: "mappings", id: id),
                             state: state, since: r.int(4))
    }

    func rows(where condition: String, _ args: [SQLValue]) throws(VirtPortError) -> [ActiveMapping] {
        var out: [ActiveMapping] = []
        try conn.query("SELECT \(Self.rowColumns) FROM mappings WHERE \(condition) "
                       + "ORDER BY domain_name, domain_uuid, proto, host_port_start, host_addr, id", args) {
            r throws(VirtPortError) in out.append(try Self.decodeRow(r))
        }
        return out
    }

    @discardableResult
    private func setState(id: Int64, _ state: MappingState) throws(VirtPortError) -> Int {
        try conn.run("UPDATE mappings SET state = ? WHERE id = ?", [.text(state.rawValue), .int(id)])
    }

    /// Deletes the rows matching `condition`, first appending a "remove" event for each whose
    /// identity's last event is "add". `domainName` nil: each row's own name.
    private func deleteRows(where condition: String, _ args: [SQLValue], reason: String, domainName: String?,
                            now: Int64) throws(VirtPortError) {
        try appendHistory(.remove, reason: reason, domainName: domainName, at: now, rows: condition, args)
        try conn.run("DELETE FROM mappings WHERE \(condition)", args)
    }

    /// The last history action of the identity of the `mappings` row in scope (SQL, NULL if none).
    static let lastActionSQL = "(SELECT h.action FROM history h WHERE \(Schema.sameIdentity("h", "mappings")) "
        + "ORDER BY h.id DESC LIMIT 1)"

    /// Rows whose id is in the JSON array bound to the `?` (`idArray`): the statement's text stays
    /// the same whatever the ids, so a long-lived connection prepares it once.
    static let idIn = "id IN (SELECT value FROM json_each(?))"

    /// `[1,2,3]`, the value `idIn` binds.
    static func idArray(_ ids: [Int64]) -> SQLValue {
        var s = "["
        var first = true
        for id in ids {
            if !first { s += "," }
            first = false
            s += String(id)
        }
        return .text(s + "]")
    }

    static func idArray(_ rows: [ActiveMapping]) -> SQLValue { idArray(rows.map(\.id)) }

    /// Another NIC using `address`: an active forward's guest address or a guard's allowed address
    /// whose MAC is not `exceptMAC`, as "domain 'NAME' (mac M)"; nil when none.
    public func addressHolder(_ address: IPAddress, exceptMAC: String) throws(VirtPortError) -> String? {
        var found: String?
        try conn.query("SELECT domain_name, mac FROM mappings WHERE guest_addr = ? AND mac != ? LIMIT 1",
                       [.text(address.description), .text(exceptMAC)]) { r throws(VirtPortError) in
            found = "domain '\(Quoted.message(r.text(0)))' (mac \(r.text(1)))"
        }
        if found != nil { return found }
        if try !hasGuardTables() { return nil }
        try conn.query("SELECT domain_name, mac FROM guards WHERE mac != ? AND (' ' || addresses) LIKE ? LIMIT 1",
                       [.text(exceptMAC), .text("% \(address.description)=%")]) { r throws(VirtPortError) in
            found = "domain '\(Quoted.message(r.text(0)))' (mac \(r.text(1)))"
        }
        return found
    }

    /// The addresses `mac`'s forwards and guard now have from a DHCP lease.
    public func leaseAddresses(mac: String) throws(VirtPortError) -> [IPAddress] {
        var out: [IPAddress] = []
        try conn.query("SELECT DISTINCT guest_addr FROM mappings WHERE mac = ? AND guest_source = 'dhcp-lease' "
                       + "AND guest_addr != ''", [.text(mac)]) { r throws(VirtPortError) in
            if let ip = IPAddress(r.text(0)), !out.contains(ip) { out.append(ip) }
        }
        if try hasGuardTables() {
            try conn.query("SELECT addresses FROM guards WHERE mac = ?", [.text(mac)]) { r throws(VirtPortError) in
                for item in r.text(0).split(separator: " ") where item.hasSuffix("=dhcp-lease") {
                    if let ip = IPAddress(String(item.dropLast("=dhcp-lease".count))), !out.contains(ip) { out.append(ip) }
                }
            }
        }
        return out
    }

    /// Whether a forward on one of `hostPorts` (`proto`) was taken down at or after `since`
    /// (microseconds): an ongoing flow to that port may then hold a conntrack entry made while
    /// nothing forwarded it. One indexed query (history_at).
    public func releasedRecently(proto: IPProto, hostPorts: PortRange, since: Int64) throws(VirtPortError) -> Bool {
        try conn.scalar(Self.releasedRecentlySQL,
                        [.int(since), .text(proto.rawValue), .int(Int64(hostPorts.end)), .int(Int64(hostPorts.start))]) != nil
    }

    /// Served by index history_released (Schema.versionlessIndexes) alone: the recent removals of one protocol.
    static let releasedRecentlySQL = "SELECT 1 FROM history WHERE at >= ? AND action = 'remove' AND proto = ? "
        + "AND host_port_start <= ? AND host_port_end >= ? LIMIT 1"

    /// The identity's last history action ("add"/"remove"), nil if none.
    func lastAction(domainUUID: String, mapping: Mapping) throws(VirtPortError) -> HistoryAction? {
        try conn.scalarText("SELECT action FROM history WHERE \(Schema.identityWhere) ORDER BY id DESC LIMIT 1",
                            [.text(domainUUID)] + Schema.bind(mapping)).flatMap(HistoryAction.init(rawValue:))
    }

    /// Appends an event unless it would repeat the identity's last one ("remove" also needs a
    /// preceding "add"). Returns whether it was written.
    func appendHistory(_ action: HistoryAction, reason: String, domain: DomainRef, mapping: Mapping,
                       at: Int64) throws(VirtPortError) -> Bool {
        let last = try lastAction(domainUUID: domain.uuid, mapping: mapping)
        if action == .add ? last == .add : last != .add { return false }
        try conn.run(
            "INSERT INTO history (at, action, reason, domain_uuid, domain_name, \(Schema.mappingColumns)) "
                + "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [.int(at), .text(action.rawValue), .text(reason), .text(domain.uuid), .text(domain.name)] + Schema.bind(mapping))
        return true
    }

    /// The same rule for every `mappings` row matching `condition`, in one INSERT … SELECT (row id
    /// order). `domainName` nil: each row's own name.
    func appendHistory(_ action: HistoryAction, reason: String, domainName: String?, at: Int64, rows condition: String,
                       _ args: [SQLValue]) throws(VirtPortError) {
        let repeatTest = action == .add ? "IS NOT 'add'" : "IS 'add'"
        try conn.run(
            "INSERT INTO history (at, action, reason, domain_uuid, domain_name, \(Schema.mappingColumns)) "
                + "SELECT ?, ?, ?, domain_uuid, \(domainName == nil ? "domain_name" : "?"), \(Schema.mappingColumns) "
                + "FROM mappings WHERE \(condition) AND \(Self.lastActionSQL) \(repeatTest) ORDER BY id",
            [.int(at), .text(action.rawValue), .text(reason)] + (domainName.map { [SQLValue.text($0)] } ?? []) + args)
    }

    /// `desired` normalised to stored form, duplicates dropped, order kept.
    static func unique(_ desired: [Mapping]) -> [Mapping] {
        var seen = Set<Mapping>()
        return desired.map(Schema.normalised).filter { seen.insert($0).inserted }
    }
}

@available(*, unavailable)
extension JournalDB: Sendable {}
