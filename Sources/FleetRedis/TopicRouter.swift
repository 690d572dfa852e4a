import FleetCore
import NIOCore
import RedisClient

/// Routes a message published on a topic (a terminal's PUBLISH, a will, a topic push from
/// the control API) to every matching subscriber in the fleet.
///
/// The fleet index names the nodes with a matching subscription: each gets one SPUBLISH on
/// its channel per message (a push node hands its own share to `deliverLocally` instead).
/// Persistent sessions subscribed to a matching filter are looked up in Redis and the message
/// is stored for those that are not connected. The returned future succeeds once Redis has
/// taken all of it: that is when a message counts as accepted.
public struct TopicRouter: Sendable {
    public let redis: RedisConnection
    public let keys: FleetKeys
    public let index: SubscriptionIndex
    /// Entries a terminal's list keeps at most.
    public let queueCap: Int
    /// Lifetime in seconds of a stored message without an expiry of its own.
    public let storedLifetime: Int
    /// The push node this router runs in, and how it delivers to its own sessions.
    public let localNode: String?
    public let deliverLocally: (@Sendable (StoredMessage, NodeTarget) -> Void)?
    /// Bounds on the fleet's retained messages that this router's publishes must keep.
    public let retainedLimits: RetainedLimits

    /// Bounds on the fleet's retained messages (0: none).
    public struct RetainedLimits: Sendable, Hashable {
        public var messages: Int
        public var bytes: Int

        public init(messages: Int, bytes: Int) {
            self.messages = messages
            self.bytes = bytes
        }

        public static let none = RetainedLimits(messages: 0, bytes: 0)
    }

    /// A retained publish refused: the fleet holds as many retained messages, or bytes of
    /// them, as its bounds allow. Nothing of the message went anywhere.
    public struct RetainedStoreFull: Error, CustomStringConvertible {
        public let limits: RetainedLimits
        public var description: String {
            "the fleet holds its most retained messages (\(limits.messages)) or bytes of them (\(limits.bytes))"
        }
    }

    public init(
        redis: RedisConnection, keys: FleetKeys, index: SubscriptionIndex, queueCap: Int, storedLifetime: Int, localNode: String? = nil,
        retainedLimits: RetainedLimits = .none, deliverLocally: (@Sendable (StoredMessage, NodeTarget) -> Void)? = nil
    ) {
        self.retainedLimits = retainedLimits
        self.redis = redis
        self.keys = keys
        self.index = index
        self.queueCap = queueCap
        self.storedLifetime = storedLifetime
        self.localNode = localNode
        self.deliverLocally = deliverLocally
    }

    /// What routing one message did.
    public struct Outcome: Sendable, Equatable {
        /// Nodes the message went to (this node included).
        public var nodes = 0
        /// Absent persistent sessions it was stored for.
        public var stored = 0
    }

    /// Routes `message`. `storeForAbsent` false keeps it from absent persistent sessions
    /// (QoS 0, or a push with ttl 0). A retained message beyond ``retainedLimits`` fails with
    /// ``RetainedStoreFull`` before it goes anywhere.
    public func route(_ message: StoredMessage, storeForAbsent: Bool) -> EventLoopFuture<Outcome> {
        guard message.retain == true else { return route(message, storeForAbsent: storeForAbsent, retaining: []) }
        let retain = FleetScripts.retain.command(
            keys: [keys.retained, keys.retainedBytes],
            arguments: [
                message.topic, message.payload.isEmpty ? "" : message.encoded(), String(retainedLimits.messages),
                String(retainedLimits.bytes),
            ])
        // Without bounds (or to delete) the retained message goes in the same pipeline;
        // with them it must be taken first, so a refused one reaches nobody.
        guard retainedLimits != .none, !message.payload.isEmpty else {
            return route(message, storeForAbsent: storeForAbsent, retaining: [retain])
        }
        let limits = retainedLimits
        return redis.pipelineFuture([retain]).flatMap { replies in
            do {
                guard try replies.first?.throwingError().int == 1 else { throw RetainedStoreFull(limits: limits) }
            } catch {
                return redis.eventLoop.makeFailedFuture(error)
            }
            return route(message, storeForAbsent: storeForAbsent, retaining: [])
        }
    }

    private func route(_ message: StoredMessage, storeForAbsent: Bool, retaining: [RedisCommand]) -> EventLoopFuture<Outcome> {
        var commands = retaining
        var routed = Outcome()
        let route = index.route(topic: message.topic)
        routed.nodes = route.nodes.count
        var reached: [String] = []
        var published: [String] = []  // nodes in the order of their SPUBLISH commands
        let publishStart = commands.count
        for (owner, target) in route.nodes {
            if owner == localNode, let deliverLocally {
                deliverLocally(message, target)
                reached.append(owner)
            } else {
                let event = NodeEvent(kind: .publish, message: message, target: target)
                commands.append(RedisCommand("SPUBLISH", keys.nodeChannel(owner), event.encoded()))
                published.append(owner)
            }
        }
        let storedFilters = storeForAbsent ? route.storedFilters : []
        for filter in storedFilters { commands.append(RedisCommand("SMEMBERS", keys.storedSubscribers(filter))) }
        let (outcome, reachedLocally, publishedTo) = (routed, reached, published)
        guard !commands.isEmpty else { return redis.eventLoop.makeSucceededFuture(outcome) }
        return redis.pipelineFuture(commands).flatMap { replies in
            do {
                for reply in replies { _ = try reply.throwingError() }
            } catch {
                return redis.eventLoop.makeFailedFuture(error)
            }
            guard !storedFilters.isEmpty else { return redis.eventLoop.makeSucceededFuture(outcome) }
            // A node whose channel had no listener is gone: its persistent sessions get the
            // message stored like absent ones (DESIGN invariant 2).
            var reached = reachedLocally
            for (offset, owner) in publishedTo.enumerated() where (replies[publishStart + offset].int ?? 0) > 0 {
                reached.append(owner)
            }
            // terminal -> the matching filters it holds (a terminal matching twice is stored once).
            var subscribers: [String: [String]] = [:]
            for (filter, reply) in zip(storedFilters, replies.suffix(storedFilters.count)) {
                for terminal in reply.array?.compactMap(\.string) ?? [] { subscribers[terminal, default: []].append(filter) }
            }
            return store(message, for: subscribers, reached: reached).map { stored in
                var result = outcome
                result.stored = stored
                return result
            }
        }
    }

    private func store(_ message: StoredMessage, for subscribers: [String: [String]], reached: [String]) -> EventLoopFuture<Int> {
        guard !subscribers.isEmpty else { return redis.eventLoop.makeSucceededFuture(0) }
        var stored = message
        stored.session = true
        let entry = stored.encoded()
        let ttl = message.expiresAt > 0 ? max(1, message.expiresAt - FleetClock.nowMillis()) : Int64(storedLifetime) * 1000
        let terminals = Array(subscribers.keys)
        let commands = terminals.map { terminal in
            FleetScripts.storeForSubscriber.command(
                keys: [keys.session(terminal), keys.route(terminal), keys.queue(terminal)],
                arguments: [entry, String(queueCap), String(ttl)] + reached
            )
        }
        return redis.pipelineFuture(commands).flatMapThrowing { replies in
            var follow: [RedisCommand] = []
            var wake: [String: [String]] = [:]
            var count = 0
            for (terminal, reply) in zip(terminals, replies) {
                switch try reply.throwingError() {
                case .bulkString(let node):
                    // Stored for a terminal connected to a node the message did not reach
                    // (it subscribed there a moment ago): that node reads it from the list.
                    wake[String(buffer: node), default: []].append(terminal)
                    count += 1
                case .integer(-1):
                    // The session expired: it leaves the filters' stored-subscriber sets.
                    follow += storedSubscriptionsCommands(terminal: terminal, adding: false, filters: subscribers[terminal] ?? [])
                case .integer(1):
                    count += 1
                default:
                    break
                }
            }
            for (node, held) in wake {
                follow.append(RedisCommand("SPUBLISH", keys.nodeChannel(node), NodeEvent(kind: .wake, terminals: held).encoded()))
            }
            if !follow.isEmpty { redis.fireAndForget(follow) }
            return count
        }
    }

    /// The commands adding a persistent session to (or removing it from) the stored-subscriber
    /// sets of `filters`: one per bucket of filters (``FleetKeys/storedBucket(_:)``), each
    /// atomic with its bucket's part of the stored owner's index.
    public func storedSubscriptionsCommands(terminal: String, adding: Bool, filters: [String]) -> [RedisCommand] {
        var buckets: [Int: [String]] = [:]
        for filter in filters { buckets[FleetKeys.storedBucket(filter), default: []].append(filter) }
        return buckets.sorted { $0.key < $1.key }.map { bucket, filters in
            FleetScripts.storedSubscriptions.command(
                keys: [keys.storedIndex(bucket)] + filters.map(keys.storedSubscribers),
                arguments: [keys.indexChannel, terminal, adding ? "+" : "-"] + filters
            )
        }
    }
}

extension SubscriptionIndex {
    /// Reads every owner's index set (push nodes in the fleet's node set, and the stored
    /// owner) into this copy, except `excluding` (a push node's own, which it keeps itself).
    public func load(from redis: RedisConnection, keys: FleetKeys, excluding: String? = nil) async throws {
        let nodes = try await redis.send("SMEMBERS", keys.nodes).array?.compactMap(\.string) ?? []
        let owners = Array(Set(nodes).subtracting([excluding].compactMap { $0 }))
        let buckets = 0..<FleetKeys.storedBuckets
        let replies = try await redis.pipeline(
            owners.map { RedisCommand("SMEMBERS", keys.index($0)) } + buckets.map { RedisCommand("SMEMBERS", keys.storedIndex($0)) })
        for (owner, reply) in zip(owners, replies) {
            replace(owner: owner, filters: try reply.throwingError().array?.compactMap(\.string) ?? [])
        }
        var stored: [String] = []
        for reply in replies.dropFirst(owners.count) { stored += try reply.throwingError().array?.compactMap(\.string) ?? [] }
        replace(owner: SubscriptionIndex.storedOwner, filters: stored)
    }
}
