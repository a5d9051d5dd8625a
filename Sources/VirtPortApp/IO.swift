#if canImport(Glibc)
import Glibc
#endif
import VirtPortCore

/// Small Glibc file helpers: the product binary links no Foundation (hook startup time).
enum IO {
    /// Reads a whole file; nil if it does not exist. Throws on other errors or when over `limit`.
    static func readFile(_ path: String, limit: Int = 16 << 20) throws(VirtPortError) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT || errno == ENOTDIR { return nil }
            throw .operational("cannot open \(path)", cause: errnoText())
        }
        defer { close(fd) }
        return try readAll(fd: fd, what: path, limit: limit)
    }

    static func readAll(fd: Int32, what: String, limit: Int) throws(VirtPortError) -> [UInt8] {
        var out: [UInt8] = []
        // Not zero-filled: a hook reads three small files, and 64 KiB of memset each was measurable.
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 1)
        defer { chunk.deallocate() }
        while true {
            let n = read(fd, chunk.baseAddress, chunk.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw .operational("cannot read \(what)", cause: errnoText())
            }
            if n == 0 { break }
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[0..<n]))
            if out.count > limit { throw .invalid("\(what) is larger than \(limit) bytes") }
        }
        return out
    }

    static func readStdin(limit: Int) throws(VirtPortError) -> [UInt8] {
        try readAll(fd: 0, what: "standard input", limit: limit)
    }

    /// Writes `bytes` to `path` atomically (temp file + rename) with `mode`.
    static func writeFile(_ path: String, _ text: String, mode: mode_t) throws(VirtPortError) {
        let tmp = path + ".tmp.\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        if fd < 0 { throw .operational("cannot create \(tmp)", cause: errnoText()) }
        var bytes = Array(text.utf8)
        let ok = bytes.withUnsafeMutableBytes { buf -> Bool in
            var off = 0
            while off < buf.count {
                let n = write(fd, buf.baseAddress! + off, buf.count - off)
                if n < 0 { if errno == EINTR { continue }; return false }
                off += n
            }
            return true
        }
        fchmod(fd, mode)
        close(fd)
        if !ok || rename(tmp, path) != 0 {
            let e = errnoText()
            unlink(tmp)
            throw .operational("cannot write \(path)", cause: e)
        }
    }

    static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// mkdir -p with `mode` for the directories it creates.
    static func makeDirectories(_ path: String, mode: mode_t) throws(VirtPortError) {
        if path.isEmpty || isDirectory(path) { return }
        let parent = dirname(path)
        if parent != path { try makeDirectories(parent, mode: mode) }
        if mkdir(path, mode) != 0 && errno != EEXIST {
            throw .operational("cannot create directory \(path)", cause: errnoText())
        }
    }

    static func readLink(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        if n < 0 { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func dirname(_ path: String) -> String {
        guard let i = path.lastIndex(of: "/") else { return "." }
        if i == path.startIndex { return "/" }
        return String(path[..<i])
    }

    static func basename(_ path: String) -> String {
        guard let i = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: i)...])
    }

    static func listDirectory(_ path: String) -> [String] {
        guard let d = opendir(path) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { out.append(name) }
        }
        return out.sorted()
    }

    static func env(_ name: String) -> String? {
        guard let v = getenv(name) else { return nil }
        return String(cString: v)
    }

    static func errnoText(_ e: Int32 = errno) -> String { VirtPortError.errnoText(e) }
}

/// Where a command's output goes. Hook mode has none: stdout is closed off for the whole process.
enum Output {
    /// While the agent runs a hook's work, the hook's stderr lines are collected here (to be sent
    /// back to the hook process, which prints them) instead of going to the agent's own stderr.
    nonisolated(unsafe) static var captured: [String]? = nil

    static func out(_ s: String) { write(fd: 1, s + "\n") }
    static func err(_ s: String) {
        if captured != nil {
            captured?.append(s)
            return
        }
        write(fd: 2, "virtport: " + s + "\n")
    }

    static func write(fd: Int32, _ s: String) {
        var bytes = Array(s.utf8)
        bytes.withUnsafeMutableBytes { buf in
            var off = 0
            while off < buf.count {
                let n = Glibc.write(fd, buf.baseAddress! + off, buf.count - off)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                off += n
            }
        }
    }
}
