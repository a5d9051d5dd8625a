import POSIX
public import VirtPortCore

/// Cheap scans of a hook's stdin that run before (or instead of) a full XML parse.
public enum HookInput {
    /// The largest hook input read (libvirt domain XML is a few KiB).
    public static let limit = 4 << 20

    /// The domain's `<uuid>`: libvirt formats it as the second child of `<domain>`, long before
    /// `<metadata>`. Lenient on purpose: teardown must work even if the metadata became invalid.
    public static func domainUUID(_ bytes: [UInt8]) -> String? {
        let open = Array("<uuid>".utf8), close = Array("</uuid>".utf8)
        guard let s = Bytes.find(open, in: bytes), let e = Bytes.find(close, in: bytes, from: s + open.count) else { return nil }
        let text = String(decoding: bytes[(s + open.count)..<e], as: UTF8.self).trimmed
        guard text.count == 36, text.allSatisfy({ $0.isHexDigit || $0 == "-" }) else { return nil }
        return text.lowercased()
    }
}

/// A hook's stdin, read to its end whatever its size: libvirt writes the whole domain XML and
/// must never get EPIPE, and a domain without virtport metadata is never refused for its size.
public struct HookStdin {
    /// The first `limit` bytes (all of them when `total <= limit`).
    public var bytes: [UInt8]
    /// How many bytes stdin held.
    public var total: Int
    /// Whether any part mentions `urn:virtport:domain:1` (`DomainXML.mentionsVirtPort`).
    public var mentions: Bool

    public var oversize: Bool { total > bytes.count }

    /// Reads fd 0 to EOF in 64 KiB chunks, keeping the first `limit` bytes and scanning every
    /// chunk (with the tail of the one before, so a URI split across two is found) for our
    /// namespace.
    public static func read(limit: Int) throws(VirtPortError) -> HookStdin {
        var result = HookStdin(bytes: [], total: 0, mentions: false)
        var tail: [UInt8] = []
        let overlap = DomainXML.needleLength - 1
        // Not zero-filled, reused: a hook reads a few KiB, and 64 KiB of memset per read was measurable.
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 1)
        defer { chunk.deallocate() }
        while true {
            let n: Int
            do { n = try FileDescriptor.standardInput.read(into: chunk) } catch {
                throw .operational("cannot read standard input", cause: error)
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
