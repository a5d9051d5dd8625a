public import Journal
public import Netfilter
public import VirtPortCore

/// One thing reconcile does (or, with `--dry-run`, would do), as `virtport reconcile` reports it.
public struct Fix: Sendable, Equatable {
    public enum Action: String, Sendable, CaseIterable {
        /// A mapping the domain's metadata declares is missing from the journal (or half-added).
        case addMapping = "add-mapping"
        /// A journal mapping that its domain no longer declares, or whose domain is not running.
        case removeMapping = "remove-mapping"
        /// An element the journal has applied is missing from the kernel.
        case kernelAdd = "kernel-add"
        /// An element in the kernel that no mapping owns.
        case kernelDelete = "kernel-delete"
        /// virtport's table is missing chains or rules (or unreadable): rebuilt in one batch.
        case rebuildTable = "rebuild-table"
        /// The journal was missing or corrupt: a fresh one is rebuilt from the running domains.
        case rebuildJournal = "rebuild-journal"
        /// libvirt's accept rule for a network with forwards is missing, doubled, or below libvirt's
        /// reject (libvirt rebuilt its rules): put back at the top of libvirt's chain.
        case acceptRule = "accept-rule"
        /// Left alone, with the reason (unreadable live XML, invalid metadata, a refused intent).
        case skip
    }

    public var action: Action
    public var domain: String?
    public var what: String
    public var reason: String
    /// The rule kind it is about (`RuleKind.name`: `forwards`, `guards`, …): doctor's check name.
    public var kind: String
    /// About a bridge port guard (`GuardKind`), not a forward.
    public var guards: Bool { kind == GuardKind.name }
    /// What it means, for `virtport doctor` (nil: doctor's own wording for forwards).
    public var explanation: String?
    /// The error behind a `skip` (a refused intent), as typed: `reason` is its text for people.
    public var error: VirtPortError?

    public init(_ action: Action, domain: String?, what: String, reason: String, guards: Bool = false,
                kind: String? = nil, explanation: String? = nil, error: VirtPortError? = nil) {
        self.kind = kind ?? (guards ? GuardKind.name : ForwardKind.name)
        self.explanation = explanation
        self.error = error
        self.action = action
        self.domain = domain
        self.what = what
        self.reason = reason
    }
}

/// A running domain as reconcile sees it: its live XML parsed, or why it could not be.
public struct RunningDomain: Sendable {
    public var domain: Domain?
    public var uuid: String
    public var name: String
    /// Why the live XML could not be used (the domain's rows are then left alone).
    public var problem: String?

    public init(domain: Domain?, uuid: String, name: String, problem: String? = nil) {
        self.domain = domain
        self.uuid = uuid
        self.name = name
        self.problem = problem
    }
}

/// What virtport's table holds, as read back before planning.
public struct KernelState: Sendable {
    public var elements: Set<ForwardElement>
    /// The table exists with every chain and rule.
    public var skeletonIntact: Bool
    /// The table is absent.
    public var tableMissing: Bool
    /// Why it could not be read (then it is rebuilt if anything belongs there).
    public var readError: String?

    public init(elements: Set<ForwardElement> = [], skeletonIntact: Bool = true, tableMissing: Bool = false,
                readError: String? = nil) {
        self.elements = elements
        self.skeletonIntact = skeletonIntact
        self.tableMissing = tableMissing
        self.readError = readError
    }
}

/// What reconcile will do: computed from the journal's rows, the running domains and the kernel's
/// state, with no I/O; `--dry-run` prints `fixes`, a real run applies it (`Reconciler.apply`).
public struct ReconcilePlan: Sendable {
    /// Per domain uuid: the mappings it should have; domains absent here keep their rows.
    public var desired: [String: (domain: DomainRef, mappings: [Mapping], reason: String)] = [:]
    /// The elements the kernel should hold once the intents are written.
    public var target: Set<ForwardElement> = []
    public var rebuildTable = false
    public var kernelAdd: Set<ForwardElement> = []
    public var kernelDelete: Set<ForwardElement> = []
    /// Networks the journal's rows forward into (their hairpin subnets and accept rules are synced).
    public var networks: Set<String> = []
    /// The mappings the journal will hold once the plan is applied (their networks need libvirt's
    /// accept rule).
    public var kept: [Mapping] = []
    public var fixes: [Fix] = []
    /// Fail-closed: the forwards another kind holds, as `domain uuid#Mapping.hostKey`: kept out of
    /// the kernel, their intents left open (`hold`).
    public var held: Set<String> = []

    public init() {}

    func isHeld(_ uuid: String, _ m: Mapping) -> Bool { !held.isEmpty && held.contains(uuid + "#" + m.hostKey) }

    /// Takes the held forwards out of the target (out of the kernel if they are in) and says so:
    /// a `skip` per held forward instead of its `add-mapping`.
    mutating func hold(_ holds: [Hold], rows: [ActiveMapping], kernel: KernelState, table: String, reason: String) {
        held = Set(holds.map { $0.domain.uuid + "#" + $0.key })
        var out: Set<ForwardElement> = []
        for (uuid, want) in desired {
            for m in want.mappings where isHeld(uuid, m) {
                out.formUnion(m.elements)
                fixes.removeAll { $0.action == .addMapping && $0.domain == want.domain.name && $0.what == MappingText.describe(m) }
            }
        }
        for r in rows where desired[r.domain.uuid] == nil && isHeld(r.domain.uuid, r.mapping) { out.formUnion(r.mapping.elements) }
        for h in holds {
            fixes.append(Fix(.skip, domain: h.domain.name, what: h.what + " held", reason: "\(h.by) not in place: \(h.cause)",
                             explanation: "the forward is not applied (it stays out of the kernel until its \(h.by) are in place)"))
        }
        target.subtract(out)
        planKernel(kernel, table: table, rows: rows, reason: reason)
    }

    /// Builds the plan.
    /// - Parameters:
    ///   - rows: the journal's active mappings (none when there is no journal yet).
    ///   - running: the running domains by uuid.
    ///   - kernel: virtport's table as read back.
    ///   - plan: plans one domain's metadata (the planner with this host's resolver and policy).
    public static func make(rows: [ActiveMapping], running: [String: RunningDomain], kernel: KernelState,
                            table: String, reason: String,
                            plan: (Domain) throws(VirtPortError) -> [Mapping]) -> ReconcilePlan {
        var p = ReconcilePlan()
        p.networks = Set(rows.compactMap(\.mapping.network))
        // 1. What each domain should have.
        var domains: [String: DomainRef] = [:]
        for r in rows { domains[r.domain.uuid] = r.domain }
        for (uuid, e) in running where e.domain?.metadata != nil { domains[uuid] = DomainRef(name: e.name, uuid: uuid) }
        for (uuid, ref) in domains.sorted(by: { $0.value.name < $1.value.name }) {
            let why = running[uuid] == nil ? "\(reason): domain not running" : "\(reason): domain running"
            var want: [Mapping] = []
            if let e = running[uuid] {
                guard let d = e.domain else {
                    p.fixes.append(Fix(.skip, domain: ref.name, what: "live XML unreadable", reason: e.problem ?? "?"))
                    continue
                }
                if d.metadata != nil {
                    do { want = try plan(d) } catch {
                        p.fixes.append(Fix(.skip, domain: ref.name, what: "metadata invalid, mappings left as they are",
                                           reason: error.message))
                        continue
                    }
                }
            }
            p.desired[uuid] = (ref, want, why)
            // 2. Journal intents (what the kernel must end up holding).
            let have = rows.filter { $0.domain.uuid == uuid }
            let haveSet = Set(have.filter { $0.state != .removing }.map(\.mapping))
            for m in want where !haveSet.contains(m) || have.contains(where: { $0.mapping == m && $0.state == .adding }) {
                p.fixes.append(Fix(.addMapping, domain: ref.name, what: MappingText.describe(m), reason: why))
            }
            for r in have where !want.contains(r.mapping) {
                p.fixes.append(Fix(.removeMapping, domain: ref.name, what: MappingText.describe(r.mapping), reason: why))
            }
        }
        // 3. Kernel: the target set, and how to get there in one batch.
        for (uuid, _) in domains {
            let ms = p.desired[uuid]?.mappings ?? rows.filter { $0.domain.uuid == uuid && $0.state != .removing }.map(\.mapping)
            for m in ms { p.target.formUnion(m.elements) }
            p.kept += ms
        }
        p.planKernel(kernel, table: table, rows: rows, reason: reason)
        return p
    }

    /// The kernel step for `target` against `kernel` (also after `apply` found a different target).
    mutating func planKernel(_ kernel: KernelState, table: String, rows: [ActiveMapping], reason: String) {
        fixes.removeAll { $0.action == .rebuildTable || $0.action == .kernelAdd || $0.action == .kernelDelete }
        rebuildTable = false
        if !target.isEmpty {
            if let error = kernel.readError {
                rebuildTable = true
                fixes.append(Fix(.rebuildTable, domain: nil, what: "table inet \(table)", reason: error))
            } else if !kernel.tableMissing && !kernel.skeletonIntact {
                rebuildTable = true
                fixes.append(Fix(.rebuildTable, domain: nil, what: "table inet \(table)",
                                 reason: "\(reason): chains or rules missing"))
            } else if kernel.tableMissing {
                rebuildTable = true
                fixes.append(Fix(.rebuildTable, domain: nil, what: "table inet \(table)",
                                 reason: "\(NetfilterError.missingTable(table))"))
            }
        }
        kernelAdd = target.subtracting(kernel.elements)
        kernelDelete = kernel.elements.subtracting(target)
        if rebuildTable { return }
        var owners: [ForwardElement: String] = [:]
        if !kernelAdd.isEmpty || !kernelDelete.isEmpty {
            for r in rows { for e in r.mapping.elements { owners[e] = r.domain.name } }
        }
        for e in kernelAdd.sorted(by: { $0.description < $1.description }) {
            fixes.append(Fix(.kernelAdd, domain: owners[e], what: e.description, reason: "\(reason): missing from the kernel"))
        }
        for e in kernelDelete.sorted(by: { $0.description < $1.description }) {
            fixes.append(Fix(.kernelDelete, domain: owners[e], what: e.description, reason: "\(reason): no mapping owns it"))
        }
    }
}

/// Mappings as people read them: `tcp *:2222 -> 192.168.122.10:22`.
public enum MappingText {
    public static func host(_ m: Mapping) -> String {
        let addr = m.hostAddress.map { $0.family == .ipv6 ? "[\($0)]" : "\($0)" } ?? "*"
        let dev = m.dev.map { "%\($0)" } ?? ""
        return "\(addr)\(dev):\(m.hostPorts)"
    }

    public static func guest(_ m: Mapping) -> String {
        guard let g = m.guestAddress else { return "(pending):\(m.guestPorts)" }
        return (g.family == .ipv6 ? "[\(g)]" : "\(g)") + ":\(m.guestPorts)"
    }

    public static func describe(_ m: Mapping) -> String { "\(m.proto.rawValue) \(host(m)) -> \(guest(m))" }
}
