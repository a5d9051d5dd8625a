public import Journal
import Netfilter
public import POSIX
public import VirtPortCore

/// What an operation works with: the journal, the change lock beside it and a netlink session to
/// nf_tables. One type, two lifetimes:
/// - `perProcess`: a hook or command opens each on first use; the process exit closes them.
/// - `warm`: the agent opens the journal once (statements stay prepared, no auto-checkpoint: its
///   checkpoint thread does that) and keeps its netlink socket across requests.
public final class Resources {
    public let config: Config
    /// True for the agent's long-lived resources.
    public let isWarm: Bool
    /// (device, inode) of the journal when the warm resources opened it: replaced or removed → reopen.
    public let journalIdentity: FileIdentity?
    private var db: JournalDB?
    private var lock: ChangeLock?
    private var session: (any FirewallDriver)?

    private init(config: Config, warm: Bool, db: JournalDB?, lock: ChangeLock?) {
        self.config = config
        isWarm = warm
        self.db = db
        self.lock = lock
        journalIdentity = warm ? JournalDB.fileIdentity(path: config.databasePath) : nil
    }

    /// A hook's or command's: everything opened lazily, on first use. `kernel`: a session to use
    /// instead of opening one (unit tests hand in a recording fake, or a session over a `RecordingTransport`).
    public static func perProcess(_ config: Config, kernel: (any FirewallDriver)? = nil) -> Resources {
        let r = Resources(config: config, warm: false, db: nil, lock: nil)
        r.session = kernel
        return r
    }

    /// The agent's: the journal (created if absent) and the lock file are opened now.
    public static func warm(_ config: Config) throws(VirtPortError) -> Resources {
        let db = try JournalDB(path: config.databasePath)
        try db.disableAutoCheckpoint()
        db.keepOpen()
        return Resources(config: config, warm: true, db: db, lock: try ChangeLock(databasePath: config.databasePath))
    }

    /// The journal, opened read-write (created and migrated) on first use.
    public func journal() throws(VirtPortError) -> JournalDB {
        if let db { return db }
        let opened = try JournalDB(path: config.databasePath)
        db = opened
        return opened
    }

    /// For reads that must not create a journal (qemu `prepare`, network `started`): nil when no
    /// journal file exists yet; a process's own connection is read-only.
    public func existingJournal(readOnly: Bool) throws(VirtPortError) -> JournalDB? {
        if let db { return db }
        guard JournalDB.exists(path: config.databasePath) else { return nil }
        if !readOnly { return try journal() }
        return try JournalDB(path: config.databasePath, readOnly: true)
    }

    /// The lock that keeps journal-to-kernel rebuilds apart from hooks mid-change (`ChangeLock`).
    public func changeLock() throws(VirtPortError) -> ChangeLock {
        if let lock { return lock }
        let opened = try ChangeLock(databasePath: config.databasePath)
        lock = opened
        return opened
    }

    /// The firewall driver: a netlink session to virtport's tables, opened on first use. A warm session
    /// never hands its socket to a child (`closeInBackground` is for processes about to exit).
    public func kernel() throws(VirtPortError) -> any FirewallDriver {
        if let session { return session }
        let opened: NetfilterSession
        do { opened = try NetfilterSession(table: config.table) } catch {
            throw .operational("cannot open netlink socket", cause: error)
        }
        opened.keepsSocketOpen = isWarm
        session = opened
        return opened
    }

    /// After a failed request: the next one starts on a fresh netlink socket.
    public func dropKernel() { session = nil }

    // MARK: Work after the answer (README "Agent: what is done after the answer")

    /// Set by the agent's workers: the part of a domain's change its caller does not wait for
    /// (`later`: decision logs, conntrack cleanups, the skeleton self-check) is kept and run by
    /// `runDeferred` once the hook has its reply. Off for hooks and commands: `later` runs at once.
    public var defersWork = false
    private var deferred: [() -> Void] = []
    /// The change lock of the change that left `deferred`: still held (shared, or converted),
    /// released by `runDeferred` after the work, so exclusive operations (heal, reconcile, network
    /// `started`) never see the change half-finished.
    private var heldLock: ChangeLock?

    /// Whether `runDeferred` has something to do.
    public var hasDeferredWork: Bool { !deferred.isEmpty || heldLock != nil }

    /// Runs `work` now, or when deferring, after the answer (in order, under the change's lock).
    /// Its warnings reach the system log (`Warnings`); a hook's stderr only when it runs now.
    func later(_ work: @escaping () -> Void) {
        if defersWork { deferred.append(work) } else { work() }
    }

    /// The end of a change that took `lock` (`ChangeLock.takeShared`): released now, or kept for
    /// the deferred work.
    func endChange(holding lock: ChangeLock) {
        if deferred.isEmpty { lock.release() } else { heldLock = lock }
    }

    /// The deferred work, in order, under the lock its change held (then released). Test hook:
    /// `VIRTPORT_DEFER_DELAY_MS` (in the agent's environment) sleeps that long first, lock held.
    public func runDeferred() {
        let work = deferred
        deferred = []
        let lock = heldLock
        heldLock = nil
        defer { lock?.release() }
        if work.isEmpty { return }
        if let ms = Environment.get("VIRTPORT_DEFER_DELAY_MS").flatMap({ Int64($0) }), ms > 0 { Thread.sleep(millis: ms) }
        // Not left by a change (none does this today): the lock is taken as a change would.
        var taken: ChangeLock?
        if lock == nil, let own = try? changeLock(), (try? own.takeShared()) != nil { taken = own }
        defer { taken?.release() }
        for w in work { w() }
    }
}
