import Foundation
import Testing
import POSIX

/// The agent's OS layer: epoll and eventfd, inotify's events as values, the condition lock's
/// deadlines, threads, and accept's outcomes sorted by what to do next.
@Suite struct OSLayerTests {
    func temp() -> String { NSTemporaryDirectory() + "posix-\(UUID().uuidString)" }

    @Test func epollReportsReadableDescriptorsAndTheCounterUntilReset() throws {
        let epoll = try Epoll()
        defer { epoll.close() }
        let counter = try EventCounter()
        defer { counter.close() }
        let (r, w) = try FileDescriptor.pipe()
        defer { r.close(); w.close() }
        try epoll.add(counter.descriptor)
        try epoll.add(r)
        #expect(try epoll.wait(timeoutMs: 0).isEmpty)
        counter.signal()
        counter.signal()
        #expect(try epoll.wait(timeoutMs: 100) == [counter.descriptor])
        counter.reset()  // both signals at once
        #expect(try epoll.wait(timeoutMs: 0).isEmpty)
        try w.writeAll([1])
        #expect(try epoll.wait(timeoutMs: 100) == [r])
        epoll.remove(r)
        #expect(try epoll.wait(timeoutMs: 0).isEmpty)
        // Adding a descriptor twice is the caller's error, with the function's name.
        let e = #expect(throws: Errno.self) { try epoll.add(counter.descriptor) }
        #expect(e?.code == EEXIST && e?.function == "epoll_ctl")
    }

    @Test func inotifyEventsAreValuesWithTheirWatchAndName() throws {
        let dir = temp()
        try FileSystem.makeDirectories(dir, mode: 0o755)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let inotify = try Inotify()
        defer { inotify.close() }
        let watch = try inotify.add(dir, [.closeWrite, .movedTo])
        #expect(inotify.read().isEmpty)
        try FileSystem.writeFileAtomically(dir + "/br0.status", Array("[]".utf8), mode: 0o644)
        let events = inotify.read()
        // The temporary file's close, then the rename onto the status file.
        #expect(events.last == Inotify.Event(watch: watch, mask: UInt32(IN_MOVED_TO), name: "br0.status"))
        #expect(events.allSatisfy { $0.watch == watch })
        let missing = #expect(throws: Errno.self) { _ = try inotify.add(dir + "/nonexistent", [.create]) }
        #expect(missing?.code == ENOENT && missing?.function == "inotify_add_watch")
    }

    @Test func inotifyRecordsAreParsedByTheirLengthsAndATruncatedOneIsDropped() {
        // struct inotify_event: wd, mask, cookie, len, then len bytes of NUL-padded name.
        func record(_ wd: Int32, _ mask: UInt32, _ name: String, padTo: Int) -> [UInt8] {
            var out: [UInt8] = []
            withUnsafeBytes(of: wd) { out += $0 }
            withUnsafeBytes(of: mask) { out += $0 }
            withUnsafeBytes(of: UInt32(0)) { out += $0 }
            withUnsafeBytes(of: UInt32(padTo)) { out += $0 }
            out += Array(name.utf8) + [UInt8](repeating: 0, count: padTo - name.utf8.count)
            return out
        }
        let bytes = record(1, 0x80, "virbr0.status", padTo: 16) + record(2, 0x100, "", padTo: 0)
            + record(3, 0x8, "cut", padTo: 32).prefix(20)
        let events = bytes.withUnsafeBytes { Inotify.events(in: $0) }
        #expect(events == [Inotify.Event(watch: .init(rawValue: 1), mask: 0x80, name: "virbr0.status"),
                           Inotify.Event(watch: .init(rawValue: 2), mask: 0x100, name: "")])
    }

    @Test func conditionLockWaitsForItsConditionOrTheDeadline() throws {
        let lock = ConditionLock([Int]())
        let start = MonotonicClock.millis()
        let timedOut = lock.withLock(waitingUntil: { !$0.isEmpty }, deadline: start + 50) { _, ready in ready }
        #expect(!timedOut)
        #expect(MonotonicClock.millis() - start >= 50)
        try POSIX.Thread.detach {
            POSIX.Thread.sleep(millis: 20)
            lock.withLock { $0.append(7) }
            lock.broadcast()
        }
        let got = lock.withLock(waitingUntil: { !$0.isEmpty }, deadline: MonotonicClock.millis() + 5_000) { q, ready in
            ready ? q.removeFirst() : nil
        }
        #expect(got == 7)
    }

    @Test func threadsAreToldApartAndSleepTheirTime() throws {
        let main = POSIX.Thread.current
        #expect(main == POSIX.Thread.current)
        let other = ConditionLock<POSIX.Thread.ID?>(nil)
        try POSIX.Thread.detach {
            other.withLock { $0 = POSIX.Thread.current }
            other.broadcast()
        }
        let id = other.withLock(waitingUntil: { $0 != nil }, deadline: MonotonicClock.millis() + 5_000) { id, _ in id }
        #expect(id != nil && id != main)
        let t = MonotonicClock.millis()
        POSIX.Thread.sleep(millis: 30)
        #expect(MonotonicClock.millis() - t >= 30)
    }

    @Test func acceptSortsItsOutcomes() throws {
        let path = temp() + ".sock"
        let listener = try UnixSocket.listen(on: path, backlog: 4)
        defer { listener.close(); unlink(path) }
        // Nothing queued on a non-blocking listener: accept again later, nothing wrong.
        listener.setNonBlocking(true)
        guard case .again = UnixSocket.accept(listener) else { Issue.record("EAGAIN is not .again"); return }
        let client = try #require(UnixSocket.connect(to: path))
        defer { client.close() }
        guard case .connection(let server) = UnixSocket.accept(listener) else { Issue.record("no connection"); return }
        defer { server.close() }
        #expect(fcntl(server.rawValue, F_GETFD) & FD_CLOEXEC != 0)
        // Not a listener: neither "again" nor "exhausted" (the caller backs off and says so).
        guard case .failed(let e) = UnixSocket.accept(client) else { Issue.record("EINVAL is not .failed"); return }
        #expect(e.code == EINVAL && e.function == "accept")
    }
}
