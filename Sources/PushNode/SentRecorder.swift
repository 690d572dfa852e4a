import FleetCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import RedisClient

/// The `sent` records of a node's sessions (message id -> packet id of a QoS 1/2 message in
/// flight, in the terminal's `sent` hash), written a tick late. Most messages are
/// acknowledged within a tick of ``interval``: then neither the record nor its removal
/// reaches Redis, two commands a message saved. A record still in flight at the tick after
/// the one it was made in is written then; a terminal whose connection stops (taken over,
/// kicked, closed) has its records written at once, ahead of anything the node sends after,
/// so the connection that takes over reads them and sends those messages again with DUP and
/// their packet ids.
///
/// What a node that dies loses: the records of its last tick or two. Those messages are in
/// their lists still, and go out again on the next connection without DUP and under new
/// packet ids (README: after a failure a message may come twice).
final class SentRecorder: Sendable {
    /// terminal -> message id -> packet id.
    private typealias Records = [String: [String: UInt16]]

    private struct Pending {
        /// Made during the current tick.
        var young: Records = [:]
        /// Made during the tick before: written at the next tick.
        var old: Records = [:]
        var ticking = false
    }

    private let redis: RedisConnection
    private let keys: FleetKeys
    let interval: TimeAmount
    private let pending = NIOLockedValueBox(Pending())

    init(redis: RedisConnection, keys: FleetKeys, interval: TimeAmount = .milliseconds(20)) {
        self.redis = redis
        self.keys = keys
        self.interval = interval
    }

    /// `terminal`'s message `id` went out under `packetID` and awaits its acknowledgement.
    func record(terminal: String, id: String, packetID: UInt16) {
        let start = pending.withLockedValue { pending in
            pending.young[terminal, default: [:]][id] = packetID
            defer { pending.ticking = true }
            return !pending.ticking
        }
        if start { scheduleTick() }
    }

    /// The message `id` no longer awaits an acknowledgement. Returns true when its record
    /// never reached Redis (nothing to remove there); false when it was written and the
    /// caller removes it (its HDEL then goes after the HSET, on the same connection).
    func forget(terminal: String, id: String) -> Bool {
        pending.withLockedValue { pending in
            Self.remove(id, of: terminal, from: &pending.young) || Self.remove(id, of: terminal, from: &pending.old)
        }
    }

    /// Writes `terminal`'s pending records now (its connection stops).
    func flush(terminal: String) {
        pending.withLockedValue { pending in
            var records: Records = [:]
            records[terminal] = pending.old.removeValue(forKey: terminal)
            if let young = pending.young.removeValue(forKey: terminal) { records[terminal, default: [:]].merge(young) { $1 } }
            write(records)
        }
    }

    /// Writes every pending record now (node shutdown).
    func flush() {
        pending.withLockedValue { pending in
            write(pending.old.merging(pending.young) { old, young in old.merging(young) { $1 } })
            (pending.old, pending.young) = ([:], [:])
        }
    }

    /// Records not written yet (tests read it).
    var pendingCount: Int {
        pending.withLockedValue { pending in (pending.old.values.map(\.count) + pending.young.values.map(\.count)).reduce(0, +) }
    }

    private func scheduleTick() {
        redis.eventLoop.scheduleTask(in: interval) { self.tick() }
    }

    private func tick() {
        let more = pending.withLockedValue { pending in
            // Written under the lock: a `forget` that finds a record gone finds its HSET
            // already queued on the connection, ahead of the HDEL it then sends.
            write(pending.old)
            pending.old = pending.young
            pending.young = [:]
            pending.ticking = !pending.old.isEmpty
            return pending.ticking
        }
        if more { scheduleTick() }
    }

    /// One HSET per terminal. Not retried: a record Redis did not take costs a redelivery
    /// without DUP, never a message.
    private func write(_ records: Records) {
        guard !records.isEmpty else { return }
        redis.fireAndForget(
            records.map { terminal, sent in
                RedisCommand("HSET", [keys.sent(terminal)] + sent.flatMap { [$0.key, String($0.value)] })
            })
    }

    private static func remove(_ id: String, of terminal: String, from records: inout Records) -> Bool {
        guard records[terminal]?.removeValue(forKey: id) != nil else { return false }
        if records[terminal]!.isEmpty { records[terminal] = nil }
        return true
    }
}
