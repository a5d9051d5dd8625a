#if canImport(Glibc)
import Glibc
#endif

/// One linear pass over XML bytes before libxml2 sees them, counting what libxml2 2.9 handles in
/// quadratic time: attributes of one element (each new one is compared with every earlier one)
/// and namespace declarations (a prefix is looked up by walking every declaration in scope).
/// The scan understands just enough markup to count right (comments, CDATA, processing
/// instructions, end tags, quoted attribute values); where the bytes stop making sense it stops,
/// and libxml2 reports that error soon after. It cannot move into the SAX callbacks: libxml2 does
/// the quadratic work while it reads a start tag, before `startElementNs` reports the tag.
enum MarkupScan {
    static func check(_ bytes: [UInt8], what: String, maxAttributes: Int,
                      maxNamespaceDeclarations: Int) throws(VirtPortError) {
        let problem: (at: Int, message: String)? = bytes.withUnsafeBufferPointer { b in
            scan(b, maxAttributes: maxAttributes, maxNamespaceDeclarations: maxNamespaceDeclarations)
        }
        guard let problem else { return }
        var line = 1
        for i in 0..<problem.at where bytes[i] == UInt8(ascii: "\n") { line += 1 }
        throw .invalid("\(what): line \(line): \(problem.message)")
    }

    private static let lt = UInt8(ascii: "<"), gt = UInt8(ascii: ">"), slash = UInt8(ascii: "/")
    private static let bang = UInt8(ascii: "!"), question = UInt8(ascii: "?"), equal = UInt8(ascii: "=")

    private static func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d }

    private static func scan(_ b: UnsafeBufferPointer<UInt8>, maxAttributes: Int,
                             maxNamespaceDeclarations: Int) -> (at: Int, message: String)? {
        let n = b.count
        guard let base = b.baseAddress else { return nil }
        var namespaces = 0
        var i = 0
        /// Index of the first `c` at or after `from`, or nil. Hostile markup is dense (a tag every
        /// few bytes), where a memchr call per search costs more than the bytes it skips: the first
        /// bytes are looked at inline, memchr takes the rest.
        func find(_ c: UInt8, from: Int) -> Int? {
            var j = from
            let inline = min(n, from + 16)
            while j < inline {
                if base[j] == c { return j }
                j += 1
            }
            guard j < n, let hit = memchr(base + j, Int32(c), n - j) else { return nil }
            return base.distance(to: hit.assumingMemoryBound(to: UInt8.self))
        }
        /// Index just after the first occurrence of `pattern` at or after `from`, or n.
        func skip(past pattern: StaticString, from: Int) -> Int {
            let p = UnsafeBufferPointer(start: pattern.utf8Start, count: pattern.utf8CodeUnitCount)
            var j = from
            while j + p.count <= n {
                guard let hit = find(p[0], from: j), hit + p.count <= n else { return n }
                if memcmp(base + hit, p.baseAddress!, p.count) == 0 { return hit + p.count }
                j = hit + 1
            }
            return n
        }
        func hasPrefix(_ pattern: StaticString, at j: Int) -> Bool {
            j + pattern.utf8CodeUnitCount <= n && memcmp(base + j, pattern.utf8Start, pattern.utf8CodeUnitCount) == 0
        }
        while i < n {
            guard let tag = find(lt, from: i) else { return nil }
            var j = tag + 1
            if j >= n { return nil }
            switch b[j] {
            case bang:
                if hasPrefix("!--", at: j) { i = skip(past: "-->", from: j + 3) }
                else if hasPrefix("![CDATA[", at: j) { i = skip(past: "]]>", from: j + 8) }
                else { i = find(gt, from: j).map { $0 + 1 } ?? n }
                continue
            case question:
                i = skip(past: "?>", from: j + 1)
                continue
            case slash:
                i = find(gt, from: j).map { $0 + 1 } ?? n
                continue
            default:
                break
            }
            // A start tag: its name, then attributes up to '>' or '/>'.
            while j < n && !isSpace(b[j]) && b[j] != gt && b[j] != slash { j += 1 }
            var attributes = 0
            while true {
                while j < n && isSpace(b[j]) { j += 1 }
                if j >= n { return nil }
                if b[j] == gt || b[j] == slash { i = j + 1; break }
                let nameStart = j
                while j < n && !isSpace(b[j]) && b[j] != equal && b[j] != gt && b[j] != slash { j += 1 }
                attributes += 1
                if attributes > maxAttributes {
                    return (tag, "an element with more than \(maxAttributes) attributes is refused")
                }
                let length = j - nameStart
                if length >= 5 && b[nameStart] == UInt8(ascii: "x") && b[nameStart + 1] == UInt8(ascii: "m")
                    && b[nameStart + 2] == UInt8(ascii: "l") && b[nameStart + 3] == UInt8(ascii: "n")
                    && b[nameStart + 4] == UInt8(ascii: "s") && (length == 5 || b[nameStart + 5] == UInt8(ascii: ":")) {
                    namespaces += 1
                    if namespaces > maxNamespaceDeclarations {
                        return (tag, "more than \(maxNamespaceDeclarations) namespace declarations are refused")
                    }
                }
                while j < n && isSpace(b[j]) { j += 1 }
                guard j < n, b[j] == equal else { return nil }  // malformed: libxml2 says so
                j += 1
                while j < n && isSpace(b[j]) { j += 1 }
                guard j < n, b[j] == UInt8(ascii: "\"") || b[j] == UInt8(ascii: "'") else { return nil }
                guard let close = find(b[j], from: j + 1) else { return nil }
                j = close + 1
            }
        }
        return nil
    }
}
