import NIOConcurrencyHelpers

/// What this process put into and took out of terminals' lists, counted by the entries' expiry
/// in 10-minute buckets, for the fleet's `queued` figure: each node adds its counts to one
/// Redis hash with its heartbeat (``FleetKeys/queuedLedger``, a field per bucket), and a reader
/// sums the buckets that have not passed. No Redis command per message.
///
/// An entry that leaves a list without being counted (its list key expired whole, a cap
/// trimmed it inside a script that does not say so) is forgotten with its bucket once its
/// expiry passes: a miscount lasts at most as long as the message would have waited. Entries
/// without an expiry (MQTT publishes kept for a persistent session without a message expiry)
/// are not counted.
public final class QueueLedger: Sendable {
    public static let bucketMillis: Int64 = 600_000

    private let deltas = NIOLockedValueBox<[Int64: Int64]>([:])

    public init() {}

    /// The bucket of an expiry (unix milliseconds).
    public static func bucket(_ expiresAt: Int64) -> Int64 { expiresAt / bucketMillis }

    /// `count` entries expiring at `expiresAt` went into lists.
    public func entered(expiresAt: Int64, count: Int = 1) {
        guard expiresAt > 0, count != 0 else { return }
        deltas.withLockedValue { $0[Self.bucket(expiresAt), default: 0] += Int64(count) }
    }

    /// An entry expiring at `expiresAt` left a list.
    public func left(expiresAt: Int64) {
        entered(expiresAt: expiresAt, count: -1)
    }

    /// The counts since the last call, per bucket (zeros left out), to add to the hash.
    public func take() -> [Int64: Int64] {
        deltas.withLockedValue { deltas in
            defer { deltas = [:] }
            return deltas.filter { $0.value != 0 }
        }
    }

    /// Puts back counts whose write failed, to go with the next.
    public func restore(_ taken: [Int64: Int64]) {
        deltas.withLockedValue { deltas in
            for (bucket, count) in taken { deltas[bucket, default: 0] += count }
        }
    }

    /// What waits in the lists by a ledger hash's fields (bucket -> count): the buckets that
    /// have not passed at `nowMillis` (the current one included), never below 0. Also the
    /// passed buckets' fields, for the reader to delete.
    public static func queued(in fields: [String: String], nowMillis: Int64) -> (queued: Int64, passed: [String]) {
        let current = bucket(nowMillis)
        var total: Int64 = 0
        var passed: [String] = []
        for (field, value) in fields {
            guard let bucket = Int64(field) else { continue }
            if bucket < current {
                passed.append(field)
            } else {
                total += Int64(value) ?? 0
            }
        }
        return (max(0, total), passed.sorted())
    }
}
