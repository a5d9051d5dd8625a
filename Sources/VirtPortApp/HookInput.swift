import VirtPortCore

/// Cheap scans of a hook's stdin that run before (or instead of) a full XML parse.
enum HookInput {
    /// The domain's `<uuid>`: libvirt formats it as the second child of `<domain>`, long before
    /// `<metadata>`. Lenient on purpose: teardown must work even if the metadata became invalid.
    static func domainUUID(_ bytes: [UInt8]) -> String? {
        let open = Array("<uuid>".utf8), close = Array("</uuid>".utf8)
        guard let s = Bytes.find(open, in: bytes), let e = Bytes.find(close, in: bytes, from: s + open.count) else { return nil }
        let text = String(decoding: bytes[(s + open.count)..<e], as: UTF8.self).trimmed
        guard text.count == 36, text.allSatisfy({ $0.isHexDigit || $0 == "-" }) else { return nil }
        return text.lowercased()
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// A hook's stdin, read to its end whatever its size: libvirt writes the whole domain XML and
/// must never get EPIPE, and a domain without virtport metadata is never refused for its size.
struct HookStdin {
    /// The first `limit` bytes (all of them when `total <= limit`).
    var bytes: [UInt8]
    /// How many bytes stdin held.
    var total: Int
    /// Whether any part mentions `urn:virtport:domain:1` (`DomainXML.mentionsVirtPort`).
    var mentions: Bool

    var oversize: Bool { total > bytes.count }

    /// Reads fd 0 to EOF in 64 KiB chunks, keeping the first `limit` bytes and scanning every
    /// chunk (with the tail of the one before, so a URI split across two is found) for our
    /// namespace.
    static func read(limit: Int) throws(VirtPortError) -> HookStdin {
        var result = HookStdin(bytes: [], total: 0, mentions: false)
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 1)
        defer { chunk.deallocate() }
        var tail: [UInt8] = []
        let overlap = DomainXML.needleLength - 1
        while true {
            let n = Glibc.read(0, chunk.baseAddress, chunk.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw .operational("cannot read standard input", cause: IO.errnoText())
            }
            if n == 0 { break }
            let piece = UnsafeRawBufferPointer(rebasing: chunk[0..<n])
            if result.total < limit { result.bytes.append(contentsOf: piece.prefix(limit - result.total)) }
            result.total += n
            if !result.mentions {
                let window = tail + piece
                result.mentions = DomainXML.mentionsVirtPort(window)
                tail = Array(window.suffix(overlap))
            }
        }
        return result
    }
}
