import Histogram
import NIOConcurrencyHelpers

/// Counts of one benchmark run, shared by all its connections.
public final class BenchStats: Sendable {
    public struct Snapshot: Sendable, Equatable {
        public var connected = 0
        public var failed = 0
        public var sent = 0
        public var received = 0
        public var unique = 0
        public var duplicates = 0
        /// Messages whose payload was not a benchmark payload.
        public var foreign = 0
        public var latencyP50Micros: UInt64 = 0
        public var latencyP99Micros: UInt64 = 0
        public var latencyMaxMicros: UInt64 = 0
    }

    private struct State {
        var snapshot = Snapshot()
        var latency = Histogram<UInt64>(numberOfSignificantValueDigits: .three)
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    public func connected() { state.withLockedValue { $0.snapshot.connected += 1 } }
    public func failed() { state.withLockedValue { $0.snapshot.failed += 1 } }
    public func sent(_ count: Int = 1) { state.withLockedValue { $0.snapshot.sent += count } }

    /// Records a received message: `duplicate` when the receiver had seen its sequence number.
    public func received(latencyNanos: UInt64?, duplicate: Bool) {
        state.withLockedValue { state in
            state.snapshot.received += 1
            guard let latencyNanos else {
                state.snapshot.foreign += 1
                return
            }
            if duplicate {
                state.snapshot.duplicates += 1
            } else {
                state.snapshot.unique += 1
                _ = state.latency.record(max(1, latencyNanos / 1000))
            }
        }
    }

    public var snapshot: Snapshot {
        state.withLockedValue { state in
            var snapshot = state.snapshot
            if state.latency.totalCount > 0 {
                snapshot.latencyP50Micros = state.latency.valueAtPercentile(50)
                snapshot.latencyP99Micros = state.latency.valueAtPercentile(99)
                snapshot.latencyMaxMicros = state.latency.maxRecorded
            }
            return snapshot
        }
    }
}

/// What one receiving connection has seen, to tell duplicates from new messages.
public struct SequenceTracker: Sendable {
    private var seen: Set<UInt64> = []

    public init() {}

    /// Records `sequence`; returns whether it was seen before.
    public mutating func isDuplicate(_ sequence: UInt64) -> Bool {
        !seen.insert(sequence).inserted
    }
}
