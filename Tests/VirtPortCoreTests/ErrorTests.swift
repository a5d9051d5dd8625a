import Testing
import VirtPortCore

/// One error shape: the cause is kept as the value it was; errors compare by code, message and
/// cause (its type and fields), never by the cause's text.
@Suite struct ErrorTests {
    struct KernelSaid: ErrorCause {
        var code: Int32
        var description: String { "No such file or directory" }
    }

    @Test func causesCompareByTypeAndFieldsNotByText() {
        let a = VirtPortError.operational("cannot delete table inet virtport", cause: KernelSaid(code: 2))
        #expect(a == VirtPortError.operational("cannot delete table inet virtport", cause: KernelSaid(code: 2)))
        // Same text, another code: another error.
        #expect(a != VirtPortError.operational("cannot delete table inet virtport", cause: KernelSaid(code: 3)))
        // Same text, another type: another error.
        #expect(a != VirtPortError.operational("cannot delete table inet virtport", cause: TextCause("No such file or directory")))
        #expect(a.description == "cannot delete table inet virtport: No such file or directory")
        #expect(a != VirtPortError.operational("cannot delete table inet virtport"))
    }

    @Test func aCauseIsFoundAlongTheChainByItsType() {
        let inner = VirtPortError.operational("cannot open netlink socket", cause: KernelSaid(code: 1))
        let outer = VirtPortError.operational("heal failed", cause: inner)
        #expect(outer.cause(as: KernelSaid.self)?.code == 1)
        #expect(outer.cause(as: VirtPortError.self) == inner)
        #expect(outer.cause(as: TextCause.self) == nil)
    }

    @Test func anUntypedCatchKeepsAnErrorCauseAsItWas() {
        let thrown: any Error = KernelSaid(code: 2)
        #expect(VirtPortError.operational("x", cause: thrown).cause(as: KernelSaid.self)?.code == 2)
        struct Foreign: Error {}
        #expect(VirtPortError.operational("x", cause: Foreign() as any Error).cause(as: TextCause.self) != nil)
    }
}
