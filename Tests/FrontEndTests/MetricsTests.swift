import Testing
@testable import Agent

/// The agent's Prometheus textfile: node_exporter's text format, cumulative histogram buckets.
@Suite struct MetricsTests {
    @Test func rendersGaugesHistogramsAndCounters() throws {
        let m = Metrics(loop: try EventLoop())
        m.hook(operation: "start", code: 0, micros: 3_000)
        m.hook(operation: "start", code: 2, micros: 40_000)
        m.event(source: "lease", micros: 5_000)
        m.healed()
        let text = m.render(states: ["applied": 3, "pending": 1])
        let lines = Set(text.split(separator: "\n").map(String.init))
        #expect(lines.contains("virtport_forwards{state=\"applied\"} 3"))
        #expect(lines.contains("virtport_forwards{state=\"pending\"} 1"))
        // Cumulative: the 3 ms request is in every bucket from 5 ms up, the 40 ms one from 50 ms.
        #expect(lines.contains("virtport_hook_duration_seconds_bucket{operation=\"start\",le=\"0.0025\"} 0"))
        #expect(lines.contains("virtport_hook_duration_seconds_bucket{operation=\"start\",le=\"0.005\"} 1"))
        #expect(lines.contains("virtport_hook_duration_seconds_bucket{operation=\"start\",le=\"0.05\"} 2"))
        #expect(lines.contains("virtport_hook_duration_seconds_bucket{operation=\"start\",le=\"+Inf\"} 2"))
        #expect(lines.contains("virtport_hook_duration_seconds_count{operation=\"start\"} 2"))
        #expect(lines.contains("virtport_event_duration_seconds_count{source=\"lease\"} 1"))
        #expect(lines.contains("virtport_heals_total 1"))
        #expect(lines.contains("virtport_refusals_total 1"))
        #expect(lines.contains("# TYPE virtport_hook_duration_seconds histogram"))
    }
}
