public import Journal
public import Netfilter
public import VirtPortCore

/// One kind of rule virtport keeps for domains (forwards, port guards, …): everything the
/// lifecycle (`DomainLifecycle`) needs to bring it from a domain's plan to the journal and the
/// kernel, read it back, heal it, reconcile it and take it all down. The lifecycle iterates over
/// `RuleKinds.all` and never names a kind; a new kind is its own files plus one registry line here
/// (and one in `ForwardAttributes.all` for a `<portForward>` attribute, `KindListings.all` for output)
/// (README "Development: adding a rule kind").
///
/// A domain's change is one protocol for every kind together:
/// 1. `needsChange` (no lock, no journal write): the kind's fast path — false skips it;
/// 2. change lock shared, ONE journal transaction: each kind's `stage` writes its intent rows and
///    returns a `StagedChange` (or nil: nothing for it);
/// 3. ONE netlink batch: every staged change's `batchPart` (a batch may span families);
/// 4. each `afterBatch(sent:)`: its recovery when the shared batch was refused (its own batch with
///    its retries, a rebuild from the journal under the lock made exclusive), its side effects
///    (bridge port flags, libvirt's accept rule, connection tracking);
/// 5. ONE journal transaction: each `commit`; then each `finish` (logs, late cleanups), which the
///    agent runs after answering the hook, still under the change lock (`Resources.later`).
///
/// Fail-closed across kinds: a kind whose rules another kind's elements need in place first (the
/// source filter before its forward's DNAT) names that kind in `guards` and comes before it in
/// `RuleKinds.all`. When its kernel work fails outside the one atomic batch (its own batch after
/// the shared one was refused, heal, network started, reconcile), it returns `Hold`s on those
/// elements (`StagedChange.holds`, `failClosed`); the lifecycle hands them to the later kinds of the
/// change (`StagedChange.hold`), writes them to the journal and logs them; the held kind keeps
/// those elements out of the kernel (removing them if they were in) and their intents open, in
/// every path, until the guarding kind drops its holds (its rules in place again).
public protocol RuleKind: Sendable {
    /// Short plural name: `forwards`, `guards` (logs, `Teardown`'s counts, `KINDS-PROTOCOL`).
    var name: String { get }

    /// The nf_tables tables the kind keeps, `"<family> <name>"` (`inet virtport`): the agent's
    /// self-heal watches deletions there. Kinds may share a table (then see `fullState`).
    func tables(_ config: Config) -> [String]

    /// Before any lock: whether the domain's change (`plan`; nil: the domain stopped) can concern
    /// this kind. False must be certain (the guards' "nothing guarded, nothing journaled": one
    /// read, no lock, no journal created).
    /// The journal, when the kind reads it here, comes from `context.resources` (the lifecycle has
    /// opened it read-write once an earlier kind needed a change: one connection for all).
    func needsChange(_ plan: Plan?, uuid: String, context: KindContext) throws(VirtPortError) -> Bool

    /// Inside the lifecycle's journal transaction, change lock held shared: writes this kind's
    /// intent rows for the domain (`plan` nil: remove all it has) and returns what is left to do,
    /// or nil when nothing is.
    func stage(_ plan: Plan?, domain: DomainRef, reason: String, db: JournalDB,
               context: KindContext) throws(VirtPortError) -> (any StagedChange)?

    /// Network `started` (exclusive lock held): put back what libvirt's rebuild may have flushed.
    func reapply(network: NetworkDefinition, db: JournalDB, reason: String, context: KindContext) throws(VirtPortError)

    /// Self-heal (exclusive lock held): the journal is the truth; returns one line per repair.
    func heal(db: JournalDB, context: KindContext) throws(VirtPortError) -> [String]

    /// Reconcile's reading: the journal's rows, the running domains and the kernel read back
    /// (all of this kind's I/O) turned into a plan by a pure function. `db` nil: no journal yet.
    func reconcile(running: [String: RunningDomain], db: JournalDB?, reason: String,
                   context: KindContext) throws(VirtPortError) -> any KindReconcile

    /// `virtport uninstall` (exclusive lock held when `db` is not nil): the kind's tables and
    /// every side effect it set go, rows closed with history. Returns how many things went.
    func removeEverything(db: JournalDB?, reason: String, context: KindContext) throws(VirtPortError) -> Int
    /// `virtport uninstall`'s line about what `removeEverything` took down (`count` things).
    func removedLine(count: Int, config: Config) -> String

    /// When another kind rebuilds a table this kind shares (`tables`), the full state this kind
    /// keeps there, from the journal, to go in the same rebuild batch (nil: nothing there).
    func fullState(in table: String, db: JournalDB, context: KindContext) throws(VirtPortError) -> (any BatchPart)?

    /// The virtport.conf keys the kind declares (documented and parsed with the core's).
    var configKeys: [KindConfigKey] { get }

    /// Fail-closed: the kinds (`name`) whose elements must not be in the kernel without this
    /// kind's rules (the source filter: `forwards`). They come after it in `RuleKinds.all`.
    var guards: [String] { get }

    /// Fail-closed, after this kind's kernel work failed in heal, network started or reconcile
    /// (exclusive lock held; its rules' state in the kernel unknown): its rows are marked so each
    /// domain's next change rebuilds them, and the holds on the elements of `guards` that need
    /// them are returned (the lifecycle writes them). `cause`: the failure, for people.
    func failClosed(db: JournalDB, cause: String, context: KindContext) throws(VirtPortError) -> [Hold]

    /// Fail-closed, after a heal, network started or reconcile step in which this kind's own
    /// step succeeded: `holds` on its elements were dropped in that step (the guarding kind, which
    /// ran first, has its rules back), so its step put those elements in: their intents are
    /// complete. `reason`: the step's, for history.
    func released(_ holds: [Hold], db: JournalDB, reason: String, context: KindContext) throws(VirtPortError)

    /// Who owns the kind's tables, as `virtport trace` and `doctor` name them: (family, table,
    /// owner) for virtport's table name `base` (`inet virtport_src`: "virtport's source filter").
    func tableOwners(base: String) -> [(family: String, table: String, owner: String)]
}

extension RuleKind {
    public var configKeys: [KindConfigKey] { [] }
    public func tableOwners(base: String) -> [(family: String, table: String, owner: String)] { [] }
    public func fullState(in table: String, db: JournalDB, context: KindContext) throws(VirtPortError) -> (any BatchPart)? { nil }
    public var guards: [String] { [] }
    public func failClosed(db: JournalDB, cause: String, context: KindContext) throws(VirtPortError) -> [Hold] { [] }
    public func released(_ holds: [Hold], db: JournalDB, reason: String, context: KindContext) throws(VirtPortError) {}
}

/// One kind's share of a domain's change, after its intent rows are written.
public protocol StagedChange: AnyObject {
    /// What goes into the lifecycle's one netlink batch; nil: nothing for the shared batch (the
    /// kind does its own kernel work, if any, in `afterBatch`).
    var batchPart: (any BatchPart)? { get }
    /// Whether the domain's change went to the kernel at all (the `after-kernel` crash point).
    var touchesKernel: Bool { get }
    /// After the shared batch. `sent`: the batch with `batchPart` committed. Not sent (no part, or
    /// the kernel refused the shared batch: nothing of it applied): the kind sends its own batch
    /// with its recovery (missing table or element → rebuild from the journal with `lock` made
    /// exclusive; EEXIST races). Then its after-kernel side effects.
    func afterBatch(sent: Bool, db: JournalDB, lock: ChangeLock, context: KindContext) throws(VirtPortError)
    /// Inside the lifecycle's commit transaction: the intent rows become applied.
    func commit(db: JournalDB) throws(VirtPortError)
    /// After the commit: decision logs, late best-effort cleanups. In the agent this runs after
    /// the hook was answered (`Resources.later`, change lock still held shared): a warning reaches
    /// the system log, not the hook's stderr; nothing the hook's caller must see belongs here.
    func finish(db: JournalDB, context: KindContext)

    /// Fail-closed, when `afterBatch` threw (this change's rules not in place): the holds on
    /// other kinds' elements that need them (`RuleKind.guards`). Default: none.
    func holds(cause: String) -> [Hold]
    /// Fail-closed, before `afterBatch`: the holds an earlier kind of this change placed. The
    /// change keeps the held elements of its kind out of the kernel (removes them if they were
    /// in) and their intents open. Default: nothing to hold.
    func hold(_ holds: [Hold])
    /// Fail-closed, when the shared batch was refused for good (nothing of it applied): takes
    /// the held elements that were in the kernel out, in a batch of its own, and reopens their
    /// intents. Default: nothing.
    func withdraw(db: JournalDB, lock: ChangeLock, context: KindContext) throws(VirtPortError)
}

extension StagedChange {
    public func holds(cause: String) -> [Hold] { [] }
    public func hold(_ holds: [Hold]) {}
    public func withdraw(db: JournalDB, lock: ChangeLock, context: KindContext) throws(VirtPortError) {}
}

/// Reconcile's plan for one kind: decided with no I/O (`fixes` is all `--dry-run` prints), then
/// applied under the exclusive change lock.
public protocol KindReconcile {
    var fixes: [Fix] { get }
    /// Applies the plan; returns the fixes as done (a refused intent becomes a `skip`).
    func apply(db: JournalDB, lock: ChangeLock, context: KindContext) throws(VirtPortError) -> [Fix]
}

/// What every lifecycle step hands a kind.
public struct KindContext {
    public let resources: Resources
    /// Warnings (to the caller and the system log) and, through `log`, decisions.
    public let warnings: Warnings
    /// libvirt's files as this operation sees them (each network's XML parsed once).
    public let files: LibvirtFiles
    /// The kinds of this operation (`RuleKinds.all`; unit tests hand in others).
    public let kinds: [any RuleKind]
    public var config: Config { resources.config }
    public var log: EventLog { warnings.log }

    public init(resources: Resources, diagnostics: any Diagnostics, files: LibvirtFiles? = nil,
                kinds: [any RuleKind] = RuleKinds.all) {
        self.init(resources: resources, warnings: Warnings(diagnostics: diagnostics, log: EventLog(config: resources.config)),
                  files: files ?? LibvirtFiles(config: resources.config, overrides: []), kinds: kinds)
    }

    init(resources: Resources, warnings: Warnings, files: LibvirtFiles, kinds: [any RuleKind] = RuleKinds.all) {
        self.resources = resources
        self.warnings = warnings
        self.files = files
        self.kinds = kinds
    }

    /// The firewall (`Resources.kernel`).
    public func driver() throws(VirtPortError) -> any FirewallDriver { try resources.kernel() }
}

