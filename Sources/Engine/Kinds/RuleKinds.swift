/// Every rule kind, in the order the lifecycle runs them (a start stages forwards then guards;
/// their messages go in one batch in this order). Adding a kind: one line here.
public enum RuleKinds {
    public static let all: [any RuleKind] = [
        // Before the forwards: when the shared batch is refused, its own batch puts the filter in before their DNAT.
        SourceFilterKind(),
        ForwardKind(),
        GuardKind(),
    ]

    /// The owner of nf_tables table `family table` when a kind declares it (`RuleKind.tableOwners`).
    public static func owner(family: String, table: String, base: String) -> String? {
        for kind in all {
            for t in kind.tableOwners(base: base) where t.family == family && t.table == table { return t.owner }
        }
        return nil
    }
}
