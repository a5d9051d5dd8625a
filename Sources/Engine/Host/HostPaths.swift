#if canImport(Glibc)
import Glibc
#endif
import POSIX

/// Host files outside libvirt's own directories (AppArmor profiles and state, SELinux state, the
/// alternatives links): `VIRTPORT_SYSROOT` prefixes them, so tests can point at a fake tree.
public enum HostPaths {
    public static func path(_ p: String) -> String { (sysroot ?? "") + p }

    /// `VIRTPORT_SYSROOT` when set (and not empty): a test's fake host tree.
    public static var sysroot: String? {
        guard let r = Environment.get("VIRTPORT_SYSROOT"), !r.isEmpty else { return nil }
        return r
    }

    /// The file's text; nil when it is absent or unreadable (these are probes of optional host state).
    public static func readText(_ p: String) -> String? {
        guard let b = (try? FileSystem.readFile(p, limit: 1 << 20)) ?? nil else { return nil }
        return String(decoding: b, as: UTF8.self)
    }
}
