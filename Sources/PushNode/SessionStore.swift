import FleetCore
import FleetRedis
import MQTTCodec
import NIOCore
import RedisClient

/// One change a session makes to its state in Redis. The session says what happened; the
/// store decides how Redis keeps it (which keys, which commands), so cutting the Redis cost
/// of a message changes the store, not the session.
enum SessionWrite: Hashable {
    /// A stored entry is done with (acknowledged, expired, sent at QoS 0, unreadable, or
    /// stored for a subscription the session no longer has): it leaves the list.
    case removeEntry(String)
    /// A message no longer awaits an acknowledgement under a packet id.
    case forgetSent(messageID: String)
    /// A message was sent under `packetID` and awaits its acknowledgement (redelivered with
    /// DUP and the same id after a reconnect).
    case recordSent(messageID: String, packetID: UInt16)
    /// A routed message for this persistent session is kept in its list (capped, expiring).
    case keep(entry: String, capacity: Int, lifetimeMillis: Int64)
    /// QoS 2 from the terminal: PUBREC sent, PUBREL awaited (persistent sessions).
    case awaitRelease(packetID: UInt16)
    /// QoS 2 from the terminal: PUBREL came.
    case released(packetID: UInt16)
    /// QoS 2 to the terminal: PUBREL sent, PUBCOMP awaited (persistent sessions).
    case awaitCompletion(packetID: UInt16)
    /// QoS 2 to the terminal: PUBCOMP came.
    case completed(packetID: UInt16)
    /// Subscriptions kept with the session (filter -> encoded ``Subscription``).
    case recordSubscriptions([String: String])
    /// Subscriptions the session no longer has.
    case forgetSubscriptions([String])
    /// Filters this node's sessions now hold (`true`) or no longer hold (`false`): the
    /// node's part of the fleet index, so terminal publishes are routed here.
    case nodeIndex(adding: Bool, filters: [String])
    /// Filters whose messages are stored for this persistent session while it is away
    /// (`true`), or no longer (`false`).
    case storedSubscriptions(adding: Bool, filters: [String])
}

/// What one read of the stored list returned.
struct StoredListRead {
    /// The entries, in list order.
    var entries: [String]
    /// Earlier deliveries not acknowledged (message id -> packet id), when the read asked.
    var sent: [String: UInt16]?
}

/// Where a session keeps its state: registration, its stored list, what it sent, its
/// subscriptions and QoS 2 exchanges. Replies come decoded into typed values. The session
/// (``MQTTSession``) never calls it: it asks for these through its actions, and the
/// connection performs them here.
protocol SessionStore {
    /// Registers the connection (route, session) and reads the session's state and the head
    /// of its stored list, atomically; the future completes on `loop`.
    func register(_ request: SessionRegisterRequest, on loop: any EventLoop) -> EventLoopFuture<SessionRegistration>
    /// Reads the session's state again after the previous connection stopped.
    func reload(_ registration: SessionRegistration, window: Int) -> EventLoopFuture<SessionRegistration>
    /// Tells `oldNode` to stop the terminal's previous connection; succeeds with the number
    /// of nodes that heard it.
    func kick(on oldNode: String, _ event: NodeEvent) -> EventLoopFuture<Int>
    /// Removes the route if it is still `epoch`'s; ends the session or keeps it `expiry` s.
    func unregister(epoch: String, expiry: UInt32) -> EventLoopFuture<Bool>
    /// The retained messages for `filters` (matching is the caller's).
    func retained(for filters: [String]) -> EventLoopFuture<[StoredMessage]>
    /// Reads part of the stored list.
    func read(_ read: StoredBacklog.Read) -> EventLoopFuture<StoredListRead>
    /// Applies `writes` in order; succeeds once they are kept.
    func write(_ writes: [SessionWrite]) -> EventLoopFuture<Void>
    /// Applies `writes` in order without waiting.
    func send(_ writes: [SessionWrite])
    /// Applies `writes`, which take messages out of the list, once the states recorded for
    /// them are kept (never a removed message without its final state); runs `confirmed` on
    /// `loop` once Redis answered.
    func remove(_ writes: [SessionWrite], confirmed: @escaping @Sendable () -> Void, on loop: any EventLoop)
}

/// The session store in Redis: every Redis command a session issues. One per connection (a
/// value: the node's context and the terminal).
struct RedisSessionStore: SessionStore {
    let node: PushNodeContext
    let terminal: String

    var redis: RedisConnection { node.redis }
    var keys: FleetKeys { node.keys }

    /// Registers the connection `epoch` (route, session) and reads the session's state and the
    /// head of its stored list (`readCount` entries), atomically, in the same script call as
    /// the node's other registrations of the tick (``RegistrationBatcher``).
    func register(_ request: SessionRegisterRequest, on loop: any EventLoop) -> EventLoopFuture<SessionRegistration> {
        node.registrations.register(
            FleetScripts.Registration(
                terminal: terminal, epoch: request.epoch, connectedAt: request.connectedAt, cleanStart: request.cleanStart,
                issuedAt: request.issuedAt, readCount: request.readCount, persistent: request.persistent),
            on: loop)
    }

    /// Reads the session's state again into `registration` (after a takeover: what the
    /// previous connection did until it stopped is in Redis now). Fails unless Redis answered
    /// every read.
    func reload(_ registration: SessionRegistration, window: Int) -> EventLoopFuture<SessionRegistration> {
        let commands = [
            RedisCommand("HGETALL", keys.subscriptions(terminal)),
            RedisCommand("LRANGE", keys.queue(terminal), "0", String(window - 1)),
            RedisCommand("HGETALL", keys.sent(terminal)),
            RedisCommand("SMEMBERS", keys.released(terminal)),
            RedisCommand("SMEMBERS", keys.releasing(terminal)),
        ]
        return redis.pipelineFuture(commands).flatMapThrowing { replies in
            var reloaded = registration
            try reloaded.reload(replies)
            return reloaded
        }
    }

    /// Tells the node `oldNode` to stop the terminal's previous connection; succeeds with the
    /// number of listeners on that node's channel (0: the node is gone).
    func kick(on oldNode: String, _ event: NodeEvent) -> EventLoopFuture<Int> {
        redis.pipelineFuture([RedisCommand("SPUBLISH", keys.nodeChannel(oldNode), event.encoded())]).flatMapThrowing { replies in
            Int(try replies[0].throwingError().int ?? 0)
        }
    }

    /// Removes the route if it is still the connection `epoch`'s, and ends the session
    /// (`expiry` 0) or keeps it that many seconds; succeeds with whether the route was removed.
    func unregister(epoch: String, expiry: UInt32) -> EventLoopFuture<Bool> {
        let command = FleetScripts.unregister.command(
            keys: [
                keys.route(terminal), keys.session(terminal), keys.subscriptions(terminal), keys.released(terminal),
                keys.releasing(terminal),
            ],
            arguments: [epoch, String(expiry)]
        )
        return redis.pipelineFuture([command]).flatMapThrowing { replies in try replies[0].throwingError().int == 1 }
    }

    /// The retained messages for `filters`: one lookup per filter without wildcards, the whole
    /// retained hash when one has a wildcard (matching is the caller's). Unreadable entries
    /// are skipped.
    func retained(for filters: [String]) -> EventLoopFuture<[StoredMessage]> {
        let command =
            filters.contains(where: MQTTTopic.hasWildcard)
            ? RedisCommand("HVALS", keys.retained)
            : RedisCommand("HMGET", [keys.retained] + filters)
        return redis.pipelineFuture([command]).flatMapThrowing { replies in
            (try replies[0].throwingError().array ?? []).compactMap { $0.string.flatMap(StoredMessage.decode) }
        }
    }

    /// Reads part of the stored list (and what was sent unacknowledged, if `read` asks).
    func read(_ read: StoredBacklog.Read) -> EventLoopFuture<StoredListRead> {
        var commands = [RedisCommand("LRANGE", keys.queue(terminal), String(read.start), String(read.start + read.count - 1))]
        if read.withSent { commands.append(RedisCommand("HGETALL", keys.sent(terminal))) }
        return redis.pipelineFuture(commands).flatMapThrowing { replies in
            StoredListRead(
                entries: try replies[0].throwingError().array?.compactMap(\.string) ?? [],
                sent: read.withSent ? SessionRegistration.packetIDs(try replies[1].throwingError()) : nil)
        }
    }

    /// Writes `writes` in one pipeline, in order; succeeds once Redis has taken them.
    func write(_ writes: [SessionWrite]) -> EventLoopFuture<Void> {
        let commands = commands(for: writes)
        guard !commands.isEmpty else { return redis.eventLoop.makeSucceededVoidFuture() }
        return redis.pipelineFuture(commands).flatMapThrowing { replies in
            for reply in replies { _ = try reply.throwingError() }
        }
    }

    /// Writes `writes` right after the node's ``StatusRecorder`` sends the states recorded so
    /// far, on the same connection (with the other sessions' removals of that tick).
    func remove(_ writes: [SessionWrite], confirmed: @escaping @Sendable () -> Void, on loop: any EventLoop) {
        // Now, not when sent: a `sent` record forgotten now never reaches Redis.
        let commands = commands(for: writes)
        guard !commands.isEmpty else { return loop.execute(confirmed) }
        node.status.remove(.init(commands: commands, confirm: (loop, confirmed)))
    }

    /// Writes `writes` in one pipeline without waiting (failures are logged by the connection);
    /// writes that take an entry out of the list (expired, dropped) go after the states
    /// recorded for them, as ``remove(_:)`` does.
    func send(_ writes: [SessionWrite]) {
        let commands = commands(for: writes)
        guard !commands.isEmpty else { return }
        guard writes.contains(where: { if case .removeEntry = $0 { true } else { false } }) else {
            return redis.fireAndForget(commands)
        }
        node.status.remove(.init(commands: commands, confirm: nil))
    }

    /// The commands behind `writes`. `sent` records go through the node's ``SentRecorder``:
    /// written a tick late, and not at all when the acknowledgement comes first (then their
    /// removal costs nothing either).
    func commands(for writes: [SessionWrite]) -> [RedisCommand] {
        var commands: [RedisCommand] = []
        commands.reserveCapacity(writes.count)
        for write in writes {
            switch write {
            case .recordSent(let id, let packetID):
                node.sent.record(terminal: terminal, id: id, packetID: packetID)
            case .forgetSent(let id):
                if !node.sent.forget(terminal: terminal, id: id) { commands.append(command(write)) }
            case .storedSubscriptions(let adding, let filters):
                commands += node.storedSubscriptionsCommands(terminal: terminal, adding: adding, filters: filters)
            default:
                commands.append(command(write))
            }
        }
        return commands
    }

    func command(_ write: SessionWrite) -> RedisCommand {
        switch write {
        case .removeEntry(let entry):
            RedisCommand("LREM", keys.queue(terminal), "1", entry)
        case .forgetSent(let id):
            RedisCommand("HDEL", keys.sent(terminal), id)
        case .recordSent(let id, let packetID):
            RedisCommand("HSET", keys.sent(terminal), id, String(packetID))
        case .keep(let entry, let capacity, let lifetime):
            FleetScripts.enqueue.command(keys: [keys.queue(terminal)], arguments: [entry, String(capacity), String(lifetime), "0"])
        case .awaitRelease(let packetID):
            RedisCommand("SADD", keys.released(terminal), String(packetID))
        case .released(let packetID):
            RedisCommand("SREM", keys.released(terminal), String(packetID))
        case .awaitCompletion(let packetID):
            RedisCommand("SADD", keys.releasing(terminal), String(packetID))
        case .completed(let packetID):
            RedisCommand("SREM", keys.releasing(terminal), String(packetID))
        case .recordSubscriptions(let subscriptions):
            RedisCommand("HSET", [keys.subscriptions(terminal)] + subscriptions.sorted { $0.key < $1.key }.flatMap { [$0.key, $0.value] })
        case .forgetSubscriptions(let filters):
            RedisCommand("HDEL", [keys.subscriptions(terminal)] + filters)
        case .nodeIndex(let adding, let filters):
            node.indexUpdateCommand(adding: adding, filters: filters)
        case .storedSubscriptions:
            preconditionFailure("stored subscriptions are written by commands(for:)")
        }
    }
}
