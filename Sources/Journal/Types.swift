public import VirtPortCore

/// A libvirt domain as the journal knows it. The UUID is the identity; the name is kept for
/// people (a renamed domain keeps its rows, which take the new name at its next apply).
public struct DomainRef: Sendable, Hashable, CustomStringConvertible {
    public var name: String
    public var uuid: String
    public init(name: String, uuid: String) {
        self.name = name
        self.uuid = uuid
    }
    public var description: String { "'\(name)' (uuid \(uuid))" }
}

/// Where a journalled mapping stands relative to the kernel (see the protocol in JournalDB.swift).
public enum MappingState: String, Sendable, Hashable, CaseIterable {
    /// Intent written, kernel not yet confirmed.
    case adding
    /// In the kernel.
    case applied
    /// No guest address yet: recorded, not in the kernel.
    case pending
    /// Intent to remove written, kernel not yet confirmed.
    case removing
}

/// One row of the `mappings` table.
public struct ActiveMapping: Sendable, Hashable {
    /// Row id: stable for the row's life, never reused.
    public var id: Int64
    public var domain: DomainRef
    public var mapping: Mapping
    /// The row's state. In rows handed out *for removal* (`ApplyDelta.removing`, `beginRemoveAll`)
    /// this is the state the row had before it was marked `removing`: `applied` (in the kernel),
    /// `pending` (never in the kernel), `adding`/`removing` (left by a crash: kernel unknown).
    public var state: MappingState
    /// When the mapping went live (µs since the epoch, UTC); the intent time while `adding`.
    public var since: Int64

    public init(id: Int64, domain: DomainRef, mapping: Mapping, state: MappingState, since: Int64) {
        self.id = id
        self.domain = domain
        self.mapping = mapping
        self.state = state
        self.since = since
    }

    /// Whether the kernel holds (or is about to hold) this row's elements: `applied`, or `adding`
    /// (intent written; a rebuild must include it). Pending and removing rows are not.
    public var isInKernel: Bool { (state == .applied || state == .adding) && !mapping.isPending }
}

/// What `beginApply` decided: the kernel batch adds `adding` (those with a guest address) and
/// deletes `removing` (those whose prior state was not `pending`), then `commitApply` records it.
public struct ApplyDelta: Sendable, Hashable {
    /// New rows (`adding`, or `pending` without a guest address), and rows a crash left in
    /// `adding`/`removing` that are desired again (kernel unknown: add them without NLM_F_EXCL).
    public var adding: [ActiveMapping]
    /// Rows no longer desired, now `removing`; `state` is their prior state.
    public var removing: [ActiveMapping]
    /// Rows already `applied` or `pending` exactly as desired.
    public var unchanged: [ActiveMapping]

    public init(adding: [ActiveMapping] = [], removing: [ActiveMapping] = [], unchanged: [ActiveMapping] = []) {
        self.adding = adding
        self.removing = removing
        self.unchanged = unchanged
    }

    /// True when nothing is to be added or removed.
    public var isEmpty: Bool { adding.isEmpty && removing.isEmpty }
}

/// What a history event records: a mapping went live, or went away.
public enum HistoryAction: String, Sendable, Hashable, CaseIterable {
    case add, remove
}

/// One row of the append-only `history` table.
public struct HistoryEvent: Sendable, Hashable {
    public var id: Int64
    /// µs since the epoch, UTC.
    public var at: Int64
    public var action: HistoryAction
    /// Why: "hook qemu start", "reconcile: domain not running", …
    public var reason: String
    /// The domain as it was named at that time.
    public var domain: DomainRef
    public var mapping: Mapping

    public init(id: Int64, at: Int64, action: HistoryAction, reason: String, domain: DomainRef, mapping: Mapping) {
        self.id = id
        self.at = at
        self.action = action
        self.reason = reason
        self.domain = domain
        self.mapping = mapping
    }
}

/// Which history events to return; every field set narrows the result (all nil: everything).
public struct HistoryFilter: Sendable, Hashable {
    /// Domain name (as recorded at the time) or UUID.
    public var domain: String?
    /// A host port inside the mapping's host port range.
    public var port: UInt16?
    /// Events at or after this instant (µs).
    public var since: Int64?
    /// Events at or before this instant (µs).
    public var until: Int64?
    /// Mappings active at this instant: returns the "add" event of every mapping added at or
    /// before it and not removed before or at it.
    public var at: Int64?

    public init(domain: String? = nil, port: UInt16? = nil, since: Int64? = nil, until: Int64? = nil,
                at: Int64? = nil) {
        self.domain = domain
        self.port = port
        self.since = since
        self.until = until
        self.at = at
    }
}
