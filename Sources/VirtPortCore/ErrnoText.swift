#if canImport(Glibc)
import Glibc
#endif

extension VirtPortError {
    /// `strerror(e)`, plus "(run as root)" when a process that is not root was refused (EACCES,
    /// EPERM): the journal, the netlink socket and libvirt's hook directory are root's, and the
    /// bare "Permission denied" does not say which side has to change.
    public static func errnoText(_ e: Int32) -> String {
        let text = strerror(e).map { String(cString: $0) } ?? "errno \(e)"
        return (e == EACCES || e == EPERM) && geteuid() != 0 ? text + " (run as root)" : text
    }
}
