#if canImport(Glibc)
import Glibc
#endif
import Journal
import Netfilter
import VirtPortCore

// `virtport agent` (README "Agent"): a long-lived process that keeps the journal open (prepared
// statements, WAL index, no checkpoint inside a hook) and one netlink socket, and does the work of
// the qemu hooks that hand it over through a unix socket. A hook that finds no agent, or an agent
// that reads another configuration file, does the same work itself: the agent only makes hooks
// faster, it is never needed. Every step of a hook is idempotent, so a hook whose agent died
// mid-request simply does the work again in its own process.

/// What the agent keeps open between the hooks it serves.
final class Warm {
    let db: JournalDB
    let lock: ChangeLock
    let table: String
    /// (device, inode) of the database file when it was opened: replaced or removed → reopen.
    let identity: JournalDB.FileIdentity?
    private var session: NetfilterSession?

    init(config: Config) throws(VirtPortError) {
        db = try JournalDB(path: config.databasePath)
        try db.disableAutoCheckpoint()
        lock = try ChangeLock(databasePath: config.databasePath)
        table = config.table
        identity = JournalDB.fileIdentity(path: config.databasePath)
    }

    func kernel() throws(VirtPortError) -> NetfilterSession {
        if let session { return session }
        let s = try Forwarder.openSession(table: table)
        s.keepsSocketOpen = true
        session = s
        return s
    }

    /// After a failed request: the next one starts on a fresh netlink socket.
    func dropKernel() { session = nil }
}

/// The request/reply frames on the agent's socket: little-endian u32 lengths, UTF-8 strings.
///
/// Request: "VPA1", config path, hook kind, argument count, arguments, stdin bytes.
/// Reply: "VPR1", served (u32: 0 = not this agent's configuration, do it yourself), exit status
/// (u32 bit pattern of the Int32), stderr lines joined by "\n".
enum AgentFrame {
    static let requestMagic = Array("VPA1".utf8)
    static let replyMagic = Array("VPR1".utf8)
    /// Requests are a hook's stdin plus a few strings; anything larger is refused.
    static let maxFrame = Hook.inputLimit + 64 * 1024

    struct Request: Equatable {
        var configPath: String
        var kind: String
        var args: [String]
        var input: [UInt8]
    }

    struct Reply: Equatable {
        var served: Bool
        var code: Int32
        var lines: [String]
    }

    static func encode(_ r: Request) -> [UInt8] {
        var w = Writer(requestMagic)
        w.string(r.configPath)
        w.string(r.kind)
        w.u32(UInt32(r.args.count))
        for a in r.args { w.string(a) }
        w.bytes(r.input)
        return w.out
    }

    static func decodeRequest(_ b: [UInt8]) -> Request? {
        var r = Reader(b)
        guard r.magic(requestMagic), let config = r.string(), let kind = r.string(), let n = r.u32(), n <= 64 else {
            return nil
        }
        var args: [String] = []
        for _ in 0..<n {
            guard let a = r.string() else { return nil }
            args.append(a)
        }
        guard let input = r.bytes(), r.atEnd else { return nil }
        return Request(configPath: config, kind: kind, args: args, input: input)
    }

    static func encode(_ r: Reply) -> [UInt8] {
        var w = Writer(replyMagic)
        w.u32(r.served ? 1 : 0)
        w.u32(UInt32(bitPattern: r.code))
        var text = ""
        for line in r.lines {
            if !text.isEmpty { text += "\n" }
            text += line
        }
        w.string(text)
        return w.out
    }

    static func decodeReply(_ b: [UInt8]) -> Reply? {
        var r = Reader(b)
        guard r.magic(replyMagic), let served = r.u32(), let code = r.u32(), let text = r.string(), r.atEnd else {
            return nil
        }
        var lines: [String] = []
        var current: [UInt8] = []
        for c in text.utf8 {
            if c == UInt8(ascii: "\n") {
                lines.append(String(decoding: current, as: UTF8.self))
                current = []
            } else {
                current.append(c)
            }
        }
        if !text.isEmpty { lines.append(String(decoding: current, as: UTF8.self)) }
        return Reply(served: served != 0, code: Int32(bitPattern: code), lines: lines)
    }

    struct Writer {
        var out: [UInt8]
        init(_ magic: [UInt8]) { out = magic }
        mutating func u32(_ v: UInt32) {
            out.append(UInt8(truncatingIfNeeded: v))
            out.append(UInt8(truncatingIfNeeded: v >> 8))
            out.append(UInt8(truncatingIfNeeded: v >> 16))
            out.append(UInt8(truncatingIfNeeded: v >> 24))
        }
        mutating func bytes(_ b: [UInt8]) {
            u32(UInt32(b.count))
            out.append(contentsOf: b)
        }
        mutating func string(_ s: String) { bytes(Array(s.utf8)) }
    }

    struct Reader {
        let b: [UInt8]
        var at = 0
        init(_ b: [UInt8]) { self.b = b }
        var atEnd: Bool { at == b.count }
        mutating func magic(_ m: [UInt8]) -> Bool {
            guard b.count >= m.count, Array(b[0..<m.count]) == m else { return false }
            at = m.count
            return true
        }
        mutating func u32() -> UInt32? {
            guard b.count - at >= 4 else { return nil }
            let v = UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
            at += 4
            return v
        }
        mutating func bytes() -> [UInt8]? {
            guard let n = u32(), b.count - at >= Int(n) else { return nil }
            defer { at += Int(n) }
            return Array(b[at..<at + Int(n)])
        }
        mutating func string() -> String? { bytes().map { String(decoding: $0, as: UTF8.self) } }
    }
}

/// One length-prefixed frame over a stream socket, each way, with a deadline.
enum FrameIO {
    static func send(_ fd: Int32, _ payload: [UInt8]) -> Bool {
        var w = AgentFrame.Writer([])
        w.bytes(payload)
        var off = 0
        let ok = w.out.withUnsafeBytes { buf -> Bool in
            while off < buf.count {
                let n = Glibc.send(fd, buf.baseAddress! + off, buf.count - off, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                off += n
            }
            return true
        }
        return ok
    }

    /// Reads one frame; nil on EOF, error, oversize or when `timeoutMs` passes without data.
    static func receive(_ fd: Int32, timeoutMs: Int32) -> [UInt8]? {
        guard let head = exactly(fd, 4, timeoutMs: timeoutMs) else { return nil }
        let n = Int(UInt32(head[0]) | UInt32(head[1]) << 8 | UInt32(head[2]) << 16 | UInt32(head[3]) << 24)
        guard n <= AgentFrame.maxFrame else { return nil }
        return exactly(fd, n, timeoutMs: timeoutMs)
    }

    private static func exactly(_ fd: Int32, _ count: Int, timeoutMs: Int32) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, timeoutMs)
            if ready < 0 && errno == EINTR { continue }
            if ready <= 0 { return nil }
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, count - got, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            got += n
        }
        return out
    }
}

/// `AF_UNIX` stream sockets by path.
enum UnixSocket {
    static func address(_ path: String) -> sockaddr_un? {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &addr.sun_path) { buf in
            buf.copyBytes(from: bytes)
            buf[bytes.count] = 0
        }
        return addr
    }

    /// A connected socket, or nil (no such socket, nobody listening, path too long).
    static func connectTo(_ path: String) -> Int32? {
        guard var addr = address(path) else { return nil }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { return nil }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if rc != 0 {
            close(fd)
            return nil
        }
        return fd
    }
}

/// The hook side: hands the work to a running agent of the same configuration.
enum AgentClient {
    /// How long a hook waits for the agent's reply before doing the work itself.
    static let replyTimeoutMs: Int32 = 30_000

    /// The agent's exit status for this hook after printing its stderr lines, or nil when no agent
    /// took the work (none running, another configuration, it died mid-request): the caller does
    /// it in-process. Test fault injection (`VIRTPORT_FAULT`) and `VIRTPORT_NO_AGENT` keep the work
    /// in the hook process.
    static func handOver(config: Config, kind: Hook.Kind, args: [String], input: [UInt8]) -> Int32? {
        if IO.env("VIRTPORT_FAULT") != nil || IO.env("VIRTPORT_NO_AGENT") != nil { return nil }
        guard let fd = UnixSocket.connectTo(config.agentSocket) else { return nil }
        defer { close(fd) }
        let request = AgentFrame.Request(configPath: config.sourcePath, kind: kind.rawValue, args: args, input: input)
        guard FrameIO.send(fd, AgentFrame.encode(request)),
              let frame = FrameIO.receive(fd, timeoutMs: replyTimeoutMs),
              let reply = AgentFrame.decodeReply(frame), reply.served
        else { return nil }
        for line in reply.lines { Output.err(line) }
        return reply.code
    }
}

/// The agent's side of the socket.
final class AgentServer {
    private(set) var config: Config
    private var configStamp: [Int64]
    private var warm: Warm
    private let listenFD: Int32
    private let verbose: Bool
    private let checkpointer: Checkpointer

    init(config: Config, verbose: Bool) throws(VirtPortError) {
        self.config = config
        self.verbose = verbose
        configStamp = Self.stamp(config.sourcePath)
        warm = try Warm(config: config)
        listenFD = try Self.listen(on: config.agentSocket)
        checkpointer = try Checkpointer(verbose: verbose)
    }

    deinit {
        close(listenFD)
        unlink(config.agentSocket)
    }

    /// Serves hooks until the process is killed; the WAL they write is checkpointed on another
    /// thread (`Checkpointer`), so no hook waits for a checkpoint's fsyncs.
    func serve() -> Never {
        log("listening on \(config.agentSocket) (journal \(config.databasePath), table inet \(config.table))")
        while true {
            let client = accept(listenFD, nil, nil)
            if client < 0 { continue }  // EINTR, or a connection reset before it was accepted
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            handle(client)
            close(client)
        }
    }

    private func handle(_ client: Int32) {
        // struct ucred (pid, uid, gid): Glibc exports it only under _GNU_SOURCE.
        var cred: (pid: Int32, uid: UInt32, gid: UInt32) = (0, 0, 0)
        var len = socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size)
        guard getsockopt(client, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0, cred.uid == 0 || cred.uid == getuid() else {
            log("refused a connection from uid \(cred.uid)")
            return
        }
        guard let frame = FrameIO.receive(client, timeoutMs: 5_000), let request = AgentFrame.decodeRequest(frame) else {
            log("dropped a malformed request")
            return
        }
        let started = nowMicros()
        let reply = serve(request)
        _ = FrameIO.send(client, AgentFrame.encode(reply))
        if verbose {
            log("\(request.kind) \(request.args.joined(separator: " ")): "
                + (reply.served ? "exit \(reply.code)" : "not served") + " in \(nowMicros() - started) µs")
        }
    }

    func serve(_ request: AgentFrame.Request) -> AgentFrame.Reply {
        refresh()
        guard request.configPath == config.sourcePath, request.kind == Hook.Kind.qemu.rawValue,
              request.args.count >= 2
        else { return AgentFrame.Reply(served: false, code: 0, lines: []) }
        Output.captured = []
        let code = Hook.qemu(domainName: request.args[0], op: request.args[1], input: request.input,
                             config: config, warm: warm)
        let lines = Output.captured ?? []
        Output.captured = nil
        warm.lock.unlock()
        if code != 0 { warm.dropKernel() }
        checkpointer.request(path: config.databasePath)
        return AgentFrame.Reply(served: true, code: code, lines: lines)
    }

    /// Rereads a changed configuration file and reopens a replaced or removed database.
    private func refresh() {
        let stamp = Self.stamp(config.sourcePath)
        if stamp != configStamp {
            configStamp = stamp
            do {
                let fresh = try Config.load(warn: false)
                let socket = config.agentSocket
                config = fresh
                config.agentSocket = socket  // the socket it listens on stays
                log("configuration \(config.sourcePath) reloaded")
                reopen()
                return
            } catch {
                log("configuration \(config.sourcePath): \(error) (keeping the previous one)")
            }
        }
        if JournalDB.fileIdentity(path: config.databasePath) != warm.identity {
            reopen()
        }
    }

    private func reopen() {
        do { warm = try Warm(config: config) } catch { log("cannot reopen the journal: \(error)") }
    }

    private func log(_ s: String) { Output.write(fd: 2, "virtport agent: " + s + "\n") }

    /// (mtime s, mtime ns, size, inode) of the configuration file; [] when it is absent.
    static func stamp(_ path: String) -> [Int64] {
        var st = stat()
        guard stat(path, &st) == 0 else { return [] }
        return [Int64(st.st_mtim.tv_sec), Int64(st.st_mtim.tv_nsec), Int64(st.st_size), Int64(bitPattern: UInt64(st.st_ino))]
    }

    /// Binds and listens on `path` (mode 0600, its directory created 0755). A path where another
    /// agent answers is an error; a stale socket file is replaced.
    static func listen(on path: String) throws(VirtPortError) -> Int32 {
        guard var addr = UnixSocket.address(path) else { throw .invalid("agent socket path \(path) is empty or too long") }
        if let other = UnixSocket.connectTo(path) {
            close(other)
            throw .operational("another virtport agent is already listening on \(path)")
        }
        try IO.makeDirectories(IO.dirname(path), mode: 0o755)
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw .operational("cannot create the agent socket", cause: IO.errnoText()) }
        let old = umask(0o177)  // the socket file: 0600
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(old)
        if rc != 0 {
            let e = IO.errnoText()
            close(fd)
            throw .operational("cannot bind the agent socket \(path)", cause: e)
        }
        if Glibc.listen(fd, 128) != 0 {
            let e = IO.errnoText()
            close(fd)
            throw .operational("cannot listen on \(path)", cause: e)
        }
        return fd
    }
}

/// Checkpoints the journal's WAL on a thread of its own with its own connection, ~50 ms after the
/// agent last wrote: the agent's connection never checkpoints (`disableAutoCheckpoint`), so the
/// fsyncs happen while no hook waits, and the WAL stays small for every other process that opens the
/// journal. (SQLite connections are not shared between threads: each thread has its own.)
final class Checkpointer: @unchecked Sendable {
    /// Write end of a pipe: one byte per request; the thread debounces a burst into one checkpoint.
    private let wake: Int32
    private let sleepFD: Int32
    /// The journal path of the latest request (guarded by `mutex`).
    private var path = ""
    /// Heap-allocated: a pthread mutex must not move, and `&storedProperty` may be a temporary.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let verbose: Bool

    init(verbose: Bool) throws(VirtPortError) {
        self.verbose = verbose
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw .operational("cannot create a pipe", cause: IO.errnoText()) }
        sleepFD = fds[0]
        wake = fds[1]
        _ = fcntl(wake, F_SETFL, O_NONBLOCK)  // a full pipe already means "checkpoint soon"
        _ = fcntl(sleepFD, F_SETFD, FD_CLOEXEC)
        _ = fcntl(wake, F_SETFD, FD_CLOEXEC)
        pthread_mutex_init(mutex, nil)
        var thread = pthread_t()
        let me = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { raw in
            Unmanaged<Checkpointer>.fromOpaque(raw!).takeUnretainedValue().run()
        }, me)
        if rc != 0 { throw .operational("cannot start the checkpoint thread", cause: IO.errnoText(rc)) }
        pthread_detach(thread)
    }

    /// After a request that may have written the journal at `path`.
    func request(path: String) {
        pthread_mutex_lock(mutex)
        self.path = path
        pthread_mutex_unlock(mutex)
        var byte: UInt8 = 1
        _ = write(wake, &byte, 1)
    }

    private func run() -> Never {
        var db: JournalDB?
        var identity: JournalDB.FileIdentity?
        var buffer = [UInt8](repeating: 0, count: 256)
        while true {
            if read(sleepFD, &buffer, buffer.count) <= 0 { continue }
            usleep(50_000)
            // Drain what arrived meanwhile: one checkpoint for the whole burst.
            _ = fcntl(sleepFD, F_SETFL, O_NONBLOCK)
            while read(sleepFD, &buffer, buffer.count) > 0 {}
            _ = fcntl(sleepFD, F_SETFL, 0)
            pthread_mutex_lock(mutex)
            let path = self.path
            pthread_mutex_unlock(mutex)
            // Never creates the journal: only a file the agent's connection already opened.
            guard let id = JournalDB.fileIdentity(path: path) else { continue }
            do throws(VirtPortError) {
                if db == nil || db?.path != path || id != identity {
                    db = nil
                    db = try JournalDB(path: path)
                    try db?.disableAutoCheckpoint()
                    identity = id
                }
                let frames = try db?.checkpoint() ?? 0
                if verbose { Output.write(fd: 2, "virtport agent: checkpoint: \(frames) WAL frames\n") }
            } catch {
                db = nil
                Output.write(fd: 2, "virtport agent: checkpoint: \(error)\n")
            }
        }
    }
}

/// `virtport agent [--verbose]`: runs in the foreground (systemd: virtport-agent.service).
enum AgentCommand {
    static func run(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let verbose = args.flag("--verbose")
        try args.finish("agent")
        signal(SIGPIPE, SIG_IGN)
        let server = try AgentServer(config: try Config.load(), verbose: verbose)
        server.serve()
    }
}
