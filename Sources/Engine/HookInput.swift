import VirtPortCore

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
