#if canImport(Glibc)
import Glibc
#endif
import Libvirt
import Engine
import POSIX
import VirtPortCore

/// Which domains are running, from libvirt's own status files (`/run/libvirt/qemu/NAME.xml`,
/// a `<domstatus pid=…>` wrapping the live domain XML, metadata included). libvirtd keeps them
/// while it runs and leaves them when it dies, so they answer with or without the daemon; a file
/// whose QEMU pid is gone (a crash, or a reboot that kept /run) does not count.
enum RunningDomains {
    typealias Entry = RunningDomain

    /// Active domains: from libvirtd when it answers on `uri` (it also counts domains that are still
    /// starting, whose status file libvirt writes only after their start hooks), else from the
    /// status files (libvirtd down: nothing can be starting).
    static func list(config: Config) -> (entries: [String: Entry], source: String) {
        if !config.libvirtURI.isEmpty, let client = LibvirtClient.connect(uri: config.libvirtURI),
           let active = try? client.activeDomains() {
            var out: [String: Entry] = [:]
            for d in active {
                do {
                    out[d.uuid] = Entry(domain: try DomainXML.parse(d.xml), uuid: d.uuid, name: d.name)
                } catch {
                    out[d.uuid] = Entry(domain: nil, uuid: d.uuid, name: d.name, problem: error.message)
                }
            }
            return (out, "libvirt \(config.libvirtURI)")
        }
        return (list(runDir: config.libvirtRunDir), "status files in \(config.libvirtRunDir)/qemu")
    }

    static func list(runDir: String) -> [String: Entry] {
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
    static func statusPID(_ bytes: [UInt8]) -> pid_t? {
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
