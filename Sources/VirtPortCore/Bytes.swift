/// Byte-string search, for the cheap scans that run before (or instead of) parsing: the hook's
/// "does this XML mention our namespace", a status file's pid, a tag inside a netlink rule.
public enum Bytes {
    /// Index of the first occurrence of `needle` in `haystack` at or after `from`; nil if none.
    public static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int = 0) -> Int? {
        guard let first = needle.first, haystack.count >= needle.count, from >= 0 else { return nil }
        let last = haystack.count - needle.count
        var i = from
        while i <= last {
            if haystack[i] == first {
                var j = 1
                while j < needle.count && haystack[i + j] == needle[j] { j += 1 }
                if j == needle.count { return i }
            }
            i += 1
        }
        return nil
    }

    /// The text of a NUL-terminated C buffer (what `inet_ntop`, `if_indextoname`, `fgets` fill),
    /// up to its first NUL; invalid UTF-8 is repaired, never trapped on.
    public static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
