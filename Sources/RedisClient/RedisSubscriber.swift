import Logging
import NIOConcurrencyHelpers
import NIOCore

/// A message received on a subscribed channel.
public struct RedisPubSubMessage: Sendable, Hashable {
    public var channel: String
    public var payload: ByteBuffer

    public init(channel: String, payload: ByteBuffer) {
        self.channel = channel
        self.payload = payload
    }
}

/// What a subscriber hears, in order.
public enum RedisSubscriberEvent: Sendable, Hashable {
    /// A message on a subscribed channel.
    case message(RedisPubSubMessage)
    /// Redis confirmed a subscription to the channel (after every reconnect too): from now on,
    /// what is published there arrives; what was published before did not.
    case subscribed(String)
}

/// A dedicated subscriber connection whose messages arrive as an async sequence.
///
/// Channels are re-subscribed on every reconnect. `sharded` channels use SSUBSCRIBE (Redis 7
/// sharded pub/sub, which Redis Cluster routes by the channel's slot); others use SUBSCRIBE.
/// At most `bufferLimit` events wait for the consumer; beyond it events are dropped and
/// ``takeOverflow()`` says so, so the consumer can read the state it missed from Redis.
///
/// Given the node's commands connection, the subscriber follows it into a Redis Cluster: each
/// channel is subscribed on the master serving its slot (a sharded channel must be; a plain
/// one may be anywhere, since a cluster forwards PUBLISH to every node), and moves when the map
/// changes, when that master's connection drops, or when the server drops the subscription
/// because its slot migrated.
public final class RedisSubscriber: Sendable {
    private struct Channels {
        var plain: Set<String> = []
        var sharded: Set<String> = []
    }

    /// Where each channel is subscribed in a cluster (confined to `eventLoop`).
    private struct Cluster {
        var router: RedisClusterRouter
        var map = RedisClusterSlots.Map()
        var connections: [RedisAddress: RedisServerConnection] = [:]
        var assigned: [String: RedisAddress] = [:]
        var closed = false
    }

    private let configuration: RedisConfiguration
    private let eventLoop: any EventLoop
    private let logger: Logger
    private let commands: RedisConnection?
    private let seed: RedisServerConnection
    private let channels = NIOLockedValueBox(Channels())
    private let cluster: NIOLoopBoundBox<Cluster?>
    private let stateHooks = NIOLockedValueBox<[@Sendable (Bool) -> Void]>([])
    /// Every event, in arrival order.
    public let events: AsyncStream<RedisSubscriberEvent>
    private let continuation: AsyncStream<RedisSubscriberEvent>.Continuation
    private let overflowed: NIOLockedValueBox<Int>
    private let bufferLimit: Int

    /// - Parameter commands: the commands connection of the same node; when it finds a Redis
    ///   Cluster, the subscriber subscribes on its masters.
    public init(
        configuration: RedisConfiguration, eventLoop: any EventLoop, logger: Logger, bufferLimit: Int = 100_000,
        commands: RedisConnection? = nil
    ) {
        let (stream, continuation) = AsyncStream.makeStream(of: RedisSubscriberEvent.self, bufferingPolicy: .bufferingOldest(bufferLimit))
        self.events = stream
        self.continuation = continuation
        self.overflowed = NIOLockedValueBox(0)
        self.bufferLimit = bufferLimit
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.commands = commands
        self.cluster = NIOLoopBoundBox.makeBoxSendingValue(nil, eventLoop: eventLoop)
        let (overflowed, channels, stateHooks) = (self.overflowed, self.channels, self.stateHooks)
        seed = RedisServerConnection(configuration: configuration, eventLoop: eventLoop, logger: logger) { reply in
            _ = Self.event(in: reply).map { Self.yield($0, continuation, overflowed, bufferLimit, logger) }
        }
        seed.onConnect { _ in Self.subscribeCommands(channels.withLockedValue { $0 }) }
        seed.onStateChange { connected in
            for hook in stateHooks.withLockedValue({ $0 }) { hook(connected) }
        }
    }

    /// What a RESP2 push says: [message, channel, payload] or [smessage, channel, payload]; and
    /// [subscribe, channel, count] or [ssubscribe, channel, count] once Redis has the
    /// subscription.
    private static func event(in reply: RedisReply) -> RedisSubscriberEvent? {
        guard case .array(let parts) = reply, parts.count == 3, let kind = parts[0].string, let channel = parts[1].string else {
            return nil
        }
        switch kind {
        case "message", "smessage":
            guard case .bulkString(let payload) = parts[2] else { return nil }
            return .message(RedisPubSubMessage(channel: channel, payload: payload))
        case "subscribe", "ssubscribe":
            return .subscribed(channel)
        default:
            return nil
        }
    }

    private static func yield(
        _ event: RedisSubscriberEvent, _ continuation: AsyncStream<RedisSubscriberEvent>.Continuation, _ overflowed: NIOLockedValueBox<Int>,
        _ bufferLimit: Int, _ logger: Logger
    ) {
        guard case .dropped = continuation.yield(event) else { return }
        let first = overflowed.withLockedValue { count in
            count += 1
            return count == 1
        }
        if first { logger.warning("subscriber buffer full: dropping events", metadata: ["limit": "\(bufferLimit)"]) }
    }

    private static func subscribeCommands(_ channels: Channels) -> [RedisCommand] {
        var commands: [RedisCommand] = []
        if !channels.plain.isEmpty { commands.append(RedisCommand("SUBSCRIBE", channels.plain.sorted())) }
        // SSUBSCRIBE takes channels of one slot at a time in a cluster; one per command is always valid.
        for channel in channels.sharded.sorted() { commands.append(RedisCommand("SSUBSCRIBE", channel)) }
        return commands
    }

    /// The messages of ``events``, without the subscription confirmations.
    public var messages: AsyncCompactMapSequence<AsyncStream<RedisSubscriberEvent>, RedisPubSubMessage> {
        events.compactMap {
            guard case .message(let message) = $0 else { return nil }
            return message
        }
    }

    /// The number of events dropped since the last call because the consumer fell
    /// `bufferLimit` behind (0: none); the consumer has missed messages and should read the
    /// state they announced from Redis.
    public func takeOverflow() -> Int {
        overflowed.withLockedValue { count in
            defer { count = 0 }
            return count
        }
    }

    /// Whether the subscriber is connected (in a cluster: every channel subscribed on a
    /// connection that is up).
    public var isConnected: Bool {
        get async {
            let assigned = try? await eventLoop.submit { () -> (cluster: Bool, connections: [RedisServerConnection]) in
                guard let cluster = self.cluster.value else { return (false, []) }
                let wanted = self.channels.withLockedValue { $0.plain.union($0.sharded) }
                guard wanted.allSatisfy({ cluster.assigned[$0] != nil }) else { return (true, []) }
                return (true, Set(wanted.compactMap { cluster.assigned[$0] }).compactMap { cluster.connections[$0] })
            }.get()
            guard let assigned else { return false }
            guard assigned.cluster else { return await seed.isConnected }
            guard !assigned.connections.isEmpty else { return false }
            for connection in assigned.connections where !(await connection.isConnected) { return false }
            return true
        }
    }

    /// Connects (and keeps reconnecting).
    public func start() {
        seed.start()
        commands?.onModeKnown { commands in
            guard let router = commands.router else { return }
            self.eventLoop.execute { self.enterCluster(router) }
        }
    }

    /// Registers a callback told `true` on every connect and `false` on every disconnect.
    public func onStateChange(_ hook: @escaping @Sendable (Bool) -> Void) {
        stateHooks.withLockedValue { $0.append(hook) }
    }

    /// Subscribes to channels; the subscription survives reconnects.
    public func subscribe(_ names: [String], sharded: Bool = false) {
        let added = channels.withLockedValue { channels in
            names.filter { sharded ? channels.sharded.insert($0).inserted : channels.plain.insert($0).inserted }
        }
        guard !added.isEmpty else { return }
        eventLoop.execute {
            if let cluster = self.cluster.value { return self.reassign(cluster.map) }
            // Not connected yet: the connect hook subscribes to every channel, these included.
            if sharded {
                self.seed.fireAndForgetIfConnected(added.map { RedisCommand("SSUBSCRIBE", $0) })
            } else {
                self.seed.fireAndForgetIfConnected([RedisCommand("SUBSCRIBE", added)])
            }
        }
    }

    /// Closes the connection and finishes ``messages``.
    public func close() async {
        let connections = try? await eventLoop.submit { () -> [RedisServerConnection] in
            guard var cluster = self.cluster.value else { return [] }
            cluster.closed = true
            defer {
                cluster.connections = [:]
                self.cluster.value = cluster
            }
            return Array(cluster.connections.values)
        }.get()
        await seed.close()
        for connection in connections ?? [] { await connection.close() }
        continuation.finish()
    }

    // MARK: In a cluster

    private func enterCluster(_ router: RedisClusterRouter) {
        guard cluster.value == nil else { return }
        cluster.value = Cluster(router: router)
        let seed = self.seed
        Task { await seed.close() }
        router.onMapChange { map in self.eventLoop.execute { self.reassign(map) } }
        router.mapFuture().hop(to: eventLoop).whenSuccess { map in self.reassign(map) }
    }

    /// Puts every channel on the master serving its slot, moving those that are elsewhere.
    private func reassign(_ map: RedisClusterSlots.Map) {
        guard var cluster = cluster.value, !cluster.closed else { return }
        cluster.map = map
        guard !map.nodes.isEmpty else {
            self.cluster.value = cluster
            return
        }
        let wanted = channels.withLockedValue { $0 }
        var moves: [(channel: String, sharded: Bool, from: RedisAddress?, to: RedisAddress)] = []
        for (channel, sharded) in wanted.plain.map({ ($0, false) }) + wanted.sharded.map({ ($0, true) }) {
            let target = map.node(for: RedisClusterSlots.slot(of: channel)) ?? map.nodes[0]
            guard cluster.assigned[channel] != target else { continue }
            moves.append((channel, sharded, cluster.assigned[channel], target))
            cluster.assigned[channel] = target
        }
        self.cluster.value = cluster
        for move in moves {
            if let from = move.from, let old = cluster.connections[from] {
                old.fireAndForgetIfConnected([RedisCommand(move.sharded ? "SUNSUBSCRIBE" : "UNSUBSCRIBE", move.channel)])
            }
            connection(to: move.to).fireAndForgetIfConnected([RedisCommand(move.sharded ? "SSUBSCRIBE" : "SUBSCRIBE", move.channel)])
        }
        // A master with no channel left is let go.
        guard var current = self.cluster.value else { return }
        let used = Set(current.assigned.values)
        for (node, connection) in current.connections where !used.contains(node) {
            current.connections[node] = nil
            Task { await connection.close() }
        }
        self.cluster.value = current
    }

    /// The subscriptions on `node` are gone or refused (its slots moved, or it failed): they
    /// are made again where the map, read again, says.
    private func lost(on node: RedisAddress, channel: String? = nil) {
        guard var cluster = cluster.value else { return }
        for (name, assigned) in cluster.assigned where assigned == node && (channel == nil || channel == name) {
            cluster.assigned[name] = nil
        }
        self.cluster.value = cluster
        cluster.router.refreshedMap().hop(to: eventLoop).whenComplete { result in
            guard let current = self.cluster.value else { return }
            self.reassign((try? result.get()) ?? current.map)
        }
    }

    private func connection(to node: RedisAddress) -> RedisServerConnection {
        if let existing = cluster.value?.connections[node] { return existing }
        var configuration = self.configuration
        configuration.host = node.host
        configuration.port = node.port
        configuration.sentinel = nil
        configuration.seeds = []
        let (continuation, overflowed, bufferLimit, logger) = (self.continuation, self.overflowed, self.bufferLimit, self.logger)
        let connection = RedisServerConnection(configuration: configuration, eventLoop: eventLoop, logger: logger) { reply in
            if let event = Self.event(in: reply) { return Self.yield(event, continuation, overflowed, bufferLimit, logger) }
            self.eventLoop.execute { self.heard(reply, on: node) }
        }
        connection.onConnect { _ in
            // Runs on this event loop: the channels assigned to this master now.
            guard let cluster = self.cluster.value else { return [] }
            let wanted = self.channels.withLockedValue { $0 }
            let here = Channels(
                plain: wanted.plain.filter { cluster.assigned[$0] == node }, sharded: wanted.sharded.filter { cluster.assigned[$0] == node }
            )
            return Self.subscribeCommands(here)
        }
        let stateHooks = self.stateHooks
        connection.onStateChange { connected in
            for hook in stateHooks.withLockedValue({ $0 }) { hook(connected) }
            // The master may have failed: its replica takes its slots.
            if !connected { self.lost(on: node) }
        }
        cluster.value?.connections[node] = connection
        connection.start()
        return connection
    }

    /// A push that is not a message or a confirmation, from a master in a cluster.
    private func heard(_ reply: RedisReply, on node: RedisAddress) {
        switch reply {
        case .array(let parts) where parts.count == 3 && parts[0].string == "sunsubscribe":
            // The server dropped a subscription this subscriber still wants: its slot moved.
            guard let channel = parts[1].string, cluster.value?.assigned[channel] == node else { return }
            logger.info("sharded subscription moved with its slot", metadata: ["channel": "\(channel)"])
            lost(on: node, channel: channel)
        case .error(let message) where message.hasPrefix("MOVED") || message.hasPrefix("CLUSTERDOWN"):
            logger.info("subscription refused, reading the slot map again", metadata: ["error": "\(message)"])
            lost(on: node)
        default:
            return
        }
    }
}
