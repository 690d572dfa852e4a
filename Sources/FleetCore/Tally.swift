import Metrics
import NIOConcurrencyHelpers

/// A counter exported through swift-metrics whose total this process can also read: nodes
/// write their totals into Redis with their heartbeat, for the fleet's figures
/// (`GET /v1/stats`), at no Redis command per message.
public final class Tally: Sendable {
    private let counter: Counter?
    private let total = NIOLockedValueBox<Int64>(0)

    public init(label: String, dimensions: [(String, String)] = []) {
        self.counter = Counter(label: label, dimensions: dimensions)
    }

    /// A total that is not exported.
    public init() {
        self.counter = nil
    }

    public func increment(by amount: Int = 1) {
        counter?.increment(by: amount)
        total.withLockedValue { $0 += Int64(amount) }
    }

    /// What was counted since this process started.
    public var value: Int64 { total.withLockedValue { $0 } }
}
