/// Text that came from whoever edits a domain (attribute values and names, element names, the
/// domain name) made safe for one line of a message, a table cell or a CSV field.
///
/// Control characters become escapes (`\n`, `\r`, `\t`, `\\`, `\xNN`, `\u{NN}` for C1 and the
/// Unicode line/paragraph separators), so a value can never start a second line on stderr, forge
/// a "virtport:" line of its own or move a terminal's cursor. Anything longer than `limit`
/// characters is cut and ends with "…" and how many bytes the whole was.
public enum Quoted {
    /// Length cap for messages: long enough for any sane value, short enough that a 3 MB attribute
    /// is not echoed back.
    public static let messageLimit = 120

    /// `text` escaped and shortened for a message (one line, at most `limit` characters plus the
    /// "…(N bytes)" tail).
    public static func message(_ text: some StringProtocol, limit: Int = messageLimit) -> String {
        var out = ""
        var count = 0
        for scalar in text.unicodeScalars {
            if count >= limit {
                return out + "…(\(text.utf8.count) bytes)"
            }
            append(scalar, to: &out)
            count += 1
        }
        return out
    }

    /// `text` with its control characters escaped, without a length cap and with backslashes
    /// left as they are (table cells, CSV fields, a whole message line).
    public static func cell(_ text: some StringProtocol) -> String {
        cell(String(text))
    }

    /// `cell` of a String (every log line goes through here).
    public static func cell(_ text: String) -> String {
        // Printable ASCII throughout (nearly every line): nothing to escape, decided per byte.
        var text = text
        let printable = text.withUTF8 { bytes in
            for b in bytes where b < 0x20 || b >= 0x7f { return false }
            return true
        }
        if printable { return text }
        if !text.unicodeScalars.contains(where: isControl) { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            if isControl(scalar) { append(scalar, to: &out) } else { out.unicodeScalars.append(scalar) }
        }
        return out
    }

    /// C0, DEL, C1 and the Unicode line and paragraph separators.
    static func isControl(_ s: Unicode.Scalar) -> Bool {
        s.value < 0x20 || s.value == 0x7f || (0x80...0x9f).contains(s.value) || s.value == 0x2028 || s.value == 0x2029
    }

    /// Whether `s` is written as an escape in a message (a backslash too, so escapes stay unambiguous).
    static func needsEscape(_ s: Unicode.Scalar) -> Bool { isControl(s) || s == "\\" }

    private static func append(_ s: Unicode.Scalar, to out: inout String) {
        guard needsEscape(s) else {
            out.unicodeScalars.append(s)
            return
        }
        switch s {
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case "\\": out += "\\\\"
        default:
            let hex = String(s.value, radix: 16)
            if s.value < 0x80 {
                out += "\\x" + (hex.count == 1 ? "0" : "") + hex
            } else {
                out += "\\u{\(hex)}"
            }
        }
    }

    /// `text` with each character that `table` names replaced by its text (an escaping for one
    /// syntax: XML attribute values, a zsh word).
    public static func replacing(_ text: String, _ table: [Character: String]) -> String {
        var out = ""
        for c in text {
            if let r = table[c] { out += r } else { out.append(c) }
        }
        return out
    }
}
