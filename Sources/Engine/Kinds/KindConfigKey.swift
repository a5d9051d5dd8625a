public import VirtPortCore

/// A virtport.conf key a rule kind declares (`RuleKind.configKeys`): documented with the core's
/// (`ConfigKeys.keys`: template, virtport.conf(5), README table, `config check`) and parsed by
/// `Config.parse` into the kind's place (`Policy.kinds` for a `[policy]` key).
public struct KindConfigKey: Sendable {
    public var key: ConfigKeys.Key
    /// The key of the same section it is documented after.
    public var after: String
    /// Reads the value into the config; a bad value throws `bad(why)` (one line naming the key).
    public var parse: @Sendable (Config.Value, (String) -> VirtPortError, inout Config) throws(VirtPortError) -> Void

    public init(_ key: ConfigKeys.Key, after: String,
                parse: @escaping @Sendable (Config.Value, (String) -> VirtPortError, inout Config) throws(VirtPortError) -> Void) {
        self.key = key
        self.after = after
        self.parse = parse
    }
}
