public import Netfilter
public import VirtPortCore

/// The firewall as Engine sees it: virtport's nf_tables tables (`table inet`, `table bridge`),
/// libvirt's chains (its accept rule), connection tracking, and bridge port flags. The real one is
/// `NetfilterSession` (netlink); unit tests hand `Resources` a recording fake (Tests/EngineTests
/// `RecordingFirewall`) that can be told to fail.
public protocol FirewallDriver: AnyObject {
    // MARK: One batch for several kinds
    /// Sends the parts in one atomic batch, no retries (`BatchPart`).
    func send(_ parts: [any BatchPart]) throws(NetfilterError)
    /// The forwards' change as a part (nil: nothing to change).
    func forwardPart(adding: [ForwardElement], removing: [ForwardElement], hairpinAdding: [Subnet],
                     hairpinRemoving: [Subnet]) throws(NetfilterError) -> (any BatchPart)?
    /// The guards' change as a part (reads the learned elements it purges now).
    func guardPart(adding: [GuardPort], previous: [GuardPort], removing: [GuardPort]) throws(NetfilterError) -> any BatchPart

    // MARK: table inet (forwards)
    /// One batch with the skeleton race, missing removals and a missing table handled (returns
    /// true when it created the table).
    @discardableResult
    func apply(adding: [ForwardElement], removing: [ForwardElement], hairpinAdding: [Subnet],
               hairpinRemoving: [Subnet]) throws(NetfilterError) -> Bool
    /// Rebuilds `table inet` in one batch; `others`: the full state other kinds keep in it
    /// (`RuleKind.fullState`, `Forwarder.othersInTable`) — no default, so no rebuild forgets them.
    func replaceAll(elements: [ForwardElement], hairpin: [Subnet], others: [any BatchPart]) throws(NetfilterError)
    func deleteTable() throws(NetfilterError)
    func listElements() throws(NetfilterError) -> [ForwardElement]
    func listHairpin() throws(NetfilterError) -> [Subnet]
    func skeletonIsIntact() throws(NetfilterError) -> Bool

    // MARK: table bridge (guards)
    func changeGuards(adding: [GuardPort], previous: [GuardPort], removing: [GuardPort]) throws(NetfilterError)
    func replaceGuards(_ ports: [GuardPort]) throws(NetfilterError)
    func deleteGuardTable() throws(NetfilterError)
    func guardTableDamage(expecting ports: [GuardPort]) throws(NetfilterError) -> String?
    func guardSkeletonIsIntact() throws(NetfilterError) -> Bool
    /// The named drop counters of `table bridge` (`virtport list --guards`).
    func guardCounters() throws(NetfilterError) -> [GuardCounter]

    // MARK: Bridge ports
    /// The port's isolated flag; nil when `tap` is not a bridge port.
    func isolated(_ tap: String) -> Bool?
    func setIsolated(_ tap: String, _ on: Bool) throws(NetfilterError)
    /// The port's group_fwd_mask; nil when `tap` is not a bridge port.
    func groupForwardMask(_ tap: String) -> UInt16?
    func setGuardedGroups(_ tap: String, _ on: Bool) throws(NetfilterError)

    // MARK: libvirt's chains
    func chainExists(family: Family, table: String, chain: String) throws(NetfilterError) -> Bool
    func listRules(family: Family, table: String, chain: String) throws(NetfilterError) -> [ForeignRule]?
    func deleteRules(family: Family, table: String, chain: String, handles: [UInt64]) throws(NetfilterError)
    func insertAtTop(_ rule: AcceptRule, table: String, chain: String, replacing: [UInt64]) throws(NetfilterError)

    // MARK: Connection tracking
    func flowRecord() -> FlowRecord
    @discardableResult
    func forgetFlows(of elements: [ForwardElement]) throws(NetfilterError) -> ConntrackCleanup
    @discardableResult
    func forgetFlows(of elements: [ForwardElement], record: FlowRecord?) throws(NetfilterError) -> ConntrackCleanup
    func forgetFlowsByWalking(_ elements: [ForwardElement]) throws(NetfilterError)
    func forgetFlows(toHostPort port: UInt16, proto: IPProto, family: Family) throws(NetfilterError)
    func forgetFlows(of address: IPAddress) throws(NetfilterError)

    /// A short-lived process's last call after deletes (`NetfilterSession.closeInBackground`).
    func closeInBackground()
}

extension FirewallDriver {
    @discardableResult
    public func apply(adding: [ForwardElement], removing: [ForwardElement]) throws(NetfilterError) -> Bool {
        try apply(adding: adding, removing: removing, hairpinAdding: [], hairpinRemoving: [])
    }
}

/// The netlink one; bridge port flags over NETLINK_ROUTE (`BridgePort`).
extension NetfilterSession: FirewallDriver {
    public func isolated(_ tap: String) -> Bool? { BridgePort.isolated(tap) }
    public func setIsolated(_ tap: String, _ on: Bool) throws(NetfilterError) { try BridgePort.setIsolated(tap, on) }
    public func groupForwardMask(_ tap: String) -> UInt16? { BridgePort.groupForwardMask(tap) }
    public func setGuardedGroups(_ tap: String, _ on: Bool) throws(NetfilterError) { try BridgePort.setGuardedGroups(tap, on) }
}
