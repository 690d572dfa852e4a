import NIOConcurrencyHelpers

/// The wake events of many pushes, gathered so each node gets one event per batch.
public final class WakeBatch: Sendable {
    struct Wake: Sendable {
        var terminals: [String] = []
        var entries: [String] = []
        /// Every terminal came with its entry (else the event names terminals only).
        var complete = true

        mutating func append(_ held: [String], entries: [String: String]) {
            for terminal in held {
                terminals.append(terminal)
                if let entry = entries[terminal] {
                    self.entries.append(entry)
                } else {
                    complete = false
                }
            }
        }
    }

    private let byNode = NIOLockedValueBox([String: Wake]())

    public init() {}

    /// Adds one push's terminals per node, with their new entries where known.
    func add(_ terminals: [String: [String]], entries: [String: String]) {
        byNode.withLockedValue { byNode in
            for (node, held) in terminals {
                // Appended in place: a copy taken out and put back would copy the node's whole
                // lists on every push of the batch.
                byNode[node, default: Wake()].append(held, entries: entries)
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
