import Foundation
import Testing
import POSIX

@Suite struct FileDescriptorTests {
    func temp() -> String { NSTemporaryDirectory() + "posix-\(UUID().uuidString)" }

    @Test func readAllStopsAtTheLimitWithEFBIG() throws {
        let path = temp()
        defer { unlink(path) }
        try FileSystem.writeFileAtomically(path, Array(repeating: 0x41, count: 100_000), mode: 0o600)
        #expect(try FileSystem.readFile(path, limit: 200_000)?.count == 100_000)
        let e = #expect(throws: Errno.self) { try FileSystem.readFile(path, limit: 1000) }
        #expect(e?.code == EFBIG)
        #expect(e?.function == "read")
    }

    @Test func missingFileIsNilAndOtherErrorsThrowWithTheFunctionName() throws {
        #expect(try FileSystem.readFile("/nonexistent/\(UUID().uuidString)") == nil)
        let e = #expect(throws: Errno.self) { try FileDescriptor.open("/proc/self/nonexistent-dir/x", O_RDONLY | O_CREAT, mode: 0o600) }
        #expect(e?.function == "open")
        #expect(e?.description == String(cString: strerror(e?.code ?? 0)))
    }

    @Test func writeAllAndAtomicReplaceKeepModeAndIdentityChanges() throws {
        let path = temp()
        defer { unlink(path) }
        try FileSystem.writeFileAtomically(path, Array("one".utf8), mode: 0o640)
        let first = FileSystem.identity(path)
        try FileSystem.writeFileAtomically(path, Array("two".utf8), mode: 0o640)
        #expect(FileSystem.identity(path) != first)
        #expect(try FileSystem.readFile(path) == Array("two".utf8))
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o640)
    }

    @Test func waitReadableTimesOutThenSeesData() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let r = FileDescriptor(rawValue: fds[0]), w = FileDescriptor(rawValue: fds[1])
        defer { r.close(); w.close() }
        #expect(try r.waitReadable(timeoutMs: 10) == false)
        try w.writeAll([1, 2, 3])
        #expect(try r.waitReadable(timeoutMs: 1000) == true)
        #expect(try r.read(upTo: 10) == [1, 2, 3])
    }

    @Test func makeDirectoriesCreatesParentsAndRefusesAFileInTheWay() throws {
        let base = temp()
        defer { _ = try? FileManager.default.removeItem(atPath: base) }
        try FileSystem.makeDirectories(base + "/a/b/c", mode: 0o700)
        #expect(FileSystem.isDirectory(base + "/a/b/c"))
        try FileSystem.writeFileAtomically(base + "/f", [], mode: 0o600)
        let e = #expect(throws: Errno.self) { try FileSystem.makeDirectories(base + "/f/x", mode: 0o700) }
        #expect(e?.code == ENOTDIR)
    }

    @Test func flockSharedAllowsSharedAndExclusiveExcludes() throws {
        let path = temp()
        defer { unlink(path) }
        let a = try FileDescriptor.open(path, O_RDWR | O_CREAT, mode: 0o600)
        let b = try FileDescriptor.open(path, O_RDWR)
        defer { a.close(); b.close() }
        try a.lock(.shared)
        #expect(flock(b.rawValue, LOCK_SH | LOCK_NB) == 0)
        #expect(flock(b.rawValue, LOCK_EX | LOCK_NB) != 0)  // a still holds it shared
        b.unlock()
        a.unlock()
        #expect(flock(b.rawValue, LOCK_EX | LOCK_NB) == 0)
    }

    @Test func valueOrErrnoRetriesOnlyEINTR() throws {
        var calls = 0
        let v = try valueOrErrno("fake") { () -> Int32 in
            calls += 1
            if calls < 3 { errno = EINTR; return -1 }
            return 7
        }
        #expect(v == 7 && calls == 3)
        let e = #expect(throws: Errno.self) { try valueOrErrno("fake") { () -> Int32 in errno = EBADF; return -1 } }
        #expect(e == Errno(EBADF, "fake"))
    }
}
