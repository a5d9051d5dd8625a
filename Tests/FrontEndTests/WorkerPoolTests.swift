import Foundation
import Testing
@testable import Agent
import Engine
import POSIX
import VirtPortCore

/// The agent's workers: one thread at a time holds a worker, a request waits a bounded time for a
/// free one, and the configuration is reloaded when its file changes (a bad file keeps the old).
@Suite struct WorkerPoolTests {
    func sandbox() -> (dir: String, config: Config) {
        let dir = NSTemporaryDirectory() + "vp-pool-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var c = Config()
        c.databasePath = dir + "/virtport.db"
        c.sourcePath = dir + "/virtport.conf"
        c.agentSocket = dir + "/agent.sock"
        return (dir, c)
    }

    @Test func checkoutWaitsForACheckinOrItsDeadline() throws {
        let (dir, config) = sandbox()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let opened = Shared(0)
        let pool = try WorkerPool(config: config, workers: 1, warm: { (c) throws(VirtPortError) -> Resources in
            opened.with { $0 += 1 }
            return .perProcess(c)
        })
        #expect(opened.now == 1)  // the first worker's resources at once: a bad journal fails the start
        let worker = try #require(pool.checkout(untilMillis: MonotonicClock.millis() + 1_000))
        // None free: nil once the deadline passed, not before.
        let start = MonotonicClock.millis()
        #expect(pool.checkout(untilMillis: start + 60) == nil)
        #expect(MonotonicClock.millis() - start >= 60)
        // A checkin from another thread wakes a waiting checkout.
        let handback = Shared<Worker?>(worker)
        try POSIX.Thread.detach {
            POSIX.Thread.sleep(millis: 30)
            pool.checkin(handback.with { w in defer { w = nil }; return w! })
        }
        let again = pool.checkout(untilMillis: MonotonicClock.millis() + 5_000)
        #expect(again === worker)
    }

    @Test func theConfigurationIsReloadedWhenItsFileChangesAndABadOneKeepsTheOld() throws {
        let (dir, config) = sandbox()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = config.sourcePath
        let pool = try WorkerPool(config: config, workers: 2, warm: { (c) throws(VirtPortError) in .perProcess(c) },
                                  reload: { () throws(VirtPortError) in
                                      let bytes = (try? FileSystem.readFile(path)) ?? nil
                                      var c = try Config.parse(String(decoding: bytes ?? [], as: UTF8.self), path: path)
                                      c.sourcePath = path
                                      return c
                                  })
        let (first, generation) = pool.refreshedConfig()
        #expect(first.table == "virtport")
        try FileSystem.writeFileAtomically(config.sourcePath, Array("table = \"other\"\n".utf8), mode: 0o644)
        let (reloaded, next) = pool.refreshedConfig()
        #expect(reloaded.table == "other" && next == generation + 1)
        // The socket the agent listens on stays what it was.
        #expect(reloaded.agentSocket == config.agentSocket)
        try FileSystem.writeFileAtomically(config.sourcePath, Array("table = \"bad name!\"\n".utf8), mode: 0o644)
        let (kept, same) = pool.refreshedConfig()
        #expect(kept.table == "other" && same == next)
    }
}
