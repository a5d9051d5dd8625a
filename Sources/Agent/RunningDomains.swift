#if canImport(Glibc)
import Glibc
#endif
public import Engine
import Libvirt
import POSIX
import VirtPortCore

/// Which domains are running. From libvirtd when it answers (`list(config:)`: it also counts
/// domains that are still starting, whose status file libvirt writes only after their start
/// hooks), else from libvirt's own status files (`list(runDir:)`: `/run/libvirt/qemu/NAME.xml`, a
/// `<domstatus pid=…>` wrapping the live domain XML, metadata included). libvirtd keeps those
/// while it runs and leaves them when it dies, so they answer with or without the daemon; a file
/// whose QEMU pid is gone (a crash, or a reboot that kept /run) does not count.
///
/// Here, beside the agent (which reconciles at every libvirt connect), because it needs the
/// libvirt client, which Engine never imports (the hook path); the commands that reconcile
/// (`reconcile`, `install`, `doctor --fix`) import Agent for it.
public enum RunningDomains {
    public typealias Entry = RunningDomain

    /// Active domains: from libvirtd when it answers on `uri` (it also counts domains that are still
    /// starting, whose status file libvirt writes only after their start hooks), else from the
    /// status files (libvirtd down: nothing can be starting).
    public static func list(config: Config) -> (entries: [String: Entry], source: String) {
        if !config.libvirtURI.isEmpty, let client = LibvirtClient.connect(uri: config.libvirtURI),
           let entries = try? list(client: client) {
            return (entries, "libvirt \(config.libvirtURI)")
        }
        return (list(runDir: config.libvirtRunDir), "status files in \(config.libvirtRunDir)/qemu")
    }

    /// The active domains libvirt reports on `client`, with their live XML parsed.
    static func list(client: LibvirtClient) throws(VirtPortError) -> [String: Entry] {
        var out: [String: Entry] = [:]
        for d in try client.activeDomains() {
            do {
                out[d.uuid] = Entry(domain: try DomainXML.parse(d.xml), uuid: d.uuid, name: d.name)
            } catch {
                out[d.uuid] = Entry(domain: nil, uuid: d.uuid, name: d.name, problem: error.message)
            }
        }
        return out
    }

    /// From the status files under `runDir/qemu` only.
    public static func list(runDir: String) -> [String: Entry] {
        var out: [String: Entry] = [:]
        let dir = "\(runDir)/qemu"
        for file in FileSystem.listDirectory(dir) where file.hasSuffix(".xml") {
            guard let bytes = (try? IO.readFile("\(dir)/\(file)")) ?? nil,
                  let uuid = HookInput.domainUUID(bytes) else { continue }
            guard let pid = statusPID(bytes), Process.exists(pid) else { continue }
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
