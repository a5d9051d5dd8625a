import Foundation
import Testing
@testable import Netfilter
import VirtPortCore

/// Real connections through the DNAT maps (root only):
///
///     client ns  10.99.0.2 / fd99::2 ── veth ── 10.99.0.1 / fd99::1 (dev "vh")  host ns (table inet virtport)
///                                                br0 192.168.122.1 / fd00:122::1
///     guest ns   192.168.122.10 / fd00:122::10 ──┤   (listener on :22 answers "hello <peer address>")
///     guest2 ns  192.168.122.11 ─────────────────┘
@Suite("real traffic through the maps", .enabled(if: isRoot, "needs root: creates network namespaces"),
       .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/socat"), "needs socat"))
struct TrafficTests {
    @Test func dnatFromOutsideFromTheHostAndBetweenGuests() throws {
        let host = try NetNS.create("host")
        defer { host.delete() }
        let client = try NetNS.create("client")
        defer { client.delete() }
        let guest = try NetNS.create("guest")
        defer { guest.delete() }
        let guest2 = try NetNS.create("guest2")
        defer { guest2.delete() }

        let ip = { (ns: NetNS, args: String) throws in
            _ = try must(["ip", "-n", ns.name] + args.split(separator: " ").map(String.init))
        }
        // client — host
        try ip(client, "link add vc type veth peer name vh netns \(host.name)")
        try ip(client, "addr add 10.99.0.2/24 dev vc")
        try ip(client, "addr add fd99::2/64 dev vc nodad")
        try ip(client, "link set vc up")
        try ip(host, "addr add 10.99.0.1/24 dev vh")
        try ip(host, "addr add fd99::1/64 dev vh nodad")
        try ip(host, "link set vh up")
        // the bridge and two guests
        try ip(host, "link add br0 type bridge")
        try ip(host, "addr add 192.168.122.1/24 dev br0")
        try ip(host, "addr add fd00:122::1/64 dev br0 nodad")
        try ip(host, "link set br0 up")
        for (ns, last, port) in [(guest, 10, "vg1"), (guest2, 11, "vg2")] {
            try ip(ns, "link add eth0 type veth peer name \(port) netns \(host.name)")
            try ip(host, "link set \(port) master br0 up")
            try ip(ns, "addr add 192.168.122.\(last)/24 dev eth0")
            try ip(ns, "addr add fd00:122::\(last)/64 dev eth0 nodad")
            try ip(ns, "link set eth0 up")
            try ip(ns, "route add default via 192.168.122.1")
            try ip(ns, "-6 route add default via fd00:122::1")
        }
        try host.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])

        // The guest's service: answers with the address it sees the connection come from.
        let listeners = try ["TCP4-LISTEN:22,fork,reuseaddr", "TCP6-LISTEN:22,fork,reuseaddr,ipv6only=1"].map {
            try background(guest, ["socat", $0, "SYSTEM:echo hello $SOCAT_PEERADDR"])
        }
        // SIGKILL: children of the test runner inherit a signal mask that blocks SIGTERM.
        defer { for p in listeners { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } }
        try waitForListener(guest)

        let nf = try host.session()
        try nf.apply(adding: [
            element(.tcp, host: "10.99.0.1", 2222, to: "192.168.122.10", 22),  // fwd4_addr
            element(.tcp, 2223, to: "192.168.122.10", 22),  // fwd4: any local address
            element(.tcp, dev: "vh", 2224, to: "192.168.122.10", 22),  // fwd4_dev: only via vh
            element(.tcp, host: "fd99::1", 2222, to: "fd00:122::10", 22),  // fwd6_addr
        ], removing: [], hairpinAdding: [Subnet("192.168.122.0/24")!])

        // From outside: DNAT keeps the client's address.
        #expect(try connect(from: client, "TCP4:10.99.0.1:2222") == "hello 10.99.0.2")
        #expect(try connect(from: client, "TCP4:10.99.0.1:2223") == "hello 10.99.0.2")
        #expect(try connect(from: client, "TCP4:10.99.0.1:2224") == "hello 10.99.0.2")
        #expect(try connect(from: client, "TCP6:[fd99::1]:2222") == "hello [fd99:0000:0000:0000:0000:0000:0000:0002]")  // socat's spelling
        // From the host itself (chain output).
        #expect(try connect(from: host, "TCP4:10.99.0.1:2222") == "hello 10.99.0.1")
        // From the other guest: masqueraded through the host (hairpin4), else the reply would bypass it.
        #expect(try connect(from: guest2, "TCP4:10.99.0.1:2222") == "hello 192.168.122.1")
        // The dev-bound forward does not answer on br0.
        #expect(try connect(from: guest2, "TCP4:192.168.122.1:2224") == nil)

        // Removed: the port is closed again.
        try nf.apply(adding: [], removing: [element(.tcp, host: "10.99.0.1", 2222, to: "192.168.122.10", 22)])
        #expect(try connect(from: client, "TCP4:10.99.0.1:2222") == nil)
        #expect(try connect(from: client, "TCP4:10.99.0.1:2223") == "hello 10.99.0.2")
    }

    /// Starts `arguments` inside `ns` without waiting.
    func background(_ ns: NetNS, _ arguments: [String]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        process.arguments = ["netns", "exec", ns.name] + arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    func waitForListener(_ ns: NetNS) throws {
        for _ in 0..<100 {
            if try connect(from: ns, "TCP4:127.0.0.1:22") != nil, try connect(from: ns, "TCP6:[::1]:22") != nil { return }
            usleep(20_000)
        }
        Issue.record("the guest listener did not come up")
    }

    /// The first line the service answers, or nil when the connection fails.
    func connect(from ns: NetNS, _ address: String) throws -> String? {
        let result = try ns.exec(["socat", "-T", "3", "-u", "\(address),connect-timeout=3", "STDOUT"])
        let line = result.stdout.split(separator: "\n").first.map(String.init)
        return result.status == 0 ? line : nil
    }
}
