/// The request/reply frames on the agent's socket: little-endian u32 lengths, UTF-8 strings.
///
/// Request: "VPA2", config path, hook kind, argument count, arguments, stdin bytes.
/// Then, from the agent: the claim byte (`claim`) when a worker starts on it — only then is the
/// hook committed to waiting — and the reply: "VPR2", served (u32: 0 = not this agent's work, do
/// it yourself), exit status (u32 bit pattern of the Int32), stderr lines joined by "\n". A
/// declined request gets the reply without a claim.
public enum AgentFrame {
    static let requestMagic = Array("VPA2".utf8)
    static let replyMagic = Array("VPR2".utf8)
    /// "A worker has started on your request."
    public static let claim: [UInt8] = [0x43]
    /// How long a hook waits for the claim (or a decline) before doing the work itself.
    public static let claimTimeoutMs: Int32 = 2_000
    /// How long a hook waits for the reply once its request was claimed.
    public static let replyTimeoutMs: Int32 = 30_000
    /// The hook kind of `virtport doctor`'s probe: a well-formed request the agent declines (the
    /// declined reply shows it answers) and does not log.
    public static let probeKind = "probe"
    /// Requests are a hook's stdin plus a few strings; anything larger is refused.
    public static let maxFrame = HookInput.limit + 64 * 1024

    public struct Request: Equatable, Sendable {
        public var configPath: String
        public var kind: String
        public var args: [String]
        public var input: [UInt8]

        public init(configPath: String, kind: String, args: [String], input: [UInt8]) {
            self.configPath = configPath
            self.kind = kind
            self.args = args
            self.input = input
        }
    }

    public struct Reply: Equatable, Sendable {
        public var served: Bool
        public var code: Int32
        public var lines: [String]

        public init(served: Bool, code: Int32, lines: [String]) {
            self.served = served
            self.code = code
            self.lines = lines
        }

        /// "Not this agent's work: do it yourself."
        public static let declined = Reply(served: false, code: 0, lines: [])
    }

    public static func encode(_ r: Request) -> [UInt8] {
        var w = Writer(requestMagic)
        w.string(r.configPath)
        w.string(r.kind)
        w.u32(UInt32(r.args.count))
        for a in r.args { w.string(a) }
        w.bytes(r.input)
        return w.out
    }

    public static func decodeRequest(_ b: [UInt8]) -> Request? {
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

    public static func encode(_ r: Reply) -> [UInt8] {
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

    public static func decodeReply(_ b: [UInt8]) -> Reply? {
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
