import Engine

extension ConfigKeys {
    /// The file `virtport install` writes when there is none: every key, commented out, with its default.
    static var template: String {
        var lines = [
            "# virtport configuration (TOML). Every key is optional; the values shown are the defaults.",
            "# man 5 virtport.conf (or `virtport help --man-conf`) describes every key.",
        ]
        for s in sections {
            lines.append("")
            if !s.name.isEmpty { lines.append("[\(s.name)]") }
            for k in keys where k.section == s.name {
                lines.append(contentsOf: Usage.wrap(k.meaning, width: 96).map { "# " + $0 })
                lines.append("# \(k.name) = \(k.defaultValue)")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
