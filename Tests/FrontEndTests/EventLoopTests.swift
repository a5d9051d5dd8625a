#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import Agent
import Engine
import POSIX

/// The agent's event loop: descriptors, timers and posted work run on its thread, in order; a
/// cancelled timer never runs; the work queue runs items one at a time, in order.
@Suite struct EventLoopTests {
    final class Box<T>: @unchecked Sendable {
        private let lock = NSLock()
        private var value: T
        init(_ v: T) { value = v }
        func with<R>(_ body: (inout T) -> R) -> R { lock.lock(); defer { lock.unlock() }; return body(&value) }
    }

    func waitFor(_ what: String, timeout: Double = 3, _ done: () -> Bool) {
        let end = Date().addingTimeInterval(timeout)
        while !done() && Date() < end { usleep(2_000) }
        #expect(done(), "timed out waiting for \(what)")
    }

    @Test func readableDescriptorTimersAndPostedWork() throws {
        let loop = try EventLoop()
        try loop.start()
        let (r, w) = try FileDescriptor.pipe()
        let fds = [r.rawValue, w.rawValue]
        defer { r.close(); w.close() }
        let seen = Box<[String]>([])
        let onLoop = Box<Bool>(true)
        try loop.watch(r) {
            var b: UInt8 = 0
            _ = read(fds[0], &b, 1)
            if !loop.isLoopThread { onLoop.with { $0 = false } }
            seen.with { $0.append("fd \(b)") }
        }
        var byte: UInt8 = 7
        _ = write(fds[1], &byte, 1)
        waitFor("the readable handler") { seen.with { $0 == ["fd 7"] } }

        // Timers run in deadline order whatever the order they were scheduled in; a cancelled one never.
        loop.schedule(afterMillis: 60) { seen.with { $0.append("t60") } }
        let cancelled = loop.schedule(afterMillis: 30) { seen.with { $0.append("cancelled") } }
        loop.schedule(afterMillis: 10) { seen.with { $0.append("t10") } }
        loop.cancel(cancelled)
        loop.post { seen.with { $0.append("posted") } }
        waitFor("the timers") { seen.with { $0.count == 4 } }
        usleep(60_000)
        #expect(seen.with { $0 } == ["fd 7", "posted", "t10", "t60"])
        #expect(onLoop.with { $0 })
        #expect(!loop.isLoopThread)

        // An unwatched descriptor no longer calls its handler.
        loop.unwatch(r)
        _ = write(fds[1], &byte, 1)
        usleep(50_000)
        #expect(seen.with { $0.count } == 4)
    }

    @Test func workQueueRunsInOrderOneAtATime() throws {
        let q = try WorkQueue(name: "test")
        let order = Box<[Int]>([])
        let running = Box<Int>(0)
        let overlap = Box<Bool>(false)
        for i in 0..<20 {
            q.async {
                if running.with({ $0 += 1; return $0 }) > 1 { overlap.with { $0 = true } }
                usleep(500)
                order.with { $0.append(i) }
                running.with { $0 -= 1 }
            }
        }
        #expect(q.drain(untilMillis: MonotonicClock.millis() + 5_000))
        #expect(order.with { $0 } == Array(0..<20))
        #expect(!overlap.with { $0 })
        #expect(q.depth == 0)
    }
}
