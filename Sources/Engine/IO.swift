#if canImport(Glibc)
import Glibc
#endif
public import POSIX
public import VirtPortCore

/// File reads and writes as virtport's commands and hooks report them: `Errno` wrapped into the
/// one-line `VirtPortError` that names the file.
public enum IO {
    /// A whole file; nil if it does not exist. Over `limit` bytes is invalid input.
    public static func readFile(_ path: String, limit: Int = 16 << 20) throws(VirtPortError) -> [UInt8]? {
        do { return try FileSystem.readFile(path, limit: limit) } catch {
            throw wrap(error, reading: path, limit: limit)
        }
    }

    /// All of standard input (a hook's domain or network XML, `plan`'s input).
    public static func readStdin(limit: Int) throws(VirtPortError) -> [UInt8] {
        do { return try FileDescriptor.standardInput.readAll(limit: limit) } catch {
            throw wrap(error, reading: "standard input", limit: limit)
        }
    }

    static func wrap(_ error: Errno, reading what: String, limit: Int) -> VirtPortError {
        if error.code == EFBIG { return .invalid("\(what) is larger than \(limit) bytes") }
        return .operational("cannot \(error.function == "open" ? "open" : "read") \(what)", cause: error)
    }

    /// Writes `text` to `path` atomically (temporary file + rename) with `mode`.
    public static func writeFile(_ path: String, _ text: String, mode: UInt32) throws(VirtPortError) {
        do { try FileSystem.writeFileAtomically(path, Array(text.utf8), mode: mode) } catch {
            throw .operational("cannot write \(path)", cause: error)
        }
    }

    /// `mkdir -p` with `mode` for the directories it creates.
    public static func makeDirectories(_ path: String, mode: UInt32) throws(VirtPortError) {
        do { try FileSystem.makeDirectories(path, mode: mode) } catch {
            throw .operational("cannot create directory \(path)", cause: error)
        }
    }
}

/// Where a command's output goes. Hook mode has none: stdout is closed off for the whole process.
public enum Output {
    public static func out(_ s: String) { write(.standardOutput, s + "\n") }
    /// One line on stderr, prefixed "virtport: ", whatever `s` holds: a line break or other control
    /// character that got into a message (from a value nobody escaped) is escaped here (`Quoted.cell`).
    public static func err(_ s: String) { write(.standardError, "virtport: " + Quoted.cell(s) + "\n") }

    /// Best effort: a closed stderr or stdout is nothing to report anywhere.
    public static func write(_ fd: FileDescriptor, _ s: String) {
        try? fd.writeAll(Array(s.utf8))
    }
}
