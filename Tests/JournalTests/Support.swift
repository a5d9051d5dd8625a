import Foundation
@testable import Journal
import Synchronization
import Testing
import VirtPortCore

/// A fresh directory under the system temp dir, removed after `body`.
func withTempDir<T>(_ body: (String) throws -> T) throws -> T {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vp-journal-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    return try body(dir)
}

func mode(of path: String) throws -> Int {
    let attrs = try FileManager.default.attributesOfItem(atPath: path)
    return (attrs[.posixPermissions] as! NSNumber).intValue
}

let web1 = DomainRef(name: "web1", uuid: "11111111-1111-1111-1111-111111111111")
let web2 = DomainRef(name: "web2", uuid: "22222222-2222-2222-2222-222222222222")

/// A mapping with sensible defaults: tcp, any host address, guest 192.168.122.10, same ports.
func fwd(_ start: UInt16, _ end: UInt16? = nil, proto: IPProto = .tcp, host: String? = nil,
         guest: String? = "192.168.122.10", to: UInt16? = nil, dev: String? = nil,
         mac: String? = "52:54:00:aa:bb:01", network: String? = "default") -> Mapping {
    let guestAddress = guest.map { IPAddress($0)! }
    return Mapping(proto: proto, hostAddress: host.map { IPAddress($0)! }, dev: dev,
                   hostPorts: PortRange(start, end ?? start), guestAddress: guestAddress,
                   guestPortStart: to ?? start, mac: mac.map { MACAddress($0)! }, network: network,
                   guestSource: guestAddress == nil ? .pending : .attribute)
}

/// beginApply + commitApply, as a hook whose kernel batch succeeded.
@discardableResult
func apply(_ db: JournalDB, _ domain: DomainRef, _ desired: [Mapping], reason: String = "hook qemu start",
           now: Int64) throws -> ApplyDelta {
    let delta = try db.beginApply(domain: domain, desired: desired, reason: reason, now: now)
    try db.commitApply(domain: domain, delta: delta, reason: reason, now: now)
    return delta
}

/// Runs `body(i)` for i in 0..<n on n real threads (not the 2-thread cooperative pool) that start
/// together, and waits for all of them.
func runThreads(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let barrier = Barrier(n)
    let group = DispatchGroup()
    for i in 0..<n {
        group.enter()
        let t = Thread {
            barrier.wait()
            body(i)
            group.leave()
        }
        t.start()
    }
    group.wait()
}

final class Barrier: @unchecked Sendable {
    private let p = UnsafeMutablePointer<pthread_barrier_t>.allocate(capacity: 1)
    init(_ n: Int) { pthread_barrier_init(p, nil, UInt32(n)) }
    func wait() { pthread_barrier_wait(p) }
    deinit {
        pthread_barrier_destroy(p)
        p.deallocate()
    }
}
