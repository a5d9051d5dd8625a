import Testing
@testable import Netfilter
import VirtPortCore

@Suite("elements and encodings")
struct ModelTests {
    @Test func mappingRangeExpandsWithGuestOffset() {
        let m = Mapping(proto: .udp, hostAddress: ip("203.0.113.5"), dev: "eth0", hostPorts: PortRange(5000, 5002),
                        guestAddress: ip("192.168.122.10"), guestPortStart: 6000, mac: nil, network: "default",
                        guestSource: .attribute)
        #expect(m.elements.map { "\($0)" } == [
            "udp/203.0.113.5:5000 on eth0 -> 192.168.122.10:6000",
            "udp/203.0.113.5:5001 on eth0 -> 192.168.122.10:6001",
            "udp/203.0.113.5:5002 on eth0 -> 192.168.122.10:6002",
        ])
        #expect(m.elements.allSatisfy { $0.family == .ipv4 && $0.mapName == "fwd4_dev_addr" })
    }

    @Test func singlePortAndIPv6() {
        let m = Mapping(proto: .tcp, hostAddress: nil, dev: nil, hostPorts: PortRange(2222, 2222),
                        guestAddress: ip("fd00::10"), guestPortStart: 22, mac: nil, network: nil, guestSource: .lease)
        #expect(m.elements == [ForwardElement(proto: .tcp, hostPort: 2222, guestAddress: ip("fd00::10"), guestPort: 22)])
        #expect(m.elements[0].mapName == "fwd6")
    }

    @Test func pendingMappingHasNoElements() {
        let m = Mapping(proto: .tcp, hostAddress: nil, dev: nil, hostPorts: PortRange(8000, 8010), guestAddress: nil,
                        guestPortStart: 8000, mac: nil, network: "default", guestSource: .pending)
        #expect(m.elements.isEmpty)
    }

    /// The KEY_TYPE / KEY_LEN nft itself sends (read with `nft --debug=mnl`).
    @Test func mapTypesMatchNft() {
        let byName = Dictionary(uniqueKeysWithValues: ForwardMap.all.map { ($0.name, $0) })
        #expect(byName.count == 8)
        #expect(byName["fwd4_addr"]!.keyType == 29453)  // 7 . 12 . 13
        #expect(byName["fwd4_dev"]!.keyType == 0x2930d)  // 41 . 12 . 13
        #expect(byName["fwd4_dev"]!.keyLength == 24)
        #expect(byName["fwd4"]!.dataType == 461)  // 7 . 13
        #expect(byName["fwd4"]!.dataLength == 8)
        #expect(byName["fwd6_dev_addr"]!.keyLength == 16 + 16 + 4 + 4)
        #expect(byName["fwd6"]!.dataLength == 20)
    }

    @Test func keyRoundTrips() {
        for map in ForwardMap.all {
            let v4 = map.family == .ipv4
            let e = ForwardElement(proto: .sctp, hostAddress: map.hasAddress ? ip(v4 ? "1.2.3.4" : "2001:db8::1") : nil,
                                   dev: map.hasDev ? "br0" : nil, hostPort: 65535,
                                   guestAddress: ip(v4 ? "10.0.0.1" : "fd00::1"), guestPort: 1)
            #expect(ForwardMap(e) == map)
            #expect(map.decode(key: map.key(e), data: map.data(e)) == e)
        }
    }

    @Test func registersAreNamedAsNftNamesThem() {
        #expect(register(word: 0) == 1)  // NFT_REG_1
        #expect(register(word: 1) == 9)  // NFT_REG32_01
        #expect(register(word: 4) == 2)  // NFT_REG_2
        #expect(register(word: 9) == 17)  // NFT_REG32_09
    }

    @Test func subnetsAreNormalised() {
        #expect(Subnet("192.168.122.77/24")?.description == "192.168.122.0/24")
        #expect(Subnet("fd00:1:2:3::9/64")?.description == "fd00:1:2:3::/64")
        #expect(Subnet("10.0.0.1")?.prefix == 32)
        #expect(Subnet("10.0.0.0/33") == nil)
        #expect(Subnet("nonsense/8") == nil)
    }

    @Test func hairpinIntervals() {
        let v4 = HairpinSet(family: .ipv4)
        #expect(v4.elements(Subnet("10.0.0.0/8")!).map(\.key) == [[10, 0, 0, 0], [11, 0, 0, 0]])
        #expect(v4.elements(Subnet("255.255.255.0/24")!).count == 1)  // no end past the top
        #expect(v4.elements(Subnet("0.0.0.0/0")!).count == 1)
        let v6 = HairpinSet(family: .ipv6)
        #expect(v6.elements(Subnet("ffff:ffff:ffff:ffff::/64")!).count == 1)
        #expect(v6.elements(Subnet("fd00::/64")!)[1].key == HairpinSet.bytes(HairpinSet.value(ip("fd00:0:0:1::").bytes), count: 16))
    }

    @Test func hairpinReadBack() {
        let v4 = HairpinSet(family: .ipv4)
        let subnets = ["192.168.122.0/24", "10.0.0.0/8", "255.255.255.0/24"].map { Subnet($0)! }
        var elements = subnets.flatMap(v4.elements)
        elements.append(.init(key: [0, 0, 0, 0], isEnd: true))  // nft's "0 end" marker
        #expect(Set(v4.subnets(from: elements.reversed())) == Set(subnets))
        // A range that is not one prefix (nft add element … { 10.0.0.1-10.0.0.6 }).
        let range = [HairpinSet.Element(key: [10, 0, 0, 1], isEnd: false), .init(key: [10, 0, 0, 7], isEnd: true)]
        #expect(v4.subnets(from: range).map(\.description) == ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"])
        let all6 = HairpinSet(family: .ipv6)
        #expect(all6.subnets(from: all6.elements(Subnet("::/0")!)).map(\.description) == ["::/0"])
    }

    @Test func errorDescriptionNamesEverything() {
        var e = NetfilterError(errno: 17, operation: "add element tcp/8080 -> 10.0.0.1:80 to map fwd4")
        e.others = [NetfilterError(errno: 2, operation: "delete element udp/53 -> 10.0.0.1:53 from map fwd4")]
        #expect(e.description == "add element tcp/8080 -> 10.0.0.1:80 to map fwd4: File exists; also delete element udp/53 -> 10.0.0.1:53 from map fwd4: No such file or directory")
        #expect(e.isExists && !e.isMissingObject)
        #expect(NetfilterError.missingTable("virtport").isMissingObject)
    }
}
