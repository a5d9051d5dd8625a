/// The `<portForward>` attributes rule kinds own, beyond the core's proto/address/dev/mac/guest
/// (`ForwardAttribute`). Adding one: one line here.
public enum ForwardAttributes {
    public static let all: [any ForwardAttribute] = [
        SourceList.attribute,
    ]

    /// The registered attribute names.
    public static let names: [String] = all.map(\.name)
}
