#if canImport(Glibc)
import Glibc
#endif
import POSIX
import VirtPortCore

/// Which domains are running, from libvirt's own status files (`/run/libvirt/qemu/NAME.xml`,
/// a `<domstatus pid=…>` wrapping the live domain XML, metadata included). libvirtd keeps them
/// while it runs and leaves them when it dies, so they answer with or without the daemon; a file
/// whose QEMU pid is gone (a crash, or a reboot that kept /run) does not count. (With libvirtd up,
/// the agent and commands ask libvirt itself: `RunningDomains.list(config:)` in Agent.)
public enum RunningDomains {
    public typealias Entry = RunningDomain

    public static func list(runDir: String) -> [String: Entry] {
        var out: [String: Entry] = [:]
        let dir = "\(runDir)/qemu"
        for file in FileSystem.listDirectory(dir) where file.hasSuffix(".xml") {
            guard let bytes = (try? IO.readFile("\(dir)/\(file)")) ?? nil,
                  let uuid = HookInput.domainUUID(bytes) else { continue }
            guard let pid = statusPID(bytes), kill(pid, 0) == 0 || errno == EPERM else { continue }
            let name = String(file.dropLast(4))
            do {
                let d = try DomainXML.parse(bytes)
                out[uuid] = Entry(domain: d, uuid: uuid, name: d.name)
            } catch {
                out[uuid] = Entry(domain: nil, uuid: uuid, name: name, problem: error.message)
            }
        }
        return out
    }

    /// The `pid='N'` attribute of `<domstatus …>`.
    public static func statusPID(_ bytes: [UInt8]) -> Int32? {
        guard let start = Bytes.find(Array("<domstatus".utf8), in: bytes) else { return nil }
        var end = start
        while end < bytes.count && bytes[end] != UInt8(ascii: ">") { end += 1 }
        let tag = Array(bytes[start..<end])
        guard var i = Bytes.find(Array(" pid=".utf8), in: tag) else { return nil }
        i += 6  // past the quote
        var digits = ""
        while i < tag.count, tag[i] >= UInt8(ascii: "0"), tag[i] <= UInt8(ascii: "9") {
            digits.append(Character(UnicodeScalar(tag[i])))
            i += 1
        }
        return pid_t(digits).flatMap { $0 > 0 ? $0 : nil }
    }
}
