#if canImport(Glibc)
import Glibc
#endif
import Testing
import VirtPortCore
@testable import Engine

@Suite struct AgentFrameTests {
    @Test func requestAndReplyRoundTrip() {
        let request = AgentFrame.Request(configPath: "/etc/virtport/virtport.conf", kind: "qemu",
                                         args: ["vm1", "start", "begin", "-"], input: Array("<domain/>".utf8) + [0, 255])
        #expect(AgentFrame.decodeRequest(AgentFrame.encode(request)) == request)
        for lines in [[], ["one"], ["domain 'vm1' start: host port tcp/2222 is already forwarded", "", "third"]] {
            let reply = AgentFrame.Reply(served: true, code: -2, lines: lines)
            #expect(AgentFrame.decodeReply(AgentFrame.encode(reply)) == reply)
        }
        #expect(AgentFrame.decodeReply(AgentFrame.encode(AgentFrame.Reply(served: false, code: 0, lines: [])))?.served == false)
    }

    @Test func truncatedOrForeignFramesAreRefused() {
        let whole = AgentFrame.encode(AgentFrame.Request(configPath: "/c", kind: "qemu", args: ["a", "b"], input: [1, 2, 3]))
        for cut in 0..<whole.count {
            #expect(AgentFrame.decodeRequest(Array(whole[0..<cut])) == nil)
        }
        #expect(AgentFrame.decodeRequest(whole + [0]) == nil)
        #expect(AgentFrame.decodeReply(whole) == nil)
        #expect(AgentFrame.decodeRequest(Array("VPA2".utf8) + [255, 255, 255, 255]) == nil)
    }
}
