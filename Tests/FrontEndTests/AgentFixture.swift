import Foundation
@testable import Agent
import Engine
import POSIX
import TestSupport
import VirtPortCore

/// An agent context over a temporary directory: its journal, libvirt's state directory, no
/// configuration file (nothing reloads), no syslog. The loop runs; watchers under test are
/// started on it with fake sources.
struct AgentFixture {
    let dir: String
    let config: Config
    let context: AgentContext

    init(libvirtURI: String = "") throws {
        dir = NSTemporaryDirectory() + "vp-agent-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir + "/state", withIntermediateDirectories: true)
        var c = scratchConfig(in: dir)
        c.sourcePath = dir + "/virtport.conf"
        c.libvirtURI = libvirtURI
        config = c
        let loop = try EventLoop()
        try loop.start()
        context = try AgentContext(loop: loop, pool: try WorkerPool(config: c, workers: 1),
                                   checkpointer: try Checkpointer(verbose: false), verbose: false)
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: dir) }
}

/// A value several threads touch in a test.
final class Shared<T>: @unchecked Sendable {  // unchecked: `value` is only touched under `lock`
    private let lock = NSLock()
    private var value: T
    init(_ v: T) { value = v }
    func with<R>(_ body: (inout T) -> R) -> R { lock.lock(); defer { lock.unlock() }; return body(&value) }
    var now: T { with { $0 } }
}

/// Polls `done` until it holds or `timeout` seconds passed; returns whether it held.
func eventually(timeout: Double = 3, _ done: () -> Bool) -> Bool {
    let end = Date().addingTimeInterval(timeout)
    while !done() {
        if Date() >= end { return false }
        usleep(2_000)
    }
    return true
}
