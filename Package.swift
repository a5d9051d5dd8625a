// swift-tools-version:6.0
// virtport: libvirt hook + CLI that publishes VM ports through nftables.
// The product binary deliberately links no Foundation and no argument parser: the hook runs on
// every VM start and pays for every library at process start (see README "Startup cost").
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("InternalImportsByDefault"),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "virtport",
    products: [.executable(name: "virtport", targets: ["virtport"])],
    targets: [
        // C modules: a module map and a shim header each, nothing else.
        .systemLibrary(name: "CNftnl", pkgConfig: "libnftnl", providers: [.apt(["libnftnl-dev", "libmnl-dev"])]),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CLibXML2", pkgConfig: "libxml-2.0", providers: [.apt(["libxml2-dev"])]),
        // Headers only: libvirt is dlopen()ed by the agent/CLI so the hook never loads it.
        .systemLibrary(name: "CLibvirt", providers: [.apt(["libvirt-dev"])]),

        .target(name: "VirtPortCore", dependencies: ["CLibXML2"], swiftSettings: strict),
        .target(name: "Netfilter", dependencies: ["VirtPortCore", "CNftnl"], swiftSettings: strict),
        .target(name: "Journal", dependencies: ["VirtPortCore", "CSQLite"], swiftSettings: strict),
        .target(name: "Libvirt", dependencies: ["VirtPortCore", "CLibvirt"], swiftSettings: strict),
        .target(name: "VirtPortApp", dependencies: ["VirtPortCore", "Netfilter", "Journal", "Libvirt"], swiftSettings: strict),
        .executableTarget(
            name: "virtport", dependencies: ["VirtPortApp"], swiftSettings: strict,
            linkerSettings: [.unsafeFlags(["-static-stdlib"], .when(configuration: .release))]),

        .testTarget(name: "VirtPortCoreTests", dependencies: ["VirtPortCore"], resources: [.copy("Fixtures")]),
        .testTarget(name: "JournalTests", dependencies: ["Journal", "VirtPortCore"]),
        .testTarget(name: "NetfilterTests", dependencies: ["Netfilter", "VirtPortCore"]),
        .testTarget(name: "VirtPortAppTests", dependencies: ["VirtPortApp", "VirtPortCore", "Journal"]),
    ],
    swiftLanguageModes: [.v6]
)
