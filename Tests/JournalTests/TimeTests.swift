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

    /// systemd.time(7)'s relative forms, compound and with every unit spelling.
    @Test(arguments: [
        ("-1h30m", Int64(-5400)), ("-1h 30min", -5400), ("1h 30min ago", -5400), ("+2d", 172_800),
        ("2 days left", 172_800), ("-1.5h", -5400), ("-90s", -90), ("-2 weeks", -1_209_600), ("-1w2d", -777_600),
        ("-1M", -2_629_800), ("-1 month", -2_629_800), ("-1y", -31_557_600), ("3 years ago", -94_672_800),
        ("-5sec", -5), ("-1 hour", -3600), ("-2hr", -7200), ("-3 minutes", -180), ("-1 second", -1),
        ("-1d 2h 3m 4s", -93784), ("+1 day", 86400),
    ])
    func parsesCompoundRelative(_ text: String, _ seconds: Int64) {
        let now: Int64 = 1_795_943_840_000_000
        #expect(parseTime(text, now: now) == now + seconds * 1_000_000, "\(text)")
    }

    @Test func parsesSubSecondUnits() {
        let now: Int64 = 1_795_943_840_000_000
        #expect(parseTime("-250ms", now: now) == now - 250_000)
        #expect(parseTime("-10us", now: now) == now - 10)
        #expect(parseTime("-1s 500ms", now: now) == now - 1_500_000)
    }

    /// today, yesterday, tomorrow: local midnight, whatever the time of day and the zone.
    @Test func namedDaysAreLocalMidnight() throws {
        let now = try #require(parseTime("2026-11-24T15:42:10"))
        #expect(parseTime("today", now: now) == parseTime("2026-11-24"))
        #expect(parseTime("yesterday", now: now) == parseTime("2026-11-23"))
        #expect(parseTime("tomorrow", now: now) == parseTime("2026-11-25"))
        // Across a month and a year end.
        let newYear = try #require(parseTime("2027-01-01T00:30"))
        #expect(parseTime("yesterday", now: newYear) == parseTime("2026-12-31"))
        #expect(formatLocal(try #require(parseTime("today"))).contains(" 00:00:00 "))
    }

    @Test(arguments: ["", "Yesterday", "yesterday 10:00", "-3d ago", "+-2h", "-1h30", "-1hour30x", "-1.h",
                      "1h30m", "-1H", "-1 d a y", "2 ago", "2026-13-01", "2026-02-29", "2026-11-31", "2026-11-29T25:00Z",
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
