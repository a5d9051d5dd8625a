#if canImport(Glibc)
import Glibc
#endif
import CLinux

/// An inotify instance (non-blocking, close-on-exec): watches on directories, and their events
/// read as values, never as bytes at offsets.
public struct Inotify: Sendable {
    /// One watch (what `add` returned, and what each of its events names).
    public struct Watch: Sendable, Hashable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
    }

    /// What happened to which entry of a watched directory.
    public struct Event: Sendable, Equatable {
        public var watch: Watch
        /// `IN_*` bits.
        public var mask: UInt32
        /// The entry's name inside the watched directory ("" for an event on the directory itself).
        public var name: String

        public init(watch: Watch, mask: UInt32, name: String) {
            self.watch = watch
            self.mask = mask
            self.name = name
        }
    }

    /// `IN_*` masks a watch can ask for.
    public struct Mask: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let create = Mask(rawValue: UInt32(IN_CREATE))
        public static let movedTo = Mask(rawValue: UInt32(IN_MOVED_TO))
        public static let closeWrite = Mask(rawValue: UInt32(IN_CLOSE_WRITE))
    }

    /// To wait on for readability.
    public let descriptor: FileDescriptor

    /// Wraps inotify_init1(2) with IN_NONBLOCK | IN_CLOEXEC.
    public init() throws(Errno) {
        descriptor = FileDescriptor(rawValue: try valueOrErrno("inotify_init1") { inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC)) })
    }

    /// Watches `path` for `mask`. Wraps inotify_add_watch(2).
    public func add(_ path: String, _ mask: Mask) throws(Errno) -> Watch {
        Watch(rawValue: try valueOrErrno("inotify_add_watch") { inotify_add_watch(descriptor.rawValue, path, mask.rawValue) })
    }

    /// Every event queued now, without blocking ([] when none). Wraps read(2).
    public func read() -> [Event] {
        var out: [Event] = []
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 * 1024, alignment: 8)
        defer { buffer.deallocate() }
        while let n = try? descriptor.read(into: buffer), n > 0 {
            out += Self.events(in: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        return out
    }

    /// The `struct inotify_event` records in `bytes` (wd, mask, cookie, len, then `len` bytes of
    /// NUL-padded name); a truncated last record is dropped.
    public static func events(in bytes: UnsafeRawBufferPointer) -> [Event] {
        let header = MemoryLayout<inotify_event>.size  // 16
        var out: [Event] = []
        var offset = 0
        while offset + header <= bytes.count {
            let wd = bytes.loadUnaligned(fromByteOffset: offset, as: Int32.self)
            let mask = bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)
            let length = Int(bytes.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
            guard offset + header + length <= bytes.count else { break }
            let name = UnsafeRawBufferPointer(rebasing: bytes[(offset + header)..<(offset + header + length)]).prefix { $0 != 0 }
            out.append(Event(watch: Watch(rawValue: wd), mask: mask, name: String(decoding: name, as: UTF8.self)))
            offset += header + length
        }
        return out
    }

    public func close() { descriptor.close() }
}
