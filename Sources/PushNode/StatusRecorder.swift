import FleetCore
import FleetRedis
import Logging
import NIOConcurrencyHelpers
import NIOCore
import RedisClient

/// Records delivery states in the messages' status records. `delivered` waits one to two
/// ticks of `interval` (each tick sends the states recorded during the tick before): a QoS 1
/// message is usually acknowledged within that time, and its final state then replaces the
/// waiting `delivered` (``FleetScripts/transition`` counts an acknowledged target as delivered
/// too), one script call instead of two. Final states (acknowledged, expired, dropped) go at
/// once, ahead of the command that removes the message from its list on the same connection
/// (usually in the same write), so a node that dies never leaves a removed message without
/// its final state; it loses at most `delivered` states of messages still in their lists,
/// which another node delivers again.
///
/// States Redis did not take (it was down or restarting) are sent again with the next tick;
/// the script ignores a state it has already applied.
final class StatusRecorder: Sendable {
    /// message id -> terminal -> the most advanced state recorded.
    private typealias States = [String: [String: MessageState]]

    private struct Pending {
        /// Recorded during the current tick.
        var young: States = [:]
        /// Recorded during the tick before: sent at the next tick.
        var old: States = [:]
        /// Broadcast message id -> terminals it was written to since the last tick.
        var reach: [String: Int] = [:]
        var ticking = false
    }

    private let redis: RedisConnection
    private let keys: FleetKeys
    private let interval: TimeAmount
    private let pending = NIOLockedValueBox(Pending())
    /// Messages whose states are kept for a Redis that does not answer, at most; beyond it
    /// states that failed are dropped.
    private let limit: Int
    private let logger: Logger

    init(redis: RedisConnection, keys: FleetKeys, logger: Logger, interval: TimeAmount = .milliseconds(20), limit: Int = 200_000) {
        self.redis = redis
        self.keys = keys
        self.logger = logger
        self.interval = interval
        self.limit = limit
    }

    /// Records that `terminal`'s copy of message `id` reached `state`.
    func record(_ id: String, terminal: String, _ state: MessageState) {
        guard state.rank < MessageState.acknowledged.rank else {
            // Final: sent now; a `delivered` still waiting is replaced by it.
            pending.withLockedValue { pending in
                if pending.old[id]?.removeValue(forKey: terminal) != nil, pending.old[id]!.isEmpty { pending.old[id] = nil }
                if pending.young[id]?.removeValue(forKey: terminal) != nil, pending.young[id]!.isEmpty { pending.young[id] = nil }
            }
            return send([id: [terminal: state]])
        }
        let start = pending.withLockedValue { pending in
            if let earlier = pending.old[id]?[terminal] {
                pending.old[id]![terminal] = Self.merged(earlier, state)
            } else {
                pending.young[id, default: [:]][terminal] = Self.merged(pending.young[id]?[terminal], state)
            }
            defer { pending.ticking = true }
            return !pending.ticking
        }
        if start { scheduleTick() }
    }

    /// Counts one more terminal a broadcast reached; sent as one HINCRBY per message per tick.
    func countReach(_ id: String) {
        let start = pending.withLockedValue { pending in
            pending.reach[id, default: 0] += 1
            defer { pending.ticking = true }
            return !pending.ticking
        }
        if start { scheduleTick() }
    }

    private func scheduleTick() {
        redis.eventLoop.scheduleTask(in: interval) { self.tick() }
    }

    private func tick() {
        let (due, reach, more) = pending.withLockedValue { pending in
            let due = pending.old
            let reach = pending.reach
            pending.old = pending.young
            pending.young = [:]
            pending.reach = [:]
            pending.ticking = !pending.old.isEmpty
            return (due, reach, pending.ticking)
        }
        send(due)
        if !reach.isEmpty {
            // The status was created before the broadcast went out; a lost count only
            // understates the reach.
            redis.fireAndForget(
                reach.map { RedisCommand("HINCRBY", keys.messageStatus($0.key), MessageStatusField.count(.delivered), String($0.value)) })
        }
        if more { scheduleTick() }
    }

    /// Sends everything pending now (at shutdown).
    func flush() {
        let states = pending.withLockedValue { pending in
            defer { (pending.old, pending.young) = ([:], [:]) }
            return pending.old.merging(pending.young) { old, young in old.merging(young, uniquingKeysWith: Self.merged) }
        }
        send(states)
    }

    private func send(_ states: States) {
        var commands: [RedisCommand] = []
        for (id, terminals) in states {
            for (terminal, state) in terminals {
                commands.append(
                    FleetScripts.transition.command(
                        keys: [keys.messageStatus(id)], arguments: [terminal, state.rawValue, MessageStatusField.targetPrefix]))
            }
        }
        guard !commands.isEmpty else { return }
        let count = commands.count
        redis.pipelineFuture(commands).whenComplete { result in
            switch result {
            case .success(let replies):
                if let failure = replies.first(where: \.isError) {
                    self.logger.warning("recording delivery states failed", metadata: ["error": "\(failure)"])
                }
            case .failure:
                self.retry(states, count: count)
            }
        }
    }

    /// Puts states Redis did not take back for the next tick.
    private func retry(_ states: States, count: Int) {
        let (start, dropped) = pending.withLockedValue { pending -> (Bool, Bool) in
            guard pending.young.count + pending.old.count + states.count <= limit else { return (false, true) }
            pending.young.merge(states) { young, retried in young.merging(retried, uniquingKeysWith: Self.merged) }
            defer { pending.ticking = true }
            return (!pending.ticking, false)
        }
        if dropped {
            logger.warning("Redis unavailable: delivery states dropped from message status", metadata: ["states": "\(count)"])
        }
        if start { scheduleTick() }
    }

    /// The more advanced of two states; between two final ones, the first recorded (as the
    /// transition script would keep it).
    static func merged(_ old: MessageState?, _ new: MessageState) -> MessageState {
        guard let old else { return new }
        return new.rank > old.rank ? new : old
    }
}
