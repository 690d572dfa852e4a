import FleetCore
import NIOConcurrencyHelpers
import NIOCore
import RedisClient

/// Records delivery states in the messages' status records late and many at once: a QoS 1
/// message usually goes from sent to acknowledged within the delay, and then one
/// ``FleetScripts/transition`` records both steps (it counts an acknowledged target as
/// delivered too). The states only move forward, so merging keeps the most advanced one.
///
/// A state waits between one and two ticks of `interval`: each tick sends the states recorded
/// during the tick before and keeps the newer ones for the next. A node that dies loses at most
/// that window's state changes; the messages themselves are unaffected (their lists are the
/// truth).
final class StatusRecorder: Sendable {
    /// message id -> terminal -> the most advanced state recorded.
    private typealias States = [String: [String: MessageState]]

    private struct Pending {
        /// Recorded during the current tick.
        var young: States = [:]
        /// Recorded during the tick before: sent at the next tick.
        var old: States = [:]
        var ticking = false
    }

    private let redis: RedisConnection
    private let keys: FleetKeys
    private let interval: TimeAmount
    private let pending = NIOLockedValueBox(Pending())

    init(redis: RedisConnection, keys: FleetKeys, interval: TimeAmount = .milliseconds(20)) {
        self.redis = redis
        self.keys = keys
        self.interval = interval
    }

    /// Records that `terminal`'s copy of message `id` reached `state`.
    func record(_ id: String, terminal: String, _ state: MessageState) {
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

    private func scheduleTick() {
        redis.eventLoop.scheduleTask(in: interval) { self.tick() }
    }

    private func tick() {
        let (due, more) = pending.withLockedValue { pending in
            let due = pending.old
            pending.old = pending.young
            pending.young = [:]
            pending.ticking = !pending.old.isEmpty
            return (due, pending.ticking)
        }
        send(due)
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
                        keys: [keys.messageStatus(id), keys.messageTargets(id)], arguments: [terminal, state.rawValue]))
            }
        }
        if !commands.isEmpty { redis.fireAndForget(commands) }
    }

    /// The more advanced of two states; between two final ones, the first recorded (as the
    /// transition script would keep it).
    static func merged(_ old: MessageState?, _ new: MessageState) -> MessageState {
        guard let old else { return new }
        return new.rank > old.rank ? new : old
    }
}

extension MessageState {
    /// Order of the states: a state never moves to a lower rank.
    var rank: Int {
        switch self {
        case .queued: 1
        case .delivered: 2
        case .acknowledged, .expired, .dropped: 3
        }
    }
}
