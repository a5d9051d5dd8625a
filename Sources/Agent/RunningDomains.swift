import Libvirt
public import Engine
import VirtPortCore

extension RunningDomains {
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
}
