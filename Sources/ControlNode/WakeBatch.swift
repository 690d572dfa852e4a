import NIOConcurrencyHelpers

/// The wake events of many pushes, gathered so each node gets one event per batch.
public final class WakeBatch: Sendable {
    struct Wake: Sendable {
        var terminals: [String] = []
        var entries: [String] = []
        /// Every terminal came with its entry (else the event names terminals only).
        var complete = true
    }

    private let byNode = NIOLockedValueBox([String: Wake]())

    public init() {}

    /// Adds one push's terminals per node, with their new entries where known.
    func add(_ terminals: [String: [String]], entries: [String: String]) {
        byNode.withLockedValue { byNode in
            for (node, held) in terminals {
                var wake = byNode[node] ?? Wake()
                for terminal in held {
                    wake.terminals.append(terminal)
                    if let entry = entries[terminal] {
                        wake.entries.append(entry)
                    } else {
                        wake.complete = false
                    }
                }
                byNode[node] = wake
            }
        }
    }

    func take() -> [String: Wake] {
        byNode.withLockedValue { byNode in
            defer { byNode = [:] }
            return byNode
        }
    }
}
