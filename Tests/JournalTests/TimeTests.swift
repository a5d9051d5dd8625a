import Foundation
@testable import Journal
import Testing

@Suite struct TimeTests {
    @Test func formatsUTC() {
        #expect(formatISO8601UTC(0) == "1970-01-01T00:00:00Z")
        #expect(formatISO8601UTC(1_795_943_840_000_000) == "2026-11-29T09:17:20Z")
        #expect(formatISO8601UTC(1_795_943_840_123_456, fractional: true) == "2026-11-29T09:17:20.123456Z")
        #expect(formatISO8601UTC(-1, fractional: true) == "1969-12-31T23:59:59.999999Z")
    }

    @Test func nowIsClose() {
        let system = Int64(Date().timeIntervalSince1970 * 1_000_000)
        #expect(abs(nowMicros() - system) < 5_000_000)
    }

    @Test(arguments: [
        ("2026-11-29T09:17:20Z", Int64(1_795_943_840_000_000)),
        ("2026-11-29t09:17:20z", 1_795_943_840_000_000),
        ("2026-11-29 09:17:20Z", 1_795_943_840_000_000),
        ("2026-11-29T09:17Z", 1_795_943_820_000_000),
        ("2026-11-29T10:17:20+01:00", 1_795_943_840_000_000),
        ("2026-11-29T10:17:20+0100", 1_795_943_840_000_000),
        ("2026-11-29T04:17:20-05", 1_795_943_840_000_000),
        ("2026-11-29T09:17:20.25Z", 1_795_943_840_250_000),
        ("2026-11-29T00:00Z", 1_795_910_400_000_000),
        ("2024-02-29T00:00:00Z", 1_709_164_800_000_000),
        ("@1795943840", 1_795_943_840_000_000),
        ("  2026-11-29T09:17:20Z ", 1_795_943_840_000_000),
    ])
    func parsesAbsolute(_ text: String, _ expected: Int64) {
        #expect(parseTime(text) == expected)
    }

    @Test func parsesRelative() {
        let now: Int64 = 1_795_943_840_000_000
        #expect(parseTime("-30m", now: now) == now - 30 * 60_000_000)
        #expect(parseTime("-2h", now: now) == now - 2 * 3_600_000_000)
        #expect(parseTime("-7d", now: now) == now - 7 * 86_400_000_000)
        #expect(parseTime("-45s", now: now) == now - 45_000_000)
        #expect(parseTime("-1w", now: now) == now - 7 * 86_400_000_000)
        #expect(parseTime("3d ago", now: now) == now - 3 * 86_400_000_000)
        #expect(parseTime("now", now: now) == now)
    }

    @Test(arguments: ["", "yesterday", "2026-13-01", "2026-02-29", "2026-11-31", "2026-11-29T25:00Z",
                      "2026-11-29T10:61", "2026-11-29T10", "2026-11-29T10:00:00.Z", "2026-11-29T10:00+1",
                      "26-11-29", "-5x", "-m", "--2h", "-99999999999999999d", "2026-11-29junk", "@x"])
    func rejectsJunk(_ text: String) {
        #expect(parseTime(text, now: 0) == nil)
    }

    @Test func noZoneMeansLocalTime() throws {
        let t = try #require(parseTime("2026-11-24T10:00"))
        #expect(formatLocal(t).hasPrefix("2026-11-24 10:00:00"))
        let midnight = try #require(parseTime("2026-11-24"))
        #expect(formatLocal(midnight).hasPrefix("2026-11-24 00:00:00"))
        // Agrees with Foundation's idea of the local zone.
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = .current
        let date = cal.date(from: DateComponents(year: 2026, month: 11, day: 24, hour: 10))!
        #expect(t == Int64(date.timeIntervalSince1970) * 1_000_000)
    }
}
