// swift-tools-version:6.0
// virtport: libvirt hook + CLI that publishes VM ports through nftables.
// The product binary deliberately links no Foundation and no argument parser: the hook runs on
// every VM start and pays for every library at process start (see README "Startup cost").
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("InternalImportsByDefault"),
    .enableUpcomingFeature("ExistentialAny"),
    // libxml2's headers live in their own directory (what `pkg-config --cflags libxml-2.0` says on
    // Debian). The C modules declare no pkgConfig: its `--libs` would link the shared libraries.
    .unsafeFlags(["-Xcc", "-I/usr/include/libxml2"]),
]

/// The front ends also import every module whose members they use (no member reaching a file through
/// an import made in another file of the module).
let explicitImports: [SwiftSetting] = strict + [.enableUpcomingFeature("MemberImportVisibility")]

/// The C libraries: shared in debug builds (the tests), static archives in release (the product).
/// A hook is a new process on every VM start, and each shared library costs symbol lookups and
/// relocations at exec: linking libxml2 (with ICU, liblzma, zlib), SQLite, libnftnl and libstdc++
/// statically takes ~2 ms off every hook (README "Startup cost"). libmnl ships no archive; libc
/// and libm stay shared. `-l:libNAME.a` searches the linker's library path for the archive. (The
/// module maps carry no `link` directive, or the shared libraries would be linked as well.)
func link(_ shared: [String], staticArchives: [String]) -> [LinkerSetting] {
    shared.map { .linkedLibrary($0, .when(configuration: .debug)) }
        + staticArchives.map { .linkedLibrary(":lib\($0).a", .when(configuration: .release)) }
}

/// This manifest's directory (with a trailing slash).
let packageDirectory = String(#filePath.dropLast("Package.swift".count))

let package = Package(
    name: "virtport",
    products: [.executable(name: "virtport", targets: ["virtport"])],
    targets: [
        // C modules: a module map and a shim header each, nothing else.
        .systemLibrary(name: "CNftnl", providers: [.apt(["libnftnl-dev", "libmnl-dev"])]),
        .systemLibrary(name: "CSQLite", providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CLibXML2", providers: [.apt(["libxml2-dev"])]),
        // Headers only: libvirt is dlopen()ed by the agent/CLI so the hook never loads it.
        .systemLibrary(name: "CLibvirt", providers: [.apt(["libvirt-dev"])]),
        // Linux headers Glibc's module lacks (epoll, eventfd, inotify), for POSIX: headers only.
        .systemLibrary(name: "CLinux"),

        // The system-call layer under everything that does I/O: EINTR retries, typed Errno.
        .target(name: "POSIX", dependencies: ["CLinux"], swiftSettings: strict),
        .target(name: "VirtPortCore", dependencies: ["POSIX", "CLibXML2"], swiftSettings: strict,
                linkerSettings: link(["xml2"], staticArchives: ["xml2", "icuuc", "icudata", "lzma", "z"])
                    + [.linkedLibrary("stdc++", .when(configuration: .release))]),
        .target(name: "Netfilter", dependencies: ["POSIX", "VirtPortCore", "CNftnl"], swiftSettings: strict,
                linkerSettings: link(["nftnl"], staticArchives: ["nftnl"]) + [.linkedLibrary("mnl")]),
        .target(name: "Journal", dependencies: ["POSIX", "VirtPortCore", "CSQLite"], swiftSettings: strict,
                linkerSettings: link(["sqlite3"], staticArchives: ["sqlite3"])),
        .target(name: "Libvirt", dependencies: ["POSIX", "VirtPortCore", "CLibvirt"], swiftSettings: strict),
        // The work itself (plan → journal intent → one batch → applied; reconcile; libvirt's
        // firewall), shared by every front end below. Never imports Libvirt: the hook path uses it.
        .target(name: "Engine", dependencies: ["POSIX", "VirtPortCore", "Netfilter", "Journal"], swiftSettings: strict),
        // Front ends: what libvirt runs (hook), the long-lived agent, the commands people type.
        .target(name: "Hook", dependencies: ["POSIX", "VirtPortCore", "Engine"], swiftSettings: strict),
        .target(name: "Agent", dependencies: ["POSIX", "VirtPortCore", "Engine", "Journal", "Netfilter", "Libvirt"], swiftSettings: explicitImports),
        .target(name: "Commands", dependencies: ["POSIX", "VirtPortCore", "Engine", "Journal", "Netfilter", "Libvirt",
                                                 "Hook", "Agent"], swiftSettings: explicitImports),
        .executableTarget(
            name: "virtport", dependencies: ["Hook", "Commands"], exclude: ["link"], swiftSettings: strict,
            // `-static-stdlib` names `-lstdc++` itself; Sources/virtport/link/libstdc++.so, first on
            // the library path, is a linker script that turns it into libstdc++.a (ICU needs it once
            // more after its archives: VirtPortCore). libgcc is linked statically too.
            // lld with `-z pack-relative-relocs`: the ~27,000 relative relocations of a PIE (Swift type
            // metadata, mostly) as DT_RELR bitmaps instead of 24-byte RELA entries: ld.so reads 5.5 KB
            // instead of ~660 KB at every exec and applies them faster. Same addresses, same ASLR.
            linkerSettings: [.unsafeFlags(["-static-stdlib", "-L\(packageDirectory)Sources/virtport/link",
                                           "-Xclang-linker", "-static-libgcc",
                                           "-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs"], .when(configuration: .release))]),

        .testTarget(name: "VirtPortCoreTests", dependencies: ["VirtPortCore"], resources: [.copy("Fixtures")]),
        .testTarget(name: "JournalTests", dependencies: ["Journal", "VirtPortCore"]),
        .testTarget(name: "NetfilterTests", dependencies: ["Netfilter", "VirtPortCore"]),
        .testTarget(name: "POSIXTests", dependencies: ["POSIX"]),
        // What several test targets share (a scratch configuration); never linked into the product.
        .target(name: "TestSupport", dependencies: ["Engine"], path: "Tests/TestSupport", swiftSettings: strict),
        .testTarget(name: "EngineTests", dependencies: ["Engine", "VirtPortCore", "Journal", "Netfilter", "POSIX", "TestSupport"]),
        .testTarget(name: "FrontEndTests", dependencies: ["Commands", "Hook", "Agent", "Engine", "VirtPortCore", "POSIX",
                                                          "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
