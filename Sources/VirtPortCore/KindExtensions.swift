/// Extension points of the core types for rule kinds (README "Development: adding a rule kind"):
/// a kind keeps its own values on a forward (`ForwardSpec.attributes`), on a plan (`Plan.kinds`)
/// and on the policy (`Policy.kinds`) without the core naming them, and registers the
/// `<portForward>` attributes it owns in `ForwardAttributes.all`.

/// Values kinds keep on a core type, by key (`"source"`). Equal when the same keys hold equal
/// values, so forwards or plans that differ in a kind's value stay distinct. Empty for what no
/// kind touches (no allocation, and `==` is a count comparison).
public struct KindValues: Sendable, Equatable {
    private var storage: [String: any Equatable & Sendable] = [:]

    public init() {}

    public var isEmpty: Bool { storage.isEmpty }

    public subscript<T: Equatable & Sendable>(_ key: String, as _: T.Type = T.self) -> T? {
        get { storage.isEmpty ? nil : storage[key] as? T }
        set {
            if let newValue { storage[key] = newValue } else { storage[key] = nil }
        }
    }

    public static func == (a: KindValues, b: KindValues) -> Bool {
        guard a.storage.count == b.storage.count else { return false }
        for (key, value) in a.storage {
            guard let other = b.storage[key], equal(value, other) else { return false }
        }
        return true
    }

    private static func equal<T: Equatable>(_ a: T, _ b: any Equatable & Sendable) -> Bool { (b as? T) == a }
}

/// A `<portForward>` attribute a rule kind owns (`source=`): how it parses, checks, prints back
/// and plans. The metadata parser, `MetadataEdit`, the planner and `virtport add` ask the
/// registry (`ForwardAttributes.all`) and never name one.
public protocol ForwardAttribute: Sendable {
    /// The XML attribute (`source`); `virtport add --<name>` too when `addOption` is set.
    var name: String { get }
    /// Reads the attribute's text into `spec.attributes`. Bad text: `.invalid`, one line naming
    /// `path` and `attribute` (the spelling the user wrote: `source`, `--source`).
    func parse(_ text: String, into spec: inout ForwardSpec, path: String, attribute: String) throws(VirtPortError)
    /// After every attribute of one `<portForward>` is read: what that element can tell on its own.
    func check(_ spec: ForwardSpec, path: String) throws(VirtPortError)
    /// The attribute's text when `spec` has it (`MetadataEdit` writes it back); nil: absent.
    func text(_ spec: ForwardSpec) -> String?
    /// After the mappings are planned: the kind's share of the plan (`plan.kinds`), and its
    /// policy refusals (one line naming the `[policy]` setting).
    func plan(_ plan: inout Plan, metadata: VirtPortMetadata, policy: Policy) throws(VirtPortError)
    /// `virtport add --<name> VALUE` (repeatable, values joined with spaces): the value's name and
    /// the help line; nil: no such option.
    var addOption: (value: String, help: String)? { get }
}

extension ForwardAttribute {
    public func check(_ spec: ForwardSpec, path: String) throws(VirtPortError) {}
    public func plan(_ plan: inout Plan, metadata: VirtPortMetadata, policy: Policy) throws(VirtPortError) {}
    public var addOption: (value: String, help: String)? { nil }
}

extension Policy {
    /// A kind's `[policy]` setting as a refusal names it: `[policy] key = ["a", "b"]`.
    public static func setting(_ key: String, list items: [String]) -> String {
        "[policy] \(key) = [" + items.map { "\"\($0)\"" }.joined(separator: ", ") + "]"
    }
}
