#if canImport(Glibc)
import Glibc
#endif
import CLibvirt
public import VirtPortCore

/// A read-only connection to libvirtd through its C API, loaded with dlopen("libvirt.so.0") on
/// first use: the binary does not link libvirt, so hooks (which must never call the libvirt API:
/// deadlock) never even map it. Used by reconcile (and later the agent) when libvirtd is up.
///
/// Not Sendable: one connection, one thread.
public final class LibvirtClient {
    /// One active domain as libvirt reports it, with its live XML.
    public struct ActiveDomain: Sendable {
        public var name: String
        public var uuid: String
        /// The live XML (`virDomainGetXMLDesc`, no flags), metadata included.
        public var xml: [UInt8]
    }

    private typealias OpenFn = @convention(c) (UnsafePointer<CChar>?) -> virConnectPtr?
    private typealias CloseFn = @convention(c) (virConnectPtr?) -> Int32
    private typealias ListFn = @convention(c) (virConnectPtr?, UnsafeMutablePointer<UnsafeMutablePointer<virDomainPtr?>?>?, UInt32) -> Int32
    typealias NameFn = @convention(c) (virDomainPtr?) -> UnsafePointer<CChar>?
    typealias UUIDFn = @convention(c) (virDomainPtr?, UnsafeMutablePointer<CChar>?) -> Int32
    typealias XMLFn = @convention(c) (virDomainPtr?, UInt32) -> UnsafeMutablePointer<CChar>?
    typealias FreeFn = @convention(c) (virDomainPtr?) -> Int32
    private typealias ErrorFuncFn = @convention(c) (UnsafeMutableRawPointer?, virErrorFunc?) -> Void
    private typealias LastErrorFn = @convention(c) () -> UnsafeMutablePointer<virError>?

    let handle: UnsafeMutableRawPointer
    let conn: virConnectPtr
    private let close: CloseFn
    private let list: ListFn
    let name: NameFn
    let uuid: UUIDFn
    let xml: XMLFn
    let free: FreeFn

    /// Connects to `uri` (e.g. qemu:///system): read-only, or read-write (`virtport add`/`remove`
    /// edit metadata; the agent's event connection).
    /// - Returns: nil when libvirt is not installed or libvirtd does not answer (the caller then
    ///   falls back to libvirt's status files); the reason is in `lastFailure`.
    public static func connect(uri: String, readWrite: Bool = false) -> LibvirtClient? {
        guard let h = dlopen("libvirt.so.0", RTLD_NOW | RTLD_LOCAL) else {
            lastFailure = "libvirt.so.0 not loadable"
            return nil
        }
        func sym<T>(_ n: String, _: T.Type) -> T? {
            guard let p = dlsym(h, n) else { return nil }
            return unsafeBitCast(p, to: T.self)
        }
        guard let open = sym(readWrite ? "virConnectOpen" : "virConnectOpenReadOnly", OpenFn.self), let close = sym("virConnectClose", CloseFn.self),
              let list = sym("virConnectListAllDomains", ListFn.self), let name = sym("virDomainGetName", NameFn.self),
              let uuid = sym("virDomainGetUUIDString", UUIDFn.self), let xml = sym("virDomainGetXMLDesc", XMLFn.self),
              let free = sym("virDomainFree", FreeFn.self)
        else {
            lastFailure = "libvirt.so.0 lacks a needed function"
            dlclose(h)
            return nil
        }
        // libvirt prints its errors to stderr by default: keep them for our own one line.
        sym("virSetErrorFunc", ErrorFuncFn.self)?(nil, { _, _ in })
        guard let c = open(uri) else {
            let detail = sym("virGetLastError", LastErrorFn.self)?()?.pointee.message.map { String(cString: $0) }
            lastFailure = "cannot connect to \(uri)" + (detail.map { ": \($0)" } ?? "")
            dlclose(h)
            return nil
        }
        return LibvirtClient(handle: h, conn: c, close: close, list: list, name: name, uuid: uuid, xml: xml, free: free)
    }

    /// Why the last `connect` returned nil.
    nonisolated(unsafe) public static var lastFailure = ""

    private init(handle: UnsafeMutableRawPointer, conn: virConnectPtr, close: CloseFn, list: ListFn, name: NameFn,
                 uuid: UUIDFn, xml: XMLFn, free: FreeFn) {
        self.handle = handle
        self.conn = conn
        self.close = close
        self.list = list
        self.name = name
        self.uuid = uuid
        self.xml = xml
        self.free = free
    }

    deinit {
        _ = close(conn)
        dlclose(handle)
    }

    /// A libvirt function by name, or nil when this libvirt lacks it.
    func function<T>(_ name: String, _: T.Type) -> T? {
        dlsym(handle, name).map { unsafeBitCast($0, to: T.self) }
    }

    /// What libvirt said about its last failure (`virGetLastError`).
    func lastError() -> LibvirtError {
        typealias LastErrorFn = @convention(c) () -> UnsafeMutablePointer<virError>?
        guard let e = function("virGetLastError", LastErrorFn.self)?()?.pointee else {
            return LibvirtError(code: 0, message: "unknown error")
        }
        return LibvirtError(code: e.code, message: e.message.map { String(cString: $0) } ?? "error \(e.code)")
    }

    /// The UUID string of a domain handle (no round trip: the handle carries it).
    func uuidString(_ d: virDomainPtr) -> String? {
        var buf = [CChar](repeating: 0, count: Int(VIR_UUID_STRING_BUFLEN))
        guard uuid(d, &buf) == 0 else { return nil }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).lowercased()
    }

    /// Copies and frees a string libvirt allocated.
    static func take(_ p: UnsafeMutablePointer<CChar>?) -> [UInt8]? {
        guard let p else { return nil }
        defer { Glibc.free(p) }
        return Array(UnsafeBufferPointer(start: UnsafeRawPointer(p).assumingMemoryBound(to: UInt8.self), count: strlen(p)))
    }

    /// Every active domain (running, paused, or starting: libvirt counts a domain active from
    /// before its `prepare` hook, which is what reconcile needs to leave a starting VM alone).
    /// Wraps `virConnectListAllDomains(VIR_CONNECT_LIST_DOMAINS_ACTIVE)`, `virDomainGetXMLDesc`.
    public func activeDomains() throws(VirtPortError) -> [ActiveDomain] {
        var domains: UnsafeMutablePointer<virDomainPtr?>?
        let n = list(conn, &domains, UInt32(VIR_CONNECT_LIST_DOMAINS_ACTIVE.rawValue))
        guard n >= 0, let domains else { throw .operational("libvirt: cannot list active domains") }
        defer { Glibc.free(domains) }
        var out: [ActiveDomain] = []
        for i in 0..<Int(n) {
            guard let d = domains[i] else { continue }
            defer { _ = free(d) }
            guard let u = uuidString(d), let cname = name(d) else { continue }
            out.append(ActiveDomain(name: String(cString: cname), uuid: u, xml: Self.take(xml(d, 0)) ?? []))
        }
        return out
    }

    /// One domain's XML by name, as `virsh dumpxml` gives it: the live XML when the domain runs,
    /// else (or with `inactive`) its persistent definition (`VIR_DOMAIN_XML_INACTIVE`).
    /// - Throws: `.invalid` when no domain has that name (a wrong argument), `.operational` when
    ///   libvirt fails otherwise.
    public func domainXML(name domainName: String, inactive: Bool) throws(VirtPortError) -> (xml: [UInt8], running: Bool) {
        let d = try domain(named: domainName)
        let running = d.isActive
        return (try d.xml(inactive: inactive || !running), running)
    }

    /// The domain called `domainName` (`virDomainLookupByName`).
    /// - Throws: `.invalid` when no domain has that name, `.operational` when libvirt fails otherwise.
    public func domain(named domainName: String) throws(VirtPortError) -> LibvirtDomain {
        typealias LookupFn = @convention(c) (virConnectPtr?, UnsafePointer<CChar>?) -> virDomainPtr?
        guard let lookup = function("virDomainLookupByName", LookupFn.self) else {
            throw .operational("libvirt.so.0 lacks virDomainLookupByName")
        }
        guard let d = lookup(conn, domainName) else {
            let e = lastError()
            if e.code == Int32(VIR_ERR_NO_DOMAIN.rawValue) {
                throw .invalid("domain '\(domainName)' is not defined (virsh list --all shows the domains)")
            }
            throw .operational("libvirt: cannot look up domain '\(domainName)'", cause: e)
        }
        return LibvirtDomain(client: self, handle: d)
    }

    /// The domain with `uuid`, or nil when libvirt knows none (it was undefined meanwhile).
    public func domain(uuid: String) -> LibvirtDomain? {
        typealias LookupFn = @convention(c) (virConnectPtr?, UnsafePointer<CChar>?) -> virDomainPtr?
        guard let lookup = function("virDomainLookupByUUIDString", LookupFn.self), let d = lookup(conn, uuid) else { return nil }
        return LibvirtDomain(client: self, handle: d)
    }
}

/// One domain handle of a `LibvirtClient` (freed with it). Same thread as its client.
public final class LibvirtDomain {
    let client: LibvirtClient
    let handle: virDomainPtr

    init(client: LibvirtClient, handle: virDomainPtr) {
        self.client = client
        self.handle = handle
    }

    deinit { _ = client.free(handle) }

    public var name: String { client.name(handle).map { String(cString: $0) } ?? "" }
    public var uuid: String { client.uuidString(handle) ?? "" }

    /// Running (or paused, or starting).
    public var isActive: Bool { flag("virDomainIsActive") }
    /// Has a persistent definition (`virsh define`), not only a live one (`virsh create`).
    public var isPersistent: Bool { flag("virDomainIsPersistent") }

    private func flag(_ fn: String) -> Bool {
        typealias FlagFn = @convention(c) (virDomainPtr?) -> Int32
        return client.function(fn, FlagFn.self)?(handle) == 1
    }

    /// The live XML, or the persistent definition with `inactive`.
    public func xml(inactive: Bool) throws(VirtPortError) -> [UInt8] {
        guard let bytes = LibvirtClient.take(client.xml(handle, inactive ? UInt32(VIR_DOMAIN_XML_INACTIVE.rawValue) : 0)) else {
            throw .operational("libvirt: cannot read the XML of domain '\(name)'", cause: client.lastError())
        }
        return bytes
    }

    /// The metadata element of namespace `uri` in the live XML (`live`) or the persistent
    /// definition; nil when the domain has none (`VIR_ERR_NO_DOMAIN_METADATA`).
    public func metadata(uri: String, live: Bool) throws(VirtPortError) -> [UInt8]? {
        typealias GetFn = @convention(c) (virDomainPtr?, Int32, UnsafePointer<CChar>?, UInt32) -> UnsafeMutablePointer<CChar>?
        guard let get = client.function("virDomainGetMetadata", GetFn.self) else {
            throw .operational("libvirt.so.0 lacks virDomainGetMetadata")
        }
        if let bytes = LibvirtClient.take(get(handle, Int32(VIR_DOMAIN_METADATA_ELEMENT.rawValue), uri, Self.scope(live))) {
            return bytes
        }
        let e = client.lastError()
        if e.code == Int32(VIR_ERR_NO_DOMAIN_METADATA.rawValue) { return nil }
        throw .operational("libvirt: cannot read the metadata of domain '\(name)'", cause: e)
    }

    /// Replaces (or, with nil, removes) the metadata element of namespace `uri`, written with the
    /// prefix `key`, in the live XML (`live`) or the persistent definition.
    public func setMetadata(_ xml: String?, key: String, uri: String, live: Bool) throws(VirtPortError) {
        typealias SetFn = @convention(c) (virDomainPtr?, Int32, UnsafePointer<CChar>?, UnsafePointer<CChar>?,
                                          UnsafePointer<CChar>?, UInt32) -> Int32
        guard let set = client.function("virDomainSetMetadata", SetFn.self) else {
            throw .operational("libvirt.so.0 lacks virDomainSetMetadata")
        }
        let type = Int32(VIR_DOMAIN_METADATA_ELEMENT.rawValue)
        let rc = xml.map { x in set(handle, type, x, key, uri, Self.scope(live)) } ?? set(handle, type, nil, nil, uri, Self.scope(live))
        guard rc == 0 else {
            throw .operational("libvirt: cannot write the metadata of domain '\(name)' (\(live ? "live" : "persistent"))",
                               cause: client.lastError())
        }
    }

    private static func scope(_ live: Bool) -> UInt32 {
        UInt32(live ? VIR_DOMAIN_AFFECT_LIVE.rawValue : VIR_DOMAIN_AFFECT_CONFIG.rawValue)
    }
}

@available(*, unavailable)
extension LibvirtClient: Sendable {}

@available(*, unavailable)
extension LibvirtDomain: Sendable {}

/// What libvirt answered (`virGetLastError`): its error code and message.
public struct LibvirtError: ErrorCause {
    public var code: Int32
    public var message: String
    public var description: String { message }
}
