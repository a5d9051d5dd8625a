#if canImport(Glibc)
import Glibc
#endif

// Timestamps are Int64 microseconds since the Unix epoch, UTC, everywhere in the journal.

/// The current wall-clock time in µs since the epoch (`clock_gettime(CLOCK_REALTIME)`).
public func nowMicros() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000
}

/// `2026-11-29T09:17:20Z` (with `fractional`: `2026-11-29T09:17:20.123456Z`).
public func formatISO8601UTC(_ micros: Int64, fractional: Bool = false) -> String {
    let (seconds, fraction) = splitMicros(micros)
    var t = time_t(seconds)
    var parts = tm()
    guard gmtime_r(&t, &parts) != nil else { return "\(micros)µs" }
    var text = strftime(parts, "%Y-%m-%dT%H:%M:%S")
    if fractional { text += "." + pad(Int(fraction), 6) }
    return text + "Z"
}

/// Local time for people: `2026-11-29 10:17:20 CET` (`localtime_r`, the TZ of the process).
public func formatLocal(_ micros: Int64) -> String {
    var t = time_t(splitMicros(micros).seconds)
    var parts = tm()
    guard localtime_r(&t, &parts) != nil else { return formatISO8601UTC(micros) }
    return strftime(parts, "%Y-%m-%d %H:%M:%S %Z")
}

/// Parses a time given on the command line, as journalctl (systemd.time(7)) takes them; nil when
/// it is none of:
///
/// - ISO 8601: `2026-11-24`, `2026-11-24T10:00`, `2026-11-24T10:00:30.5`, a space instead of `T`,
///   then optionally `Z`, `+01:00`, `+0100` or `+01`. Without a zone the time is local (ISO 8601's
///   rule), so `--since 2026-11-24` means local midnight;
/// - `now`; `today`, `yesterday`, `tomorrow`: local midnight of that day;
/// - relative to `now`: `-` or `+` followed by one or more `NUMBER UNIT` (`-1h30m`, `+2d`,
///   `-1.5h`), or the same without the sign followed by ` ago` (`3d ago`, `1h 30min ago`) or
///   ` left` (in the future). Units as systemd.time(7): `us`/`usec`, `ms`/`msec`,
///   `s`/`sec`/`second(s)`, `m`/`min`/`minute(s)`, `h`/`hr`/`hour(s)`, `d`/`day(s)`,
///   `w`/`week(s)`, `M`/`month(s)` (30.44 days), `y`/`year(s)` (365.25 days); `m` is minutes,
///   `M` months;
/// - `@1795943840`: seconds since the epoch.
public func parseTime(_ text: String, now: Int64 = nowMicros()) -> Int64? {
    let s = text.trimmingWhitespace
    switch s {
    case "now": return now
    case "today": return localMidnight(now, days: 0)
    case "yesterday": return localMidnight(now, days: -1)
    case "tomorrow": return localMidnight(now, days: 1)
    default: break
    }
    if s.hasPrefix("@") {
        guard let v = Int64(s.dropFirst()), let us = multiply(v, 1_000_000) else { return nil }
        return us
    }
    if let delta = relativeOffset(s) {
        let (t, overflow) = now.addingReportingOverflow(delta)
        return overflow ? nil : t
    }
    return parseISO8601(Array(s.utf8))
}

/// Local midnight of the day `days` after the one `now` falls on (`mktime` handles month ends and
/// DST changes).
private func localMidnight(_ now: Int64, days: Int32) -> Int64? {
    var t = time_t(splitMicros(now).seconds)
    var parts = tm()
    guard localtime_r(&t, &parts) != nil else { return nil }
    parts.tm_hour = 0
    parts.tm_min = 0
    parts.tm_sec = 0
    parts.tm_mday += days
    parts.tm_isdst = -1
    let midnight = mktime(&parts)
    guard midnight != -1 else { return nil }
    return Int64(midnight) * 1_000_000
}

/// The signed offset in µs of `-1h30m`, `+2d`, `1h 30min ago`, `2 weeks left`; nil when `s` is
/// not relative (no sign, no ` ago`/` left`) or not well formed.
private func relativeOffset(_ s: String) -> Int64? {
    var body = Substring(s)
    let sign: Int64
    if body.hasPrefix("-") {
        sign = -1
        body = body.dropFirst()
    } else if body.hasPrefix("+") {
        sign = 1
        body = body.dropFirst()
    } else if body.hasSuffix(" ago") {
        sign = -1
        body = body.dropLast(4)
    } else if body.hasSuffix(" left") {
        sign = 1
        body = body.dropLast(5)
    } else {
        return nil
    }
    guard let span = timeSpan(Array(body.utf8)) else { return nil }
    return sign * span
}

/// `1h30m`, `1h 30min`, `1.5h`, `3 days` in µs; nil unless every part is NUMBER UNIT.
private func timeSpan(_ b: [UInt8]) -> Int64? {
    func isDigit(_ c: UInt8) -> Bool { c >= 48 && c <= 57 }
    func isLetter(_ c: UInt8) -> Bool { (c >= 65 && c <= 90) || (c >= 97 && c <= 122) }
    var i = 0
    var total: Int64 = 0
    var parts = 0
    while true {
        while i < b.count && b[i] == 32 { i += 1 }
        if i == b.count { break }
        // NUMBER: digits, optionally a fraction.
        guard isDigit(b[i]) else { return nil }
        var whole: Int64 = 0
        while i < b.count && isDigit(b[i]) {
            let (w, o1) = whole.multipliedReportingOverflow(by: 10)
            let (v, o2) = w.addingReportingOverflow(Int64(b[i] - 48))
            guard !o1 && !o2 else { return nil }
            whole = v
            i += 1
        }
        var fraction: [UInt8] = []
        if i < b.count && b[i] == UInt8(ascii: ".") {
            i += 1
            while i < b.count && isDigit(b[i]) {
                fraction.append(b[i] - 48)
                i += 1
            }
            guard !fraction.isEmpty else { return nil }
        }
        while i < b.count && b[i] == 32 { i += 1 }
        // UNIT.
        let start = i
        while i < b.count && isLetter(b[i]) { i += 1 }
        guard let size = unitMicros(String(decoding: b[start..<i], as: UTF8.self)) else { return nil }
        guard let w = multiply(whole, size) else { return nil }
        var part = w
        var scale = size
        for digit in fraction.prefix(18) {
            scale /= 10
            part += Int64(digit) * scale
        }
        let (t, overflow) = total.addingReportingOverflow(part)
        guard !overflow else { return nil }
        total = t
        parts += 1
    }
    return parts == 0 ? nil : total
}

/// systemd.time(7)'s time span units, in µs (a month is 30.44 days and a year 365.25 days, as
/// there: 2 629 800 s and 31 557 600 s).
private func unitMicros(_ unit: String) -> Int64? {
    let second: Int64 = 1_000_000
    switch unit {
    case "us", "usec": return 1
    case "ms", "msec": return 1000
    case "s", "sec", "second", "seconds": return second
    case "m", "min", "minute", "minutes": return 60 * second
    case "h", "hr", "hour", "hours": return 3600 * second
    case "d", "day", "days": return 86400 * second
    case "w", "week", "weeks": return 7 * 86400 * second
    case "M", "month", "months": return 2_629_800 * second
    case "y", "year", "years": return 31_557_600 * second
    default: return nil
    }
}

// MARK: - helpers

private func splitMicros(_ micros: Int64) -> (seconds: Int64, fraction: Int64) {
    var seconds = micros / 1_000_000
    var fraction = micros % 1_000_000
    if fraction < 0 {
        seconds -= 1
        fraction += 1_000_000
    }
    return (seconds, fraction)
}

private func strftime(_ parts: tm, _ format: String) -> String {
    var parts = parts
    var buf = [CChar](repeating: 0, count: 96)
    let n = strftime(&buf, buf.count, format, &parts)
    return String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

private func pad(_ v: Int, _ width: Int) -> String {
    let s = String(v)
    return String(repeating: "0", count: max(0, width - s.count)) + s
}

private func multiply(_ a: Int64, _ b: Int64) -> Int64? {
    let (r, overflow) = a.multipliedReportingOverflow(by: b)
    return overflow ? nil : r
}

private func parseISO8601(_ b: [UInt8]) -> Int64? {
    var i = 0
    func number(_ digits: Int) -> Int? {
        guard i + digits <= b.count else { return nil }
        var v = 0
        for c in b[i..<(i + digits)] {
            guard c >= 48 && c <= 57 else { return nil }
            v = v * 10 + Int(c - 48)
        }
        i += digits
        return v
    }
    func take(_ c: Character) -> Bool {
        guard i < b.count, b[i] == c.asciiValue! else { return false }
        i += 1
        return true
    }
    guard let year = number(4), take("-"), let month = number(2), take("-"), let day = number(2) else { return nil }
    guard (1...12).contains(month), day >= 1, day <= daysIn(month: month, year: year) else { return nil }
    var hour = 0, minute = 0, second = 0, micros = 0
    if take("T") || take("t") || take(" ") {
        guard let h = number(2), take(":"), let m = number(2) else { return nil }
        hour = h
        minute = m
        if take(":") {
            guard let sec = number(2) else { return nil }
            second = sec
            if take(".") || take(",") {
                var scale = 100_000
                var any = false
                while i < b.count, b[i] >= 48, b[i] <= 57 {
                    micros += Int(b[i] - 48) * scale
                    scale /= 10
                    i += 1
                    any = true
                }
                guard any else { return nil }
            }
        }
        guard hour <= 23, minute <= 59, second <= 60 else { return nil }
    }
    // Zone: none (local), Z, ±HH, ±HHMM, ±HH:MM.
    var offset: Int?
    if take("Z") || take("z") {
        offset = 0
    } else if i < b.count, b[i] == 43 || b[i] == 45 {  // + -
        let sign = b[i] == 45 ? -1 : 1
        i += 1
        guard let oh = number(2), oh <= 23 else { return nil }
        var om = 0
        if i < b.count {
            _ = take(":")
            guard let m = number(2), m <= 59 else { return nil }
            om = m
        }
        offset = sign * (oh * 3600 + om * 60)
    }
    guard i == b.count else { return nil }

    var parts = tm()
    parts.tm_year = Int32(year - 1900)
    parts.tm_mon = Int32(month - 1)
    parts.tm_mday = Int32(day)
    parts.tm_hour = Int32(hour)
    parts.tm_min = Int32(minute)
    parts.tm_sec = Int32(second)
    let seconds: Int64
    if let offset {
        seconds = Int64(timegm(&parts)) - Int64(offset)
    } else {
        parts.tm_isdst = -1
        let t = mktime(&parts)
        guard t != -1 || (year == 1969 && month == 12 && day == 31) else { return nil }
        seconds = Int64(t)
    }
    return seconds * 1_000_000 + Int64(micros)
}

private func daysIn(month: Int, year: Int) -> Int {
    switch month {
    case 2: (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
    case 4, 6, 9, 11: 30
    default: 31
    }
}

extension String {
    fileprivate var trimmingWhitespace: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        return String(drop(while: isSpace).reversed().drop(while: isSpace).reversed())
    }
}
