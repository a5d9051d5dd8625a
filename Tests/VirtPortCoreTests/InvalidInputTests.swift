import Testing
@testable import VirtPortCore

/// One refused input and the one-line message fragment it must produce.
struct InvalidCase: Sendable, CustomTestStringConvertible {
    var name: String
    var bytes: [UInt8]
    var fragment: String
    var interfaces: String = nic1
    var policy = Policy()
    var testDescription: String { name }

    /// `body` inside `<vp:virtport>` in an otherwise valid domain.
    static func meta(_ name: String, _ body: String, _ fragment: String, interfaces: String = nic1,
                     policy: Policy = Policy()) -> InvalidCase {
        InvalidCase(name: name, bytes: domainXML(metadata: virtport(body), interfaces: interfaces),
                    fragment: fragment, interfaces: interfaces, policy: policy)
    }

    /// One portForward (attributes `attrs`) holding `ranges`.
    static func forward(_ name: String, _ attrs: String, _ ranges: String, _ fragment: String,
                        interfaces: String = nic1, policy: Policy = Policy()) -> InvalidCase {
        meta(name, "<vp:portForward \(attrs)>\(ranges)</vp:portForward>", fragment, interfaces: interfaces, policy: policy)
    }

    static func raw(_ name: String, _ xml: String, _ fragment: String) -> InvalidCase {
        InvalidCase(name: name, bytes: Array(xml.utf8), fragment: fragment)
    }
}

let tcp = "proto='tcp'"
let web = "<vp:range start='8080' to='80'/>"

let invalidCases: [InvalidCase] = [
    // Well-formedness and hostile XML
    .raw("empty input", "", "domain XML: input is empty"),
    .raw("tag mismatch", "<domain>\n<name>a</nme>\n</domain>",
         "domain XML: malformed XML at line 2: Opening and ending tag mismatch: name line 2 and nme"),
    .raw("truncated", "<domain><name>a</name>", "domain XML: malformed XML at line 1: Premature end of data in tag domain line 1"),
    .raw("garbage after root", "<domain><name>a</name><uuid>u</uuid></domain><x/>",
         "domain XML: malformed XML at line 1: Extra content at the end of the document"),
    .raw("undefined entity", "<domain><name>&xxe;</name></domain>",
         "domain XML: malformed XML at line 1: Entity 'xxe' not defined"),
    .raw("unbound prefix", "<domain><name>a</name><uuid>u</uuid><metadata><vp:virtport/></metadata></domain>",
         "domain XML: malformed XML at line 1: Namespace prefix vp on virtport is not defined"),
    .raw("external entity (XXE)",
         "<?xml version='1.0'?>\n<!DOCTYPE domain [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>\n<domain><name>&xxe;</name></domain>",
         "domain XML: line 2: <!DOCTYPE> is refused (libvirt XML never declares a DTD or entities)"),
    .raw("external DTD", "<!DOCTYPE domain SYSTEM 'http://example.org/evil.dtd'><domain/>", "<!DOCTYPE> is refused"),
    .raw("wrong root", "<network><name>n</name></network>",
         "domain XML: root element is <network>, expected <domain> or <domstatus>"),
    .raw("namespaced root", "<d:domain xmlns:d='urn:x'/>", "domain XML: root element is <d:domain>"),
    .raw("domstatus without domain", "<domstatus state='running'/>", "domain XML: <domstatus> has no <domain> element"),
    .raw("no name", "<domain><uuid>u</uuid></domain>", "domain XML: <domain> has no <name>"),
    .raw("no uuid", "<domain><name>a</name></domain>", "domain XML: <domain> a has no <uuid>"),
    .raw("bad interface mac", "<domain><name>a</name><uuid>u</uuid><devices><interface type='network'><mac address='52:54:00:zz:00:01'/></interface></devices></domain>",
         #"devices/interface[1]/mac: address="52:54:00:zz:00:01" is not a MAC address"#),

    // Ports
    .forward("port too large", tcp, "<vp:range start='80'/><vp:range start='70000'/>",
             #"portForward[1]/range[2]: start="70000" is not a port (1-65535)"#),
    .forward("port zero", tcp, "<vp:range start='0'/>", #"portForward[1]/range[1]: start="0" is not a port (1-65535)"#),
    .forward("signed port", tcp, "<vp:range start='+8080'/>", #"start="+8080" is not a port (1-65535)"#),
    .forward("negative port", tcp, "<vp:range start='-1'/>", #"start="-1" is not a port (1-65535)"#),
    .forward("port with spaces", tcp, "<vp:range start=' 8080'/>", #"start=" 8080" is not a port (1-65535)"#),
    .forward("hex port", tcp, "<vp:range start='0x50'/>", #"start="0x50" is not a port (1-65535)"#),
    .forward("leading zero", tcp, "<vp:range start='080'/>", #"start="080" is not a port (1-65535)"#),
    .forward("empty port", tcp, "<vp:range start=''/>", #"start="" is not a port (1-65535)"#),
    .forward("bad end", tcp, "<vp:range start='80' end='8o'/>", #"portForward[1]/range[1]: end="8o" is not a port (1-65535)"#),
    .forward("bad to", tcp, "<vp:range start='80' to='65536'/>", #"portForward[1]/range[1]: to="65536" is not a port (1-65535)"#),
    .forward("missing start", tcp, "<vp:range end='80'/>", "portForward[1]/range[1]: missing start="),
    .forward("end before start", tcp, "<vp:range start='8010' end='8000'/>",
             #"portForward[1]/range[1]: end="8000" is before start="8010""#),
    .forward("to runs past 65535", tcp, "<vp:range start='2000' end='2999' to='65000'/>",
             #"portForward[1]/range[1]: to="65000" with 1000 ports runs past port 65535 (guest ports 65000-65999)"#),
    .forward("exclude with to", tcp, "<vp:range start='80' end='90'/><vp:range start='85' exclude='yes' to='1'/>",
             "portForward[1]/range[2]: an exclude range cannot have to="),
    .forward("exclude not yes/no", tcp, "<vp:range start='80' exclude='true'/>",
             #"portForward[1]/range[1]: exclude="true" is not yes or no"#),
    .forward("exclude before its range", tcp, "<vp:range start='85' exclude='yes'/><vp:range start='80' end='90'/>",
             #"portForward[1]/range[1]: exclude="yes" removes no port of the ranges before it"#),
    .forward("excludes everything", tcp, "<vp:range start='80' end='90'/><vp:range start='70' end='100' exclude='yes'/>",
             "portForward[1]: its exclude ranges remove every port"),
    .forward("no ranges", tcp, "", "portForward[1]: has no <range> to forward"),

    // portForward attributes
    .forward("unknown proto", "proto='icmp'", web, #"portForward[1]: proto="icmp" is not tcp, udp or sctp"#),
    .forward("upper-case proto", "proto='TCP'", web, #"portForward[1]: proto="TCP" is not tcp, udp or sctp"#),
    .forward("missing proto", "", web, "portForward[1]: missing proto= (tcp, udp or sctp)"),
    .forward("bad address", "proto='tcp' address='203.0.113.256'", web,
             #"portForward[1]: address="203.0.113.256" is not an IP address"#),
    .forward("unspecified address", "proto='tcp' address='0.0.0.0'", web,
             #"portForward[1]: address="0.0.0.0" is the unspecified address, not a host listen address"#),
    .forward("bad mac", "proto='tcp' mac='52:54:00:aa:bb'", web, #"portForward[1]: mac="52:54:00:aa:bb" is not a MAC address"#),
    .forward("bad guest", "proto='tcp' guest='guest.example'", web, #"portForward[1]: guest="guest.example" is not an IP address"#),
    .forward("loopback guest", "proto='tcp' guest='127.0.0.1'", web,
             #"portForward[1]: guest="127.0.0.1" is a loopback address, not a guest address"#),
    .forward("multicast guest", "proto='tcp' guest='ff02::1'", web,
             #"portForward[1]: guest="ff02::1" is a multicast address, not a guest address"#),
    .forward("unspecified guest", "proto='tcp' guest='::'", web,
             #"portForward[1]: guest="::" is the unspecified address, not a guest address"#),
    .forward("bad dev", "proto='tcp' dev='eth0/1'", web, #"portForward[1]: dev="eth0/1" is not a network interface name"#),
    .forward("too long dev", "proto='tcp' dev='abcdefghijklmnop'", web, #"dev="abcdefghijklmnop" is not a network interface name"#),
    .forward("family mismatch", "proto='tcp' address='203.0.113.5' guest='fd00::5'", web,
             #"portForward[1]: address="203.0.113.5" is IPv4 but guest="fd00::5" is IPv6"#),

    // Grammar
    .forward("unknown attribute", "proto='tcp' port='80'", web,
             "portForward[1]: unknown attribute port= (known: address= dev= guest= mac= proto= source=)"),
    .forward("unknown range attribute", tcp, "<vp:range start='80' stop='90'/>",
             "portForward[1]/range[1]: unknown attribute stop="),
    .forward("attribute in our namespace", "vp:proto='tcp'", web,
             "portForward[1]: unknown attribute proto= in namespace urn:virtport:domain:1"),
    .forward("unknown child element", tcp, "<vp:port start='80'/>",
             "portForward[1]: unknown element <port> in namespace urn:virtport:domain:1 (expected <range>)"),
    .forward("child of range", tcp, "<vp:range start='80'><vp:range start='81'/></vp:range>",
             "portForward[1]/range[1]: unknown element <range> in namespace urn:virtport:domain:1 (expected no child elements)"),
    .meta("unknown element in virtport", "<vp:forward proto='tcp'/>",
          "virtport: unknown element <forward> in namespace urn:virtport:domain:1 (expected <portForward> or <guard>)"),
    .raw("two virtport elements", """
         <domain><name>a</name><uuid>u</uuid><metadata>
         <a:virtport xmlns:a='urn:virtport:domain:1'/><b:virtport xmlns:b='urn:virtport:domain:1'/>
         </metadata></domain>
         """, "metadata: 2 <virtport> elements in namespace urn:virtport:domain:1, expected one"),
    .raw("attribute on virtport",
         "<domain><name>a</name><uuid>u</uuid><metadata><virtport xmlns='urn:virtport:domain:1' version='2'/></metadata></domain>",
         "virtport: unknown attribute version="),
    .raw("our namespace, other element under metadata",
         "<domain><name>a</name><uuid>u</uuid><metadata><x xmlns='urn:virtport:domain:1'/></metadata></domain>",
         "metadata: unknown element <x> in namespace urn:virtport:domain:1, expected <virtport>"),
    .meta("bad guard value", "<vp:guard spoofing='yes'/>", #"guard[1]: spoofing="yes" is not on or off"#),
    .meta("bad isolated value", "<vp:guard isolated='on'/>", #"guard[1]: isolated="on" is not yes or no"#),

    // Interfaces
    .forward("mac matches no interface", "proto='tcp' mac='52:54:00:aa:bb:99'", web,
             #"portForward[1]: mac="52:54:00:aa:bb:99" matches no interface of domain web1"#),
    .forward("two NICs without mac", tcp, web, "portForward[1]: portForward needs mac= because domain has 2 interfaces",
             interfaces: nic1 + nic2),
    .forward("no NIC", tcp, web, "portForward[1]: domain web1 has no network interface", interfaces: ""),
    .meta("guard mac matches no interface", "<vp:guard mac='52:54:00:aa:bb:99'/>",
          #"guard[1]: mac="52:54:00:aa:bb:99" matches no interface of domain web1"#),
    .meta("two guards for one NIC", "<vp:guard/><vp:guard mac='\(mac1)' isolated='yes'/>",
          "guard[2]: a second guard for the interface of guard[1]"),

    // Overlaps
    .forward("overlap within a forward", tcp, "<vp:range start='8000' end='8010'/><vp:range start='8005' to='22'/>",
             "portForward[1]/range[2]: tcp host port 8005 is already forwarded by portForward[1]/range[1]"),
    .meta("overlap across forwards", """
          <vp:portForward proto='udp'><vp:range start='5000' end='5010'/></vp:portForward>
          <vp:portForward proto='udp' address='198.51.100.7'><vp:range start='5008' end='5020'/></vp:portForward>
          """, "portForward[2]/range[1]: udp host ports 5008-5010 are already forwarded by portForward[1]/range[1]"),
    .meta("overlap same dev", """
          <vp:portForward proto='tcp' dev='eth0'><vp:range start='9000'/></vp:portForward>
          <vp:portForward proto='tcp' dev='eth0' guest='192.168.122.9'><vp:range start='9000' to='22'/></vp:portForward>
          """, "portForward[2]/range[1]: tcp host port 9000 is already forwarded by portForward[1]/range[1]"),

    // Policy
    .forward("host port below policy", tcp, "<vp:range start='22'/>",
             #"portForward[1]/range[1]: host port 22 is outside the allowed host ports ([policy] host_ports = ["1024-65535"])"#),
    .forward("range straddles policy", tcp, "<vp:range start='1000' end='1100'/>",
             #"portForward[1]/range[1]: host port 1000 is outside the allowed host ports ([policy] host_ports = ["1024-65535"])"#),
    .forward("hole in policy", tcp, "<vp:range start='8000' end='9000'/>",
             #"portForward[1]/range[1]: host port 8443 is outside the allowed host ports ([policy] host_ports = ["1024-8442", "8444-65535"])"#,
             policy: Policy(hostPorts: [PortRange(1024, 8442), PortRange(8444, 65535)])),
    .forward("listen address not allowed", "proto='tcp' address='203.0.113.9'", web,
             #"portForward[1]: address="203.0.113.9" is not an allowed listen address ([policy] listen_addresses = ["203.0.113.5", "2001:db8::1"])"#,
             policy: Policy(listenAddresses: [ip("203.0.113.5"), ip("2001:db8::1")])),
    .forward("any address not allowed", tcp, web,
             #"portForward[1]: address= is required: forwarding on every host address is not allowed ([policy] listen_addresses = [] has no "any")"#,
             policy: Policy(allowAnyAddress: false)),
    .forward("too many forwards", tcp, "<vp:range start='2000'/><vp:range start='3000'/><vp:range start='4000'/>",
             "domain web1: 3 forwards exceed the limit of 2 per domain ([policy] max_forwards_per_domain = 2)", policy: Policy(maxForwardsPerDomain: 2)),
    .forward("too many ports", tcp, "<vp:range start='2000' end='2100'/>",
             "domain web1: 101 host ports exceed the limit of 100 per domain ([policy] max_ports_per_domain = 100)", policy: Policy(maxPortsPerDomain: 100)),
]

@Suite struct InvalidInputTests {
    @Test func enoughDistinctCases() {
        #expect(invalidCases.count >= 30)
        #expect(Set(invalidCases.map(\.name)).count == invalidCases.count)
        #expect(Set(invalidCases.map(\.fragment)).count == invalidCases.count)
    }

    @Test(arguments: invalidCases)
    func refused(_ c: InvalidCase) {
        do {
            let domain = try DomainXML.parse(c.bytes)
            let plan = try Planner.plan(domain: domain, resolver: FakeResolver(), policy: c.policy)
            Issue.record("accepted, planned \(summary(plan))")
        } catch {
            #expect(error.code == .invalidInput)
            #expect(error.exitCode == 2)
            #expect(error.message.contains(c.fragment), "got: \(error.message)")
            #expect(!error.message.contains("\n"), "one line")
        }
    }
}
