#if canImport(Glibc)
import Glibc
#endif
import CLibvirt
import POSIX
import VirtPortCore

/// What libvirtd tells the agent (README "Agent"): the events it registers, reduced to what the
/// agent acts on. Every domain event carries the domain's uuid and name; what to do is decided
/// from the domain's state when the work runs, not from the event's detail.
public enum LibvirtEvent: Sendable, Equatable {
    /// Defined, started, stopped, resumed, … (`VIR_DOMAIN_EVENT_ID_LIFECYCLE`).
    case lifecycle(uuid: String, name: String, event: Int32)
    /// `virsh metadata` (or `virtport add` elsewhere) changed metadata of namespace `uri`
    /// (`VIR_DOMAIN_EVENT_ID_METADATA_CHANGE`).
    case metadata(uuid: String, name: String, uri: String)
    /// A network started, stopped, … (`VIR_NETWORK_EVENT_ID_LIFECYCLE`).
    case network(name: String, event: Int32)
    /// The connection closed (libvirtd stopped or restarted): reconnect.
    case closed(reason: Int32)

    /// `VIR_DOMAIN_EVENT_STARTED`, `…_STOPPED`: the lifecycle events that change what runs.
    public static let domainStarted = Int32(VIR_DOMAIN_EVENT_STARTED.rawValue)
    public static let domainStopped = Int32(VIR_DOMAIN_EVENT_STOPPED.rawValue)
    public static let networkStarted = Int32(VIR_NETWORK_EVENT_STARTED.rawValue)
}

/// libvirt's default event loop (`virEventRegisterDefaultImpl`), which a connection needs for
/// events and keepalive. Registered once per process; `runOnce` is what the agent's libvirt thread
/// calls in a loop (it sleeps in poll() until libvirtd sends something).
public enum LibvirtEventLoop {
    private typealias VoidFn = @convention(c) () -> Int32
    nonisolated(unsafe) private static var run: VoidFn?

    /// Registers libvirt's default event loop implementation (before any connection is opened).
    /// Returns false when libvirt cannot be loaded.
    public static func register() -> Bool {
        if run != nil { return true }
        guard let h = dlopen("libvirt.so.0", RTLD_NOW | RTLD_LOCAL),
              let reg = dlsym(h, "virEventRegisterDefaultImpl"), let r = dlsym(h, "virEventRunDefaultImpl")
        else { return false }
        guard unsafeBitCast(reg, to: VoidFn.self)() == 0 else { return false }
        run = unsafeBitCast(r, to: VoidFn.self)
        return true
    }

    /// One iteration of libvirt's loop: dispatches whatever is due, sleeping until something is.
    public static func runOnce() {
        if run?() ?? -1 < 0 { Thread.sleep(millis: 100) }
    }
}

/// The agent's libvirt connection with its event callbacks registered: domain lifecycle, domain
/// metadata change, network lifecycle, and the close callback (libvirtd went away). Callbacks run
/// on libvirt's event loop thread and only hand the event to `handler`, which must not block.
/// Not `Sendable`: the thread that opened it (the agent's work queue) is the only one that uses it.
public final class LibvirtEventConnection {
    /// For queries on the same connection (the watcher's work queue thread only).
    public let client: LibvirtClient
    private let box: Unmanaged<HandlerBox>
    private var callbacks: [(deregister: Bool, id: Int32)] = []

    final class HandlerBox {
        let handler: @Sendable (LibvirtEvent) -> Void
        let client: Unmanaged<LibvirtClient>
        init(_ handler: @escaping @Sendable (LibvirtEvent) -> Void, client: LibvirtClient) {
            self.handler = handler
            self.client = .passUnretained(client)
        }
    }

    private typealias DomainRegFn = @convention(c) (virConnectPtr?, virDomainPtr?, Int32, virConnectDomainEventGenericCallback?,
                                                    UnsafeMutableRawPointer?, virFreeCallback?) -> Int32
    private typealias NetworkRegFn = @convention(c) (virConnectPtr?, virNetworkPtr?, Int32, virConnectNetworkEventGenericCallback?,
                                                     UnsafeMutableRawPointer?, virFreeCallback?) -> Int32
    private typealias DeregFn = @convention(c) (virConnectPtr?, Int32) -> Int32
    private typealias CloseRegFn = @convention(c) (virConnectPtr?, virConnectCloseFunc?, UnsafeMutableRawPointer?, virFreeCallback?) -> Int32
    private typealias NetNameFn = @convention(c) (virNetworkPtr?) -> UnsafePointer<CChar>?

    /// Opens a read-write connection to `uri` (`LibvirtEventLoop.register()` must have run) and
    /// registers the callbacks. nil when libvirtd does not answer (`LibvirtClient.lastFailure`).
    public init?(uri: String, handler: @escaping @Sendable (LibvirtEvent) -> Void) {
        guard let client = LibvirtClient.connect(uri: uri, readWrite: true) else { return nil }
        self.client = client
        box = .passRetained(HandlerBox(handler, client: client))
        let opaque = box.toOpaque()
        guard let domainReg = client.function("virConnectDomainEventRegisterAny", DomainRegFn.self),
              let networkReg = client.function("virConnectNetworkEventRegisterAny", NetworkRegFn.self),
              let closeReg = client.function("virConnectRegisterCloseCallback", CloseRegFn.self)
        else {
            LibvirtClient.lastFailure = "libvirt.so.0 lacks the event registration functions"
            box.release()
            return nil
        }
        let lifecycle: virConnectDomainEventCallback = { _, dom, event, _, opaque in
            guard let dom, let opaque else { return 0 }
            let b = Unmanaged<HandlerBox>.fromOpaque(opaque).takeUnretainedValue()
            let c = b.client.takeUnretainedValue()
            guard let uuid = c.uuidString(dom) else { return 0 }
            b.handler(.lifecycle(uuid: uuid, name: c.name(dom).map { String(cString: $0) } ?? "", event: event))
            return 0
        }
        let metadata: virConnectDomainEventMetadataChangeCallback = { _, dom, _, nsuri, opaque in
            guard let dom, let opaque else { return }
            let b = Unmanaged<HandlerBox>.fromOpaque(opaque).takeUnretainedValue()
            let c = b.client.takeUnretainedValue()
            guard let uuid = c.uuidString(dom) else { return }
            b.handler(.metadata(uuid: uuid, name: c.name(dom).map { String(cString: $0) } ?? "",
                                uri: nsuri.map { String(cString: $0) } ?? ""))
        }
        Self.networkNameFn = client.function("virNetworkGetName", NetNameFn.self)
        let network: virConnectNetworkEventLifecycleCallback = { _, net, event, _, opaque in
            guard let net, let opaque else { return }
            let b = Unmanaged<HandlerBox>.fromOpaque(opaque).takeUnretainedValue()
            b.handler(.network(name: LibvirtEventConnection.networkName(net), event: event))
        }
        let closed: virConnectCloseFunc = { _, reason, opaque in
            guard let opaque else { return }
            Unmanaged<HandlerBox>.fromOpaque(opaque).takeUnretainedValue().handler(.closed(reason: reason))
        }
        let ids: [Int32] = [
            domainReg(client.conn, nil, Int32(VIR_DOMAIN_EVENT_ID_LIFECYCLE.rawValue),
                      unsafeBitCast(lifecycle, to: virConnectDomainEventGenericCallback.self), opaque, nil),
            domainReg(client.conn, nil, Int32(VIR_DOMAIN_EVENT_ID_METADATA_CHANGE.rawValue),
                      unsafeBitCast(metadata, to: virConnectDomainEventGenericCallback.self), opaque, nil),
        ]
        let netID = networkReg(client.conn, nil, Int32(VIR_NETWORK_EVENT_ID_LIFECYCLE.rawValue),
                               unsafeBitCast(network, to: virConnectNetworkEventGenericCallback.self), opaque, nil)
        let closeRC = closeReg(client.conn, closed, opaque, nil)
        callbacks = ids.map { (false, $0) } + [(true, netID)]
        // With the modular daemons a qemu:/// connection reaches virtqemud, which has no network
        // events: the domain events are what matters (network `started` has its hook).
        networkEvents = netID >= 0
        if !networkEvents { networkProblem = "\(client.lastError())" }
        if ids.contains(where: { $0 < 0 }) || closeRC < 0 {
            LibvirtClient.lastFailure = "cannot register libvirt events: \(client.lastError())"
            deregister()
            box.release()
            return nil
        }
    }

    nonisolated(unsafe) private static var networkNameFn: NetNameFn?

    private static func networkName(_ net: virNetworkPtr) -> String {
        networkNameFn?(net).map { String(cString: $0) } ?? ""
    }

    /// Whether network lifecycle events are registered, and if not, libvirt's reason.
    public private(set) var networkEvents = false
    public private(set) var networkProblem = ""

    private func deregister() {
        if let domainDereg = client.function("virConnectDomainEventDeregisterAny", DeregFn.self),
           let networkDereg = client.function("virConnectNetworkEventDeregisterAny", DeregFn.self) {
            for (isNetwork, id) in callbacks where id >= 0 { _ = (isNetwork ? networkDereg : domainDereg)(client.conn, id) }
        }
        callbacks = []
        // The close callback goes with the connection.
    }

    // The handler box is never released: libvirt may still be dispatching a callback on its loop
    // thread when the connection goes; one small box per reconnect is the price of never calling
    // a freed handler.
    deinit { deregister() }
}

@available(*, unavailable)
extension LibvirtEventConnection: Sendable {}
