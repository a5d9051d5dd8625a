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
    private typealias NameFn = @convention(c) (virDomainPtr?) -> UnsafePointer<CChar>?
    private typealias UUIDFn = @convention(c) (virDomainPtr?, UnsafeMutablePointer<CChar>?) -> Int32
    private typealias XMLFn = @convention(c) (virDomainPtr?, UInt32) -> UnsafeMutablePointer<CChar>?
    private typealias FreeFn = @convention(c) (virDomainPtr?) -> Int32
    private typealias ErrorFuncFn = @convention(c) (UnsafeMutableRawPointer?, virErrorFunc?) -> Void
    private typealias LastErrorFn = @convention(c) () -> UnsafeMutablePointer<virError>?

    private let handle: UnsafeMutableRawPointer
    private let conn: virConnectPtr
    private let close: CloseFn
    private let list: ListFn
    private let name: NameFn
    private let uuid: UUIDFn
    private let xml: XMLFn
    private let free: FreeFn

    /// Connects read-only to `uri` (e.g. qemu:///system).
    /// - Returns: nil when libvirt is not installed or libvirtd does not answer (the caller then
    ///   falls back to libvirt's status files); the reason is in `lastFailure`.
    public static func connect(uri: String) -> LibvirtClient? {
        guard let h = dlopen("libvirt.so.0", RTLD_NOW | RTLD_LOCAL) else {
            lastFailure = "libvirt.so.0 not loadable"
            return nil
        }
        func sym<T>(_ n: String, _: T.Type) -> T? {
            guard let p = dlsym(h, n) else { return nil }
            return unsafeBitCast(p, to: T.self)
        }
        guard let open = sym("virConnectOpenReadOnly", OpenFn.self), let close = sym("virConnectClose", CloseFn.self),
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
            var buf = [CChar](repeating: 0, count: Int(VIR_UUID_STRING_BUFLEN))
            guard uuid(d, &buf) == 0, let cname = name(d) else { continue }
            let u = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            var bytes: [UInt8] = []
            if let x = xml(d, 0) {
                bytes = Array(UnsafeBufferPointer(start: UnsafeRawPointer(x).assumingMemoryBound(to: UInt8.self), count: strlen(x)))
                Glibc.free(x)
            }
            out.append(ActiveDomain(name: String(cString: cname), uuid: u.lowercased(), xml: bytes))
        }
        return out
    }

    /// One domain's XML by name, as `virsh dumpxml` gives it: the live XML when the domain runs,
    /// else (or with `inactive`) its persistent definition (`VIR_DOMAIN_XML_INACTIVE`).
    /// Wraps `virDomainLookupByName`, `virDomainIsActive`, `virDomainGetXMLDesc`.
    /// - Throws: `.invalid` when no domain has that name (a wrong argument), `.operational` when
    ///   libvirt fails otherwise.
    public func domainXML(name domainName: String, inactive: Bool) throws(VirtPortError) -> (xml: [UInt8], running: Bool) {
        typealias LookupFn = @convention(c) (virConnectPtr?, UnsafePointer<CChar>?) -> virDomainPtr?
        typealias IsActiveFn = @convention(c) (virDomainPtr?) -> Int32
        typealias LastErrorFn = @convention(c) () -> UnsafeMutablePointer<virError>?
        guard let l = dlsym(handle, "virDomainLookupByName"), let a = dlsym(handle, "virDomainIsActive") else {
            throw .operational("libvirt.so.0 lacks virDomainLookupByName or virDomainIsActive")
        }
        let lastError = dlsym(handle, "virGetLastError").map { unsafeBitCast($0, to: LastErrorFn.self) }
        func failure() -> (code: Int32, message: String) {
            guard let e = lastError?()?.pointee else { return (0, "unknown error") }
            return (e.code, e.message.map { String(cString: $0) } ?? "error \(e.code)")
        }
        guard let d = unsafeBitCast(l, to: LookupFn.self)(conn, domainName) else {
            let (code, message) = failure()
            if code == Int32(VIR_ERR_NO_DOMAIN.rawValue) {
                throw .invalid("domain '\(domainName)' is not defined (virsh list --all shows the domains)")
            }
            throw .operational("libvirt: cannot look up domain '\(domainName)'", cause: LibvirtError(code: code, message: message))
        }
        defer { _ = free(d) }
        let running = unsafeBitCast(a, to: IsActiveFn.self)(d) == 1
        let flags = inactive || !running ? UInt32(VIR_DOMAIN_XML_INACTIVE.rawValue) : 0
        guard let x = xml(d, flags) else {
            let (code, message) = failure()
            throw .operational("libvirt: cannot read the XML of domain '\(domainName)'", cause: LibvirtError(code: code, message: message))
        }
        defer { Glibc.free(x) }
        let bytes = Array(UnsafeBufferPointer(start: UnsafeRawPointer(x).assumingMemoryBound(to: UInt8.self), count: strlen(x)))
        return (bytes, running)
    }
}

@available(*, unavailable)
extension LibvirtClient: Sendable {}

/// What libvirt answered (`virGetLastError`): its error code and message.
public struct LibvirtError: Error, Sendable, CustomStringConvertible {
    public var code: Int32
    public var message: String
    public var description: String { message }
}
