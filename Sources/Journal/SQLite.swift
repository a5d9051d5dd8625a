#if canImport(Glibc)
import Glibc
#endif
import CSQLite
public import VirtPortCore

/// What SQLite answered: its (extended) result code and `sqlite3_errmsg`.
public struct SQLiteError: ErrorCause {
    public var code: Int32
    public var message: String
    public var description: String { message }
}

/// A value bound to a `?` parameter.
enum SQLValue {
    case int(Int64)
    case text(String)
}

/// One result row, valid only inside the `query` callback that received it.
struct Row {
    fileprivate let stmt: OpaquePointer

    func int(_ column: Int32) -> Int64 { sqlite3_column_int64(stmt, column) }

    func text(_ column: Int32) -> String {
        guard let p = sqlite3_column_text(stmt, column) else { return "" }
        let n = Int(sqlite3_column_bytes(stmt, column))
        return String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self)
    }
}

/// One `sqlite3*` with a statement cache. Every call checks its result code; errors name the
/// database and carry `sqlite3_errmsg`. Not thread-safe (opened with SQLITE_OPEN_NOMUTEX): one
/// connection per thread, which `JournalDB` enforces by not being Sendable.
final class SQLiteConnection {
    let path: String
    private let db: OpaquePointer
    private var cache: [String: OpaquePointer] = [:]

    /// Once per process, before SQLite initialises (the first open does): its memory statistics
    /// off, ~4 % of the agent's instructions up to a `start`'s answer (BENCHMARKS.md "Up to the answer").
    private static let tuned: Void = { _ = vp_sqlite_disable_memstatus() }()

    /// Wraps `sqlite3_open_v2`.
    init(path: String, readOnly: Bool) throws(VirtPortError) {
        Self.tuned
        self.path = path
        var handle: OpaquePointer?
        // NOFOLLOW: SQLite itself refuses a database path that is a symbolic link (Files checks
        // the -wal and -shm names before).
        let flags = (readOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW
        let rc = sqlite3_open_v2(path, &handle, flags, nil)
        guard rc == SQLITE_OK, let handle else {
            let msg = handle.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_close_v2(handle)
            throw SQLiteConnection.error(path: path, rc: rc, what: "cannot open", message: msg)
        }
        db = handle
    }

    /// Whether table `name` exists: a look-up in the schema SQLite holds, no statement to prepare
    /// (~0.1 M instructions less than a `sqlite_master` query in a hook's fresh process).
    func hasTable(_ name: String) -> Bool {
        if sqlite3_table_column_metadata(db, "main", name, nil, nil, nil, nil, nil, nil) == SQLITE_OK { return true }
        guard longLived else { return false }
        // The schema a long-lived connection holds may predate a table another connection created
        // since (the agent's journal, then a hook's first `source=`): the look-up above does not
        // reload it; a statement does (a cached one: the agent's cost, never a hook's).
        return (try? scalar("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?)", [.text(name)])) == 1
    }

    /// A connection kept open across operations (the agent's warm journal): `hasTable` verifies
    /// a miss against the schema on disk.
    var longLived = false

    deinit {
        for stmt in cache.values { sqlite3_finalize(stmt) }
        sqlite3_close_v2(db)
    }

    static let corruptSuffix = " is corrupt or not an SQLite database"

    static func error(path: String, rc: Int32, what: String, message: String) -> VirtPortError {
        let cause = SQLiteError(code: rc, message: message)
        switch rc & 0xff {
        case SQLITE_CORRUPT, SQLITE_NOTADB:
            return VirtPortError(.corruptJournal, "database \(path)\(corruptSuffix)", cause: cause)
        case SQLITE_BUSY, SQLITE_LOCKED:
            return .operational("database \(path) stayed locked by another virtport for too long (\(what))",
                                cause: cause)
        case SQLITE_CANTOPEN, SQLITE_READONLY, SQLITE_PERM, SQLITE_AUTH:
            return .operational("database \(path): \(what)", cause: cause)
        default:
            return .operational("database \(path): \(what)", cause: cause)
        }
    }

    func error(_ rc: Int32, _ what: String) -> VirtPortError {
        SQLiteConnection.error(path: path, rc: rc, what: what, message: String(cString: sqlite3_errmsg(db)))
    }

    func check(_ rc: Int32, _ what: @autoclosure () -> String) throws(VirtPortError) {
        if rc != SQLITE_OK { throw error(rc, what()) }
    }

    /// `sqlite3_busy_timeout`: how long a writer waits for another connection's lock.
    func setBusyTimeout(ms: Int32) throws(VirtPortError) {
        try check(sqlite3_busy_timeout(db, ms), "cannot set busy timeout")
    }

    /// `sqlite3_db_config(op, value)` for an integer option.
    func config(_ op: Int32, _ value: Int32, _ what: String) throws(VirtPortError) {
        try check(vp_sqlite_db_config_int(db, op, value), what)
    }

    /// Runs SQL without results (one or more statements): `sqlite3_exec`.
    func exec(_ sql: String) throws(VirtPortError) {
        var err: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &err)
        if rc != SQLITE_OK {
            let msg = err.map { String(cString: $0) } ?? String(cString: sqlite3_errmsg(db))
            sqlite3_free(err)
            throw SQLiteConnection.error(path: path, rc: rc, what: Self.summary(sql), message: msg)
        }
    }

    /// Runs one statement, calling `row` for each result row. The statement is prepared once per
    /// connection and reset afterwards, so it never holds a read snapshot open.
    func query(_ sql: String, _ args: [SQLValue] = [],
               row: (Row) throws(VirtPortError) -> Void) throws(VirtPortError) {
        let stmt = try prepare(sql)
        defer {
            sqlite3_reset(stmt)
            sqlite3_clear_bindings(stmt)
        }
        for (i, arg) in args.enumerated() {
            let index = Int32(i + 1)
            let rc: Int32 = switch arg {
            case .int(let v): sqlite3_bind_int64(stmt, index, v)
            case .text(let s): sqlite3_bind_text(stmt, index, s, -1, vp_sqlite_transient())
            }
            try check(rc, "cannot bind parameter \(index) of \(Self.summary(sql))")
        }
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { return }
            if rc != SQLITE_ROW { throw error(rc, Self.summary(sql)) }
            try row(Row(stmt: stmt))
        }
    }

    /// Runs one statement that returns no rows; returns `sqlite3_changes`.
    @discardableResult
    func run(_ sql: String, _ args: [SQLValue] = []) throws(VirtPortError) -> Int {
        try query(sql, args) { _ throws(VirtPortError) in }
        return Int(sqlite3_changes(db))
    }

    /// The first column of the first row as an integer (nil when there is no row).
    func scalar(_ sql: String, _ args: [SQLValue] = []) throws(VirtPortError) -> Int64? {
        var out: Int64?
        try query(sql, args) { r throws(VirtPortError) in if out == nil { out = r.int(0) } }
        return out
    }

    /// The first column of the first row as text (nil when there is no row).
    func scalarText(_ sql: String, _ args: [SQLValue] = []) throws(VirtPortError) -> String? {
        var out: String?
        try query(sql, args) { r throws(VirtPortError) in if out == nil { out = r.text(0) } }
        return out
    }

    var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(db) }

    /// Whether the last failed call failed because another connection held a lock.
    var lastErrorIsBusy: Bool {
        let code = sqlite3_errcode(db) & 0xff
        return code == SQLITE_BUSY || code == SQLITE_LOCKED
    }

    /// Runs `body` inside `BEGIN IMMEDIATE … COMMIT` (the write lock is taken up front, waiting up to
    /// the busy timeout, so the transaction never fails half-way with SQLITE_BUSY); rolls back on error.
    ///
    /// Nestable: inside another `immediate` (a lifecycle's one transaction around every rule
    /// kind's intents), `body` simply runs in the outer transaction, whose COMMIT makes it all
    /// durable at once. An error inside must leave the outer `immediate` too (which rolls it all
    /// back): nothing catches a journal error inside a transaction and goes on. (No savepoint:
    /// each would cost a hook two more statements to parse.)
    func immediate<T>(_ body: () throws(VirtPortError) -> T) throws(VirtPortError) -> T {
        if depth > 0 { return try body() }
        try exec("BEGIN IMMEDIATE")
        transactionsBegun += 1
        depth += 1
        defer { depth -= 1 }
        let result: T
        do {
            result = try body()
        } catch {
            _ = sqlite3_exec(db, "ROLLBACK", nil, nil, nil)
            throw error
        }
        do {
            try exec("COMMIT")
        } catch {
            _ = sqlite3_exec(db, "ROLLBACK", nil, nil, nil)
            throw error
        }
        return result
    }

    /// How many `immediate` calls are running (0: no transaction of ours is open).
    private var depth = 0
    /// Outermost transactions begun on this connection (unit tests count a change's transactions).
    private(set) var transactionsBegun = 0

    private func prepare(_ sql: String) throws(VirtPortError) -> OpaquePointer {
        if let stmt = cache[sql] { return stmt }
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v3(db, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &stmt, nil)
        guard rc == SQLITE_OK, let stmt else {
            throw error(rc == SQLITE_OK ? SQLITE_MISUSE : rc, "cannot prepare \(Self.summary(sql))")
        }
        cache[sql] = stmt
        return stmt
    }

    /// The first words of a statement, for error messages.
    private static func summary(_ sql: String) -> String {
        let words = sql.split(whereSeparator: { $0 == " " || $0 == "\n" }).prefix(3)
        return words.joined(separator: " ")
    }
}
