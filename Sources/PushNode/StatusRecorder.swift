import FleetCore
import FleetRedis
import Logging
import NIOConcurrencyHelpers
import NIOCore
import RedisClient

/// Records delivery states in the messages' status buckets (``StatusBucket``), a tick of
/// `interval` at a time: each tick writes one HSET per bucket for every state of the tick
/// before, however many messages and terminals they are about.
///
/// `delivered` waits ``deliveredHold`` to twice that many ticks (100-200 ms): a QoS 1 message
/// is usually acknowledged within that time, even by a loaded terminal, and its final state
/// then replaces it (a field a message less to write). Final states (acknowledged, expired,
/// dropped) go with the next tick, and the removals of those messages from their lists wait
/// for them (``remove(_:)``): they go on the same connection right after, so a node that dies
/// never leaves a removed message without its final state. It loses at most the final states
/// of its last tick and the `delivered` states it held, of messages still in their lists,
/// which another node delivers again.
///
/// States Redis did not take (it was down or restarting) are sent again with the next tick.
/// A state is a field of its own per terminal: writing one twice, or late, never moves a
/// target's state back (``MessageStatusField/state(of:)``).
final class StatusRecorder: Sendable {
    private struct Target: Hashable {
        var id: String
        var terminal: String
    }

    private struct Recorded {
        var state: MessageState
        var at: Int64
    }

    /// Kept cheap to update: two messages' worth of states per delivered message go through
    /// here (three lookups in all, where a final state replaces a waiting `delivered`).
    private struct Pending {
        /// `delivered` states recorded since the last rotation.
        var young: [Target: Recorded] = [:]
        /// `delivered` states recorded in the period before: sent at the next rotation.
        var old: [Target: Recorded] = [:]
        /// Ticks since `young` became `old`.
        var sinceRotation = 0
        /// Final states, in the order they came: sent at the next tick. A target's first final
        /// state is what the reader takes (the earliest), so a second one needs no check here.
        var finals: [(target: Target, recorded: Recorded)] = []
        /// Broadcast message id -> terminals it was written to since the last tick.
        var reach: [String: Int] = [:]
        /// Sent right after the next tick's states, in one pipeline.
        var removals: [Removal] = []
        var ticking = false

        var count: Int { young.count + old.count + finals.count }
    }

    private let redis: RedisConnection
    private let keys: FleetKeys
    private let interval: TimeAmount
    /// Ticks between rotations of the held `delivered` states.
    let deliveredHold: Int
    private let pending = NIOLockedValueBox(Pending())
    /// Removals sent after their states' replies (Redis Cluster), not answered yet.
    private let inFlight = NIOLockedValueBox<(next: Int, removals: [Int: EventLoopFuture<Void>])>((0, [:]))
    /// Gives a bucket a late state created anew (it had expired) an expiry of its own.
    private let expiry = StatusBucketExpiry(.ifNone(86_400))
    /// States kept for a Redis that does not answer, at most; beyond it states that failed
    /// are dropped.
    private let limit: Int
    private let logger: Logger
    /// The status event stream's length (`--status-events`); 0: no events.
    private let events: Int

    init(
        redis: RedisConnection, keys: FleetKeys, events: Int = 0, logger: Logger, interval: TimeAmount = .milliseconds(20),
        deliveredHold: Int = 5, limit: Int = 200_000
    ) {
        self.deliveredHold = max(1, deliveredHold)
        self.redis = redis
        self.keys = keys
        self.events = events
        self.logger = logger
        self.interval = interval
        self.limit = limit
    }

    /// Records that `terminal`'s copy of message `id` reached `state`.
    func record(_ id: String, terminal: String, _ state: MessageState) {
        let target = Target(id: id, terminal: terminal)
        let recorded = Recorded(state: state, at: FleetClock.nowMillis())
        let start = pending.withLockedValue { pending in
            if state.rank >= MessageState.acknowledged.rank {
                // A `delivered` still waiting is replaced by it.
                if pending.young.removeValue(forKey: target) == nil { pending.old.removeValue(forKey: target) }
                pending.finals.append((target, recorded))
            } else {
                // A state that arrives after a more advanced one of the same copy is written
                // too, harmlessly: the reader takes the most advanced.
                pending.young[target] = recorded
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

    /// Writes that take entries out of lists, and who waits for Redis's answer.
    struct Removal: Sendable {
        var commands: [RedisCommand]
        /// Run on `loop` once Redis answered (nil: nobody waits).
        var confirm: (loop: any EventLoop, body: @Sendable () -> Void)?
    }

    /// Sends `removal` once the final states recorded so far are on the connection: at once
    /// when none wait, else right after the next tick (or ``release()``) sends them, together
    /// with every other removal that waited (one pipeline, one answer, one task per event loop
    /// for the confirmations, rather than a promise and a hop per acknowledged message).
    func remove(_ removal: Removal) {
        let now = pending.withLockedValue { pending in
            guard !pending.finals.isEmpty || !pending.removals.isEmpty else { return true }
            pending.removals.append(removal)
            return false
        }
        if now { send([removal]) }
    }

    private func scheduleTick() {
        redis.eventLoop.scheduleTask(in: interval) { self.tick() }
    }

    private func tick() {
        let more = pending.withLockedValue { pending in
            var due: [Target: Recorded] = [:]
            pending.sinceRotation += 1
            if pending.sinceRotation >= deliveredHold {
                pending.sinceRotation = 0
                due = pending.old
                pending.old = pending.young
                pending.young = [:]
            }
            send(due, after: &pending)
            pending.ticking = !pending.old.isEmpty || !pending.young.isEmpty
            if !pending.ticking { pending.sinceRotation = 0 }
            return pending.ticking
        }
        if more { scheduleTick() }
    }

    /// Sends the final states and the removals waiting for them now: a session that reads its
    /// list, or stops (a takeover reads the list next), needs its removals in Redis first.
    func release() {
        pending.withLockedValue { pending in
            guard !pending.removals.isEmpty || !pending.finals.isEmpty else { return }
            send([:], after: &pending)
        }
    }

    /// Sends everything pending now (at shutdown).
    func flush() {
        pending.withLockedValue { pending in
            var due = pending.old
            due.merge(pending.young) { old, _ in old }
            (pending.old, pending.young) = ([:], [:])
            send(due, after: &pending)
        }
    }

    /// Sends the `delivered` states `held`, the final states and the broadcast counts, then
    /// what waited for them, under the lock: whatever another thread sends after goes on the
    /// connection after these.
    private func send(_ held: [Target: Recorded], after pending: inout Pending) {
        var states = pending.finals
        states.reserveCapacity(states.count + held.count)
        for (target, recorded) in held { states.append((target, recorded)) }
        let removals = pending.removals
        let reach = pending.reach
        (pending.finals, pending.reach, pending.removals) = ([], [:], [])
        let statesSent = send(states, reach: reach)
        guard !removals.isEmpty else { return }
        guard redis.isCluster else {
            send(removals)
            return
        }
        // In Redis Cluster the states and the lists are on different masters, with no order
        // between them: the removals wait for the states' replies, and ``settled()`` for them.
        let done = redis.eventLoop.makePromise(of: Void.self)
        let key = inFlight.withLockedValue { inFlight in
            inFlight.next += 1
            inFlight.removals[inFlight.next] = done.futureResult
            return inFlight.next
        }
        done.futureResult.whenComplete { _ in _ = self.inFlight.withLockedValue { $0.removals.removeValue(forKey: key) } }
        let sendRemovals = { self.send(removals, answered: true)?.whenComplete { _ in done.succeed() } ?? done.succeed() }
        if let statesSent {
            statesSent.whenComplete { _ in sendRemovals() }
        } else {
            sendRemovals()
        }
    }

    /// Completes once the removals sent so far have been answered. On one server that is
    /// already so for whatever is sent after, and it completes at once; in Redis Cluster a
    /// takeover's answer waits for it.
    func settled() -> EventLoopFuture<Void> {
        let pending = inFlight.withLockedValue { Array($0.removals.values) }
        guard !pending.isEmpty else { return redis.eventLoop.makeSucceededVoidFuture() }
        return EventLoopFuture.whenAllComplete(pending, on: redis.eventLoop).map { _ in }
    }

    /// One pipeline for `removals`; their confirmations run once it is answered (answered
    /// or not: a removal Redis did not take leaves the entry in the list, where the next read
    /// finds it), grouped by event loop.
    /// - Parameter answered: the future of the reply is wanted even without confirmations.
    @discardableResult
    private func send(_ removals: [Removal], answered: Bool = false) -> EventLoopFuture<Void>? {
        var commands: [RedisCommand] = []
        commands.reserveCapacity(removals.count)
        var confirms: [ObjectIdentifier: (loop: any EventLoop, bodies: [@Sendable () -> Void])] = [:]
        for removal in removals {
            commands += removal.commands
            if let confirm = removal.confirm {
                confirms[ObjectIdentifier(confirm.loop), default: (confirm.loop, [])].bodies.append(confirm.body)
            }
        }
        guard !confirms.isEmpty || answered else {
            redis.fireAndForget(commands)
            return nil
        }
        let groups = Array(confirms.values)
        let logger = self.logger
        let sent = redis.pipelineFuture(commands)
        sent.whenComplete { result in
            switch result {
            case .success(let replies):
                if let failure = replies.first(where: \.isError) {
                    logger.warning("removing delivered entries failed", metadata: ["error": "\(failure)"])
                }
            case .failure(let error):
                logger.warning("removing delivered entries failed", metadata: ["error": "\(error)"])
            }
            for group in groups {
                let bodies = group.bodies
                group.loop.execute { for body in bodies { body() } }
            }
        }
        return sent.map { _ in }
    }

    /// Sends `states` and `reach`; the future completes once Redis answered (nil: nothing to send).
    @discardableResult
    private func send(_ states: [(target: Target, recorded: Recorded)], reach: [String: Int]) -> EventLoopFuture<Void>? {
        var writes = StatusWrites()
        for (target, recorded) in states {
            writes.record(recorded.state, of: target.id, terminal: target.terminal, at: recorded.at)
        }
        var commands =
            writes.commands(keys: keys) + expiry.commands(for: writes.fields.keys, keys: keys)
            + writes.eventCommands(keys: keys, length: events)
        for (id, count) in reach {
            // The status was created before the broadcast went out; a lost count only
            // understates the reach.
            commands.append(
                RedisCommand("HINCRBY", keys.statusBucket(StatusBucket(messageID: id)), MessageStatusField.reach(id), String(count)))
        }
        guard !commands.isEmpty else { return nil }
        let sent = redis.pipelineFuture(commands)
        sent.whenComplete { result in
            switch result {
            case .success(let replies):
                if let failure = replies.first(where: \.isError) {
                    self.logger.warning("recording delivery states failed", metadata: ["error": "\(failure)"])
                }
            case .failure:
                self.expiry.reset()
                self.retry(states)
            }
        }
        return sent.map { _ in }
    }

    /// Puts states Redis did not take back for the next tick.
    private func retry(_ states: [(target: Target, recorded: Recorded)]) {
        let (start, dropped) = pending.withLockedValue { pending -> (Bool, Bool) in
            guard pending.count + states.count <= limit else { return (false, true) }
            for (target, recorded) in states {
                if recorded.state.rank >= MessageState.acknowledged.rank {
                    pending.finals.append((target, recorded))
                } else if pending.young[target] == nil {
                    pending.young[target] = recorded
                }
            }
            defer { pending.ticking = true }
            return (!pending.ticking, false)
        }
        if dropped {
            logger.warning("Redis unavailable: delivery states dropped from message status", metadata: ["states": "\(states.count)"])
        }
        if start { scheduleTick() }
    }
}
